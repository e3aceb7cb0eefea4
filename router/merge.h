// k-way merge of per-shard top-k lists into one, the network-sized counterpart of
// faiss::merge_knn_results. Each input list is sorted nearest first.
#ifndef SHARDVEC_ROUTER_MERGE_H_
#define SHARDVEC_ROUTER_MERGE_H_

#include <vector>

#include "proto/shardvec.pb.h"

namespace shardvec::router {

// Writes the k best hits of `lists` to `out`, nearest first; equal distances are
// ordered by id. An id that appears in several lists (a slot answered by two shards
// while it moves) is kept once, at its best distance (from the earliest of the lists
// that tie). Payloads travel with their hits when every list carries them.
// `larger_is_better` for IP and cosine. GpuMerger (gpu_merge.h) gives the same output.
void MergeTopK(const std::vector<const v1::QueryResult*>& lists, int k, bool larger_is_better,
               v1::QueryResult* out);

}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_MERGE_H_
