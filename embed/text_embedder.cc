#include "embed/text_embedder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace shardvec::embed {
namespace {

// Seeds keep the kinds of feature apart: the word "cat" and the 3-gram "cat" differ.
constexpr uint64_t kWordSeed = 0x776f7264;    // "word"
constexpr uint64_t kBigramSeed = 0x62696772;  // "bigr"
constexpr uint64_t kCharSeed = 0x63686172;    // "char"
constexpr uint64_t kTableSeed = 0x69646674;   // "idft": the table's fingerprint

// A feature is its 64-bit hash with the kind in the top two bits, so that features sort
// as plain integers and the kind (hence the weight) can be read back.
enum Kind : uint64_t { kWord = 0, kBigram = 1, kChar = 2 };
constexpr int kKindShift = 62;
constexpr uint64_t kKindMask = uint64_t{3} << kKindShift;

// Weights by kind, before tf and idf (docs/text.md has the measurements). A word has
// about 3 x its length character n-grams, so each weighs little: together they carry
// morphology ("cats" ~ "cat") without drowning the words. Word pairs add a little
// phrase sense; weighted more, their rarity lets them dominate short queries.
constexpr float kKindWeight[3] = {/*word=*/1.0f, /*bigram=*/0.3f, /*char=*/0.3f};
constexpr int kMinGram = 3;
constexpr int kMaxGram = 5;

constexpr char kTableMagic[4] = {'S', 'V', 'D', 'F'};
constexpr uint32_t kTableVersion = 1;
constexpr size_t kTableHeader = 4 + 4 + 4 + 8 + 8 + 4;

constexpr uint64_t kFnvPrime = 0x100000001b3ULL;
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;

uint64_t FnvSeed(uint64_t seed) {
  uint64_t h = kFnvOffset;
  for (int i = 0; i < 8; ++i) {
    h ^= (seed >> (8 * i)) & 0xff;
    h *= kFnvPrime;
  }
  return h;
}

uint64_t FnvAdd(uint64_t h, unsigned char c) { return (h ^ c) * kFnvPrime; }

uint64_t Finish(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

uint64_t HashFrom(uint64_t state, absl::string_view data) {
  for (unsigned char c : data) state = FnvAdd(state, c);
  return Finish(state);
}

uint64_t Tagged(uint64_t hash, Kind kind) { return (hash & ~kKindMask) | (uint64_t{kind} << kKindShift); }

bool IsAsciiAlnum(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// Length of the UTF-8 sequence that starts with `c` (1 for a stray continuation byte).
int Utf8Length(unsigned char c) {
  if (c >= 0xf0) return 4;
  if (c >= 0xe0) return 3;
  if (c >= 0xc0) return 2;
  return 1;
}

// Unicode punctuation and spaces that separate words: U+00A0..U+00BF (no-break space,
// guillemets, ...), U+00D7 and U+00F7 (multiplication and division signs),
// U+2000..U+206F (general punctuation: dashes, curly quotes, ellipsis) and
// U+3000..U+303F (CJK punctuation).
bool IsSeparator(const unsigned char* s, int len) {
  if (len == 2 && s[0] == 0xc2 && s[1] >= 0xa0 && s[1] <= 0xbf) return true;
  if (len == 2 && s[0] == 0xc3 && (s[1] == 0x97 || s[1] == 0xb7)) return true;
  if (len == 3 && s[0] == 0xe2 && (s[1] == 0x80 || s[1] == 0x81)) return true;
  if (len == 3 && s[0] == 0xe3 && s[1] == 0x80) return true;
  return false;
}

// Appends one UTF-8 character, lowercased when it is a Latin-1 (U+00C0..U+00DE),
// Greek (U+0391..U+03A9) or Cyrillic (U+0400..U+042F) capital.
void AppendLower(const unsigned char* s, int len, std::string* word) {
  if (len == 2) {
    unsigned cp = ((s[0] & 0x1fu) << 6) | (s[1] & 0x3fu);
    if ((cp >= 0xc0 && cp <= 0xde && cp != 0xd7) || (cp >= 0x391 && cp <= 0x3a9 && cp != 0x3a2) ||
        (cp >= 0x410 && cp <= 0x42f)) {
      cp += 0x20;
    } else if (cp >= 0x400 && cp <= 0x40f) {
      cp += 0x50;
    }
    word->push_back(static_cast<char>(0xc0 | (cp >> 6)));
    word->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    return;
  }
  word->append(reinterpret_cast<const char*>(s), len);
}

// Words of `text` as `ends` into `chars`: word i is chars[ends[i-1], ends[i]).
void SplitWords(absl::string_view text, std::string* chars, std::vector<uint32_t>* ends) {
  chars->clear();
  ends->clear();
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  auto end_word = [&] {
    const uint32_t begin = ends->empty() ? 0 : ends->back();
    if (chars->size() > begin) ends->push_back(static_cast<uint32_t>(chars->size()));
  };
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      if (IsAsciiAlnum(c)) {
        chars->push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c));
      } else {
        end_word();
      }
      ++i;
      continue;
    }
    const int len = static_cast<int>(std::min<size_t>(Utf8Length(c), n - i));
    if (IsSeparator(s + i, len)) {
      end_word();
    } else {
      AppendLower(s + i, len, chars);
    }
    i += len;
  }
  end_word();
}

