#include "shard/shard_service.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/slot.h"
#include "common/status.h"
#include "common/validate.h"

namespace shardvec::shard {

absl::StatusOr<std::unique_ptr<ShardService>> ShardService::Open(const ShardServiceOptions& options) {
  if (options.data_dir.empty()) return absl::InvalidArgumentError("--data-dir: a shard needs a data directory");
  for (int gpu : options.gpus) {
    if (gpu < 0) return absl::InvalidArgumentError(absl::StrCat("--gpus: ", gpu, " is not a device ordinal"));
  }
  std::error_code ec;
  const std::filesystem::path root(options.data_dir);
  std::filesystem::create_directories(root / "snapshots", ec);
  if (ec) return absl::InternalError(absl::StrCat("--data-dir ", options.data_dir, ": ", ec.message()));
  absl::StatusOr<std::unique_ptr<RecordStore>> store = RecordStore::Open((root / "records").string());
  if (!store.ok()) return store.status();
  std::unique_ptr<ShardService> service(new ShardService(options, *std::move(store)));
  service->snapshot_dir_ = (root / "snapshots").string();
  absl::StatusOr<std::vector<store::StoredCollection>> metas = service->store_->LoadCollections();
  if (!metas.ok()) return metas.status();
  for (const store::StoredCollection& meta : *metas) {
    RecoveryStats stats;
    absl::StatusOr<std::unique_ptr<Collection>> c =
        Collection::Recover(service->store_.get(), service->snapshot_dir_, meta, options.gpus, &stats);
    if (!c.ok()) {
      return absl::Status(c.status().code(),
                          absl::StrCat("recovering collection ", meta.spec().name(), ": ", c.status().message()));
    }
    if (!stats.snapshot_problem.empty()) {
      LogInfo("collection %s: not using the snapshot (%s); rebuilt from the store", meta.spec().name(),
              stats.snapshot_problem);
    }
    LogInfo("collection %s: recovered %d records in %.3f s (%s, %d ops replayed)", meta.spec().name(), stats.records,
            absl::ToDoubleSeconds(stats.elapsed), stats.from_snapshot ? "from snapshot" : "rebuilt from the store",
            stats.replayed_ops);
    absl::MutexLock lock(&service->mu_);
    service->collections_[meta.spec().name()] = *std::move(c);
  }
  service->snapshotter_ = std::thread([s = service.get()] { s->SnapshotLoop(); });
  return service;
}

ShardService::~ShardService() {
  stop_.Notify();
  if (snapshotter_.joinable()) snapshotter_.join();
}

void ShardService::SnapshotLoop() {
  absl::flat_hash_map<std::string, absl::Time> last;
  while (!stop_.WaitForNotificationWithTimeout(absl::Milliseconds(200))) {
    std::vector<std::shared_ptr<Collection>> all;
    {
      absl::ReaderMutexLock lock(&mu_);
      for (const auto& [name, c] : collections_) all.push_back(c);
    }
    for (const auto& c : all) {
      const uint64_t pending = c->OpsSinceSnapshot();
      auto [it, inserted] = last.try_emplace(c->spec().name(), absl::Now());
      if (pending == 0 || (pending < options_.snapshot_after_ops && absl::Now() - it->second < options_.snapshot_interval)) {
        continue;
      }
      const absl::Time start = absl::Now();
      absl::Status s = c->Snapshot();
      it->second = absl::Now();
      if (!s.ok()) {
        LogInfo("collection %s: snapshot failed: %s", c->spec().name(), s.ToString());
      } else {
        LogInfo("collection %s: snapshot of %d writes in %.3f s", c->spec().name(), pending,
                absl::ToDoubleSeconds(absl::Now() - start));
      }
    }
  }
}

absl::Status ShardService::SnapshotAll() {
  std::vector<std::shared_ptr<Collection>> all;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, c] : collections_) all.push_back(c);
  }
  absl::Status result;
  for (const auto& c : all) {
    if (absl::Status s = c->Snapshot(); !s.ok() && result.ok()) result = s;
  }
  return result;
}

absl::StatusOr<std::shared_ptr<Collection>> ShardService::Find(const std::string& name) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = collections_.find(name);
  if (it == collections_.end()) {
    return absl::NotFoundError(absl::StrCat("collection: '", name, "' does not exist"));
  }
  return it->second;
}

