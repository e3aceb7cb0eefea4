// The shard's gRPC service (proto/shard.proto): a name -> Collection table over one
// RecordStore. Owned by the shard server. Thread-safe: the table has its own lock,
// held only to look a collection up, so operations on different collections never
// wait for each other. A background thread writes index snapshots.
#ifndef SHARDVEC_SHARD_SHARD_SERVICE_H_
#define SHARDVEC_SHARD_SHARD_SERVICE_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "proto/shard.grpc.pb.h"
#include "shard/collection.h"
#include "shard/record_store.h"

namespace shardvec::shard {

struct ShardServiceOptions {
  std::string data_dir;
  // A collection is snapshotted when this many writes are pending, or when any are
  // and this much time has passed since its last snapshot.
  uint64_t snapshot_after_ops = 500;
  absl::Duration snapshot_interval = absl::Seconds(60);
  // CUDA device ordinals that each GPU collection spreads its vectors over (one index
  // partition per entry; an entry may repeat); empty means every visible device.
  std::vector<int> gpus;
};

class ShardService final : public shardrpc::Shard::Service {
 public:
  // Opens the store in data_dir and recovers every collection.
  static absl::StatusOr<std::unique_ptr<ShardService>> Open(const ShardServiceOptions& options);
  ~ShardService() override;

  // Snapshots every collection with pending writes (at shutdown).
  absl::Status SnapshotAll();

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
  grpc::Status Train(grpc::ServerContext* ctx, grpc::ServerReader<v1::TrainRequest>* reader,
                     shardrpc::TrainResult* resp) override;
  grpc::Status InstallTrained(grpc::ServerContext* ctx, const shardrpc::InstallTrainedRequest* req,
                              shardrpc::InstallTrainedResponse* resp) override;
  grpc::Status GetTrained(grpc::ServerContext* ctx, const shardrpc::GetTrainedRequest* req,
                          shardrpc::InstallTrainedRequest* resp) override;
  grpc::Status ExportSlots(grpc::ServerContext* ctx, const shardrpc::SlotsRequest* req,
                           grpc::ServerWriter<shardrpc::ExportChunk>* writer) override;
  grpc::Status ChangedIds(grpc::ServerContext* ctx, const shardrpc::ChangedIdsRequest* req,
                          shardrpc::ChangedIdsResponse* resp) override;
  grpc::Status DeleteSlots(grpc::ServerContext* ctx, const shardrpc::SlotsRequest* req,
                           shardrpc::DeleteSlotsResponse* resp) override;

 private:
  ShardService(ShardServiceOptions options, std::unique_ptr<RecordStore> store)
      : options_(std::move(options)), store_(std::move(store)) {}
  absl::StatusOr<std::shared_ptr<Collection>> Find(const std::string& name) const;
  void SnapshotLoop();

  const ShardServiceOptions options_;
  std::unique_ptr<RecordStore> store_;
  std::string snapshot_dir_;

  mutable absl::Mutex mu_;
  // shared_ptr: a drop may race with operations already holding the collection.
  absl::flat_hash_map<std::string, std::shared_ptr<Collection>> collections_ ABSL_GUARDED_BY(mu_);
  // Serialises create and drop, which touch the store and the table together.
  absl::Mutex admin_mu_ ABSL_ACQUIRED_BEFORE(mu_);

  absl::Notification stop_;
  std::thread snapshotter_;
};

}  // namespace shardvec::shard

#endif  // SHARDVEC_SHARD_SHARD_SERVICE_H_