// Every feature of `text`, unsorted, repeats kept.
void ExtractFeatures(absl::string_view text, std::vector<uint64_t>* out) {
  static const uint64_t kWordState = FnvSeed(kWordSeed);
  static const uint64_t kBigramState = FnvSeed(kBigramSeed);
  static const uint64_t kCharState = FnvSeed(kCharSeed);
  out->clear();
  std::string chars;
  std::vector<uint32_t> ends;
  SplitWords(text, &chars, &ends);
  std::string marked;
  uint32_t begin = 0;
  uint32_t previous_begin = 0;
  for (size_t w = 0; w < ends.size(); ++w) {
    const absl::string_view word(chars.data() + begin, ends[w] - begin);
    out->push_back(Tagged(HashFrom(kWordState, word), kWord));
    if (w > 0) {
      // "previous word" + ' ' + "word", hashed without building the string.
      uint64_t h = kBigramState;
      for (uint32_t i = previous_begin; i < begin; ++i) h = FnvAdd(h, static_cast<unsigned char>(chars[i]));
      h = FnvAdd(h, ' ');
      for (unsigned char c : word) h = FnvAdd(h, c);
      out->push_back(Tagged(Finish(h), kBigram));
    }
    marked.assign("<");
    marked.append(word.data(), word.size());
    marked.push_back('>');
    // Every n-gram starting at `start` extends the state of the shorter one.
    const int len = static_cast<int>(marked.size());
    for (int start = 0; start + kMinGram <= len; ++start) {
      uint64_t h = kCharState;
      for (int n = 1; n <= kMaxGram && start + n <= len; ++n) {
        h = FnvAdd(h, static_cast<unsigned char>(marked[start + n - 1]));
        if (n >= kMinGram) out->push_back(Tagged(Finish(h), kChar));
      }
    }
    previous_begin = begin;
    begin = ends[w];
  }
}

uint32_t Bucket(uint64_t feature) { return static_cast<uint32_t>(feature & (kIdfBuckets - 1)); }

// 1 + ln(tf), from a table for the usual small counts.
double TfWeight(size_t tf) {
  static const std::vector<double> kTable = [] {
    std::vector<double> t(64);
    for (size_t i = 1; i < t.size(); ++i) t[i] = 1 + DeterministicLog(static_cast<double>(i));
    return t;
  }();
  return tf < kTable.size() ? kTable[tf] : 1 + DeterministicLog(static_cast<double>(tf));
}

