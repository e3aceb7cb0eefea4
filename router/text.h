// Text in, text out: the router's side of collections with a built-in embedder
// (embed/text_embedder.h, docs/text.md). The router fits the embedder when the
// collection is created, keeps the fitted table beside the cluster map
// (<data-dir>/embedders/<collection>.table, router/FORMAT.md), embeds records that
// come without a vector and text queries, and re-scores text queries' candidates by
// the exact text score. Stateless functions over the Topology's embedders.
#ifndef SHARDVEC_ROUTER_TEXT_H_
#define SHARDVEC_ROUTER_TEXT_H_

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "embed/text_embedder.h"
#include "proto/cluster.pb.h"
#include "proto/shardvec.pb.h"

namespace shardvec::router {

// Per collection name, for the collections whose embedder is usable.
using Embedders = absl::flat_hash_map<std::string, std::shared_ptr<const embed::TextEmbedder>>;

// Most candidates (with their text) per search: text queries x TextCandidates(k).
inline constexpr int kMaxTextCandidates = 1 << 16;

// For CreateCollection, after NormalizeCollectionSpec: checks spec->embedder (name,
// dimension, metric COSINE or IP) and req.embedder_fit_texts, fits the embedder and
// writes its full spec into spec->embedder. Null when the spec names no embedder.
// INVALID_ARGUMENT naming the field.
absl::StatusOr<std::shared_ptr<const embed::TextEmbedder>> FitEmbedder(const v1::CreateCollectionRequest& req,
                                                                       v1::CollectionSpec* spec);

// Where a collection's fitted table lives, beside the map at `map_path`.
std::string EmbedderTablePath(const std::string& map_path, const std::string& collection);

// The embedders of `map`'s collections: from `cache` when it holds the same spec, else
// from the spec alone (tf-only embedders need no table). A collection whose table is
// missing is left out (text requests to it fail with FAILED_PRECONDITION).
Embedders EmbeddersFor(const cluster::ClusterMap& map, const Embedders& cache);

// Reads the fitted tables of `map`'s collections from beside `map_path`; a table that
// is missing or does not match its spec is skipped and reported in `errors`.
Embedders LoadEmbedderTables(const cluster::ClusterMap& map, const std::string& map_path,
                             std::vector<std::string>* errors);

// A request's `embedder` claim: empty, or the collection's own spec.embedder.
absl::Status CheckEmbedderClaim(const v1::CollectionSpec& spec, const std::string& claimed);

// Gives every record without a vector the document embedding of its payload text
// (records, and block rows when block.vectors is empty). Records that carry vectors
// are left alone. Errors name the record: INVALID_ARGUMENT for a missing or wordless
// text, FAILED_PRECONDITION naming `embedder` when the collection has none.
absl::Status EmbedRecords(const Embedders& embedders, const v1::CollectionSpec& spec, v1::UpsertRequest* req);

// For a search with text_queries: `forward` becomes the request for the shards (the
// queries' embeddings, the candidate count as k, payloads on) and `embedder` the one
// to re-score with. For a search with vectors, checks the embedder claim and leaves
// `embedder` null. INVALID_ARGUMENT naming text_queries/queries/k/embedder;
// FAILED_PRECONDITION naming `embedder` for text on a collection without one.
absl::Status PrepareTextSearch(const Embedders& embedders, const v1::CollectionSpec& spec,
                               const v1::SearchRequest& req, v1::SearchRequest* forward,
                               std::shared_ptr<const embed::TextEmbedder>* embedder);

// Candidates the shards return per text query of `k` results.
int TextCandidates(int k);

// Re-scores the merged candidates of each text query by TextEmbedder::Score of the
// query and the candidate's payload text (a candidate without text keeps its vector
// score, an estimate of the same), keeps the best req.k (ties: smaller id first), and
// drops the payloads unless the request asked for them.
void RescoreTextResults(const embed::TextEmbedder& embedder, const v1::SearchRequest& req, v1::SearchResponse* resp);

}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_TEXT_H_
