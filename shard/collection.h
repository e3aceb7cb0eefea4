// One collection's slice on a shard: its records (vector + payload by id) and the
// search index derived from them. Owned by ShardService. Thread-safe: searches and
// reads share a reader lock; writes take the writer lock only around the index and
// record-map mutation, after validation and copying are done outside it.
#ifndef SHARDVEC_SHARD_COLLECTION_H_
#define SHARDVEC_SHARD_COLLECTION_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "index/index.h"
#include "proto/shard.pb.h"
#include "proto/shardvec.pb.h"

namespace shardvec::shard {

class Collection {
 public:
  // `spec` must already be normalised (NormalizeCollectionSpec).
  static absl::StatusOr<std::unique_ptr<Collection>> Create(const v1::CollectionSpec& spec);

  const v1::CollectionSpec& spec() const { return spec_; }

  absl::Status Upsert(const v1::UpsertRequest& req, v1::UpsertResponse* resp);
  absl::Status Delete(const v1::DeleteRequest& req, v1::DeleteResponse* resp);
  absl::Status Get(const v1::GetRequest& req, v1::GetResponse* resp) const;
  absl::Status Search(const v1::SearchRequest& req, v1::SearchResponse* resp) const;
  shardrpc::CollectionStats Stats() const;

 private:
  struct StoredRecord {
    std::vector<float> vector;
    std::string payload;  // serialized v1::Payload; empty when the record has none
  };

  Collection(v1::CollectionSpec spec, std::unique_ptr<index::Index> index)
      : spec_(std::move(spec)), index_(std::move(index)) {}

  const v1::CollectionSpec spec_;
  mutable absl::Mutex mu_;
  std::unique_ptr<index::Index> index_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, StoredRecord> records_ ABSL_GUARDED_BY(mu_);
};

// The index metric for a collection's metric.
index::Metric ToIndexMetric(v1::Metric metric);

}  // namespace shardvec::shard

#endif  // SHARDVEC_SHARD_COLLECTION_H_