// Repeats merged, in order of first appearance: kind x (1 + ln tf) x sqrt(idf). That
// order depends on the text alone, so every sum over the entries runs the same way on
// every machine. Returns the sum of the squared weights.
double WeighFeatures(const std::vector<uint64_t>& features, const std::vector<float>* sqrt_idf,
                     std::vector<SparseVector::Entry>* out) {
  // Open addressing on the hash's middle bits, at most half full.
  size_t capacity = 16;
  while (capacity < 2 * features.size()) capacity <<= 1;
  std::vector<int32_t> slot(capacity, -1);
  std::vector<uint32_t> tf;
  out->clear();
  for (uint64_t h : features) {
    size_t i = static_cast<size_t>(h >> 20) & (capacity - 1);
    while (slot[i] >= 0 && (*out)[slot[i]].feature != h) i = (i + 1) & (capacity - 1);
    if (slot[i] < 0) {
      slot[i] = static_cast<int32_t>(out->size());
      out->push_back({h, 0.0f});
      tf.push_back(0);
    }
    ++tf[slot[i]];
  }
  double norm2 = 0;
  for (size_t k = 0; k < out->size(); ++k) {
    const uint64_t h = (*out)[k].feature;
    double w = kKindWeight[h >> kKindShift] * TfWeight(tf[k]);
    if (sqrt_idf != nullptr) w *= (*sqrt_idf)[Bucket(h)];
    const float wf = static_cast<float>(w);
    (*out)[k].weight = wf;
    norm2 += static_cast<double>(wf) * wf;
  }
  return norm2;
}

void PutLE(uint64_t v, int bytes, std::string* out) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetLE(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

std::string Fingerprint(absl::string_view table) { return absl::StrFormat("%016x", Hash64(table, kTableSeed)); }

// docs/text.md documents these bytes.
std::string SerializeTable(uint64_t documents, double pivot, const std::vector<uint32_t>& counts) {
  std::string out(kTableMagic, sizeof(kTableMagic));
  PutLE(kTableVersion, 4, &out);
  PutLE(counts.size(), 4, &out);
  PutLE(documents, 8, &out);
  uint64_t pivot_bits;
  std::memcpy(&pivot_bits, &pivot, sizeof(pivot));
  PutLE(pivot_bits, 8, &out);
  uint32_t nonzero = 0;
  for (uint32_t c : counts) nonzero += c != 0;
  PutLE(nonzero, 4, &out);
  for (size_t b = 0; b < counts.size(); ++b) {
    if (counts[b] == 0) continue;
    PutLE(b, 4, &out);
    PutLE(counts[b], 4, &out);
  }
  return out;
}

absl::Status ParseTable(absl::string_view table, uint64_t* documents, double* pivot, std::vector<uint32_t>* counts) {
  auto bad = [](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat("embedder: fitted table: ", why));
  };
  if (table.size() < kTableHeader || std::memcmp(table.data(), kTableMagic, sizeof(kTableMagic)) != 0) {
    return bad("not a shardvec embedder table");
  }
  const char* p = table.data() + 4;
  if (GetLE(p, 4) != kTableVersion) return bad(absl::StrCat("version ", GetLE(p, 4), " is not supported"));
  if (GetLE(p + 4, 4) != static_cast<uint64_t>(kIdfBuckets)) {
    return bad(absl::StrCat(GetLE(p + 4, 4), " buckets, expected ", kIdfBuckets));
  }
  *documents = GetLE(p + 8, 8);
  const uint64_t pivot_bits = GetLE(p + 16, 8);
  std::memcpy(pivot, &pivot_bits, sizeof(*pivot));
  const uint64_t nonzero = GetLE(p + 24, 4);
  if (*documents == 0 || !(*pivot > 0) || !std::isfinite(*pivot)) return bad("no documents or no pivot");
  if (table.size() != kTableHeader + nonzero * 8) return bad(absl::StrCat(table.size(), " bytes for ", nonzero, " buckets"));
  counts->assign(kIdfBuckets, 0);
  p = table.data() + kTableHeader;
  int64_t last = -1;
  for (uint64_t i = 0; i < nonzero; ++i, p += 8) {
    const uint64_t b = GetLE(p, 4);
    if (static_cast<int64_t>(b) <= last || b >= static_cast<uint64_t>(kIdfBuckets)) {
      return bad(absl::StrCat("entry ", i, ": bucket ", b, " is out of order or range"));
    }
    (*counts)[b] = static_cast<uint32_t>(GetLE(p + 4, 4));
    last = static_cast<int64_t>(b);
  }
  return absl::OkStatus();
}

