#include "router/router_service.h"

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/server_util.h"
#include "common/slot.h"
#include "common/status.h"
#include "common/validate.h"
#include "kernels/knn.h"
#include "router/cluster_map.h"
#include "router/fan_out.h"
#include "router/ingest.h"
#include "router/merge.h"
#include "router/rag.h"
#include "router/split.h"
#include "router/text.h"

namespace shardvec::router {
namespace {

absl::Time Deadline(const grpc::ServerContext* ctx, uint32_t timeout_ms, absl::Duration fallback) {
  absl::Time own = absl::Now() + (timeout_ms > 0 ? absl::Milliseconds(timeout_ms) : fallback);
  if (ctx->deadline() == std::chrono::system_clock::time_point::max()) return own;
  return std::min(own, absl::FromChrono(ctx->deadline()));
}

// A shard's failure as the router reports it. Request errors (a bad index spec, say)
// keep the shard's message, which already names the field; others name the shard.
absl::Status ShardError(const ShardConn& shard, const grpc::Status& s) {
  if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) return FromGrpc(s);
  return ShardFailure(shard, s);
}

std::vector<int> AllShards(const Topology& topo) {
  std::vector<int> all(topo.shards.size());
  std::iota(all.begin(), all.end(), 0);
  return all;
}

// The first failed reply as a status, or OK.
template <typename Resp>
absl::Status FirstError(const Topology& topo, const std::vector<ShardReply<Resp>>& replies) {
  for (const auto& r : replies) {
    if (!r.status.ok()) return ShardError(topo.shards[r.shard], r.status);
  }
  return absl::OkStatus();
}

// Shards that own at least one of `ids`, and per shard the positions of its ids.
std::vector<std::vector<int>> GroupBySlotOwner(const Topology& topo,
                                               const google::protobuf::RepeatedField<uint64_t>& ids) {
  std::vector<std::vector<int>> groups(topo.shards.size());
  for (int i = 0; i < ids.size(); ++i) groups[topo.slot_owner[SlotOf(ids[i])]].push_back(i);
  return groups;
}

std::vector<int> NonEmpty(const std::vector<std::vector<int>>& groups) {
  std::vector<int> targets;
  for (int s = 0; s < static_cast<int>(groups.size()); ++s) {
    if (!groups[s].empty()) targets.push_back(s);
  }
  return targets;
}

}  // namespace

absl::Status ShardFailure(const ShardConn& shard, const grpc::Status& s) {
  absl::Status as = FromGrpc(s);
  return absl::Status(as.code(), absl::StrCat("shard ", shard.id, " (", shard.address, "): ", as.message()));
}

RouterService::RouterService(cluster::ClusterMap map, RouterOptions options) : options_(std::move(options)) {
  if (options_.gpu_merge_min_batch > 0 && kernels::DeviceCount() > 0) {
    gpu_merger_ = std::make_unique<GpuMerger>(GpuMergeOptions{});
    LogInfo("searches of %d or more queries merge on GPU %s", options_.gpu_merge_min_batch,
            kernels::DeviceDescription(0));
  }
  if (!options_.generator_address.empty()) {
    generator_ = v1::Generator::NewStub(MakeChannel(options_.generator_address));
  }
  absl::MutexLock admin(&admin_mu_);
  auto topo = BuildTopology(std::move(map));
  absl::MutexLock lock(&mu_);
  topology_ = std::move(topo);
}

std::shared_ptr<const Topology> RouterService::BuildTopology(cluster::ClusterMap map) {
  auto topo = std::make_shared<Topology>();
  topo->map = std::move(map);
  for (const cluster::ShardEntry& e : topo->map.shards()) {
    auto& stub = stubs_[e.address()];
    if (stub == nullptr) stub = shardrpc::Shard::NewStub(MakeChannel(e.address()));
    topo->shards.push_back({e.id(), e.address(), stub});
  }
  topo->slot_owner = SlotOwners(topo->map);
  for (const v1::CollectionSpec& c : topo->map.collections()) topo->collections[c.name()] = c;
  topo->embedders = EmbeddersFor(topo->map, embedders_);
  return topo;
}

absl::Status RouterService::LoadEmbedderTables() {
  absl::MutexLock admin(&admin_mu_);
  auto topo = Snapshot();
  if (options_.map_path.empty()) return absl::OkStatus();
  std::vector<std::string> errors;
  embedders_ = router::LoadEmbedderTables(topo->map, options_.map_path, &errors);
  auto rebuilt = BuildTopology(topo->map);
  {
    absl::MutexLock lock(&mu_);
    topology_ = std::move(rebuilt);
  }
  if (errors.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrJoin(errors, "; "));
}

