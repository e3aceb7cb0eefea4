#include "router/text.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/validate.h"

namespace shardvec::router {
namespace {

absl::Status NoEmbedder(const v1::CollectionSpec& spec, absl::string_view what) {
  if (spec.embedder().empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "embedder: collection '", spec.name(), "' has none, so it cannot take ", what,
        "; create a collection with an embedder (e.g. hash-tfidf-v1) for text"));
  }
  return absl::FailedPreconditionError(absl::StrCat("embedder: the fitted table of collection '", spec.name(),
                                                    "' is not loaded (see the router's log)"));
}

absl::StatusOr<const embed::TextEmbedder*> Find(const Embedders& embedders, const v1::CollectionSpec& spec,
                                               absl::string_view what) {
  auto it = embedders.find(spec.name());
  if (spec.embedder().empty() || it == embedders.end()) return NoEmbedder(spec, what);
  return it->second.get();
}

// Embeds `text` as a document into `out`, naming `field` in errors.
absl::Status EmbedField(const embed::TextEmbedder& e, const std::string& field, const std::string& text, float* out) {
  if (text.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": empty; a record without a vector needs text for the collection's embedder"));
  }
  absl::Status s = e.EmbedDocument(text, out);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(field, ": ", s.message()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<const embed::TextEmbedder>> FitEmbedder(const v1::CreateCollectionRequest& req,
                                                                       v1::CollectionSpec* spec) {
  if (spec->embedder().empty()) {
    if (req.embedder_fit_texts_size() > 0) {
      return absl::InvalidArgumentError("embedder_fit_texts: given for a collection without spec.embedder");
    }
    return nullptr;
  }
  const int dim = static_cast<int>(spec->dim());
  if (absl::Status s = embed::TextEmbedder::CheckRequest(spec->embedder(), dim); !s.ok()) return s;
  if (spec->metric() != v1::COSINE && spec->metric() != v1::IP) {
    return absl::InvalidArgumentError(
        "metric: a collection with an embedder uses cosine or ip (its vectors have unit length)");
  }
  std::vector<absl::string_view> texts(req.embedder_fit_texts().begin(), req.embedder_fit_texts().end());
  absl::StatusOr<embed::TextEmbedder> e = embed::TextEmbedder::Fit(dim, texts);
  if (!e.ok()) return e.status();
  spec->set_embedder(e->spec());
  return std::make_shared<const embed::TextEmbedder>(*std::move(e));
}

std::string EmbedderTablePath(const std::string& map_path, const std::string& collection) {
  return (std::filesystem::path(map_path).parent_path() / "embedders" / (collection + ".table")).string();
}

Embedders EmbeddersFor(const cluster::ClusterMap& map, const Embedders& cache) {
  Embedders out;
  for (const v1::CollectionSpec& c : map.collections()) {
    if (c.embedder().empty()) continue;
    auto it = cache.find(c.name());
    if (it != cache.end() && it->second->spec() == c.embedder()) {
      out[c.name()] = it->second;
      continue;
    }
    absl::StatusOr<embed::TextEmbedder> e = embed::TextEmbedder::FromSpec(c.embedder(), "");
    if (e.ok()) out[c.name()] = std::make_shared<const embed::TextEmbedder>(*std::move(e));
  }
  return out;
}

Embedders LoadEmbedderTables(const cluster::ClusterMap& map, const std::string& map_path,
                             std::vector<std::string>* errors) {
  Embedders out;
  for (const v1::CollectionSpec& c : map.collections()) {
    if (c.embedder().empty()) continue;
    std::string table;
    const std::string path = EmbedderTablePath(map_path, c.name());
    if (std::ifstream in(path, std::ios::binary); in) {
      std::stringstream buffer;
      buffer << in.rdbuf();
      table = buffer.str();
    }
    absl::StatusOr<embed::TextEmbedder> e = embed::TextEmbedder::FromSpec(c.embedder(), table);
    if (!e.ok()) {
      errors->push_back(absl::StrCat("collection ", c.name(), ": ", path, ": ", e.status().message()));
      continue;
    }
    out[c.name()] = std::make_shared<const embed::TextEmbedder>(*std::move(e));
  }
  return out;
}

absl::Status CheckEmbedderClaim(const v1::CollectionSpec& spec, const std::string& claimed) {
  if (claimed.empty() || claimed == spec.embedder()) return absl::OkStatus();
  if (spec.embedder().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("embedder: the vectors were made by '", claimed,
                                                   "', collection '", spec.name(),
                                                   "' holds its users' own vectors (no embedder)"));
  }
  return absl::InvalidArgumentError(absl::StrCat("embedder: the vectors were made by '", claimed, "', collection '",
                                                 spec.name(), "' holds vectors of '", spec.embedder(), "'"));
}