absl::Status InvalidSpec(absl::string_view spec, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("embedder: '", spec, "' ", why));
}

struct ParsedSpec {
  int dim = 0;  // 0: not given
  std::string idf;
};

// "hash-tfidf-v1[:dim=D][:idf=HEX16]", parameters in that order.
absl::StatusOr<ParsedSpec> ParseSpec(absl::string_view spec) {
  std::vector<absl::string_view> parts = absl::StrSplit(spec, ':');
  if (parts[0] != kHashTfidfV1) {
    return InvalidSpec(spec, absl::StrCat("is not a known embedder (known: ", kHashTfidfV1, ")"));
  }
  ParsedSpec parsed;
  size_t i = 1;
  if (i < parts.size() && absl::StartsWith(parts[i], "dim=")) {
    if (!absl::SimpleAtoi(parts[i].substr(4), &parsed.dim) || parsed.dim < kMinEmbedderDim || parsed.dim > 65536) {
      return InvalidSpec(spec, absl::StrCat("has a dim that is not in [", kMinEmbedderDim, ", 65536]"));
    }
    ++i;
  }
  if (i < parts.size() && absl::StartsWith(parts[i], "idf=")) {
    parsed.idf = std::string(parts[i].substr(4));
    const bool hex = parsed.idf.size() == 16 && std::all_of(parsed.idf.begin(), parsed.idf.end(), [](char c) {
                       return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                     });
    if (!hex) return InvalidSpec(spec, "has an idf that is not 16 lowercase hex digits");
    ++i;
  }
  if (i < parts.size()) return InvalidSpec(spec, absl::StrCat("has an unknown part '", parts[i], "'"));
  return parsed;
}

}  // namespace

uint64_t Hash64(absl::string_view data, uint64_t seed) { return HashFrom(FnvSeed(seed), data); }

std::vector<std::string> Tokenize(absl::string_view text) {
  std::string chars;
  std::vector<uint32_t> ends;
  SplitWords(text, &chars, &ends);
  std::vector<std::string> words;
  uint32_t begin = 0;
  for (uint32_t end : ends) {
    words.push_back(chars.substr(begin, end - begin));
    begin = end;
  }
  return words;
}

double DeterministicLog(double x) {
  // x = m * 2^e with m in [sqrt(1/2), sqrt(2)); frexp and doubling are exact.
  int e = 0;
  double m = std::frexp(x, &e);
  if (m < 0.70710678118654752) {
    m *= 2;
    --e;
  }
  // ln(m) = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172: twelve terms of the
  // series reach double precision.
  const double s = (m - 1) / (m + 1);
  const double s2 = s * s;
  double sum = 0;
  for (int k = 23; k >= 1; k -= 2) sum = sum * s2 + 1.0 / k;
  return 2 * s * sum + e * 0.69314718055994530942;
}