std::shared_ptr<const Topology> RouterService::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return topology_;
}

absl::Status RouterService::Publish(cluster::ClusterMap map) {
  map.set_epoch(map.epoch() + 1);
  if (absl::Status s = ValidateMap(map); !s.ok()) return s;
  if (!options_.map_path.empty()) {
    if (absl::Status s = SaveMap(options_.map_path, map); !s.ok()) return s;
  }
  auto topo = BuildTopology(std::move(map));
  absl::MutexLock lock(&mu_);
  topology_ = std::move(topo);
  return absl::OkStatus();
}

absl::StatusOr<v1::CollectionSpec> RouterService::FindCollection(const Topology& topo,
                                                                const std::string& name) const {
  auto it = topo.collections.find(name);
  if (it == topo.collections.end()) {
    return absl::NotFoundError(absl::StrCat("collection: '", name, "' does not exist"));
  }
  return it->second;
}

absl::Status RouterService::SyncCollectionsToShards() {
  auto topo = Snapshot();
  absl::Status result;
  for (const v1::CollectionSpec& spec : topo->map.collections()) {
    v1::CreateCollectionRequest req;
    *req.mutable_spec() = spec;
    auto replies = FanOut<v1::CreateCollectionResponse>(
        AllShards(*topo), absl::Now() + options_.write_timeout,
        [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
          return topo->shards[s].stub->PrepareAsyncCreateCollection(c, req, cq);
        });
    if (absl::Status s = FirstError(*topo, replies); !s.ok() && result.ok()) result = s;
  }
  return result;
}

grpc::Status RouterService::CreateCollection(grpc::ServerContext* ctx, const v1::CreateCollectionRequest* req,
                                             v1::CreateCollectionResponse* resp) {
  // The shards get the spec alone, not the texts the embedder is fitted on.
  v1::CreateCollectionRequest normalized;
  *normalized.mutable_spec() = req->spec();
  // Embedders make unit vectors for cosine or inner product; L2 is the others' default.
  if (!req->spec().embedder().empty() && req->spec().metric() == v1::METRIC_UNSPECIFIED) {
    normalized.mutable_spec()->set_metric(v1::COSINE);
  }
  SHARDVEC_RETURN_IF_ERROR_GRPC(NormalizeCollectionSpec(normalized.mutable_spec()));
  const v1::CollectionSpec& spec = normalized.spec();
  auto exists = [&](const Topology& topo) {
    return topo.collections.contains(spec.name())
               ? absl::AlreadyExistsError(absl::StrCat("name: collection '", spec.name(), "' already exists"))
               : absl::OkStatus();
  };
  SHARDVEC_RETURN_IF_ERROR_GRPC(exists(*Snapshot()));
  // Fitting reads every text (seconds for 100k of them): before the admin lock.
  absl::StatusOr<std::shared_ptr<const embed::TextEmbedder>> embedder =
      FitEmbedder(*req, normalized.mutable_spec());
  if (!embedder.ok()) return ToGrpc(embedder.status());
  absl::MutexLock admin(&admin_mu_);
  auto topo = Snapshot();
  SHARDVEC_RETURN_IF_ERROR_GRPC(exists(*topo));
  const std::string table_path =
      options_.map_path.empty() ? std::string() : EmbedderTablePath(options_.map_path, spec.name());
  const absl::Time deadline = Deadline(ctx, 0, options_.write_timeout);
  auto replies = FanOut<v1::CreateCollectionResponse>(
      AllShards(*topo), deadline,
      [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
        return topo->shards[s].stub->PrepareAsyncCreateCollection(c, normalized, cq);
      });
  absl::Status status = FirstError(*topo, replies);
  if (status.ok() && *embedder != nullptr) {
    // The table goes to disk before the map names it.
    if (!table_path.empty() && !(*embedder)->table().empty()) {
      std::error_code ec;
      std::filesystem::create_directories(std::filesystem::path(table_path).parent_path(), ec);
      status = WriteFileAtomically(table_path, (*embedder)->table());
    }
    embedders_[spec.name()] = *embedder;
  }
  if (status.ok()) {
    cluster::ClusterMap map = topo->map;
    *map.add_collections() = spec;
    status = Publish(std::move(map));
  }
  if (!status.ok()) {
    embedders_.erase(spec.name());
    if (!table_path.empty()) {
      std::error_code ec;
      std::filesystem::remove(table_path, ec);
    }
    // Undo on the shards that created it, so a retry starts clean.
    v1::DropCollectionRequest drop;
    drop.set_name(spec.name());
    std::vector<int> created;
    for (const auto& r : replies) {
      if (r.status.ok()) created.push_back(r.shard);
    }
    FanOut<v1::DropCollectionResponse>(
        created, deadline, [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
          return topo->shards[s].stub->PrepareAsyncDropCollection(c, drop, cq);
        });
    return ToGrpc(status);
  }
  *resp->mutable_collection()->mutable_spec() = spec;
  LogInfo("created collection %s (dim %d, %s%s)", spec.name(), spec.dim(), spec.index_spec(),
          spec.embedder().empty() ? "" : absl::StrCat(", embedder ", spec.embedder()));
  return grpc::Status::OK;
}

