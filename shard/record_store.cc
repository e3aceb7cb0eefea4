#include "shard/record_store.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/slot.h"
#include "rocksdb/slice_transform.h"
#include "rocksdb/write_batch.h"

namespace shardvec::shard {
namespace {

constexpr char kCollectionPrefix = 'C';  // meta: C<name> -> StoredCollection
constexpr char kLastOpPrefix = 'O';      // meta: O<cid> -> u64 last op
constexpr char kNextCidKey[] = "N";      // meta: next cid
constexpr char kFormatKey[] = "F";       // meta: format version
constexpr char kFormatVersion[] = "1";

void PutBigEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetBigEndian(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::string CidPrefix(uint32_t cid) {
  std::string key;
  PutBigEndian(&key, cid, 4);
  return key;
}

std::string SlotKey(uint32_t cid, uint32_t slot) {
  std::string key = CidPrefix(cid);
  PutBigEndian(&key, slot, 2);
  return key;
}

std::string LastOpKey(uint32_t cid) {
  std::string key(1, kLastOpPrefix);
  PutBigEndian(&key, cid, 4);
  return key;
}

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  if (s.IsCorruption()) return absl::DataLossError(absl::StrCat(what, ": ", s.ToString()));
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(absl::StrCat(what, ": ", s.ToString()));
  return absl::InternalError(absl::StrCat(what, ": ", s.ToString()));
}

rocksdb::WriteOptions Synced() {
  rocksdb::WriteOptions w;
  w.sync = true;
  return w;
}

}  // namespace

namespace {

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

}  // namespace

std::string EncodeRecord(const float* vector, int dim, const v1::Payload* payload) {
  // StoredRecord: field 1 `vector` (packed floats, little-endian), field 2 `payload`.
  static_assert(sizeof(float) == 4, "float32");
  const size_t vector_bytes = static_cast<size_t>(dim) * sizeof(float);
  const size_t payload_bytes = payload != nullptr ? payload->ByteSizeLong() : 0;
  std::string out;
  out.reserve(vector_bytes + payload_bytes + 12);
  out.push_back(static_cast<char>((1 << 3) | 2));
  AppendVarint(&out, vector_bytes);
  out.append(reinterpret_cast<const char*>(vector), vector_bytes);
  if (payload_bytes > 0) {
    out.push_back(static_cast<char>((2 << 3) | 2));
    AppendVarint(&out, payload_bytes);
    payload->AppendToString(&out);
  }
  return out;
}

std::string RecordKey(uint32_t cid, uint64_t id) {
  std::string key = SlotKey(cid, SlotOf(id));
  PutBigEndian(&key, id, 8);
  return key;
}

std::string ChangeKey(uint32_t cid, uint64_t op) {
  std::string key = CidPrefix(cid);
  PutBigEndian(&key, op, 8);
  return key;
}

absl::StatusOr<std::unique_ptr<RecordStore>> RecordStore::Open(const std::string& dir) {
  rocksdb::DBOptions options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.paranoid_checks = true;
  options.IncreaseParallelism(2);
  rocksdb::ColumnFamilyOptions cf;
  cf.OptimizeLevelStyleCompaction();
  // Vectors do not compress; large memtables mean fewer flushes during bulk loads.
  cf.compression = rocksdb::kNoCompression;
  cf.write_buffer_size = 64 << 20;
  cf.max_write_buffer_number = 4;
  // Record values (a vector each) go to blob files when a memtable flushes, so
  // compactions move keys and blob references instead of rewriting every vector.
  rocksdb::ColumnFamilyOptions records_cf = cf;
  records_cf.enable_blob_files = true;
  records_cf.min_blob_size = 256;
  records_cf.blob_file_size = 256 << 20;
  records_cf.enable_blob_garbage_collection = true;
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, cf}, {"records", records_cf}, {"changes", cf}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, dir, families, &handles, &db);
  if (!s.ok()) return FromRocks(s, absl::StrCat("cannot open the record store in ", dir));
  std::unique_ptr<RecordStore> store(new RecordStore(db, std::move(handles)));
  std::string version;
  s = db->Get(rocksdb::ReadOptions(), store->meta(), kFormatKey, &version);
  if (s.IsNotFound()) {
    s = db->Put(Synced(), store->meta(), kFormatKey, kFormatVersion);
    version = kFormatVersion;
  }
  if (!s.ok()) return FromRocks(s, "record store format");
  if (version != kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("record store in ", dir, " has format ", version, "; this build reads ", kFormatVersion));
  }
  return store;
}

