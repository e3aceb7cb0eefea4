#include "router/ingest.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/slot.h"
#include "common/status.h"

namespace shardvec::router {

IngestSession::IngestSession(std::shared_ptr<const Topology> topo, std::string collection, IngestOptions options)
    : topo_(std::move(topo)), collection_(std::move(collection)), options_(options), lanes_(topo_->shards.size()) {
  for (int s = 0; s < static_cast<int>(lanes_.size()); ++s) {
    Lane& lane = lanes_[s];
    lane.pending.set_collection(collection_);
    lane.queue = std::make_unique<BoundedQueue<v1::UpsertRequest>>(options_.queue_batches);
    for (int t = 0; t < options_.senders_per_shard; ++t) lane.senders.emplace_back([this, s] { Send(s); });
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

void IngestSession::Send(int shard) {
  const ShardConn& conn = topo_->shards[shard];
  v1::UpsertRequest batch;
  while (lanes_[shard].queue->Pop(&batch)) {
    {
      absl::MutexLock lock(&mu_);
      if (!error_.ok()) continue;  // the stream has failed: drop what is queued
    }
    v1::UpsertResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
    grpc::Status s = conn.stub->Upsert(&ctx, batch, &resp);
    if (s.ok()) continue;
    absl::Status as = FromGrpc(s);
    absl::MutexLock lock(&mu_);
    if (error_.ok()) {
      error_ = absl::Status(as.code(), absl::StrCat("shard ", conn.id, " (", conn.address, "): ", as.message()));
    }
    // Stop the stream everywhere: unblock the reader and every other lane.
    for (Lane& lane : lanes_) lane.queue->Close();
  }
}

bool IngestSession::Flush(int shard) {
  Lane& lane = lanes_[shard];
  if (lane.pending.records_size() == 0) return true;
  v1::UpsertRequest batch;
  batch.set_collection(collection_);
  batch.mutable_records()->Swap(lane.pending.mutable_records());
  return lane.queue->Push(std::move(batch));
}

bool IngestSession::Add(google::protobuf::RepeatedPtrField<v1::Record>* records) {
  for (v1::Record& r : *records) {
    const int shard = topo_->slot_owner[SlotOf(r.id())];
    lanes_[shard].pending.add_records()->Swap(&r);
    if (lanes_[shard].pending.records_size() >= options_.batch_records && !Flush(shard)) return false;
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