grpc::Status RouterService::DropCollection(grpc::ServerContext* ctx, const v1::DropCollectionRequest* req,
                                           v1::DropCollectionResponse*) {
  absl::MutexLock admin(&admin_mu_);
  auto topo = Snapshot();
  if (!topo->collections.contains(req->name())) {
    return ToGrpc(absl::NotFoundError(absl::StrCat("name: collection '", req->name(), "' does not exist")));
  }
  auto replies = FanOut<v1::DropCollectionResponse>(
      AllShards(*topo), Deadline(ctx, 0, options_.write_timeout),
      [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
        return topo->shards[s].stub->PrepareAsyncDropCollection(c, *req, cq);
      });
  for (const auto& r : replies) {
    // A shard that never had it (restarted empty) is fine; an unreachable one is not,
    // or it would keep stale records under the name.
    if (!r.status.ok() && r.status.error_code() != grpc::StatusCode::NOT_FOUND) {
      return ToGrpc(ShardError(topo->shards[r.shard], r.status));
    }
  }
  cluster::ClusterMap map = topo->map;
  auto* collections = map.mutable_collections();
  collections->erase(std::remove_if(collections->begin(), collections->end(),
                                    [&](const v1::CollectionSpec& c) { return c.name() == req->name(); }),
                     collections->end());
  SHARDVEC_RETURN_IF_ERROR_GRPC(Publish(std::move(map)));
  if (embedders_.erase(req->name()) > 0 && !options_.map_path.empty()) {
    std::error_code ec;
    std::filesystem::remove(EmbedderTablePath(options_.map_path, req->name()), ec);
  }
  LogInfo("dropped collection %s", req->name());
  return grpc::Status::OK;
}

absl::flat_hash_map<std::string, RouterService::Totals> RouterService::CollectionTotals(const Topology& topo) const {
  shardrpc::StatsRequest req;
  auto replies = FanOut<shardrpc::StatsResponse>(
      AllShards(topo), absl::Now() + options_.read_timeout,
      [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
        return topo.shards[s].stub->PrepareAsyncStats(c, req, cq);
      });
  absl::flat_hash_map<std::string, Totals> totals;
  for (const auto& r : replies) {
    for (const auto& c : r.response.collections()) {
      Totals& t = totals[c.spec().name()];
      t.records += c.num_records();
      t.trained = t.trained && c.index_trained();
    }
  }
  return totals;
}

void RouterService::FillInfo(const v1::CollectionSpec& spec, const absl::flat_hash_map<std::string, Totals>& totals,
                             v1::CollectionInfo* info) const {
  *info->mutable_spec() = spec;
  auto it = totals.find(spec.name());
  info->set_num_records(it == totals.end() ? 0 : it->second.records);
  info->set_trained(it == totals.end() || it->second.trained);
}

grpc::Status RouterService::ListCollections(grpc::ServerContext*, const v1::ListCollectionsRequest*,
                                            v1::ListCollectionsResponse* resp) {
  auto topo = Snapshot();
  auto totals = CollectionTotals(*topo);
  for (const v1::CollectionSpec& spec : topo->map.collections()) FillInfo(spec, totals, resp->add_collections());
  return grpc::Status::OK;
}

