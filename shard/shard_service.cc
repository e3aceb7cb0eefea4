#include "shard/shard_service.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/validate.h"

namespace shardvec::shard {

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
  absl::MutexLock lock(&mu_);
  auto it = collections_.find(spec.name());
  if (it != collections_.end()) {
    // Idempotent for the router's retries; a different spec is a conflict.
    if (it->second->spec().SerializeAsString() == spec.SerializeAsString()) {
      *resp->mutable_collection()->mutable_spec() = spec;
      return grpc::Status::OK;
    }
    return ToGrpc(absl::AlreadyExistsError(
        absl::StrCat("name: collection '", spec.name(), "' already exists with a different spec")));
  }
  absl::StatusOr<std::unique_ptr<Collection>> collection = Collection::Create(spec);
  if (!collection.ok()) return ToGrpc(collection.status());
  collections_[spec.name()] = *std::move(collection);
  *resp->mutable_collection()->mutable_spec() = spec;
  return grpc::Status::OK;
}

grpc::Status ShardService::DropCollection(grpc::ServerContext*, const v1::DropCollectionRequest* req,
                                          v1::DropCollectionResponse*) {
  absl::MutexLock lock(&mu_);
  if (collections_.erase(req->name()) == 0) {
    return ToGrpc(absl::NotFoundError(absl::StrCat("name: collection '", req->name(), "' does not exist")));
  }
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

}  // namespace shardvec::shard
