// The public API (proto/shardvec.proto) in front of the shards. Owned by the router
// server. Thread-safe: each call works on an immutable Topology snapshot (map, shard
// stubs, slot owners) taken under a short lock; admin calls that change the map are
// serialised by admin_mu_ and publish a new snapshot after persisting the map.
#ifndef SHARDVEC_ROUTER_ROUTER_SERVICE_H_
#define SHARDVEC_ROUTER_ROUTER_SERVICE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/cluster.pb.h"
#include "proto/generator.grpc.pb.h"
#include "proto/shard.grpc.pb.h"
#include "proto/shardvec.grpc.pb.h"
#include "router/gpu_merge.h"
#include "router/text.h"

namespace shardvec::router {

struct RouterOptions {
  // Where the cluster map is persisted; empty keeps it in memory only.
  std::string map_path;
  // Per-shard deadline for searches and reads when the request sets none.
  absl::Duration read_timeout = absl::Seconds(30);
  // Per-shard deadline for writes and admin calls (IVF training can be slow).
  absl::Duration write_timeout = absl::Minutes(10);
  // Searches of at least this many queries merge the shards' lists on the GPU when
  // the router has one (see gpu_merge.h); 0: always on the CPU.
  int gpu_merge_min_batch = 1024;
  // The generator (proto/generator.proto) that answers Rag calls; empty: Rag is
  // refused with FAILED_PRECONDITION.
  std::string generator_address;
};

struct ShardConn {
  std::string id;
  std::string address;
  std::shared_ptr<shardrpc::Shard::Stub> stub;
};

// A shard's failure with the shard named: "shard shard-1 (127.0.0.1:7002): ...".
absl::Status ShardFailure(const ShardConn& shard, const grpc::Status& s);

struct Topology {
  cluster::ClusterMap map;
  std::vector<ShardConn> shards;
  std::vector<int> slot_owner;  // slot -> index into shards
  absl::flat_hash_map<std::string, v1::CollectionSpec> collections;
  // The built-in embedders of the collections that have one (router/text.h).
  Embedders embedders;
};

class RouterService final : public v1::ShardVec::Service {
 public:
  // `map` must be valid (ValidateMap).
  RouterService(cluster::ClusterMap map, RouterOptions options);

  // Makes sure every shard has every collection of the map (shards are idempotent
  // about it); shards that do not answer are skipped and reported.
  absl::Status SyncCollectionsToShards();

  // Loads the fitted embedder tables of the map's collections from beside the map
  // (call once before serving). A collection whose table is missing or damaged still
  // serves vectors; its text requests fail. Returns the problems found.
  absl::Status LoadEmbedderTables();

  grpc::Status CreateCollection(grpc::ServerContext* ctx, const v1::CreateCollectionRequest* req,
                                v1::CreateCollectionResponse* resp) override;
  grpc::Status DropCollection(grpc::ServerContext* ctx, const v1::DropCollectionRequest* req,
                              v1::DropCollectionResponse* resp) override;
  grpc::Status ListCollections(grpc::ServerContext* ctx, const v1::ListCollectionsRequest* req,
                               v1::ListCollectionsResponse* resp) override;
  grpc::Status DescribeCollection(grpc::ServerContext* ctx, const v1::DescribeCollectionRequest* req,
                                  v1::DescribeCollectionResponse* resp) override;
  grpc::Status Upsert(grpc::ServerContext* ctx, const v1::UpsertRequest* req,
                      v1::UpsertResponse* resp) override;
  grpc::Status Delete(grpc::ServerContext* ctx, const v1::DeleteRequest* req,
                      v1::DeleteResponse* resp) override;
  grpc::Status Get(grpc::ServerContext* ctx, const v1::GetRequest* req, v1::GetResponse* resp) override;
  grpc::Status Search(grpc::ServerContext* ctx, const v1::SearchRequest* req,
                      v1::SearchResponse* resp) override;
  grpc::Status Rag(grpc::ServerContext* ctx, const v1::RagRequest* req,
                   grpc::ServerWriter<v1::RagResponse>* writer) override;
  grpc::Status Ingest(grpc::ServerContext* ctx, grpc::ServerReader<v1::IngestRequest>* reader,
                      v1::IngestResponse* resp) override;
  grpc::Status Train(grpc::ServerContext* ctx, grpc::ServerReader<v1::TrainRequest>* reader,
                     v1::TrainResponse* resp) override;
  grpc::Status ClusterStatus(grpc::ServerContext* ctx, const v1::ClusterStatusRequest* req,
                             v1::ClusterStatusResponse* resp) override;
  grpc::Status AddShard(grpc::ServerContext* ctx, const v1::AddShardRequest* req,
                        v1::RebalanceResponse* resp) override;
  grpc::Status RemoveShard(grpc::ServerContext* ctx, const v1::RemoveShardRequest* req,
                           v1::RebalanceResponse* resp) override;