grpc::Status RouterService::DescribeCollection(grpc::ServerContext*, const v1::DescribeCollectionRequest* req,
                                               v1::DescribeCollectionResponse* resp) {
  auto topo = Snapshot();
  absl::StatusOr<v1::CollectionSpec> spec = FindCollection(*topo, req->name());
  if (!spec.ok()) return ToGrpc(spec.status());
  FillInfo(*spec, CollectionTotals(*topo), resp->mutable_collection());
  return grpc::Status::OK;
}

grpc::Status RouterService::Upsert(grpc::ServerContext* ctx, const v1::UpsertRequest* req,
                                   v1::UpsertResponse* resp) {
  absl::ReaderMutexLock gate(&write_gate_);
  auto topo = Snapshot();
  absl::StatusOr<v1::CollectionSpec> spec = FindCollection(*topo, req->collection());
  if (!spec.ok()) return ToGrpc(spec.status());
  v1::UpsertRequest copy = *req;
  SHARDVEC_RETURN_IF_ERROR_GRPC(EmbedRecords(topo->embedders, *spec, &copy));
  SHARDVEC_RETURN_IF_ERROR_GRPC(ValidateUpsert(*spec, copy));

  std::vector<v1::UpsertRequest> parts = SplitByOwner(*topo, static_cast<int>(spec->dim()), &copy);
  std::vector<int> targets;
  for (int s = 0; s < static_cast<int>(parts.size()); ++s) {
    if (RecordCount(parts[s]) > 0) targets.push_back(s);
  }
  auto replies = FanOut<v1::UpsertResponse>(
      targets, Deadline(ctx, 0, options_.write_timeout),
      [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
        return topo->shards[s].stub->PrepareAsyncUpsert(c, parts[s], cq);
      });
  // Shards apply their part atomically; a failed shard leaves the others' parts
  // applied, and an upsert is idempotent, so the client retries the whole batch.
  SHARDVEC_RETURN_IF_ERROR_GRPC(FirstError(*topo, replies));
  resp->set_upserted(RecordCount(*req));
  return grpc::Status::OK;
}

grpc::Status RouterService::Delete(grpc::ServerContext* ctx, const v1::DeleteRequest* req,
                                   v1::DeleteResponse* resp) {
  absl::ReaderMutexLock gate(&write_gate_);
  auto topo = Snapshot();
  absl::StatusOr<v1::CollectionSpec> spec = FindCollection(*topo, req->collection());
  if (!spec.ok()) return ToGrpc(spec.status());
  SHARDVEC_RETURN_IF_ERROR_GRPC(ValidateIds("ids", req->ids()));
  auto groups = GroupBySlotOwner(*topo, req->ids());
  std::vector<v1::DeleteRequest> parts(topo->shards.size());
  for (int s = 0; s < static_cast<int>(groups.size()); ++s) {
    parts[s].set_collection(req->collection());
    for (int i : groups[s]) parts[s].add_ids(req->ids(i));
  }
  auto replies = FanOut<v1::DeleteResponse>(
      NonEmpty(groups), Deadline(ctx, 0, options_.write_timeout),
      [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
        return topo->shards[s].stub->PrepareAsyncDelete(c, parts[s], cq);
      });
  SHARDVEC_RETURN_IF_ERROR_GRPC(FirstError(*topo, replies));
  uint64_t deleted = 0;
  for (const auto& r : replies) deleted += r.response.deleted();
  resp->set_deleted(deleted);
  return grpc::Status::OK;
}

grpc::Status RouterService::Get(grpc::ServerContext* ctx, const v1::GetRequest* req, v1::GetResponse* resp) {
  auto topo = Snapshot();
  absl::StatusOr<v1::CollectionSpec> spec = FindCollection(*topo, req->collection());
  if (!spec.ok()) return ToGrpc(spec.status());
  SHARDVEC_RETURN_IF_ERROR_GRPC(ValidateIds("ids", req->ids()));
  auto groups = GroupBySlotOwner(*topo, req->ids());
  std::vector<v1::GetRequest> parts(topo->shards.size());
  for (int s = 0; s < static_cast<int>(groups.size()); ++s) {
    parts[s] = *req;
    parts[s].clear_ids();
    for (int i : groups[s]) parts[s].add_ids(req->ids(i));
  }
  auto replies = FanOut<v1::GetResponse>(
      NonEmpty(groups), Deadline(ctx, 0, options_.read_timeout),
      [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
        return topo->shards[s].stub->PrepareAsyncGet(c, parts[s], cq);
      });
  SHARDVEC_RETURN_IF_ERROR_GRPC(FirstError(*topo, replies));
  absl::flat_hash_map<uint64_t, v1::Record*> found;
  for (auto& r : replies) {
    for (v1::Record& rec : *r.response.mutable_records()) found[rec.id()] = &rec;
  }
  for (uint64_t id : req->ids()) {
    auto it = found.find(id);
    if (it == found.end()) {
      resp->add_missing_ids(id);
    } else {
      *resp->add_records() = *it->second;
    }
  }
  return grpc::Status::OK;
}

