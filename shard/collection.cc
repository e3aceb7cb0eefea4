#include "shard/collection.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "common/slot.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/validate.h"
#include "shard/snapshot.h"

namespace shardvec::shard {
namespace {

constexpr int kRebuildBatch = 8192;

index::IndexSpec ToIndexSpec(const v1::CollectionSpec& spec, const std::vector<int>& gpus) {
  index::IndexSpec s;
  s.dim = static_cast<int>(spec.dim());
  s.metric = ToIndexMetric(spec.metric());
  s.factory = spec.index_spec();
  if (spec.device() == v1::GPU) {
    s.device = index::Device::kGpu;
    s.gpus = gpus;
  }
  return s;
}

std::string SnapshotPath(const std::string& dir, uint32_t cid) {
  return (std::filesystem::path(dir) / absl::StrCat("collection-", cid, ".snap")).string();
}

// Row-major vectors of the given records.
std::vector<float> Flatten(const std::vector<store::StoredRecord>& records, int dim) {
  std::vector<float> x(records.size() * dim);
  for (size_t i = 0; i < records.size(); ++i) std::copy(records[i].vector().begin(), records[i].vector().end(), x.begin() + i * dim);
  return x;
}

}  // namespace

index::Metric ToIndexMetric(v1::Metric metric) {
  switch (metric) {
    case v1::IP:
      return index::Metric::kInnerProduct;
    case v1::COSINE:
      return index::Metric::kCosine;
    default:
      return index::Metric::kL2;
  }
}

absl::StatusOr<std::unique_ptr<Collection>> Collection::Create(RecordStore* store, const std::string& snapshot_dir,
                                                               const v1::CollectionSpec& spec,
                                                               const std::vector<int>& gpus) {
  // Validate the index spec (and for GPU, the devices) before anything is stored.
  absl::StatusOr<std::unique_ptr<index::Index>> idx = index::Index::Create(ToIndexSpec(spec, gpus));
  if (!idx.ok()) return idx.status();
  absl::StatusOr<store::StoredCollection> meta = store->AddCollection(spec);
  if (!meta.ok()) return meta.status();
  std::unique_ptr<Collection> c(new Collection(store, *meta, SnapshotPath(snapshot_dir, meta->cid()), gpus));
  absl::MutexLock lock(&c->mu_);
  c->index_ = *std::move(idx);
  return c;
}

absl::StatusOr<std::unique_ptr<Collection>> Collection::Recover(RecordStore* store, const std::string& snapshot_dir,
                                                                const store::StoredCollection& meta,
                                                                const std::vector<int>& gpus, RecoveryStats* stats) {
  const absl::Time start = absl::Now();
  std::unique_ptr<Collection> c(new Collection(store, meta, SnapshotPath(snapshot_dir, meta.cid()), gpus));
  if (meta.spec().device() == v1::GPU) {
    // A GPU collection on a machine without its devices fails here, before its
    // snapshot could be mistaken for a damaged one and deleted.
    absl::StatusOr<std::unique_ptr<index::Index>> probe = index::Index::Create(c->MakeIndexSpec());
    if (!probe.ok()) return probe.status();
  }
  absl::StatusOr<uint64_t> last = store->LastOp(meta.cid());
  if (!last.ok()) return last.status();
  absl::StatusOr<shard::Snapshot> snap = ReadSnapshot(c->snapshot_path_, meta.cid(), c->MakeIndexSpec());
  if (snap.ok() && snap->header.op() > *last) {
    snap = absl::DataLossError(absl::StrCat("snapshot at op ", snap->header.op(), " is newer than the store (op ",
                                            *last, ")"));
  }
  absl::MutexLock write_lock(&c->write_mu_);
  if (snap.ok()) {
    {
      absl::MutexLock lock(&c->mu_);
      c->index_ = std::move(snap->index);
    }
    stats->from_snapshot = true;
    c->snapshot_op_ = snap->header.op();
    if (absl::Status s = c->Replay(snap->header.op(), stats); !s.ok()) return s;
  } else {
    if (!absl::IsNotFound(snap.status())) {
      stats->snapshot_problem = std::string(snap.status().message());
      std::filesystem::remove(c->snapshot_path_);
    }
    if (absl::Status s = c->Rebuild(stats); !s.ok()) return s;
  }
  c->applied_op_ = *last;
  // Entries up to the snapshot may have been trimmed; after a rebuild, assume all.
  c->trimmed_op_ = snap.ok() ? c->snapshot_op_ : *last;
  {
    absl::ReaderMutexLock lock(&c->mu_);
    stats->records = c->index_->size();
  }
  stats->elapsed = absl::Now() - start;
  return c;
}

index::IndexSpec Collection::MakeIndexSpec() const { return ToIndexSpec(spec(), gpus_); }

absl::Status Collection::Rebuild(RecoveryStats* stats) {
  absl::StatusOr<std::unique_ptr<index::Index>> idx = index::Index::Create(MakeIndexSpec());
  if (!idx.ok()) return idx.status();
  if (!meta_.trained_template().empty()) {
    if (absl::Status s = (*idx)->InstallTrained(meta_.trained_template()); !s.ok()) return s;
  }
  const int dim = static_cast<int>(spec().dim());
  absl::Status s = store_->Scan(meta_.cid(), kRebuildBatch,
                                [&](const std::vector<uint64_t>& ids, const std::vector<store::StoredRecord>& recs) {
                                  std::vector<float> x = Flatten(recs, dim);
                                  return (*idx)->Upsert(static_cast<int64_t>(ids.size()), ids.data(), x.data());
                                });
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  index_ = *std::move(idx);
  snapshot_op_ = 0;
  return absl::OkStatus();
}

absl::Status Collection::Replay(uint64_t after, RecoveryStats* stats) {
  // Each entry names the ids one write touched; their current stored state is what
  // the index must reflect (later entries see the same final values, harmlessly).
  return store_->ChangesSince(meta_.cid(), after, [&](uint64_t, const store::ChangeEntry& entry) {
    ++stats->replayed_ops;
    std::vector<uint64_t> ids(entry.upserted().begin(), entry.upserted().end());
    ids.insert(ids.end(), entry.deleted().begin(), entry.deleted().end());
    return Refresh(ids);
  });
}

absl::Status Collection::Refresh(const std::vector<uint64_t>& ids) {
  std::vector<store::StoredRecord> recs;
  std::vector<bool> found;
  if (absl::Status s = store_->Get(meta_.cid(), ids, &recs, &found); !s.ok()) return s;
  std::vector<uint64_t> present, absent;
  std::vector<store::StoredRecord> present_recs;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (found[i]) {
      present.push_back(ids[i]);
      present_recs.push_back(std::move(recs[i]));
    } else {
      absent.push_back(ids[i]);
    }
  }
  std::vector<float> x = Flatten(present_recs, static_cast<int>(spec().dim()));
  absl::MutexLock lock(&mu_);
  if (absl::Status s = index_->Remove(static_cast<int64_t>(absent.size()), absent.data(), nullptr); !s.ok()) return s;
  return index_->Upsert(static_cast<int64_t>(present.size()), present.data(), x.data());
}

