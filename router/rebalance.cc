// Adding and removing shards: slot moves while reads and writes continue.
//
// A move of slots [b, e) from S to T, for every collection: (1) T drops anything it
// holds in the range (leftovers of an interrupted move); (2) S exports the range as
// of one op number, T upserts it; (3) rounds of catch-up copy the ids S's change log
// shows written since; (4) under the write gate (no write in flight), a last
// catch-up, then the map gives the range to T and is persisted; (5) S deletes its
// copies. The map records the move and its phase at each step, so a restarted
// router redoes (1)-(4) or finishes (5). Searches meanwhile may see a record from
// both S and T; the merge keeps it once.
#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/server_util.h"
#include "common/slot.h"
#include "common/status.h"
#include "router/cluster_map.h"
#include "router/router_service.h"

namespace shardvec::router {
namespace {

constexpr uint32_t kMaxSlotsPerMove = 256;
constexpr int kCatchUpRounds = 8;
constexpr size_t kSmallCatchUp = 256;

grpc::ClientContext* WithDeadline(grpc::ClientContext* ctx, absl::Duration d) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + d));
  return ctx;
}

const ShardConn* ConnOf(const Topology& topo, const std::string& id) {
  for (const ShardConn& c : topo.shards) {
    if (c.id == id) return &c;
  }
  return nullptr;
}

void SetPhase(cluster::ClusterMap* map, uint32_t begin, cluster::Migration::Phase phase) {
  for (cluster::Migration& m : *map->mutable_migrations()) {
    if (m.slots().begin() == begin) m.set_phase(phase);
  }
}

void DropMigration(cluster::ClusterMap* map, uint32_t begin) {
  auto* ms = map->mutable_migrations();
  ms->erase(std::remove_if(ms->begin(), ms->end(),
                           [begin](const cluster::Migration& m) { return m.slots().begin() == begin; }),
            ms->end());
}