grpc::Status ShardService::CreateCollection(grpc::ServerContext*, const v1::CreateCollectionRequest* req,
                                            v1::CreateCollectionResponse* resp) {
  v1::CollectionSpec spec = req->spec();
  SHARDVEC_RETURN_IF_ERROR_GRPC(NormalizeCollectionSpec(&spec));
  absl::MutexLock admin(&admin_mu_);
  if (absl::StatusOr<std::shared_ptr<Collection>> existing = Find(spec.name()); existing.ok()) {
    // Idempotent for the router's retries; a different spec is a conflict.
    if ((*existing)->spec().SerializeAsString() == spec.SerializeAsString()) {
      *resp->mutable_collection()->mutable_spec() = spec;
      return grpc::Status::OK;
    }
    return ToGrpc(absl::AlreadyExistsError(
        absl::StrCat("name: collection '", spec.name(), "' already exists with a different spec")));
  }
  absl::StatusOr<std::unique_ptr<Collection>> collection =
      Collection::Create(store_.get(), snapshot_dir_, spec, options_.gpus);
  if (!collection.ok()) return ToGrpc(collection.status());
  absl::MutexLock lock(&mu_);
  collections_[spec.name()] = *std::move(collection);
  *resp->mutable_collection()->mutable_spec() = spec;
  return grpc::Status::OK;
}

grpc::Status ShardService::DropCollection(grpc::ServerContext*, const v1::DropCollectionRequest* req,
                                          v1::DropCollectionResponse*) {
  absl::MutexLock admin(&admin_mu_);
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->name());
  if (!c.ok()) {
    return ToGrpc(absl::NotFoundError(absl::StrCat("name: collection '", req->name(), "' does not exist")));
  }
  SHARDVEC_RETURN_IF_ERROR_GRPC((*c)->Drop());
  absl::MutexLock lock(&mu_);
  collections_.erase(req->name());
  return grpc::Status::OK;
}

grpc::Status ShardService::Upsert(grpc::ServerContext*, const v1::UpsertRequest* req,
                                  v1::UpsertResponse* resp) {
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->collection());
  if (!c.ok()) return ToGrpc(c.status());
  return ToGrpc((*c)->Upsert(*req, resp));
}

grpc::Status ShardService::Delete(grpc::ServerContext*, const v1::DeleteRequest* req,
                                  v1::DeleteResponse* resp) {
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->collection());
  if (!c.ok()) return ToGrpc(c.status());
  return ToGrpc((*c)->Delete(*req, resp));
}

grpc::Status ShardService::Get(grpc::ServerContext*, const v1::GetRequest* req, v1::GetResponse* resp) {
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->collection());
  if (!c.ok()) return ToGrpc(c.status());
  return ToGrpc((*c)->Get(*req, resp));
}

grpc::Status ShardService::Search(grpc::ServerContext*, const v1::SearchRequest* req,
                                  v1::SearchResponse* resp) {
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->collection());
  if (!c.ok()) return ToGrpc(c.status());
  return ToGrpc((*c)->Search(*req, resp));
}

grpc::Status ShardService::Stats(grpc::ServerContext*, const shardrpc::StatsRequest*,
                                 shardrpc::StatsResponse* resp) {
  std::vector<std::shared_ptr<Collection>> all;
  {
    absl::ReaderMutexLock lock(&mu_);
    for (const auto& [name, c] : collections_) all.push_back(c);
  }
  for (const auto& c : all) *resp->add_collections() = c->Stats();
  return grpc::Status::OK;
}

grpc::Status ShardService::Train(grpc::ServerContext*, grpc::ServerReader<v1::TrainRequest>* reader,
                                 shardrpc::TrainResult* resp) {
  v1::TrainRequest msg;
  std::shared_ptr<Collection> collection;
  std::vector<float> sample;
  while (reader->Read(&msg)) {
    if (collection == nullptr) {
      absl::StatusOr<std::shared_ptr<Collection>> c = Find(msg.collection());
      if (!c.ok()) return ToGrpc(c.status());
      collection = *c;
    }
    SHARDVEC_RETURN_IF_ERROR_GRPC(ValidateTrainSamples(collection->spec(), msg));
    if (static_cast<int64_t>(sample.size() / collection->spec().dim()) + msg.samples_size() > kMaxTrainingVectors) {
      return ToGrpc(absl::InvalidArgumentError(
          absl::StrCat("samples: more than ", kMaxTrainingVectors, " training vectors")));
    }
    for (const v1::Vector& v : msg.samples()) sample.insert(sample.end(), v.values().begin(), v.values().end());
  }
  if (collection == nullptr) return ToGrpc(absl::InvalidArgumentError("collection: the stream was empty"));
  absl::StatusOr<std::string> tmpl = collection->Train(sample);
  if (!tmpl.ok()) return ToGrpc(tmpl.status());
  resp->set_trained_template(*std::move(tmpl));
  resp->set_samples(sample.size() / collection->spec().dim());
  LogInfo("collection %s: trained on %d vectors", collection->spec().name(), resp->samples());
  return grpc::Status::OK;
}