absl::Status Collection::Upsert(const v1::UpsertRequest& req, v1::UpsertResponse* resp) {
  if (absl::Status s = ValidateUpsert(spec(), req); !s.ok()) return s;
  const int dim = static_cast<int>(spec().dim());
  const v1::RecordBlock& block = req.block();
  const int n = req.records_size() + block.ids_size();
  WriteSet writes;
  writes.upsert_ids.reserve(n);
  writes.upsert_values.reserve(n);
  for (const v1::Record& r : req.records()) {
    writes.upsert_ids.push_back(r.id());
    writes.upsert_values.push_back(EncodeRecord(r.vector().data(), dim, r.has_payload() ? &r.payload() : nullptr));
  }
  const float* block_x = reinterpret_cast<const float*>(block.vectors().data());
  for (int i = 0; i < block.ids_size(); ++i) {
    writes.upsert_ids.push_back(block.ids(i));
    writes.upsert_values.push_back(
        EncodeRecord(block_x + static_cast<size_t>(i) * dim, dim, block.payloads_size() > 0 ? &block.payloads(i) : nullptr));
  }
  // The index wants one row-major array: a block alone already is one.
  std::vector<float> gathered;
  const float* vectors = block_x;
  if (req.records_size() > 0) {
    gathered.reserve(static_cast<size_t>(n) * dim);
    for (const v1::Record& r : req.records()) gathered.insert(gathered.end(), r.vector().begin(), r.vector().end());
    gathered.insert(gathered.end(), block_x, block_x + static_cast<size_t>(block.ids_size()) * dim);
    vectors = gathered.data();
  }
  absl::MutexLock write_lock(&write_mu_);
  absl::StatusOr<uint64_t> op = store_->Write(meta_.cid(), writes);
  if (!op.ok()) return op.status();
  absl::Status s;
  {
    absl::MutexLock lock(&mu_);
    s = index_->Upsert(n, writes.upsert_ids.data(), vectors);
  }
  applied_op_ = *op;
  if (!s.ok()) {
    // Durable but not searchable until the index catches up; say so loudly.
    LogInfo("collection %s: index apply of op %d failed: %s", spec().name(), *op, s.ToString());
    return s;
  }
  resp->set_upserted(n);
  return absl::OkStatus();
}

