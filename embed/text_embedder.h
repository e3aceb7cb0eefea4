// The built-in text embedder: turns text into vectors with no model files, so that a
// collection can take plain text when its user brings no embedding model.
//
//   absl::StatusOr<embed::TextEmbedder> e = embed::TextEmbedder::Fit(/*dim=*/256, corpus);
//   std::vector<float> v(e->dim());
//   absl::Status s = e->EmbedDocument(corpus[0], v.data());  // unit length
//   s = e->EmbedQuery("large wild cat", v.data());           // unit length
//   e->spec();   // "hash-tfidf-v1:dim=256:idf=5e0c1d2f3a4b6c7d", kept by the collection
//   e->table();  // the fitted statistics, kept beside it
//   auto same = embed::TextEmbedder::FromSpec(e->spec(), e->table());  // same vectors
//
// How (docs/text.md has the details and the measurements behind the choices): text is
// lowercased and split into words; the features are the words, adjacent word pairs and
// the character 3- to 5-grams of each word with boundary marks ("<cat>" gives "<ca",
// "cat", "at>", "<cat", "cat>", "<cat>"). A feature weighs kind x (1 + ln tf) x
// sqrt(idf): sqrt on each side, so that a query-document product counts a shared
// feature's idf once, as BM25 does. The idf comes from document frequencies counted
// over a fitting corpus in 2^18 hash buckets. Each feature's 64-bit hash picks one
// component in [1, dim) and a sign (signed feature hashing). Documents keep component 0
// for a length pivot, the corpus' mean document norm (pivoted length normalisation):
// short documents do not win just for being short. Both kinds are scaled to unit
// length, so cosine and inner product agree; the dot product of a query and a
// document estimates Score() of their sparse forms, up to hash collisions (about
// 1/sqrt(dim) of noise).
//
// An embedder fitted on nothing has idf 1 and no pivot (tf-only), and its spec names no
// idf. Vectors are bit-identical on every machine for the same spec and table: the
// hash is our own, sums run in the order features first appear in the text, and
// logarithms come from a fixed series in double arithmetic instead of the C library's.
// Immutable once built; every method is thread-safe.
#ifndef SHARDVEC_EMBED_TEXT_EMBEDDER_H_
#define SHARDVEC_EMBED_TEXT_EMBEDDER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardvec::embed {

// The embedder's name and version in specs; a change that alters any vector gets a
// new version.
inline constexpr char kHashTfidfV1[] = "hash-tfidf-v1";
// Document-frequency buckets of the fitted table.
inline constexpr int kIdfBuckets = 1 << 18;
// Longest text embedded (a record's payload is at most 1 MiB anyway).
inline constexpr size_t kMaxTextBytes = 1 << 20;
inline constexpr int kMinEmbedderDim = 2;

// 64-bit FNV-1a over the 8 bytes of `seed` (little-endian) then `data`, finished with
// MurmurHash3's fmix64 so that every output bit depends on every input bit. Fixed
// forever for hash-tfidf-v1.
uint64_t Hash64(absl::string_view data, uint64_t seed = 0);

// Lowercased words: runs of ASCII letters and digits and of non-ASCII UTF-8 characters
// (kept as their bytes; Latin-1, Greek and Cyrillic capitals are lowercased), split on
// everything else, including the common Unicode punctuation and spaces.
std::vector<std::string> Tokenize(absl::string_view text);

// Natural logarithm for x > 0 in basic double arithmetic only, so that it is the same
// on every machine (the C library's log may differ in the last bit across versions).
double DeterministicLog(double x);

// A text's features and weights before hashing into components, scaled like its dense
// vector: entries sorted by feature hash.
struct SparseVector {
  struct Entry {
    uint64_t feature;
    float weight;
  };
  std::vector<Entry> entries;
};

class TextEmbedder {
 public:
  // An embedder of `dim` (2 to 65536) fitted on `corpus`: document frequencies and the
  // mean document norm. An empty corpus gives the tf-only embedder.
  static absl::StatusOr<TextEmbedder> Fit(int dim, const std::vector<absl::string_view>& corpus);

  // The embedder a spec names. `table` is what table() returned for it when the spec
  // names an idf, and must have the fingerprint the spec gives; it is ignored
  // otherwise. INVALID_ARGUMENT naming `embedder` for a spec that is not
  // "hash-tfidf-v1:dim=D[:idf=HEX16]"; FAILED_PRECONDITION for a table that does not
  // match or does not parse.
  static absl::StatusOr<TextEmbedder> FromSpec(absl::string_view spec, absl::string_view table);

  // Checks what a user may ask for when creating a collection of dimension `dim`:
  // "hash-tfidf-v1" or "hash-tfidf-v1:dim=D" with D = dim. The idf part is not for users
  // to give: it comes from fitting. INVALID_ARGUMENT naming `embedder`.
  static absl::Status CheckRequest(absl::string_view requested, int dim);

  // The identity recorded with the collection: name, version and every parameter that
  // changes the vectors, e.g. "hash-tfidf-v1:dim=256:idf=5e0c1d2f3a4b6c7d".
  const std::string& spec() const { return spec_; }
  int dim() const { return dim_; }
  // Serialized fitted statistics (docs/text.md describes the bytes); empty when tf-only.
  const std::string& table() const { return table_; }
  // Documents the table was fitted on (0: tf-only).
  uint64_t documents() const { return documents_; }
  // Mean document norm of the fitting corpus (0: tf-only).
  double pivot() const { return pivot_; }

  // Write the unit-length embedding of `text` to out[0, dim). INVALID_ARGUMENT when the
  // text has no words (nothing to embed) or is longer than kMaxTextBytes; the caller
  // adds the field name.
  absl::Status EmbedDocument(absl::string_view text, float* out) const;
  absl::Status EmbedQuery(absl::string_view text, float* out) const;

  // The same vectors before hashing into components; same errors.
  absl::StatusOr<SparseVector> SparseDocument(absl::string_view text) const;
  absl::StatusOr<SparseVector> SparseQuery(absl::string_view text) const;
  // Exact query-document score: what the dense vectors' dot product estimates.
  static float Score(const SparseVector& query, const SparseVector& document);

 private:
  TextEmbedder() = default;
  static TextEmbedder Build(int dim, uint64_t documents, double pivot, std::vector<uint32_t> doc_freq);
  // Weighted features in order of first appearance, scaled to the dense vector's length.
  absl::StatusOr<SparseVector> Weigh(absl::string_view text, bool document) const;
  absl::StatusOr<SparseVector> Sparse(absl::string_view text, bool document) const;
  absl::Status Embed(absl::string_view text, bool document, float* out) const;

  std::string spec_;
  int dim_ = 0;
  uint64_t documents_ = 0;
  double pivot_ = 0;
  std::string table_;
  // sqrt(idf) per bucket, shared so that copies are cheap; null: 1 everywhere.
  std::shared_ptr<const std::vector<float>> sqrt_idf_;
};

}  // namespace shardvec::embed

#endif  // SHARDVEC_EMBED_TEXT_EMBEDDER_H_