grpc::Status ShardService::InstallTrained(grpc::ServerContext*, const shardrpc::InstallTrainedRequest* req,
                                          shardrpc::InstallTrainedResponse*) {
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->collection());
  if (!c.ok()) return ToGrpc(c.status());
  return ToGrpc((*c)->InstallTrained(req->trained_template()));
}

grpc::Status ShardService::GetTrained(grpc::ServerContext*, const shardrpc::GetTrainedRequest* req,
                                      shardrpc::InstallTrainedRequest* resp) {
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->collection());
  if (!c.ok()) return ToGrpc(c.status());
  resp->set_collection(req->collection());
  resp->set_trained_template((*c)->trained_template());
  return grpc::Status::OK;
}

namespace {

absl::Status CheckSlots(const shardrpc::SlotsRequest& req) {
  if (req.slot_begin() >= req.slot_end() || req.slot_end() > kNumSlots) {
    return absl::InvalidArgumentError(
        absl::StrCat("slot_begin, slot_end: [", req.slot_begin(), ", ", req.slot_end(), ") is not a slot range"));
  }
  return absl::OkStatus();
}

}  // namespace

grpc::Status ShardService::ExportSlots(grpc::ServerContext*, const shardrpc::SlotsRequest* req,
                                       grpc::ServerWriter<shardrpc::ExportChunk>* writer) {
  SHARDVEC_RETURN_IF_ERROR_GRPC(CheckSlots(*req));
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->collection());
  if (!c.ok()) return ToGrpc(c.status());
  std::vector<shardrpc::ExportChunk> chunks;
  bool first = true;
  absl::StatusOr<uint64_t> op = (*c)->ExportSlots(req->slot_begin(), req->slot_end(), [&](std::vector<v1::Record>* recs) {
    shardrpc::ExportChunk chunk;
    for (v1::Record& r : *recs) chunk.add_records()->Swap(&r);
    // The op is known only when the export ends; the first chunk waits for it.
    if (first) {
      chunks.push_back(std::move(chunk));
      first = false;
      return absl::OkStatus();
    }
    if (!writer->Write(chunk)) return absl::CancelledError("the receiver went away");
    return absl::OkStatus();
  });
  if (!op.ok()) return ToGrpc(op.status());
  shardrpc::ExportChunk last = chunks.empty() ? shardrpc::ExportChunk() : std::move(chunks.front());
  last.set_op(*op);
  writer->Write(last);
  return grpc::Status::OK;
}

grpc::Status ShardService::ChangedIds(grpc::ServerContext*, const shardrpc::ChangedIdsRequest* req,
                                      shardrpc::ChangedIdsResponse* resp) {
  shardrpc::SlotsRequest range;
  range.set_slot_begin(req->slot_begin());
  range.set_slot_end(req->slot_end());
  SHARDVEC_RETURN_IF_ERROR_GRPC(CheckSlots(range));
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->collection());
  if (!c.ok()) return ToGrpc(c.status());
  std::vector<uint64_t> ids;
  absl::StatusOr<uint64_t> op =
      (*c)->ChangedIds(req->slot_begin(), req->slot_end(), req->after_op(), req->release(), &ids);
  if (!op.ok()) return ToGrpc(op.status());
  resp->mutable_ids()->Add(ids.begin(), ids.end());
  resp->set_op(*op);
  return grpc::Status::OK;
}

grpc::Status ShardService::DeleteSlots(grpc::ServerContext*, const shardrpc::SlotsRequest* req,
                                       shardrpc::DeleteSlotsResponse* resp) {
  SHARDVEC_RETURN_IF_ERROR_GRPC(CheckSlots(*req));
  absl::StatusOr<std::shared_ptr<Collection>> c = Find(req->collection());
  if (!c.ok()) return ToGrpc(c.status());
  absl::StatusOr<uint64_t> deleted = (*c)->DeleteSlots(req->slot_begin(), req->slot_end());
  if (!deleted.ok()) return ToGrpc(deleted.status());
  resp->set_deleted(*deleted);
  return grpc::Status::OK;
}

}  // namespace shardvec::shard