absl::Status Collection::Delete(const v1::DeleteRequest& req, v1::DeleteResponse* resp) {
  if (absl::Status s = ValidateIds("ids", req.ids()); !s.ok()) return s;
  WriteSet writes;
  writes.delete_ids.assign(req.ids().begin(), req.ids().end());
  absl::MutexLock write_lock(&write_mu_);
  absl::StatusOr<uint64_t> op = store_->Write(meta_.cid(), writes);
  if (!op.ok()) return op.status();
  int64_t removed = 0;
  absl::Status s;
  {
    absl::MutexLock lock(&mu_);
    s = index_->Remove(static_cast<int64_t>(writes.delete_ids.size()), writes.delete_ids.data(), &removed);
  }
  applied_op_ = *op;
  if (!s.ok()) return s;
  resp->set_deleted(removed);
  return absl::OkStatus();
}

absl::Status Collection::Get(const v1::GetRequest& req, v1::GetResponse* resp) const {
  if (absl::Status s = ValidateIds("ids", req.ids()); !s.ok()) return s;
  std::vector<uint64_t> ids(req.ids().begin(), req.ids().end());
  std::vector<store::StoredRecord> recs;
  std::vector<bool> found;
  if (absl::Status s = store_->Get(meta_.cid(), ids, &recs, &found); !s.ok()) return s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!found[i]) {
      resp->add_missing_ids(ids[i]);
      continue;
    }
    v1::Record* r = resp->add_records();
    r->set_id(ids[i]);
    if (req.include_vectors()) *r->mutable_vector() = std::move(*recs[i].mutable_vector());
    if (req.include_payload() && recs[i].has_payload()) *r->mutable_payload() = std::move(*recs[i].mutable_payload());
  }
  return absl::OkStatus();
}

