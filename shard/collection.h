// One collection's slice on a shard: its records live in the shard's RecordStore (the
// source of truth) and an index::Index derived from them answers searches. Owned by
// ShardService. Thread-safe: writes are serialised by write_mu_, so the store's op
// order is the index's apply order; searches share mu_ with readers and wait only
// while a write applies to the index, never during its fsync.
#ifndef SHARDVEC_SHARD_COLLECTION_H_
#define SHARDVEC_SHARD_COLLECTION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "index/index.h"
#include "proto/shard.pb.h"
#include "proto/shard_store.pb.h"
#include "proto/shardvec.pb.h"
#include "shard/record_store.h"

namespace shardvec::shard {

struct RecoveryStats {
  bool from_snapshot = false;
  std::string snapshot_problem;  // why a snapshot was not used, if one existed
  int64_t replayed_ops = 0;
  int64_t records = 0;
  absl::Duration elapsed;
};

class Collection {
 public:
  // A new, empty collection; `spec` must be normalised (NormalizeCollectionSpec).
  // A device GPU spec gets an index on `gpus` (empty: every visible device), or
  // FAILED_PRECONDITION naming device, with nothing stored, where those are missing.
  static absl::StatusOr<std::unique_ptr<Collection>> Create(RecordStore* store, const std::string& snapshot_dir,
                                                            const v1::CollectionSpec& spec,
                                                            const std::vector<int>& gpus);
  // An existing collection: its index from the snapshot plus the writes after it,
  // or, without a usable snapshot, rebuilt from every stored record.
  static absl::StatusOr<std::unique_ptr<Collection>> Recover(RecordStore* store, const std::string& snapshot_dir,
                                                             const store::StoredCollection& meta,
                                                             const std::vector<int>& gpus, RecoveryStats* stats);

  const v1::CollectionSpec& spec() const { return meta_.spec(); }

  absl::Status Upsert(const v1::UpsertRequest& req, v1::UpsertResponse* resp);
  absl::Status Delete(const v1::DeleteRequest& req, v1::DeleteResponse* resp);
  absl::Status Get(const v1::GetRequest& req, v1::GetResponse* resp) const;
  absl::Status Search(const v1::SearchRequest& req, v1::SearchResponse* resp) const;
  shardrpc::CollectionStats Stats() const;

  // Trains the index on `sample` (FAILED_PRECONDITION if it is trained already)
  // and returns the template every shard then installs.
  absl::StatusOr<std::string> Train(const std::vector<float>& sample);
  // Adopts a shared trained template and records it in the store, so that a rebuild
  // uses it too. Installing the template this index already has is a no-op.
  absl::Status InstallTrained(const std::string& trained_template);

  // The shared trained template, "" if the collection was not trained that way.
  std::string trained_template() const;

  // Writes an index snapshot if writes happened since the last one, then trims the
  // change log it covers.
  absl::Status Snapshot();
  // Writes applied since the last snapshot.
  uint64_t OpsSinceSnapshot() const;

  // Deletes the collection's records, change log and snapshot.
  absl::Status Drop();

  // Slot migration, source side. ExportSlots calls `fn` with the records of slots
  // [begin, end) as of one moment and returns that moment's op number; the change
  // log from there on is kept (pinned) until ChangedIds(release) or kPinLifetime.
  using ExportFn = std::function<absl::Status(std::vector<v1::Record>* records)>;
  absl::StatusOr<uint64_t> ExportSlots(uint32_t begin, uint32_t end, const ExportFn& fn);
  // Ids of the slots written after `after` (deduplicated) and the op reached.
  absl::StatusOr<uint64_t> ChangedIds(uint32_t begin, uint32_t end, uint64_t after, bool release,
                                      std::vector<uint64_t>* ids);
  // Deletes every record of slots [begin, end) through the normal write path.
  absl::StatusOr<uint64_t> DeleteSlots(uint32_t begin, uint32_t end);

  static constexpr absl::Duration kPinLifetime = absl::Minutes(10);

 private:
  Collection(RecordStore* store, store::StoredCollection meta, std::string snapshot_path, std::vector<int> gpus)
      : store_(store), meta_(std::move(meta)), snapshot_path_(std::move(snapshot_path)), gpus_(std::move(gpus)) {}
  index::IndexSpec MakeIndexSpec() const;
  absl::Status Rebuild(RecoveryStats* stats);
  absl::Status Replay(uint64_t after, RecoveryStats* stats);
  // Applies the current stored state of `ids` to the index (upsert or remove).
  absl::Status Refresh(const std::vector<uint64_t>& ids);
  absl::Status FillPayloads(const std::vector<uint64_t>& labels, v1::SearchResponse* resp) const;

  RecordStore* const store_;
  store::StoredCollection meta_;
  const std::string snapshot_path_;
  const std::vector<int> gpus_;  // for a GPU collection's index

  mutable absl::Mutex write_mu_;
  uint64_t applied_op_ ABSL_GUARDED_BY(write_mu_) = 0;
  uint64_t snapshot_op_ ABSL_GUARDED_BY(write_mu_) = 0;
  // Change-log entries up to this op have been trimmed away.
  uint64_t trimmed_op_ ABSL_GUARDED_BY(write_mu_) = 0;
  // A migration reads the change log after pin_op_ until pin_expiry_.
  uint64_t pin_op_ ABSL_GUARDED_BY(write_mu_) = 0;
  absl::Time pin_expiry_ ABSL_GUARDED_BY(write_mu_) = absl::InfinitePast();

  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(write_mu_);
  std::unique_ptr<index::Index> index_ ABSL_GUARDED_BY(mu_);
};

// The index metric for a collection's metric.
index::Metric ToIndexMetric(v1::Metric metric);

}  // namespace shardvec::shard

#endif  // SHARDVEC_SHARD_COLLECTION_H_