absl::StatusOr<TextEmbedder> TextEmbedder::Fit(int dim, const std::vector<absl::string_view>& corpus) {
  if (dim < kMinEmbedderDim || dim > 65536) {
    return absl::InvalidArgumentError(absl::StrCat("dim: ", dim, " is out of range [", kMinEmbedderDim, ", 65536]"));
  }
  // Pass 1: document frequencies, each feature once per document.
  std::vector<uint32_t> counts(kIdfBuckets, 0);
  // Per bucket, the last document (numbered from 1) that counted it.
  std::vector<uint64_t> seen_in(kIdfBuckets, 0);
  uint64_t documents = 0;
  std::vector<uint64_t> features;
  for (absl::string_view text : corpus) {
    ExtractFeatures(text.substr(0, kMaxTextBytes), &features);
    if (features.empty()) continue;
    ++documents;
    for (uint64_t f : features) {
      const uint32_t b = Bucket(f);
      if (seen_in[b] == documents) continue;
      seen_in[b] = documents;
      counts[b] += counts[b] != std::numeric_limits<uint32_t>::max();
    }
  }
  if (documents == 0) return Build(dim, 0, 0, {});
  // Pass 2: the mean document norm under those weights, the length pivot.
  TextEmbedder weigher = Build(dim, documents, 1, counts);
  std::vector<SparseVector::Entry> entries;
  double norm_sum = 0;
  for (absl::string_view text : corpus) {
    ExtractFeatures(text.substr(0, kMaxTextBytes), &features);
    if (!features.empty()) norm_sum += std::sqrt(WeighFeatures(features, weigher.sqrt_idf_.get(), &entries));
  }
  return Build(dim, documents, norm_sum / static_cast<double>(documents), std::move(counts));
}

TextEmbedder TextEmbedder::Build(int dim, uint64_t documents, double pivot, std::vector<uint32_t> doc_freq) {
  TextEmbedder e;
  e.dim_ = dim;
  e.spec_ = absl::StrCat(kHashTfidfV1, ":dim=", dim);
  if (documents == 0) return e;
  e.documents_ = documents;
  e.pivot_ = pivot;
  e.table_ = SerializeTable(documents, pivot, doc_freq);
  absl::StrAppend(&e.spec_, ":idf=", Fingerprint(e.table_));
  // Smoothed idf, as if one more document held every feature: never 0, and highest,
  // ln(N + 1) + 1, for features the corpus never had.
  auto sqrt_idf = std::make_shared<std::vector<float>>(doc_freq.size());
  const double n1 = static_cast<double>(documents) + 1;
  for (size_t b = 0; b < doc_freq.size(); ++b) {
    const double idf = DeterministicLog(n1 / (static_cast<double>(doc_freq[b]) + 1)) + 1;
    (*sqrt_idf)[b] = static_cast<float>(std::sqrt(idf));
  }
  e.sqrt_idf_ = std::move(sqrt_idf);
  return e;
}

absl::StatusOr<TextEmbedder> TextEmbedder::FromSpec(absl::string_view spec, absl::string_view table) {
  absl::StatusOr<ParsedSpec> parsed = ParseSpec(spec);
  if (!parsed.ok()) return parsed.status();
  if (parsed->dim == 0) return InvalidSpec(spec, "names no dim");
  if (parsed->idf.empty()) return Build(parsed->dim, 0, 0, {});
  if (const std::string got = Fingerprint(table); got != parsed->idf) {
    return absl::FailedPreconditionError(
        absl::StrCat("embedder: the fitted table's fingerprint is ", got, ", the spec '", spec, "' names ", parsed->idf));
  }
  uint64_t documents = 0;
  double pivot = 0;
  std::vector<uint32_t> counts;
  if (absl::Status s = ParseTable(table, &documents, &pivot, &counts); !s.ok()) return s;
  return Build(parsed->dim, documents, pivot, std::move(counts));
}

absl::Status TextEmbedder::CheckRequest(absl::string_view requested, int dim) {
  absl::StatusOr<ParsedSpec> parsed = ParseSpec(requested);
  if (!parsed.ok()) return parsed.status();
  if (parsed->dim != 0 && parsed->dim != dim) {
    return InvalidSpec(requested, absl::StrCat("names dim ", parsed->dim, ", the collection has dim ", dim));
  }
  if (dim < kMinEmbedderDim) return InvalidSpec(requested, absl::StrCat("needs a dim of at least ", kMinEmbedderDim));
  if (!parsed->idf.empty()) {
    return InvalidSpec(requested, "names an idf: it comes from fitting (embedder_fit_texts), not from a name");
  }
  return absl::OkStatus();
}