absl::Status Collection::Search(const v1::SearchRequest& req, v1::SearchResponse* resp) const {
  if (absl::Status s = ValidateSearch(spec(), req); !s.ok()) return s;
  const int64_t nq = req.queries_size();
  const int k = req.k();
  const int dim = static_cast<int>(spec().dim());
  std::vector<float> queries(static_cast<size_t>(nq) * dim);
  for (int64_t i = 0; i < nq; ++i) {
    const auto& v = req.queries(i).values();
    std::copy(v.begin(), v.end(), queries.begin() + i * dim);
  }
  index::SearchParams params;
  params.nprobe = static_cast<int>(req.params().nprobe());
  params.ef_search = static_cast<int>(req.params().ef_search());
  std::vector<float> distances(static_cast<size_t>(nq) * k);
  std::vector<uint64_t> labels(static_cast<size_t>(nq) * k);
  {
    absl::ReaderMutexLock lock(&mu_);
    absl::Status s = index_->Search(nq, queries.data(), k, params, distances.data(), labels.data());
    if (!s.ok()) return s;
  }
  for (int64_t i = 0; i < nq; ++i) {
    v1::QueryResult* result = resp->add_results();
    for (int j = 0; j < k && labels[i * k + j] != index::kNoId; ++j) {
      result->add_ids(labels[i * k + j]);
      result->add_distances(distances[i * k + j]);
    }
  }
  if (req.include_payload()) return FillPayloads(labels, resp);
  return absl::OkStatus();
}

absl::Status Collection::FillPayloads(const std::vector<uint64_t>& labels, v1::SearchResponse* resp) const {
  std::vector<uint64_t> ids;
  for (uint64_t id : labels) {
    if (id != index::kNoId) ids.push_back(id);
  }
  std::vector<store::StoredRecord> recs;
  std::vector<bool> found;
  if (absl::Status s = store_->Get(meta_.cid(), ids, &recs, &found); !s.ok()) return s;
  size_t next = 0;
  for (v1::QueryResult& result : *resp->mutable_results()) {
    for (int j = 0; j < result.ids_size(); ++j, ++next) {
      v1::Payload* payload = result.add_payloads();
      // A record deleted since the search answers with an empty payload.
      if (found[next]) *payload = recs[next].payload();
    }
  }
  return absl::OkStatus();
}

shardrpc::CollectionStats Collection::Stats() const {
  shardrpc::CollectionStats stats;
  *stats.mutable_spec() = spec();
  absl::ReaderMutexLock lock(&mu_);
  stats.set_num_records(index_->size());
  stats.set_index_trained(index_->is_trained());
  stats.set_num_indexed(index_->size());
  return stats;
}

absl::StatusOr<std::string> Collection::Train(const std::vector<float>& sample) {
  const int64_t n = static_cast<int64_t>(sample.size()) / spec().dim();
  absl::MutexLock write_lock(&write_mu_);
  absl::MutexLock lock(&mu_);
  if (index_->is_trained()) {
    return absl::FailedPreconditionError(absl::StrCat("collection '", spec().name(), "' is already trained"));
  }
  if (absl::Status s = index_->Train(n, sample.data()); !s.ok()) return s;
  absl::StatusOr<std::string> tmpl = index_->TrainedTemplate();
  if (!tmpl.ok()) return tmpl.status();
  meta_.set_trained_template(*tmpl);
  if (absl::Status s = store_->UpdateCollection(meta_); !s.ok()) return s;
  return tmpl;
}

std::string Collection::trained_template() const {
  absl::MutexLock write_lock(&write_mu_);
  return meta_.trained_template();
}

absl::Status Collection::InstallTrained(const std::string& trained_template) {
  absl::MutexLock write_lock(&write_mu_);
  if (meta_.trained_template() == trained_template) return absl::OkStatus();
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = index_->InstallTrained(trained_template); !s.ok()) return s;
  }
  meta_.set_trained_template(trained_template);
  return store_->UpdateCollection(meta_);
}