  // Finishes slot moves that a crash interrupted: a move still copying is redone
  // from the start (the source kept ownership), one in cleanup deletes the source's
  // copies. Called once at start.
  absl::Status ResumeMigrations();

  // The current topology (for an IngestSession that must re-route after a move).
  std::shared_ptr<const Topology> Snapshot() const;
  // Writes hold this shared while they route and send; a slot move takes it
  // exclusively for its final catch-up and ownership flip.
  absl::Mutex& write_gate() { return write_gate_; }

 private:
  std::shared_ptr<const Topology> BuildTopology(cluster::ClusterMap map) ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);
  // Persists `map` and publishes it; caller holds admin_mu_.
  absl::Status Publish(cluster::ClusterMap map) ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);
  absl::StatusOr<v1::CollectionSpec> FindCollection(const Topology& topo, const std::string& name) const;
  struct Totals {
    uint64_t records = 0;
    bool trained = true;
  };
  // Per collection, over the shards that answer: records, and whether all are trained.
  absl::flat_hash_map<std::string, Totals> CollectionTotals(const Topology& topo) const;
  void FillInfo(const v1::CollectionSpec& spec, const absl::flat_hash_map<std::string, Totals>& totals,
                v1::CollectionInfo* info) const;

  struct MoveStats {
    uint32_t slots = 0;
    uint64_t records = 0;
  };
  // Moves slots [begin, end) from one shard to another, for every collection.
  absl::Status MoveSlots(const std::string& source_id, const std::string& target_id, uint32_t begin, uint32_t end,
                         MoveStats* stats) ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);
  // Copies the current source state of `ids` to the target (upsert or delete).
  absl::Status CopyIds(const ShardConn& source, const ShardConn& target, const std::string& collection,
                       const std::vector<uint64_t>& ids, MoveStats* stats);
  absl::Status CopySlotsOf(const ShardConn& source, const ShardConn& target, const std::string& collection,
                           uint32_t begin, uint32_t end, uint64_t* op, MoveStats* stats);
  // Moves slots until no two shards differ by more than one.
  absl::Status BalanceSlots(MoveStats* stats) ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);
  absl::Status EnsureCollectionsOn(const ShardConn& shard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(admin_mu_);
  // Merges the answered shards' lists per query into resp's results: on the GPU for
  // large batches, else (or when the GPU fails) with MergeTopK.
  void MergeResults(const std::vector<const v1::SearchResponse*>& answered, int num_queries, int k,
                    bool larger_is_better, v1::SearchResponse* resp);

  const RouterOptions options_;
  // Null without a CUDA device or with gpu_merge_min_batch 0.
  std::unique_ptr<GpuMerger> gpu_merger_;
  // Null without RouterOptions::generator_address.
  std::unique_ptr<v1::Generator::Stub> generator_;
  absl::once_flag gpu_merge_error_logged_;
  absl::Mutex write_gate_;
  absl::Mutex admin_mu_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Topology> topology_ ABSL_GUARDED_BY(mu_);
  // Fitted embedders by collection, kept across map changes.
  Embedders embedders_ ABSL_GUARDED_BY(admin_mu_);
  // Stubs by address, reused across map changes.
  absl::flat_hash_map<std::string, std::shared_ptr<shardrpc::Shard::Stub>> stubs_ ABSL_GUARDED_BY(admin_mu_);
};

}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_ROUTER_SERVICE_H_