RecordStore::~RecordStore() {
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h);
  delete db_;
}

absl::StatusOr<std::vector<store::StoredCollection>> RecordStore::LoadCollections() {
  std::vector<store::StoredCollection> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), meta()));
  const std::string prefix(1, kCollectionPrefix);
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    store::StoredCollection c;
    if (!c.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat("record store: collection entry '", it->key().ToString(),
                                              "' does not parse"));
    }
    out.push_back(std::move(c));
  }
  if (absl::Status s = FromRocks(it->status(), "listing collections"); !s.ok()) return s;
  return out;
}

absl::StatusOr<store::StoredCollection> RecordStore::AddCollection(const v1::CollectionSpec& spec) {
  absl::MutexLock lock(&cid_mu_);
  std::string next;
  uint32_t cid = 1;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), meta(), kNextCidKey, &next);
  if (s.ok() && next.size() == 4) cid = static_cast<uint32_t>(GetBigEndian(next.data(), 4));
  if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "reading the next cid");
  store::StoredCollection c;
  c.set_cid(cid);
  *c.mutable_spec() = spec;
  rocksdb::WriteBatch batch;
  std::string next_value;
  PutBigEndian(&next_value, cid + 1, 4);
  batch.Put(meta(), kNextCidKey, next_value);
  batch.Put(meta(), std::string(1, kCollectionPrefix) + spec.name(), c.SerializeAsString());
  if (absl::Status st = FromRocks(db_->Write(Synced(), &batch), "adding a collection"); !st.ok()) return st;
  return c;
}

absl::Status RecordStore::UpdateCollection(const store::StoredCollection& c) {
  return FromRocks(db_->Put(Synced(), meta(), std::string(1, kCollectionPrefix) + c.spec().name(),
                            c.SerializeAsString()),
                   "updating a collection");
}

absl::Status RecordStore::DropCollection(const store::StoredCollection& c) {
  rocksdb::WriteBatch batch;
  batch.Delete(meta(), std::string(1, kCollectionPrefix) + c.spec().name());
  batch.Delete(meta(), LastOpKey(c.cid()));
  const std::string begin = CidPrefix(c.cid());
  const std::string end = CidPrefix(c.cid() + 1);
  batch.DeleteRange(records(), begin, end);
  batch.DeleteRange(changes(), begin, end);
  return FromRocks(db_->Write(Synced(), &batch), "dropping a collection");
}

absl::StatusOr<uint64_t> RecordStore::LastOp(uint32_t cid) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), meta(), LastOpKey(cid), &value);
  if (s.IsNotFound()) return 0;
  if (!s.ok()) return FromRocks(s, "reading the last op");
  if (value.size() != 8) return absl::DataLossError("record store: bad last-op value");
  return GetBigEndian(value.data(), 8);
}

absl::StatusOr<uint64_t> RecordStore::Write(uint32_t cid, const WriteSet& writes) {
  absl::StatusOr<uint64_t> last = LastOp(cid);
  if (!last.ok()) return last.status();
  const uint64_t op = *last + 1;
  rocksdb::WriteBatch batch;
  store::ChangeEntry change;
  // Keys in ascending order let the memtable's skiplist reuse its insert position
  // (it dominated bulk-load CPU with random order); stable, so a repeated id's
  // last record still wins.
  std::vector<std::pair<std::string, size_t>> keyed(writes.upsert_ids.size());
  for (size_t i = 0; i < keyed.size(); ++i) keyed[i] = {RecordKey(cid, writes.upsert_ids[i]), i};
  std::stable_sort(keyed.begin(), keyed.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [key, i] : keyed) {
    batch.Put(records(), key, writes.upsert_values[i]);
    change.add_upserted(writes.upsert_ids[i]);
  }
  for (uint64_t id : writes.delete_ids) {
    batch.Delete(records(), RecordKey(cid, id));
    change.add_deleted(id);
  }
  batch.Put(changes(), ChangeKey(cid, op), change.SerializeAsString());
  std::string op_value;
  PutBigEndian(&op_value, op, 8);
  batch.Put(meta(), LastOpKey(cid), op_value);
  if (absl::Status s = FromRocks(db_->Write(Synced(), &batch), "writing records"); !s.ok()) return s;
  return op;
}

