#include "router/ingest.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/slot.h"
#include "common/status.h"
#include "router/split.h"

namespace shardvec::router {

IngestSession::IngestSession(RouterService* router, std::string collection, IngestOptions options)
    : router_(router),
      topo_(router->Snapshot()),
      collection_(std::move(collection)),
      options_(options),
      lanes_(topo_->shards.size()) {
  dim_ = static_cast<int>(topo_->collections.at(collection_).dim());
  for (int s = 0; s < static_cast<int>(lanes_.size()); ++s) {
    Lane& lane = lanes_[s];
    lane.pending.set_collection(collection_);
    lane.queue = std::make_unique<BoundedQueue<Routed>>(options_.queue_batches);
    for (int t = 0; t < options_.senders_per_shard; ++t) lane.senders.emplace_back([this, s] { SendLoop(s); });
  }
}

IngestSession::~IngestSession() {
  if (!finished_) {
    for (Lane& lane : lanes_) lane.queue->Close();
    for (Lane& lane : lanes_) {
      for (std::thread& t : lane.senders) t.join();
    }
  }
}

absl::Status IngestSession::Send(Routed* routed) {
  absl::ReaderMutexLock gate(&router_->write_gate());
  std::shared_ptr<const Topology> now = router_->Snapshot();
  // Group by the current owners; with an unchanged map that is one group.
  std::vector<v1::UpsertRequest> parts(now->shards.size());
  if (now->map.epoch() == routed->epoch) {
    const uint64_t first = routed->batch.records_size() > 0 ? routed->batch.records(0).id()
                                                            : routed->batch.block().ids(0);
    parts[now->slot_owner[SlotOf(first)]].Swap(&routed->batch);
  } else {
    parts = SplitByOwner(*now, dim_, &routed->batch);
  }
  for (size_t s = 0; s < parts.size(); ++s) {
    if (RecordCount(parts[s]) == 0) continue;
    parts[s].set_collection(collection_);
    const ShardConn& conn = now->shards[s];
    v1::UpsertResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
    grpc::Status st = conn.stub->Upsert(&ctx, parts[s], &resp);
    if (!st.ok()) return ShardFailure(conn, st);
  }
  return absl::OkStatus();
}

void IngestSession::SendLoop(int shard) {
  Routed routed;
  while (lanes_[shard].queue->Pop(&routed)) {
    {
      absl::MutexLock lock(&mu_);
      if (!error_.ok()) continue;  // the stream has failed: drop what is queued
    }
    absl::Status s = Send(&routed);
    if (s.ok()) continue;
    absl::MutexLock lock(&mu_);
    if (error_.ok()) error_ = s;
    // Stop the stream everywhere: unblock the reader and every other lane.
    for (Lane& lane : lanes_) lane.queue->Close();
  }
}

bool IngestSession::Flush(int shard) {
  Lane& lane = lanes_[shard];
  if (RecordCount(lane.pending) == 0) return true;
  Routed routed;
  routed.epoch = topo_->map.epoch();
  routed.batch.Swap(&lane.pending);
  lane.pending.set_collection(collection_);
  return lane.queue->Push(std::move(routed));
}

bool IngestSession::Add(v1::UpsertRequest* batch) {
  std::vector<v1::UpsertRequest> parts = SplitByOwner(*topo_, dim_, batch);
  for (int shard = 0; shard < static_cast<int>(parts.size()); ++shard) {
    if (RecordCount(parts[shard]) == 0) continue;
    Append(dim_, &parts[shard], &lanes_[shard].pending);
    if (RecordCount(lanes_[shard].pending) >= options_.batch_records && !Flush(shard)) return false;
  }
  return true;
}

absl::Status IngestSession::Finish() {
  for (int s = 0; s < static_cast<int>(lanes_.size()); ++s) Flush(s);
  for (Lane& lane : lanes_) lane.queue->Close();
  for (Lane& lane : lanes_) {
    for (std::thread& t : lane.senders) t.join();
  }
  finished_ = true;
  absl::MutexLock lock(&mu_);
  return error_;
}

}  // namespace shardvec::router
