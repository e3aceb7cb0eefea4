// A shard's durable state in RocksDB: collection metadata, every record (vector and
// payload) keyed by collection, slot and id, and a per-collection change log that
// lets an index snapshot catch up. The store is the source of truth; indexes are
// derived from it. Layout: shard/FORMAT.md. Thread-safe (RocksDB is); callers
// serialise writes per collection so that op numbers follow apply order.
#ifndef SHARDVEC_SHARD_RECORD_STORE_H_
#define SHARDVEC_SHARD_RECORD_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "proto/shard_store.pb.h"
#include "rocksdb/db.h"

namespace shardvec::shard {

// One write: records to put (as EncodeRecord values) and ids to delete, applied
// atomically.
struct WriteSet {
  std::vector<uint64_t> upsert_ids;
  std::vector<std::string> upsert_values;
  std::vector<uint64_t> delete_ids;
};

// A store::StoredRecord in wire format, written directly from the vector and the
// payload (no intermediate message): bulk loads encode millions of these.
std::string EncodeRecord(const float* vector, int dim, const v1::Payload* payload);

class RecordStore {
 public:
  static absl::StatusOr<std::unique_ptr<RecordStore>> Open(const std::string& dir);
  ~RecordStore();
  RecordStore(const RecordStore&) = delete;
  RecordStore& operator=(const RecordStore&) = delete;

  absl::StatusOr<std::vector<store::StoredCollection>> LoadCollections();
  // Assigns a fresh cid and stores the collection (synced).
  absl::StatusOr<store::StoredCollection> AddCollection(const v1::CollectionSpec& spec);
  absl::Status UpdateCollection(const store::StoredCollection& collection);
  // Removes the collection, its records and its change log.
  absl::Status DropCollection(const store::StoredCollection& collection);

  // Applies `writes` atomically and durably (WAL synced; concurrent writers share
  // one fsync) and returns the collection's new op number.
  absl::StatusOr<uint64_t> Write(uint32_t cid, const WriteSet& writes);
  // The collection's last op number.
  absl::StatusOr<uint64_t> LastOp(uint32_t cid);

  // Records for ids, in order; a missing id leaves found[i] false.
  absl::Status Get(uint32_t cid, const std::vector<uint64_t>& ids, std::vector<store::StoredRecord>* records,
                   std::vector<bool>* found);

  // Every record of the collection (optionally only slots [slot_begin, slot_end)),
  // in batches of up to `batch` records.
  using ScanFn = std::function<absl::Status(const std::vector<uint64_t>& ids,
                                            const std::vector<store::StoredRecord>& records)>;
  // `snapshot` (optional) reads the store as of GetSnapshot().
  absl::Status Scan(uint32_t cid, int batch, const ScanFn& fn, uint32_t slot_begin = 0, uint32_t slot_end = 1u << 16,
                    const rocksdb::Snapshot* snapshot = nullptr);

  // A consistent view for Scan; ReleaseSnapshot when done.
  const rocksdb::Snapshot* GetSnapshot() { return db_->GetSnapshot(); }
  void ReleaseSnapshot(const rocksdb::Snapshot* s) { db_->ReleaseSnapshot(s); }

  // Change-log entries with op > after, in op order.
  using ChangeFn = std::function<absl::Status(uint64_t op, const store::ChangeEntry& entry)>;
  absl::Status ChangesSince(uint32_t cid, uint64_t after, const ChangeFn& fn);
  // Drops change-log entries with op <= upto (a snapshot covers them).
  absl::Status TrimChanges(uint32_t cid, uint64_t upto);

 private:
  RecordStore(rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> handles)
      : db_(db), handles_(std::move(handles)) {}
  rocksdb::ColumnFamilyHandle* meta() const { return handles_[0]; }
  rocksdb::ColumnFamilyHandle* records() const { return handles_[1]; }
  rocksdb::ColumnFamilyHandle* changes() const { return handles_[2]; }

  rocksdb::DB* db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  absl::Mutex cid_mu_;  // serialises cid allocation
};

// Key helpers, exposed for tests and FORMAT.md's examples.
std::string RecordKey(uint32_t cid, uint64_t id);
std::string ChangeKey(uint32_t cid, uint64_t op);

}  // namespace shardvec::shard

#endif  // SHARDVEC_SHARD_RECORD_STORE_H_