absl::Status Collection::Snapshot() {
  absl::MutexLock write_lock(&write_mu_);
  if (applied_op_ == snapshot_op_) return absl::OkStatus();
  store::SnapshotHeader header;
  header.set_cid(meta_.cid());
  header.set_op(applied_op_);
  *header.mutable_spec() = spec();
  header.set_created_unix_ms(absl::ToUnixMillis(absl::Now()));
  {
    absl::ReaderMutexLock lock(&mu_);
    if (absl::Status s = WriteSnapshot(snapshot_path_, header, *index_); !s.ok()) return s;
  }
  snapshot_op_ = applied_op_;
  uint64_t trim = snapshot_op_;
  if (absl::Now() < pin_expiry_) trim = std::min(trim, pin_op_);
  if (trim <= trimmed_op_) return absl::OkStatus();
  if (absl::Status s = store_->TrimChanges(meta_.cid(), trim); !s.ok()) return s;
  trimmed_op_ = trim;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Collection::ExportSlots(uint32_t begin, uint32_t end, const ExportFn& fn) {
  const rocksdb::Snapshot* view;
  uint64_t op;
  {
    absl::MutexLock write_lock(&write_mu_);
    op = applied_op_;
    view = store_->GetSnapshot();
    pin_op_ = absl::Now() < pin_expiry_ ? std::min(pin_op_, op) : op;
    pin_expiry_ = absl::Now() + kPinLifetime;
  }
  absl::Status s = store_->Scan(
      meta_.cid(), 4096,
      [&](const std::vector<uint64_t>& ids, const std::vector<store::StoredRecord>& recs) {
        std::vector<v1::Record> out(ids.size());
        for (size_t i = 0; i < ids.size(); ++i) {
          out[i].set_id(ids[i]);
          *out[i].mutable_vector() = recs[i].vector();
          if (recs[i].has_payload()) *out[i].mutable_payload() = recs[i].payload();
        }
        return fn(&out);
      },
      begin, end, view);
  store_->ReleaseSnapshot(view);
  if (!s.ok()) return s;
  return op;
}

absl::StatusOr<uint64_t> Collection::ChangedIds(uint32_t begin, uint32_t end, uint64_t after, bool release,
                                                std::vector<uint64_t>* ids) {
  uint64_t op;
  {
    absl::MutexLock write_lock(&write_mu_);
    if (after < trimmed_op_) {
      return absl::FailedPreconditionError(absl::StrCat("change log of '", spec().name(), "' trimmed past op ", after));
    }
    op = applied_op_;
    if (release) {
      pin_expiry_ = absl::InfinitePast();
    } else {
      pin_expiry_ = absl::Now() + kPinLifetime;
    }
  }
  absl::flat_hash_set<uint64_t> seen;
  absl::Status s = store_->ChangesSince(meta_.cid(), after, [&](uint64_t entry_op, const store::ChangeEntry& e) {
    if (entry_op > op) return absl::OkStatus();
    for (const auto* list : {&e.upserted(), &e.deleted()}) {
      for (uint64_t id : *list) {
        const uint32_t slot = SlotOf(id);
        if (slot >= begin && slot < end && seen.insert(id).second) ids->push_back(id);
      }
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return op;
}

absl::StatusOr<uint64_t> Collection::DeleteSlots(uint32_t begin, uint32_t end) {
  std::vector<uint64_t> ids;
  absl::Status s = store_->Scan(
      meta_.cid(), 8192,
      [&](const std::vector<uint64_t>& batch, const std::vector<store::StoredRecord>&) {
        ids.insert(ids.end(), batch.begin(), batch.end());
        return absl::OkStatus();
      },
      begin, end);
  if (!s.ok()) return s;
  uint64_t deleted = 0;
  for (size_t first = 0; first < ids.size(); first += kMaxRecordsPerWrite) {
    v1::DeleteRequest req;
    req.mutable_ids()->Add(ids.begin() + first, ids.begin() + std::min(ids.size(), first + kMaxRecordsPerWrite));
    v1::DeleteResponse resp;
    if (absl::Status st = Delete(req, &resp); !st.ok()) return st;
    deleted += resp.deleted();
  }
  return deleted;
}

uint64_t Collection::OpsSinceSnapshot() const {
  absl::MutexLock write_lock(&write_mu_);
  return applied_op_ - snapshot_op_;
}

absl::Status Collection::Drop() {
  absl::MutexLock write_lock(&write_mu_);
  std::error_code ec;
  std::filesystem::remove(snapshot_path_, ec);
  return store_->DropCollection(meta_);
}

}  // namespace shardvec::shard