grpc::Status RouterService::Search(grpc::ServerContext* ctx, const v1::SearchRequest* req,
                                   v1::SearchResponse* resp) {
  auto topo = Snapshot();
  absl::StatusOr<v1::CollectionSpec> spec = FindCollection(*topo, req->collection());
  if (!spec.ok()) return ToGrpc(spec.status());
  // Text queries go to the shards as their embeddings, asking for candidates to re-score.
  v1::SearchRequest embedded;
  std::shared_ptr<const embed::TextEmbedder> embedder;
  SHARDVEC_RETURN_IF_ERROR_GRPC(PrepareTextSearch(topo->embedders, *spec, *req, &embedded, &embedder));
  const v1::SearchRequest& forward = embedder != nullptr ? embedded : *req;
  SHARDVEC_RETURN_IF_ERROR_GRPC(ValidateSearch(*spec, forward));
  auto replies = FanOut<v1::SearchResponse>(
      AllShards(*topo), Deadline(ctx, req->timeout_ms(), options_.read_timeout),
      [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
        return topo->shards[s].stub->PrepareAsyncSearch(c, forward, cq);
      });

  v1::Coverage* coverage = resp->mutable_coverage();
  coverage->set_shards_total(static_cast<uint32_t>(replies.size()));
  std::vector<const v1::SearchResponse*> answered;
  absl::Status first_error;
  for (const auto& r : replies) {
    const ShardConn& shard = topo->shards[r.shard];
    v1::ShardOutcome* outcome = coverage->add_shards();
    outcome->set_shard_id(shard.id);
    outcome->set_address(shard.address);
    grpc::Status status = r.status;
    if (status.ok() && r.response.results_size() != forward.queries_size()) {
      status = grpc::Status(grpc::StatusCode::INTERNAL, "shard returned a wrong number of results");
    }
    if (status.ok()) {
      outcome->set_ok(true);
      answered.push_back(&r.response);
      continue;
    }
    absl::Status error = ShardError(shard, status);
    outcome->set_error(error.ToString());
    if (first_error.ok()) first_error = error;
  }
  coverage->set_shards_answered(static_cast<uint32_t>(answered.size()));
  if (!first_error.ok() && (!req->allow_partial_results() || answered.empty())) return ToGrpc(first_error);

  MergeResults(answered, forward.queries_size(), forward.k(), spec->metric() != v1::L2, resp);
  if (embedder != nullptr) RescoreTextResults(*embedder, *req, resp);
  return grpc::Status::OK;
}