// Deletes slots [begin, end) of the given collections on one shard.
absl::Status ClearSlots(const ShardConn& shard, const std::vector<std::string>& collections, uint32_t begin,
                        uint32_t end, absl::Duration timeout) {
  for (const std::string& name : collections) {
    shardrpc::SlotsRequest range;
    range.set_collection(name);
    range.set_slot_begin(begin);
    range.set_slot_end(end);
    shardrpc::DeleteSlotsResponse cleared;
    grpc::ClientContext ctx;
    if (grpc::Status s = shard.stub->DeleteSlots(WithDeadline(&ctx, timeout), range, &cleared); !s.ok()) {
      return ShardFailure(shard, s);
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> CollectionNames(const cluster::ClusterMap& map) {
  std::vector<std::string> names;
  for (const v1::CollectionSpec& spec : map.collections()) names.push_back(spec.name());
  return names;
}

// The last up-to-kMaxSlotsPerMove slots of a shard's highest range.
std::pair<uint32_t, uint32_t> TakeChunk(const cluster::ShardEntry& shard, uint32_t want) {
  const v1::SlotRange& last = shard.slots(shard.slots_size() - 1);
  const uint32_t n = std::min({want, kMaxSlotsPerMove, last.end() - last.begin()});
  return {last.end() - n, last.end()};
}

}  // namespace

absl::Status RouterService::CopyIds(const ShardConn& source, const ShardConn& target, const std::string& collection,
                                    const std::vector<uint64_t>& ids, MoveStats* stats) {
  for (size_t first = 0; first < ids.size(); first += 8192) {
    v1::GetRequest get;
    get.set_collection(collection);
    get.set_include_vectors(true);
    get.set_include_payload(true);
    get.mutable_ids()->Add(ids.begin() + first, ids.begin() + std::min(ids.size(), first + 8192));
    v1::GetResponse got;
    grpc::ClientContext get_ctx;
    if (grpc::Status s = source.stub->Get(WithDeadline(&get_ctx, options_.write_timeout), get, &got); !s.ok()) {
      return ShardFailure(source, s);
    }
    if (got.records_size() > 0) {
      v1::UpsertRequest up;
      up.set_collection(collection);
      up.mutable_records()->Swap(got.mutable_records());
      v1::UpsertResponse upserted;
      grpc::ClientContext ctx;
      if (grpc::Status s = target.stub->Upsert(WithDeadline(&ctx, options_.write_timeout), up, &upserted); !s.ok()) {
        return ShardFailure(target, s);
      }
      stats->records += up.records_size();
    }
    if (got.missing_ids_size() > 0) {
      v1::DeleteRequest del;
      del.set_collection(collection);
      *del.mutable_ids() = got.missing_ids();
      v1::DeleteResponse deleted;
      grpc::ClientContext ctx;
      if (grpc::Status s = target.stub->Delete(WithDeadline(&ctx, options_.write_timeout), del, &deleted); !s.ok()) {
        return ShardFailure(target, s);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status RouterService::CopySlotsOf(const ShardConn& source, const ShardConn& target,
                                        const std::string& collection, uint32_t begin, uint32_t end, uint64_t* op,
                                        MoveStats* stats) {
  if (absl::Status s = ClearSlots(target, {collection}, begin, end, options_.write_timeout); !s.ok()) return s;
  shardrpc::SlotsRequest range;
  range.set_collection(collection);
  range.set_slot_begin(begin);
  range.set_slot_end(end);
  grpc::ClientContext export_ctx;
  std::unique_ptr<grpc::ClientReader<shardrpc::ExportChunk>> reader =
      source.stub->ExportSlots(WithDeadline(&export_ctx, options_.write_timeout), range);
  shardrpc::ExportChunk chunk;
  while (reader->Read(&chunk)) {
    *op = chunk.op();
    if (chunk.records_size() == 0) continue;
    v1::UpsertRequest up;
    up.set_collection(collection);
    up.mutable_records()->Swap(chunk.mutable_records());
    v1::UpsertResponse upserted;
    grpc::ClientContext ctx;
    if (grpc::Status s = target.stub->Upsert(WithDeadline(&ctx, options_.write_timeout), up, &upserted); !s.ok()) {
      export_ctx.TryCancel();
      return ShardFailure(target, s);
    }
    stats->records += up.records_size();
  }
  if (grpc::Status s = reader->Finish(); !s.ok()) return ShardFailure(source, s);
  // Catch up with writes made during the copy, until few remain.
  for (int round = 0; round < kCatchUpRounds; ++round) {
    shardrpc::ChangedIdsRequest req;
    req.set_collection(collection);
    req.set_slot_begin(begin);
    req.set_slot_end(end);
    req.set_after_op(*op);
    shardrpc::ChangedIdsResponse changed;
    grpc::ClientContext ctx;
    if (grpc::Status s = source.stub->ChangedIds(WithDeadline(&ctx, options_.write_timeout), req, &changed); !s.ok()) {
      return ShardFailure(source, s);
    }
    std::vector<uint64_t> ids(changed.ids().begin(), changed.ids().end());
    if (absl::Status s = CopyIds(source, target, collection, ids, stats); !s.ok()) return s;
    *op = changed.op();
    if (ids.size() < kSmallCatchUp) break;
  }
  return absl::OkStatus();
}

absl::Status RouterService::MoveSlots(const std::string& source_id, const std::string& target_id, uint32_t begin,
                                      uint32_t end, MoveStats* stats) {
  auto topo = Snapshot();
  const ShardConn* source = ConnOf(*topo, source_id);
  const ShardConn* target = ConnOf(*topo, target_id);
  if (source == nullptr || target == nullptr) return absl::InternalError("move between unknown shards");
  {
    cluster::ClusterMap map = topo->map;
    DropMigration(&map, begin);
    cluster::Migration* m = map.add_migrations();
    m->mutable_slots()->set_begin(begin);
    m->mutable_slots()->set_end(end);
    m->set_source_id(source_id);
    m->set_target_id(target_id);
    m->set_phase(cluster::Migration::COPYING);
    if (absl::Status s = Publish(std::move(map)); !s.ok()) return s;
  }
  std::vector<uint64_t> ops(topo->map.collections_size(), 0);
  absl::Status status;
  for (int c = 0; c < topo->map.collections_size() && status.ok(); ++c) {
    status = CopySlotsOf(*source, *target, topo->map.collections(c).name(), begin, end, &ops[c], stats);
  }
  if (status.ok()) {
    // No write is in flight while the last changes are copied and ownership flips.
    absl::WriterMutexLock gate(&write_gate_);
    for (int c = 0; c < topo->map.collections_size() && status.ok(); ++c) {
      shardrpc::ChangedIdsRequest req;
      req.set_collection(topo->map.collections(c).name());
      req.set_slot_begin(begin);
      req.set_slot_end(end);
      req.set_after_op(ops[c]);
      req.set_release(true);
      shardrpc::ChangedIdsResponse changed;
      grpc::ClientContext ctx;
      grpc::Status s = source->stub->ChangedIds(WithDeadline(&ctx, options_.write_timeout), req, &changed);
      status = s.ok() ? CopyIds(*source, *target, req.collection(), {changed.ids().begin(), changed.ids().end()}, stats)
                      : ShardFailure(*source, s);
    }
    if (status.ok()) {
      cluster::ClusterMap map = Snapshot()->map;
      ReassignSlots(&map, begin, end, target_id);
      SetPhase(&map, begin, cluster::Migration::CLEANUP);
      status = Publish(std::move(map));
    }
  }
  if (!status.ok()) {
    // Roll back: the source still owns the slots; the target's partial copy goes.
    LogInfo("move of slots [%d, %d) from %s to %s failed, rolling back: %s", begin, end, source_id, target_id,
            status.ToString());
    // A target that cannot be cleared now (it crashed, say) keeps the move in the
    // map as COPYING: a restarted router clears it first and redoes the move.
    if (ClearSlots(*target, CollectionNames(topo->map), begin, end, options_.write_timeout).ok()) {
      cluster::ClusterMap map = Snapshot()->map;
      DropMigration(&map, begin);
      Publish(std::move(map)).IgnoreError();
    }
    return status;
  }
  // On failure the map keeps the move in CLEANUP, and a restarted router retries.
  if (absl::Status s = ClearSlots(*source, CollectionNames(topo->map), begin, end, options_.write_timeout); !s.ok()) {
    return s;
  }
  cluster::ClusterMap map = Snapshot()->map;
  DropMigration(&map, begin);
  stats->slots += end - begin;
  return Publish(std::move(map));
}

absl::Status RouterService::ResumeMigrations() {
  absl::MutexLock admin(&admin_mu_);
  const cluster::ClusterMap map = Snapshot()->map;
  for (const cluster::Migration& m : map.migrations()) {
    LogInfo("resuming the move of slots [%d, %d) from %s to %s", m.slots().begin(), m.slots().end(), m.source_id(),
            m.target_id());
    MoveStats stats;
    if (m.phase() == cluster::Migration::COPYING) {
      if (absl::Status s = MoveSlots(m.source_id(), m.target_id(), m.slots().begin(), m.slots().end(), &stats);
          !s.ok()) {
        return s;
      }
      continue;
    }
    auto topo = Snapshot();
    if (const ShardConn* source = ConnOf(*topo, m.source_id()); source != nullptr) {
      if (absl::Status s = ClearSlots(*source, CollectionNames(topo->map), m.slots().begin(), m.slots().end(),
                                      options_.write_timeout);
          !s.ok()) {
        return s;
      }
    }
    cluster::ClusterMap next = Snapshot()->map;
    DropMigration(&next, m.slots().begin());
    if (absl::Status s = Publish(std::move(next)); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status RouterService::EnsureCollectionsOn(const ShardConn& shard) {
  auto topo = Snapshot();
  for (const v1::CollectionSpec& spec : topo->map.collections()) {
    v1::CreateCollectionRequest create;
    *create.mutable_spec() = spec;
    v1::CreateCollectionResponse created;
    grpc::ClientContext ctx;
    if (grpc::Status s = shard.stub->CreateCollection(WithDeadline(&ctx, options_.write_timeout), create, &created);
        !s.ok()) {
      return ShardFailure(shard, s);
    }
    // Trained collections: the new shard installs the same quantizer as the others.
    shardrpc::GetTrainedRequest get;
    get.set_collection(spec.name());
    shardrpc::InstallTrainedRequest trained;
    for (const ShardConn& other : topo->shards) {
      if (other.id == shard.id) continue;
      grpc::ClientContext get_ctx;
      if (other.stub->GetTrained(WithDeadline(&get_ctx, options_.read_timeout), get, &trained).ok()) break;
    }
    if (trained.trained_template().empty()) continue;
    shardrpc::InstallTrainedResponse installed;
    grpc::ClientContext install_ctx;
    if (grpc::Status s = shard.stub->InstallTrained(WithDeadline(&install_ctx, options_.write_timeout), trained,
                                                    &installed);
        !s.ok()) {
      return ShardFailure(shard, s);
    }
  }
  return absl::OkStatus();
}

absl::Status RouterService::BalanceSlots(MoveStats* stats) {
  // Fullest to emptiest, half the difference at a time, until no two shards differ
  // by more than one slot.
  while (true) {
    const cluster::ClusterMap now = Snapshot()->map;
    std::vector<uint32_t> counts = SlotCounts(now);
    const int most = static_cast<int>(std::max_element(counts.begin(), counts.end()) - counts.begin());
    const int least = static_cast<int>(std::min_element(counts.begin(), counts.end()) - counts.begin());
    if (counts[most] - counts[least] <= 1) return absl::OkStatus();
    auto [b, e] = TakeChunk(now.shards(most), (counts[most] - counts[least]) / 2);
    if (absl::Status s = MoveSlots(now.shards(most).id(), now.shards(least).id(), b, e, stats); !s.ok()) return s;
  }
}

grpc::Status RouterService::AddShard(grpc::ServerContext*, const v1::AddShardRequest* req,
                                     v1::RebalanceResponse* resp) {
  const absl::Time start = absl::Now();
  absl::MutexLock admin(&admin_mu_);
  if (req->address().empty()) return ToGrpc(absl::InvalidArgumentError("address: empty"));
  if (const int existing = FindShard(Snapshot()->map, req->address()); existing >= 0) {
    // Already a member (a retry after an interrupted add): just finish balancing.
    MoveStats stats;
    SHARDVEC_RETURN_IF_ERROR_GRPC(BalanceSlots(&stats));
    resp->set_shard_id(Snapshot()->map.shards(existing).id());
    resp->set_slots_moved(stats.slots);
    resp->set_records_copied(stats.records);
    resp->set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
    return grpc::Status::OK;
  }
  cluster::ClusterMap map = Snapshot()->map;
  const std::string id = NextShardId(map);
  auto& stub = stubs_[req->address()];
  if (stub == nullptr) stub = shardrpc::Shard::NewStub(MakeChannel(req->address()));
  const ShardConn conn{id, req->address(), stub};
  {
    shardrpc::StatsResponse stats;
    grpc::ClientContext ctx;
    if (grpc::Status s = stub->Stats(WithDeadline(&ctx, absl::Seconds(10)), {}, &stats); !s.ok()) {
      return ToGrpc(absl::UnavailableError(
          absl::StrCat("address: no shard answers at ", req->address(), ": ", s.error_message())));
    }
  }
  // Collections first: once in the map, the shard receives every search.
  SHARDVEC_RETURN_IF_ERROR_GRPC(EnsureCollectionsOn(conn));
  cluster::ShardEntry* entry = map.add_shards();
  entry->set_id(id);
  entry->set_address(req->address());
  SHARDVEC_RETURN_IF_ERROR_GRPC(Publish(std::move(map)));

  MoveStats stats;
  SHARDVEC_RETURN_IF_ERROR_GRPC(BalanceSlots(&stats));
  resp->set_shard_id(id);
  resp->set_slots_moved(stats.slots);
  resp->set_records_copied(stats.records);
  resp->set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  LogInfo("added %s at %s: moved %d slots, %d records in %.1f s", id, req->address(), stats.slots, stats.records,
          resp->seconds());
  return grpc::Status::OK;
}

grpc::Status RouterService::RemoveShard(grpc::ServerContext*, const v1::RemoveShardRequest* req,
                                        v1::RebalanceResponse* resp) {
  const absl::Time start = absl::Now();
  absl::MutexLock admin(&admin_mu_);
  const int victim = FindShard(Snapshot()->map, req->address());
  if (victim < 0) {
    return ToGrpc(absl::NotFoundError(absl::StrCat("address: ", req->address(), " is not in the cluster")));
  }
  if (Snapshot()->map.shards_size() == 1) {
    return ToGrpc(absl::FailedPreconditionError("address: the last shard cannot be removed"));
  }
  const std::string id = Snapshot()->map.shards(victim).id();
  // Hand its slots, a chunk at a time, to whichever other shard has the fewest.
  MoveStats stats;
  while (true) {
    const cluster::ClusterMap now = Snapshot()->map;
    const int self = FindShard(now, id);
    if (now.shards(self).slots_size() == 0) break;
    std::vector<uint32_t> counts = SlotCounts(now);
    counts[self] = UINT32_MAX;
    const int heir = static_cast<int>(std::min_element(counts.begin(), counts.end()) - counts.begin());
    auto [b, e] = TakeChunk(now.shards(self), kMaxSlotsPerMove);
    SHARDVEC_RETURN_IF_ERROR_GRPC(MoveSlots(id, now.shards(heir).id(), b, e, &stats));
  }
  cluster::ClusterMap map = Snapshot()->map;
  map.mutable_shards()->DeleteSubrange(FindShard(map, id), 1);
  SHARDVEC_RETURN_IF_ERROR_GRPC(Publish(std::move(map)));
  SHARDVEC_RETURN_IF_ERROR_GRPC(BalanceSlots(&stats));
  resp->set_shard_id(id);
  resp->set_slots_moved(stats.slots);
  resp->set_records_copied(stats.records);
  resp->set_seconds(absl::ToDoubleSeconds(absl::Now() - start));
  LogInfo("removed %s at %s: moved %d slots, %d records in %.1f s", id, req->address(), stats.slots, stats.records,
          resp->seconds());
  return grpc::Status::OK;
}

}  // namespace shardvec::router
