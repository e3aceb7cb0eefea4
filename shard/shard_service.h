// The shard's gRPC service (proto/shard.proto): a name -> Collection table. Owned by
// the shard server. Thread-safe: the table has its own lock, held only to look a
// collection up, so operations on different collections never wait for each other.
#ifndef SHARDVEC_SHARD_SHARD_SERVICE_H_
#define SHARDVEC_SHARD_SHARD_SERVICE_H_

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "proto/shard.grpc.pb.h"
#include "shard/collection.h"

namespace shardvec::shard {

class ShardService final : public shardrpc::Shard::Service {
 public:
  grpc::Status CreateCollection(grpc::ServerContext* ctx, const v1::CreateCollectionRequest* req,
                                v1::CreateCollectionResponse* resp) override;
  grpc::Status DropCollection(grpc::ServerContext* ctx, const v1::DropCollectionRequest* req,
                              v1::DropCollectionResponse* resp) override;
  grpc::Status Upsert(grpc::ServerContext* ctx, const v1::UpsertRequest* req,
                      v1::UpsertResponse* resp) override;
  grpc::Status Delete(grpc::ServerContext* ctx, const v1::DeleteRequest* req,
                      v1::DeleteResponse* resp) override;
  grpc::Status Get(grpc::ServerContext* ctx, const v1::GetRequest* req, v1::GetResponse* resp) override;
  grpc::Status Search(grpc::ServerContext* ctx, const v1::SearchRequest* req,
                      v1::SearchResponse* resp) override;
  grpc::Status Stats(grpc::ServerContext* ctx, const shardrpc::StatsRequest* req,
                     shardrpc::StatsResponse* resp) override;

 private:
  absl::StatusOr<std::shared_ptr<Collection>> Find(const std::string& name) const;

  mutable absl::Mutex mu_;
  // shared_ptr: a drop may race with operations already holding the collection.
  absl::flat_hash_map<std::string, std::shared_ptr<Collection>> collections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shardvec::shard

#endif  // SHARDVEC_SHARD_SHARD_SERVICE_H_
