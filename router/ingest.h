// One Ingest stream on the router: records are regrouped per owning shard into
// batches, and each shard's batches go out from their own sender threads through a
// small bounded queue. When a shard falls behind, Add() blocks, the router stops
// reading the stream, and gRPC flow control slows the client: memory stays bounded
// (about shards x (queue + senders + 1) batches) whatever the stream's length.
// Used by one handler thread; not thread-safe.
#ifndef SHARDVEC_ROUTER_INGEST_H_
#define SHARDVEC_ROUTER_INGEST_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/bounded_queue.h"
#include "router/router_service.h"

namespace shardvec::router {

struct IngestOptions {
  int batch_records = 8192;
  int queue_batches = 2;
  int senders_per_shard = 2;
  absl::Duration timeout = absl::Minutes(10);
};

class IngestSession {
 public:
  // Batches are routed with the router's topology at the time and re-routed when a
  // slot move has changed it before they are sent.
  IngestSession(RouterService* router, std::string collection, IngestOptions options);
  ~IngestSession();
  IngestSession(const IngestSession&) = delete;
  IngestSession& operator=(const IngestSession&) = delete;

  // Routes an already validated batch (its records are moved out); false once a
  // shard has failed.
  bool Add(v1::UpsertRequest* batch);
  // Sends what is buffered, waits for every batch, and returns the first error.
  absl::Status Finish();

 private:
  struct Routed {
    uint64_t epoch = 0;
    v1::UpsertRequest batch;
  };
  struct Lane {
    v1::UpsertRequest pending;
    std::unique_ptr<BoundedQueue<Routed>> queue;
    std::vector<std::thread> senders;
  };
  void SendLoop(int shard);
  // Sends under the router's write gate, re-routing if the map changed meanwhile.
  absl::Status Send(Routed* routed);
  bool Flush(int shard);

  RouterService* const router_;
  const std::shared_ptr<const Topology> topo_;
  const std::string collection_;
  int dim_ = 0;
  const IngestOptions options_;
  std::vector<Lane> lanes_;
  absl::Mutex mu_;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  bool finished_ = false;
};

}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_INGEST_H_