grpc::Status RouterService::Rag(grpc::ServerContext* ctx, const v1::RagRequest* req,
                                grpc::ServerWriter<v1::RagResponse>* writer) {
  SHARDVEC_RETURN_IF_ERROR_GRPC(ValidateRagRequest(*req));
  if (generator_ == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "generator: this router was started without --generator");
  }
  // Retrieval: the same path as Search (text through the collection's embedder).
  const v1::SearchRequest search = RagSearchRequest(*req);
  v1::SearchResponse found;
  grpc::Status s = Search(ctx, &search, &found);
  if (!s.ok()) return s;
  std::vector<RagPassage> passages;
  v1::RagResponse last;
  if (found.results_size() == 1) {
    const v1::QueryResult& r = found.results(0);
    for (int i = 0; i < r.ids_size(); ++i) {
      const v1::Payload& p = r.payloads(i);
      passages.push_back({r.ids(i), p.text()});
      v1::RagSource* src = last.add_sources();
      src->set_number(static_cast<uint32_t>(i + 1));
      src->set_id(r.ids(i));
      src->set_distance(r.distances(i));
      src->set_text(p.text());
      src->mutable_metadata()->insert(p.metadata().begin(), p.metadata().end());
    }
  }

  // Generation: the client's cancellation and deadline carry over to the generator.
  v1::GenerateRequest gen;
  gen.set_prompt(BuildRagPrompt(req->question(), passages));
  *gen.mutable_params() = req->generation();
  std::unique_ptr<grpc::ClientContext> gctx = grpc::ClientContext::FromServerContext(*ctx);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> stream = generator_->Generate(gctx.get(), gen);
  std::string answer;
  v1::GenerateResponse piece;
  while (stream->Read(&piece)) {
    answer += piece.text();
    v1::RagResponse out = piece.done() ? last : v1::RagResponse();
    out.set_text(piece.text());
    out.mutable_token_ids()->CopyFrom(piece.token_ids());
    out.set_done(piece.done());
    out.set_finish_reason(piece.finish_reason());
    out.set_prompt_tokens(piece.prompt_tokens());
    out.set_completion_tokens(piece.completion_tokens());
    if (piece.done()) {
      const std::vector<bool> cited = CitedSources(answer, passages.size());
      for (size_t i = 0; i < cited.size(); ++i) out.mutable_sources(static_cast<int>(i))->set_cited(cited[i]);
    }
    if (!writer->Write(out)) {
      gctx->TryCancel();
      stream->Finish();
      return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
    }
  }
  grpc::Status g = stream->Finish();
  if (!g.ok()) {
    // The generator's own refusals (a prompt too long for its context, ...) keep their
    // code; the message says where they came from.
    return grpc::Status(g.error_code(),
                        absl::StrCat("generator at ", options_.generator_address, ": ", g.error_message()));
  }
  return grpc::Status::OK;
}

void RouterService::MergeResults(const std::vector<const v1::SearchResponse*>& answered, int num_queries, int k,
                                 bool larger_is_better, v1::SearchResponse* resp) {
  if (gpu_merger_ != nullptr && num_queries >= options_.gpu_merge_min_batch && answered.size() > 1) {
    std::vector<std::vector<const v1::QueryResult*>> queries(num_queries);
    for (int q = 0; q < num_queries; ++q) {
      queries[q].reserve(answered.size());
      for (const v1::SearchResponse* a : answered) queries[q].push_back(&a->results(q));
    }
    absl::Status s = gpu_merger_->Merge(queries, k, larger_is_better, resp->mutable_results());
    if (s.ok()) return;
    absl::call_once(gpu_merge_error_logged_, [&] {
      LogInfo("GPU merge failed, merging on the CPU (logged once): %s", s.ToString());
    });
  }
  std::vector<const v1::QueryResult*> lists(answered.size());
  for (int q = 0; q < num_queries; ++q) {
    for (size_t a = 0; a < answered.size(); ++a) lists[a] = &answered[a]->results(q);
    MergeTopK(lists, k, larger_is_better, resp->add_results());
  }
}

grpc::Status RouterService::Ingest(grpc::ServerContext* ctx, grpc::ServerReader<v1::IngestRequest>* reader,
                                   v1::IngestResponse* resp) {
  auto topo = Snapshot();
  v1::IngestRequest msg;
  if (!reader->Read(&msg)) return ToGrpc(absl::InvalidArgumentError("collection: the stream was empty"));
  absl::StatusOr<v1::CollectionSpec> spec = FindCollection(*topo, msg.collection());
  if (!spec.ok()) return ToGrpc(spec.status());
  IngestOptions options;
  options.timeout = options_.write_timeout;
  IngestSession session(this, spec->name(), options);
  uint64_t ingested = 0;
  int64_t message = 0;
  do {
    if (!msg.collection().empty() && msg.collection() != spec->name()) {
      return ToGrpc(absl::InvalidArgumentError(
          absl::StrCat("collection: message ", message, " names '", msg.collection(), "', the stream is for '",
                       spec->name(), "'")));
    }
    v1::UpsertRequest check;
    check.set_collection(spec->name());
    check.set_embedder(msg.embedder());
    check.mutable_records()->Swap(msg.mutable_records());
    check.mutable_block()->Swap(msg.mutable_block());
    if (RecordCount(check) == 0) continue;
    absl::Status s = EmbedRecords(topo->embedders, *spec, &check);
    if (s.ok()) s = ValidateUpsert(*spec, check);
    if (!s.ok()) {
      return ToGrpc(absl::Status(s.code(), absl::StrCat("message ", message, ": ", s.message())));
    }
    ingested += RecordCount(check);
    if (!session.Add(&check)) break;
  } while (++message, reader->Read(&msg));
  SHARDVEC_RETURN_IF_ERROR_GRPC(session.Finish());
  if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the stream");
  resp->set_ingested(ingested);
  return grpc::Status::OK;
}

