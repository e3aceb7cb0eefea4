// The router's cross-shard merge on a GPU, for large batches: the output of
// router::MergeTopK (merge.h), hit for hit, with the selection done by
// kernels::MergeTopK.
//
//   GpuMerger merger(GpuMergeOptions{});
//   absl::Status s = merger.Merge(per_query_lists, k, larger_is_better, resp->mutable_results());
//   // on error `resp` is as it was: merge on the CPU instead
//
// When it is used: RouterService::Search takes this path when a CUDA device exists,
// RouterOptions::gpu_merge_min_batch is not 0, the batch holds at least that many
// queries and more than one shard answered; everything else, and any GPU error, goes
// through router::MergeTopK. The gain is modest: copying the distances out of the
// replies and building the output stay on the host, and they dominate either way (on
// an H100 host, 256 to 16384 queries, 2 to 16 shards, k 10 and 100, the GPU path took
// 0.75x to 1.2x the CPU merge's time, best for 1k to 4k queries of 4 to 8 shards).
//
// How: every query's m lists are padded to k_in = the longest list (+inf distance for
// L2, -inf for inner product) and laid out as nq x m x k_in; the GPU keeps the
// k2 = min(m * k_in, 2k) best of each query, identified by their position
// (list * k_in + index), so that the host finds each hit, payload included, in the
// shard's reply. Why 2k suffice: the GPU does not remove duplicate ids, and an id
// appears in at most two lists (the two shards of a slot that is moving), so any 2k
// entries hold at least k distinct ids when the lists do. The host then replays
// MergeTopK's order on the candidates: everything strictly better than the worst
// candidate is certain to be among them, so runs of equal distances are reordered as
// the CPU heap would pop them (by id, then list) and a query whose answer reaches the
// worst candidate's distance (ties at the edge), or whose input MergeTopK would treat
// specially (an unsorted list, a NaN), is merged on the CPU instead.
#ifndef SHARDVEC_ROUTER_GPU_MERGE_H_
#define SHARDVEC_ROUTER_GPU_MERGE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "proto/shardvec.pb.h"

namespace shardvec::kernels {
class Context;
}  // namespace shardvec::kernels

namespace shardvec::router {

struct GpuMergeOptions {
  int device = 0;
  // Queries go to the GPU in chunks of at most this many padded entries (nq x m x
  // k_in), which bounds the device and pinned memory (about 40 bytes an entry).
  int64_t chunk_entries = int64_t{1} << 23;
};

// Merges per-shard top-k lists on one CUDA device. Owned by the RouterService.
// Thread-safe: merges run one at a time under mu_, which guards the Context (created
// on the first merge, so a router that never sees a large batch holds no GPU memory)
// and the device and pinned buffers that are reused across merges.
class GpuMerger {
 public:
  explicit GpuMerger(GpuMergeOptions options);
  ~GpuMerger();
  GpuMerger(const GpuMerger&) = delete;
  GpuMerger& operator=(const GpuMerger&) = delete;

  // Appends one result per entry of `queries` (each a query's lists, nearest first)
  // to `out`, exactly as router::MergeTopK(queries[q], k, larger_is_better, ...)
  // would. On error (no device, a CUDA failure) `out` is left as it was.
  absl::Status Merge(const std::vector<std::vector<const v1::QueryResult*>>& queries, int k,
                     bool larger_is_better, google::protobuf::RepeatedPtrField<v1::QueryResult>* out);

 private:
  struct Buffers;
  // The k2 best positions of each of nq queries laid out (nq x m x k_in) in the
  // pinned distances, into the pinned candidates (nq x k2).
  absl::Status SelectOnDevice(int64_t nq, int m, int k_in, int k2, bool larger_is_better)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const GpuMergeOptions options_;
  absl::Mutex mu_;
  absl::Status context_status_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<kernels::Context> ctx_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Buffers> buffers_ ABSL_GUARDED_BY(mu_);
};

namespace gpu_merge_internal {

// The host half of GpuMerger::Merge for one query, separate so that tests can feed it
// a selection made on the CPU. The query's lists (each sorted, no NaN) are laid out
// as m x k_in padded entries; `best` holds the positions (list * k_in + index; an
// index at or past the list's length is padding) of the k2 best of them, best first,
// equal distances in any order; -1 stands for an entry at the padding's distance
// (the kernels report every entry at +inf, or -inf for inner product, so). Fills the empty `out` and returns true, or returns
// false (with `out` empty) when the candidates cannot decide the answer and the caller
// must merge on the CPU; an error if `best` is out of range or not sorted. `seen` is
// scratch space.
absl::StatusOr<bool> MergeFromCandidates(const std::vector<const v1::QueryResult*>& lists, int m,
                                         int k_in, const int64_t* best, int k2, int k,
                                         bool larger_is_better, v1::QueryResult* out,
                                         absl::flat_hash_set<uint64_t>* seen);

}  // namespace gpu_merge_internal
}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_GPU_MERGE_H_