absl::Status RecordStore::Get(uint32_t cid, const std::vector<uint64_t>& ids,
                              std::vector<store::StoredRecord>* out, std::vector<bool>* found) {
  std::vector<std::string> keys(ids.size());
  std::vector<rocksdb::Slice> slices(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    keys[i] = RecordKey(cid, ids[i]);
    slices[i] = keys[i];
  }
  std::vector<rocksdb::PinnableSlice> values(ids.size());
  std::vector<rocksdb::Status> statuses(ids.size());
  db_->MultiGet(rocksdb::ReadOptions(), records(), slices.size(), slices.data(), values.data(), statuses.data());
  out->assign(ids.size(), {});
  found->assign(ids.size(), false);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (statuses[i].IsNotFound()) continue;
    if (absl::Status s = FromRocks(statuses[i], "reading records"); !s.ok()) return s;
    if (!(*out)[i].ParseFromArray(values[i].data(), static_cast<int>(values[i].size()))) {
      return absl::DataLossError(absl::StrCat("record store: record ", ids[i], " does not parse"));
    }
    (*found)[i] = true;
  }
  return absl::OkStatus();
}

absl::Status RecordStore::Scan(uint32_t cid, int batch, const ScanFn& fn, uint32_t slot_begin, uint32_t slot_end,
                               const rocksdb::Snapshot* snapshot) {
  rocksdb::ReadOptions options;
  options.fill_cache = false;
  options.snapshot = snapshot;
  const std::string end = slot_end >= kNumSlots ? CidPrefix(cid + 1) : SlotKey(cid, slot_end);
  rocksdb::Slice upper(end);
  options.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(options, records()));
  std::vector<uint64_t> ids;
  std::vector<store::StoredRecord> recs;
  for (it->Seek(SlotKey(cid, slot_begin)); it->Valid(); it->Next()) {
    if (it->key().size() != 14) return absl::DataLossError("record store: bad record key");
    ids.push_back(GetBigEndian(it->key().data() + 6, 8));
    recs.emplace_back();
    if (!recs.back().ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat("record store: record ", ids.back(), " does not parse"));
    }
    if (static_cast<int>(ids.size()) == batch) {
      if (absl::Status s = fn(ids, recs); !s.ok()) return s;
      ids.clear();
      recs.clear();
    }
  }
  if (absl::Status s = FromRocks(it->status(), "scanning records"); !s.ok()) return s;
  if (!ids.empty()) return fn(ids, recs);
  return absl::OkStatus();
}

absl::Status RecordStore::ChangesSince(uint32_t cid, uint64_t after, const ChangeFn& fn) {
  rocksdb::ReadOptions options;
  const std::string end = CidPrefix(cid + 1);
  rocksdb::Slice upper(end);
  options.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(options, changes()));
  for (it->Seek(ChangeKey(cid, after + 1)); it->Valid(); it->Next()) {
    store::ChangeEntry entry;
    if (it->key().size() != 12 ||
        !entry.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError("record store: bad change-log entry");
    }
    if (absl::Status s = fn(GetBigEndian(it->key().data() + 4, 8), entry); !s.ok()) return s;
  }
  return FromRocks(it->status(), "reading the change log");
}

absl::Status RecordStore::TrimChanges(uint32_t cid, uint64_t upto) {
  return FromRocks(db_->DeleteRange(rocksdb::WriteOptions(), changes(), ChangeKey(cid, 0), ChangeKey(cid, upto + 1)),
                   "trimming the change log");
}

}  // namespace shardvec::shard