grpc::Status RouterService::Train(grpc::ServerContext* ctx, grpc::ServerReader<v1::TrainRequest>* reader,
                                  v1::TrainResponse* resp) {
  auto topo = Snapshot();
  v1::TrainRequest msg;
  if (!reader->Read(&msg)) return ToGrpc(absl::InvalidArgumentError("collection: the stream was empty"));
  absl::StatusOr<v1::CollectionSpec> spec = FindCollection(*topo, msg.collection());
  if (!spec.ok()) return ToGrpc(spec.status());
  // One shard trains; every other shard installs what it learned.
  const ShardConn& trainer = topo->shards[0];
  grpc::ClientContext train_ctx;
  train_ctx.set_deadline(absl::ToChronoTime(Deadline(ctx, 0, options_.write_timeout)));
  shardrpc::TrainResult result;
  std::unique_ptr<grpc::ClientWriter<v1::TrainRequest>> writer = trainer.stub->Train(&train_ctx, &result);
  int64_t message = 0;
  do {
    if (absl::Status s = ValidateTrainSamples(*spec, msg); !s.ok()) {
      train_ctx.TryCancel();
      return ToGrpc(absl::Status(s.code(), absl::StrCat("message ", message, ": ", s.message())));
    }
    msg.set_collection(spec->name());
    if (!writer->Write(msg)) break;
  } while (++message, reader->Read(&msg));
  writer->WritesDone();
  if (grpc::Status s = writer->Finish(); !s.ok()) return ToGrpc(ShardError(trainer, s));
  shardrpc::InstallTrainedRequest install;
  install.set_collection(spec->name());
  install.set_trained_template(result.trained_template());
  std::vector<int> others = AllShards(*topo);
  others.erase(others.begin());
  auto replies = FanOut<shardrpc::InstallTrainedResponse>(
      others, Deadline(ctx, 0, options_.write_timeout), [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
        return topo->shards[s].stub->PrepareAsyncInstallTrained(c, install, cq);
      });
  SHARDVEC_RETURN_IF_ERROR_GRPC(FirstError(*topo, replies));
  resp->set_samples(result.samples());
  resp->set_shards(static_cast<uint32_t>(topo->shards.size()));
  LogInfo("collection %s: trained on %d vectors by %s, installed on %d shards", spec->name(), result.samples(),
          trainer.id, topo->shards.size());
  return grpc::Status::OK;
}

grpc::Status RouterService::ClusterStatus(grpc::ServerContext*, const v1::ClusterStatusRequest*,
                                          v1::ClusterStatusResponse* resp) {
  auto topo = Snapshot();
  shardrpc::StatsRequest req;
  auto replies = FanOut<shardrpc::StatsResponse>(
      AllShards(*topo), absl::Now() + absl::Seconds(5),
      [&](int s, grpc::ClientContext* c, grpc::CompletionQueue* cq) {
        return topo->shards[s].stub->PrepareAsyncStats(c, req, cq);
      });
  absl::flat_hash_map<std::string, Totals> totals;
  for (const auto& r : replies) {
    const cluster::ShardEntry& entry = topo->map.shards(r.shard);
    v1::ShardStatus* st = resp->add_shards();
    st->set_id(entry.id());
    st->set_address(entry.address());
    uint32_t num_slots = 0;
    for (const v1::SlotRange& range : entry.slots()) {
      *st->add_slots() = range;
      num_slots += range.end() - range.begin();
    }
    st->set_num_slots(num_slots);
    st->set_reachable(r.status.ok());
    if (!r.status.ok()) st->set_error(Describe(r.status));
    for (const auto& c : r.response.collections()) {
      v1::CollectionCount* count = st->add_collections();
      count->set_name(c.spec().name());
      count->set_num_records(c.num_records());
      Totals& t = totals[c.spec().name()];
      t.records += c.num_records();
      t.trained = t.trained && c.index_trained();
    }
  }
  for (const v1::CollectionSpec& spec : topo->map.collections()) FillInfo(spec, totals, resp->add_collections());
  resp->set_total_slots(kNumSlots);
  resp->set_map_epoch(topo->map.epoch());
  return grpc::Status::OK;
}

}  // namespace shardvec::router