absl::Status EmbedRecords(const Embedders& embedders, const v1::CollectionSpec& spec, v1::UpsertRequest* req) {
  if (absl::Status s = CheckEmbedderClaim(spec, req->embedder()); !s.ok()) return s;
  const bool block_needs_text = req->block().ids_size() > 0 && req->block().vectors().empty();
  bool records_need_text = false;
  for (const v1::Record& r : req->records()) records_need_text = records_need_text || r.vector().empty();
  // A collection without an embedder leaves missing vectors to ValidateUpsert.
  if (spec.embedder().empty() || (!records_need_text && !block_needs_text)) return absl::OkStatus();
  absl::StatusOr<const embed::TextEmbedder*> e = Find(embedders, spec, "records without vectors");
  if (!e.ok()) return e.status();
  const int dim = static_cast<int>(spec.dim());
  for (int i = 0; i < req->records_size(); ++i) {
    v1::Record* r = req->mutable_records(i);
    if (!r->vector().empty()) continue;
    r->mutable_vector()->Resize(dim, 0.0f);
    if (absl::Status s = EmbedField(**e, absl::StrFormat("records[%d].payload.text", i), r->payload().text(),
                                    r->mutable_vector()->mutable_data());
        !s.ok()) {
      return s;
    }
  }
  if (block_needs_text) {
    v1::RecordBlock* block = req->mutable_block();
    if (block->payloads_size() != block->ids_size()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "block.payloads: %d for %d ids; rows without vectors need one payload each, with the text to embed",
          block->payloads_size(), block->ids_size()));
    }
    std::string vectors(static_cast<size_t>(block->ids_size()) * dim * sizeof(float), '\0');
    float* out = reinterpret_cast<float*>(vectors.data());
    for (int i = 0; i < block->ids_size(); ++i) {
      if (absl::Status s = EmbedField(**e, absl::StrFormat("block.payloads[%d].text", i), block->payloads(i).text(),
                                      out + static_cast<size_t>(i) * dim);
          !s.ok()) {
        return s;
      }
    }
    block->set_vectors(std::move(vectors));
  }
  return absl::OkStatus();
}

int TextCandidates(int k) { return std::min(kMaxTopK, std::max(100, 4 * k)); }

absl::Status PrepareTextSearch(const Embedders& embedders, const v1::CollectionSpec& spec,
                               const v1::SearchRequest& req, v1::SearchRequest* forward,
                               std::shared_ptr<const embed::TextEmbedder>* embedder) {
  embedder->reset();
  if (absl::Status s = CheckEmbedderClaim(spec, req.embedder()); !s.ok()) return s;
  if (req.text_queries().empty()) return absl::OkStatus();
  if (!req.queries().empty()) {
    return absl::InvalidArgumentError("text_queries: give queries or text_queries, not both");
  }
  auto it = embedders.find(spec.name());
  if (spec.embedder().empty() || it == embedders.end()) return NoEmbedder(spec, "text_queries");
  if (req.k() < 1 || req.k() > kMaxTopK) {
    return absl::InvalidArgumentError(absl::StrFormat("k: %d is out of range [1, %d]", req.k(), kMaxTopK));
  }
  if (int64_t{req.text_queries_size()} * TextCandidates(req.k()) > kMaxTextCandidates) {
    return absl::InvalidArgumentError(
        absl::StrFormat("text_queries: %d queries x %d candidates (for k %d) exceeds the limit of %d per request",
                        req.text_queries_size(), TextCandidates(req.k()), req.k(), kMaxTextCandidates));
  }
  const embed::TextEmbedder& e = *it->second;
  *forward = req;
  forward->clear_text_queries();
  forward->clear_embedder();
  forward->set_k(TextCandidates(req.k()));
  forward->set_include_payload(true);
  for (int i = 0; i < req.text_queries_size(); ++i) {
    const std::string& text = req.text_queries(i);
    if (text.empty()) return absl::InvalidArgumentError(absl::StrFormat("text_queries[%d]: empty", i));
    google::protobuf::RepeatedField<float>* values = forward->add_queries()->mutable_values();
    values->Resize(e.dim(), 0.0f);
    if (absl::Status s = e.EmbedQuery(text, values->mutable_data()); !s.ok()) {
      return absl::Status(s.code(), absl::StrFormat("text_queries[%d]: %s", i, s.message()));
    }
  }
  *embedder = it->second;
  return absl::OkStatus();
}

void RescoreTextResults(const embed::TextEmbedder& embedder, const v1::SearchRequest& req, v1::SearchResponse* resp) {
  for (int q = 0; q < resp->results_size(); ++q) {
    v1::QueryResult* result = resp->mutable_results(q);
    absl::StatusOr<embed::SparseVector> query = embedder.SparseQuery(req.text_queries(q));
    if (!query.ok()) continue;  // embedded before, so this does not happen
    const int n = result->ids_size();
    std::vector<float> score(n);
    for (int j = 0; j < n; ++j) {
      score[j] = result->distances(j);
      const std::string& text = j < result->payloads_size() ? result->payloads(j).text() : std::string();
      if (text.empty()) continue;
      absl::StatusOr<embed::SparseVector> doc = embedder.SparseDocument(text);
      if (doc.ok()) score[j] = embed::TextEmbedder::Score(*query, *doc);
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) {
      if (score[a] != score[b]) return score[a] > score[b];
      return result->ids(a) < result->ids(b);
    });
    order.resize(std::min(n, req.k()));
    v1::QueryResult kept;
    for (int j : order) {
      kept.add_ids(result->ids(j));
      kept.add_distances(score[j]);
      if (req.include_payload() && j < result->payloads_size()) *kept.add_payloads() = std::move(*result->mutable_payloads(j));
    }
    *result = std::move(kept);
  }
}

}  // namespace shardvec::router