absl::StatusOr<SparseVector> TextEmbedder::Weigh(absl::string_view text, bool document) const {
  if (text.size() > kMaxTextBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(text.size(), " bytes of text exceeds the limit of ", kMaxTextBytes));
  }
  std::vector<uint64_t> features;
  ExtractFeatures(text, &features);
  if (features.empty()) return absl::InvalidArgumentError("the text has no words to embed");
  SparseVector v;
  double norm2 = WeighFeatures(features, sqrt_idf_.get(), &v.entries);
  if (document) norm2 += pivot_ * pivot_;
  const double inv = 1 / std::sqrt(norm2);
  for (SparseVector::Entry& e : v.entries) e.weight = static_cast<float>(e.weight * inv);
  return v;
}

absl::StatusOr<SparseVector> TextEmbedder::Sparse(absl::string_view text, bool document) const {
  absl::StatusOr<SparseVector> v = Weigh(text, document);
  if (!v.ok()) return v;
  std::sort(v->entries.begin(), v->entries.end(),
            [](const SparseVector::Entry& a, const SparseVector::Entry& b) { return a.feature < b.feature; });
  return v;
}

absl::StatusOr<SparseVector> TextEmbedder::SparseDocument(absl::string_view text) const { return Sparse(text, true); }

absl::StatusOr<SparseVector> TextEmbedder::SparseQuery(absl::string_view text) const { return Sparse(text, false); }

float TextEmbedder::Score(const SparseVector& query, const SparseVector& document) {
  double sum = 0;
  auto q = query.entries.begin();
  auto d = document.entries.begin();
  while (q != query.entries.end() && d != document.entries.end()) {
    if (q->feature == d->feature) {
      sum += static_cast<double>(q->weight) * d->weight;
      ++q;
      ++d;
    } else if (q->feature < d->feature) {
      ++q;
    } else {
      ++d;
    }
  }
  return static_cast<float>(sum);
}

absl::Status TextEmbedder::Embed(absl::string_view text, bool document, float* out) const {
  absl::StatusOr<SparseVector> v = Weigh(text, document);
  if (!v.ok()) return v.status();
  std::vector<double> acc(static_cast<size_t>(dim_), 0.0);
  // Component 0 is the documents' length pivot; features use [1, dim). The bucket took
  // the hash's low 18 bits and the kind the top 2; the component (bits 32-61) and the
  // sign (bit 31) take bits that neither sees.
  const uint64_t feature_components = static_cast<uint64_t>(dim_ - 1);
  for (const SparseVector::Entry& e : v->entries) {
    const size_t component = 1 + static_cast<size_t>(((e.feature & ~kKindMask) >> 32) % feature_components);
    acc[component] += ((e.feature >> 31) & 1) ? -double{e.weight} : double{e.weight};
  }
  if (document && pivot_ > 0) {
    double norm2 = 0;
    for (const SparseVector::Entry& e : v->entries) norm2 += static_cast<double>(e.weight) * e.weight;
    acc[0] = std::sqrt(std::max(0.0, 1 - norm2));
  }
  double norm2 = 0;
  for (double x : acc) norm2 += x * x;
  if (!(norm2 > 0)) {
    // Every feature cancelled out (only possible in tiny dimensions): a fixed unit vector.
    std::fill(out, out + dim_, 0.0f);
    out[dim_ - 1] = 1.0f;
    return absl::OkStatus();
  }
  const double inv = 1 / std::sqrt(norm2);
  for (int c = 0; c < dim_; ++c) out[c] = static_cast<float>(acc[c] * inv);
  return absl::OkStatus();
}

absl::Status TextEmbedder::EmbedDocument(absl::string_view text, float* out) const { return Embed(text, true, out); }

absl::Status TextEmbedder::EmbedQuery(absl::string_view text, float* out) const { return Embed(text, false, out); }

}  // namespace shardvec::embed
