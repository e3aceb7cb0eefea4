#include "llm/tokenizer.h"

#include <pcre2.h>

#include <array>
#include <bitset>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace shardvec::llm {
namespace {

using Json = nlohmann::json;

// The regex of tokenizers' ByteLevel pre-tokenizer (use_regex=true), from GPT-2.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Ids above this are taken as a broken file rather than allocated for.
constexpr int64_t kMaxId = int64_t{1} << 24;

absl::Status Invalid(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

std::string Quoted(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// Decodes the code point at s[*pos] and advances *pos; false (pos unchanged) when the
// bytes there are not valid UTF-8. Token strings come from JSON, which nlohmann has
// already validated, so this only needs to be correct, not fast.
bool NextCodePoint(absl::string_view s, size_t* pos, uint32_t* cp) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  size_t i = *pos;
  uint8_t b0 = byte(i);
  int len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > s.size()) return false;
  uint32_t c = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (int k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return false;
    c = (c << 6) | (byte(i + k) & 0x3F);
  }
  *cp = c;
  *pos = i + len;
  return true;
}

size_t Utf8Length(absl::string_view s, size_t pos) {
  size_t next = pos;
  uint32_t cp;
  return NextCodePoint(s, &next, &cp) ? next - pos : 1;
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68
// bytes for U+0100 onwards, so every byte string becomes printable text without spaces.
class ByteLevelTable {
 public:
  ByteLevelTable() {
    cp_to_byte_.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      uint32_t cp = printable ? b : next++;
      byte_to_cp_[b] = cp;
      cp_to_byte_[cp] = b;
    }
  }
  uint32_t CodePoint(uint8_t b) const { return byte_to_cp_[b]; }
  // The bytes a byte-level token string stands for; false when some character is
  // outside the table (tokenizers' decoder then keeps the string's own UTF-8).
  bool ToBytes(absl::string_view token, std::string* bytes) const {
    bytes->clear();
    size_t pos = 0;
    while (pos < token.size()) {
      uint32_t cp;
      if (!NextCodePoint(token, &pos, &cp) || cp >= cp_to_byte_.size() || cp_to_byte_[cp] < 0) {
        return false;
      }
      bytes->push_back(static_cast<char>(cp_to_byte_[cp]));
    }
    return true;
  }

 private:
  std::array<uint32_t, 256> byte_to_cp_;
  std::array<int16_t, 256 + 68> cp_to_byte_;
};

const ByteLevelTable& ByteLevel() {
  static const ByteLevelTable* table = new ByteLevelTable();
  return *table;
}

// What tokenizers' ByteLevel decoder makes of one token string.
std::string DecodedBytes(const std::string& token) {
  std::string bytes;
  return ByteLevel().ToBytes(token, &bytes) ? bytes : token;
}

// tokenizers runs its regexes with Oniguruma, whose \s is Unicode White_Space. PCRE2's
// \s under PCRE2_UCP also matches U+180E (MONGOLIAN VOWEL SEPARATOR, no longer a space
// in Unicode), so text around U+180E would split differently. \p{White_Space} is exactly
// Oniguruma's set (compared over all code points), also inside classes. \p{L} and \p{N}
// agree as they are.
std::string OnigurumaCompatible(absl::string_view pattern) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c != '\\' || i + 1 == pattern.size()) {
      out.push_back(c);
      continue;
    }
    char e = pattern[++i];
    if (e == 'Q') {  // \Q...\E is literal text: copy it untouched.
      size_t end = pattern.find("\\E", i + 1);
      end = end == absl::string_view::npos ? pattern.size() : end + 2;
      out.append("\\Q");
      out.append(pattern.substr(i + 1, end - (i + 1)).data(), end - (i + 1));
      i = end - 1;
    } else if (e == 's') {
      out.append("\\p{White_Space}");
    } else if (e == 'S') {
      out.append("\\P{White_Space}");
    } else {
      out.push_back('\\');
      out.push_back(e);
    }
  }
  return out;
}

class Regex {
 public:
  // PCRE2_MATCH_INVALID_UTF lets Encode take any bytes: invalid sequences simply never
  // match, and no per-call UTF check of the subject is needed.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(absl::string_view pattern, bool literal,
                                                        absl::string_view where) {
    std::string translated = literal ? std::string(pattern) : OnigurumaCompatible(pattern);
    uint32_t options = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                     options, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return Invalid(where, absl::StrCat("regex does not compile at offset ", offset, ": ",
                                         reinterpret_cast<const char*>(message)));
    }
    // Without JIT (unsupported CPU) pcre2_match falls back to the interpreter by itself.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return std::unique_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // tokenizers' Split with behavior Isolated: every match and every gap between matches
  // is a piece. Empty matches split nothing. md is the caller's (one per thread).
  void Split(absl::string_view text, pcre2_match_data* md,
             absl::FunctionRef<void(absl::string_view)> emit) const {
    const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t prev = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      int rc = pcre2_match(code_, subject, text.size(), pos, 0, md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        // The JIT's small default stack can run out on pathological input; the
        // interpreter keeps its backtracking state on the heap.
        rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_JIT, md, nullptr);
      }
      // NOMATCH, or a resource limit on absurd input: the rest is one gap.
      if (rc < 0) break;
      size_t start = ov[0];
      size_t end = ov[1];
      if (end <= start) {
        pos = start + Utf8Length(text, start);
        continue;
      }
      if (start > prev) emit(text.substr(prev, start - prev));
      emit(text.substr(start, end - start));
      prev = pos = end;
    }
    if (prev < text.size()) emit(text.substr(prev));
  }

  pcre2_code* code() const { return code_; }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

// Match data for every regex of one Encode call (pcre2_match_data is per thread).
class MatchScratch {
 public:
  explicit MatchScratch(const std::vector<const Regex*>& regexes) {
    for (const Regex* r : regexes) data_.push_back(pcre2_match_data_create_from_pattern(r->code(), nullptr));
  }
  ~MatchScratch() {
    for (pcre2_match_data* md : data_) pcre2_match_data_free(md);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
  pcre2_match_data* get(size_t i) const { return data_[i]; }

 private:
  std::vector<pcre2_match_data*> data_;
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() : terminal_(1, -1) {}
  void Add(absl::string_view content, int32_t id) {
    if (content.empty()) return;
    first_bytes_.set(static_cast<uint8_t>(content[0]));
    int32_t node = 0;
    for (char c : content) {
      auto [it, inserted] = edges_.try_emplace(EdgeKey(node, c), static_cast<int32_t>(terminal_.size()));
      if (inserted) terminal_.push_back(-1);
      node = it->second;
    }
    terminal_[node] = id;
  }
  // Splits text into runs of plain text (id -1) and added tokens, in order.
  void Split(absl::string_view text, absl::FunctionRef<void(absl::string_view, int32_t)> emit) const {
    if (first_bytes_.none()) {
      if (!text.empty()) emit(text, -1);
      return;
    }
    size_t prev = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      if (!first_bytes_[static_cast<uint8_t>(text[i])]) continue;
      size_t best_len = 0;
      int32_t best_id = -1;
      int32_t node = 0;
      for (size_t j = i; j < text.size(); ++j) {
        auto it = edges_.find(EdgeKey(node, text[j]));
        if (it == edges_.end()) break;
        node = it->second;
        if (terminal_[node] >= 0) {
          best_len = j + 1 - i;
          best_id = terminal_[node];
        }
      }
      if (best_id < 0) continue;
      if (i > prev) emit(text.substr(prev, i - prev), -1);
      emit(text.substr(i, best_len), best_id);
      prev = i + best_len;
      i = prev - 1;
    }
    if (prev < text.size()) emit(text.substr(prev), -1);
  }

 private:
  static uint64_t EdgeKey(int32_t node, char c) {
    return (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(c);
  }
  std::bitset<256> first_bytes_;
  absl::flat_hash_map<uint64_t, int32_t> edges_;  // (node, byte) -> child node
  std::vector<int32_t> terminal_;                 // node -> token id, or -1
};

// Sharded so that threads encoding at once rarely wait on the same mutex. A full shard is
// cleared rather than evicted piecemeal: simple, bounded, and it follows the text.
class BpeCache {
 public:
  static constexpr size_t kMaxWordBytes = 64;

  bool Lookup(absl::string_view word, std::vector<int32_t>* out) const {
    const Shard& shard = shards_[ShardOf(word)];
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.map.find(word);
    if (it == shard.map.end()) return false;
    out->insert(out->end(), it->second.begin(), it->second.end());
    return true;
  }
  void Insert(absl::string_view word, const int32_t* ids, size_t n) const {
    Shard& shard = shards_[ShardOf(word)];
    std::lock_guard<std::mutex> lock(shard.mu);
    if (shard.map.size() >= kMaxEntriesPerShard) shard.map.clear();
    shard.map.try_emplace(word, ids, ids + n);
  }

 private:
  static constexpr size_t kShards = 16;
  static constexpr size_t kMaxEntriesPerShard = 4096;
  struct Shard {
    mutable std::mutex mu;
    absl::flat_hash_map<std::string, std::vector<int32_t>> map;
  };
  static size_t ShardOf(absl::string_view word) { return absl::HashOf(word) % kShards; }
  mutable std::array<Shard, kShards> shards_;
};

struct MergeRule {
  int32_t rank;
  int32_t new_id;
};

class BpeTokenizer final : public Tokenizer {
 public:
  absl::Status Init(const Json& root);

  std::vector<int32_t> Encode(const std::string& text, bool add_bos) const override;
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  std::string TokenBytes(int32_t id) const override {
    return id >= 0 && id < vocab_size() ? token_bytes_[id] : std::string();
  }
  int vocab_size() const override { return static_cast<int>(token_bytes_.size()); }
  int32_t TokenId(const std::string& token) const override {
    auto it = added_ids_.find(token);
    if (it != added_ids_.end()) return it->second;
    it = vocab_ids_.find(token);
    return it != vocab_ids_.end() ? it->second : -1;
  }
  int32_t bos_id() const override { return prefix_ids_.empty() ? -1 : prefix_ids_[0]; }

 private:
  absl::Status ParseModel(const Json& model);
  absl::Status ParseMerges(const Json& merges);
  absl::Status ParseAddedTokens(const Json& added);
  absl::Status ParsePreTokenizer(const Json& pre);
  absl::Status ParsePreTokenizerStep(const Json& step, const std::string& where, bool last);
  absl::Status ParsePostProcessor(const Json& post, const std::string& where);
  absl::Status ParseTemplate(const Json& post, const std::string& where);
  absl::Status ParseDecoder(const Json& decoder, const std::string& where);
  void SetTokenBytes(int32_t id, const std::string& token);

  void SplitStages(absl::string_view piece, size_t stage, const MatchScratch& scratch,
                   absl::FunctionRef<void(absl::string_view)> emit) const;
  void EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const;
  void MergeWord(absl::string_view word, std::vector<int32_t>* ids) const;
  const MergeRule* FindMerge(int32_t left, int32_t right) const {
    auto it = merges_.find((static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
                           static_cast<uint32_t>(right));
    return it == merges_.end() ? nullptr : &it->second;
  }

  // Model vocab: by token string (TokenId) and by the bytes it stands for (Encode).
  absl::flat_hash_map<std::string, int32_t> vocab_ids_;
  absl::flat_hash_map<std::string, int32_t> vocab_by_bytes_;
  std::array<int32_t, 256> byte_ids_;                // single-byte tokens, -1 when missing
  absl::flat_hash_map<uint64_t, MergeRule> merges_;  // (left id << 32 | right id)
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;

  // tokenizers matches added tokens with normalized=false first, then the others in
  // what is left (the normalizer, which we require to be null, runs in between).
  AddedTokenMatcher raw_added_;
  AddedTokenMatcher normalized_added_;
  absl::flat_hash_map<std::string, int32_t> added_ids_;

  // Pre-tokenizer: Split regexes in order, then ByteLevel (a space prefix, its own regex).
  std::vector<std::unique_ptr<Regex>> splits_;
  bool add_prefix_space_ = false;
  std::unique_ptr<Regex> byte_level_regex_;  // null unless use_regex

  std::vector<int32_t> prefix_ids_;  // the post-processor's template around the text
  std::vector<int32_t> suffix_ids_;
  bool has_template_ = false;

  std::vector<std::string> token_bytes_;       // by id
  std::vector<bool> special_;                  // by id
  std::vector<std::string> special_contents_;  // while loading

  BpeCache cache_;
};

bool IsNullOr(const Json& root, const char* key, const Json& value) {
  auto it = root.find(key);
  return it == root.end() || it->is_null() || *it == value;
}

absl::Status BpeTokenizer::Init(const Json& root) {
  if (!root.is_object()) return Invalid("tokenizer.json", "the top level is not a JSON object");
  auto normalizer = root.find("normalizer");
  if (normalizer != root.end() && !normalizer->is_null()) {
    bool empty_sequence = normalizer->is_object() && normalizer->value("type", Json()) == "Sequence" &&
                          normalizer->value("normalizers", Json::array()).empty();
    if (!empty_sequence) {
      const Json type = normalizer->is_object() ? normalizer->value("type", Json()) : *normalizer;
      return Invalid("normalizer", absl::StrCat(Quoted(type), " is not supported (only null)"));
    }
  }
  auto model = root.find("model");
  if (model == root.end() || !model->is_object()) return Invalid("model", "missing or not an object");
  if (absl::Status s = ParseModel(*model); !s.ok()) return s;
  const Json added = root.value("added_tokens", Json());
  if (absl::Status s = ParseAddedTokens(added.is_null() ? Json::array() : added); !s.ok()) return s;
  auto pre = root.find("pre_tokenizer");
  if (pre == root.end() || pre->is_null()) {
    return Invalid("pre_tokenizer", "missing; a byte-level BPE needs a ByteLevel pre-tokenizer");
  }
  if (absl::Status s = ParsePreTokenizer(*pre); !s.ok()) return s;
  auto post = root.find("post_processor");
  if (post != root.end() && !post->is_null()) {
    if (absl::Status s = ParsePostProcessor(*post, "post_processor"); !s.ok()) return s;
  }
  auto decoder = root.find("decoder");
  if (decoder == root.end() || decoder->is_null()) {
    return Invalid("decoder", "missing; only ByteLevel is supported");
  }
  if (absl::Status s = ParseDecoder(*decoder, "decoder"); !s.ok()) return s;

  // tokenizers decides skip_special by token string, so a vocab entry spelled like a
  // special token is special too.
  special_.assign(token_bytes_.size(), false);
  for (const std::string& content : special_contents_) {
    for (const auto* ids : {&added_ids_, &vocab_ids_}) {
      auto it = ids->find(content);
      if (it != ids->end()) special_[it->second] = true;
    }
  }
  special_contents_.clear();
  return absl::OkStatus();
}

void BpeTokenizer::SetTokenBytes(int32_t id, const std::string& token) {
  if (static_cast<size_t>(id) >= token_bytes_.size()) token_bytes_.resize(id + 1);
  token_bytes_[id] = DecodedBytes(token);
}

absl::Status BpeTokenizer::ParseModel(const Json& model) {
  const Json type = model.value("type", Json());
  if (type != "BPE") {
    return Invalid("model.type", absl::StrCat(Quoted(type), " is not supported (only \"BPE\")"));
  }
  if (!IsNullOr(model, "dropout", Json())) return Invalid("model.dropout", "must be null");
  if (!IsNullOr(model, "byte_fallback", false)) return Invalid("model.byte_fallback", "must be false");
  if (!IsNullOr(model, "continuing_subword_prefix", "")) {
    return Invalid("model.continuing_subword_prefix", "must be null or empty");
  }
  if (!IsNullOr(model, "end_of_word_suffix", "")) {
    return Invalid("model.end_of_word_suffix", "must be null or empty");
  }
  const Json ignore_merges = model.value("ignore_merges", Json(false));
  const Json fuse_unk = model.value("fuse_unk", Json(false));
  if (!ignore_merges.is_boolean()) return Invalid("model.ignore_merges", "not a boolean");
  if (!fuse_unk.is_boolean()) return Invalid("model.fuse_unk", "not a boolean");
  ignore_merges_ = ignore_merges.get<bool>();
  fuse_unk_ = fuse_unk.get<bool>();

  auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) return Invalid("model.vocab", "missing or not an object");
  std::vector<bool> used;
  byte_ids_.fill(-1);
  vocab_ids_.reserve(vocab->size());
  vocab_by_bytes_.reserve(vocab->size());
  std::string bytes;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    const auto where = [&] { return absl::StrCat("model.vocab[", Quoted(Json(it.key())), "]"); };
    if (!it.value().is_number_integer()) return Invalid(where(), "the id is not an integer");
    int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= kMaxId) return Invalid(where(), absl::StrCat("id ", id, " is out of range"));
    SetTokenBytes(static_cast<int32_t>(id), it.key());
    if (used.size() < token_bytes_.size()) used.resize(token_bytes_.size(), false);
    if (used[id]) return Invalid(where(), absl::StrCat("id ", id, " is already used by another token"));
    used[id] = true;
    vocab_ids_.emplace(it.key(), static_cast<int32_t>(id));
    // A string with characters outside the byte-level alphabet can never come out of
    // the pre-tokenizer, so it is reachable only through merges.
    if (ByteLevel().ToBytes(it.key(), &bytes)) {
      vocab_by_bytes_.emplace(bytes, static_cast<int32_t>(id));
      if (bytes.size() == 1) byte_ids_[static_cast<uint8_t>(bytes[0])] = static_cast<int32_t>(id);
    }
  }
  const Json unk = model.value("unk_token", Json());
  if (!unk.is_null()) {
    auto it = unk.is_string() ? vocab_ids_.find(unk.get<std::string>()) : vocab_ids_.end();
    if (it == vocab_ids_.end()) {
      return Invalid("model.unk_token", absl::StrCat(Quoted(unk), " is not in model.vocab"));
    }
    unk_id_ = it->second;
  }
  auto merges = model.find("merges");
  if (merges == model.end() || !merges->is_array()) return Invalid("model.merges", "missing or not an array");
  return ParseMerges(*merges);
}

absl::Status BpeTokenizer::ParseMerges(const Json& merges) {
  merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const Json& m = merges[i];
    const std::string where = absl::StrCat("model.merges[", i, "]");
    std::string left, right;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      size_t space = s.find(' ');
      if (space == std::string::npos) {
        return Invalid(where, absl::StrCat(Quoted(m), " is not \"left right\""));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return Invalid(where, "neither \"left right\" nor [\"left\", \"right\"]");
    }
    int32_t ids[3];
    const std::string parts[3] = {left, right, left + right};
    for (int k = 0; k < 3; ++k) {
      auto it = vocab_ids_.find(parts[k]);
      if (it == vocab_ids_.end()) {
        return Invalid(where, absl::StrCat(Quoted(Json(parts[k])), k == 2 ? " (the merged token)" : "",
                                           " is not in model.vocab"));
      }
      ids[k] = it->second;
    }
    // A repeated pair keeps its last rank, as tokenizers' map does.
    merges_[(static_cast<uint64_t>(ids[0]) << 32) | static_cast<uint32_t>(ids[1])] =
        MergeRule{static_cast<int32_t>(i), ids[2]};
  }
  return absl::OkStatus();
}

// Ids are taken as written. (tokenizers renumbers added tokens that are not in the
// vocab from the vocab's size upwards on load; in real files the two agree.)
absl::Status BpeTokenizer::ParseAddedTokens(const Json& added) {
  if (!added.is_array()) return Invalid("added_tokens", "not an array");
  for (size_t i = 0; i < added.size(); ++i) {
    const Json& t = added[i];
    const std::string where = absl::StrCat("added_tokens[", i, "]");
    if (!t.is_object() || !t.value("id", Json()).is_number_integer() ||
        !t.value("content", Json()).is_string()) {
      return Invalid(where, "needs an integer id and a string content");
    }
    for (const char* flag : {"lstrip", "rstrip", "single_word"}) {
      if (!IsNullOr(t, flag, false)) return Invalid(absl::StrCat(where, ".", flag), "must be false");
    }
    for (const char* flag : {"special", "normalized"}) {
      auto it = t.find(flag);
      if (it != t.end() && !it->is_boolean()) return Invalid(absl::StrCat(where, ".", flag), "not a boolean");
    }
    int64_t id = t["id"].get<int64_t>();
    if (id < 0 || id >= kMaxId) return Invalid(where + ".id", absl::StrCat(id, " is out of range"));
    const std::string& content = t["content"].get_ref<const std::string&>();
    SetTokenBytes(static_cast<int32_t>(id), content);
    bool special = t.value("special", false);
    if (special) special_contents_.push_back(content);
    // tokenizers' default: special tokens are matched in the raw text.
    bool normalized = t.value("normalized", !special);
    (normalized ? normalized_added_ : raw_added_).Add(content, static_cast<int32_t>(id));
    added_ids_[content] = static_cast<int32_t>(id);
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePreTokenizer(const Json& pre) {
  if (!pre.is_object()) return Invalid("pre_tokenizer", "not an object");
  if (pre.value("type", Json()) != "Sequence") return ParsePreTokenizerStep(pre, "pre_tokenizer", true);
  const Json steps = pre.value("pretokenizers", Json());
  if (!steps.is_array() || steps.empty()) return Invalid("pre_tokenizer.pretokenizers", "missing or empty");
  for (size_t i = 0; i < steps.size(); ++i) {
    const std::string where = absl::StrCat("pre_tokenizer.pretokenizers[", i, "]");
    if (absl::Status s = ParsePreTokenizerStep(steps[i], where, i + 1 == steps.size()); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParsePreTokenizerStep(const Json& step, const std::string& where, bool last) {
  if (!step.is_object()) return Invalid(where, "not an object");
  const Json type = step.value("type", Json());
  if (type == "Split") {
    const Json pattern = step.value("pattern", Json());
    const Json behavior = step.value("behavior", Json());
    if (behavior != "Isolated") {
      return Invalid(where + ".behavior",
                     absl::StrCat(Quoted(behavior), " is not supported (only \"Isolated\")"));
    }
    if (!IsNullOr(step, "invert", false)) return Invalid(where + ".invert", "must be false");
    bool literal = pattern.is_object() && pattern.contains("String") && pattern["String"].is_string();
    bool regex = pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string();
    if (!literal && !regex) {
      return Invalid(where + ".pattern", "neither {\"Regex\": ...} nor {\"String\": ...}");
    }
    const std::string& text = pattern[literal ? "String" : "Regex"].get_ref<const std::string&>();
    auto compiled = Regex::Compile(text, literal, where + ".pattern");
    if (!compiled.ok()) return compiled.status();
    splits_.push_back(*std::move(compiled));
    if (last) return Invalid(where, "the pre-tokenizer must end with a ByteLevel step");
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    if (!last) return Invalid(where, "ByteLevel must be the last pre-tokenizer step");
    const Json prefix = step.value("add_prefix_space", Json(false));
    const Json use_regex = step.value("use_regex", Json(true));
    if (!prefix.is_boolean()) return Invalid(where + ".add_prefix_space", "not a boolean");
    if (!use_regex.is_boolean()) return Invalid(where + ".use_regex", "not a boolean");
    add_prefix_space_ = prefix.get<bool>();
    if (use_regex.get<bool>()) {
      auto compiled = Regex::Compile(kGpt2Pattern, false, where);
      if (!compiled.ok()) return compiled.status();
      byte_level_regex_ = *std::move(compiled);
    }
    return absl::OkStatus();
  }
  return Invalid(where + ".type",
                 absl::StrCat(Quoted(type), " is not supported (only Split, ByteLevel, Sequence)"));
}

absl::Status BpeTokenizer::ParsePostProcessor(const Json& post, const std::string& where) {
  if (!post.is_object()) return Invalid(where, "not an object");
  const Json type = post.value("type", Json());
  if (type == "ByteLevel") return absl::OkStatus();  // only moves offsets
  if (type == "TemplateProcessing") return ParseTemplate(post, where);
  if (type == "Sequence") {
    const Json steps = post.value("processors", Json());
    if (!steps.is_array()) return Invalid(where + ".processors", "missing or not an array");
    for (size_t i = 0; i < steps.size(); ++i) {
      const Json step_type = steps[i].is_object() ? steps[i].value("type", Json()) : Json();
      const std::string step_where = absl::StrCat(where, ".processors[", i, "]");
      if (step_type == "Sequence") return Invalid(step_where + ".type", "nested Sequence is not supported");
      if (absl::Status s = ParsePostProcessor(steps[i], step_where); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  return Invalid(
      where + ".type",
      absl::StrCat(Quoted(type), " is not supported (only TemplateProcessing, ByteLevel, Sequence)"));
}

absl::Status BpeTokenizer::ParseTemplate(const Json& post, const std::string& where) {
  if (has_template_) return Invalid(where, "more than one TemplateProcessing");
  has_template_ = true;
  const Json single = post.value("single", Json());
  const Json specials = post.value("special_tokens", Json::object());
  if (!single.is_array()) return Invalid(where + ".single", "missing or not an array");
  if (!specials.is_object()) return Invalid(where + ".special_tokens", "not an object");
  bool seen_sequence = false;
  for (size_t i = 0; i < single.size(); ++i) {
    const Json& piece = single[i];
    const std::string piece_where = absl::StrCat(where, ".single[", i, "]");
    const auto field = [&](const char* kind, const char* key) {
      return piece.is_object() && piece.contains(kind) && piece[kind].is_object()
                 ? piece[kind].value(key, Json())
                 : Json();
    };
    if (piece.is_object() && piece.contains("Sequence")) {
      if (seen_sequence || field("Sequence", "id") != "A") {
        return Invalid(piece_where, "the single template must hold sequence A exactly once");
      }
      seen_sequence = true;
      continue;
    }
    const Json name = field("SpecialToken", "id");
    if (!name.is_string()) return Invalid(piece_where, "neither a SpecialToken nor a Sequence");
    const Json entry = specials.value(name.get<std::string>(), Json());
    const Json ids = entry.is_object() ? entry.value("ids", Json()) : Json();
    if (!ids.is_array()) {
      return Invalid(where + ".special_tokens", absl::StrCat(Quoted(name), " is missing or has no ids"));
    }
    for (const Json& id : ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= vocab_size()) {
        return Invalid(where + ".special_tokens", absl::StrCat(Quoted(name), " has an id outside the vocab"));
      }
      (seen_sequence ? suffix_ids_ : prefix_ids_).push_back(id.get<int32_t>());
    }
  }
  if (!seen_sequence) return Invalid(where + ".single", "the single template has no sequence A");
  return absl::OkStatus();
}

absl::Status BpeTokenizer::ParseDecoder(const Json& decoder, const std::string& where) {
  const Json type = decoder.is_object() ? decoder.value("type", Json()) : Json();
  if (type == "ByteLevel") return absl::OkStatus();
  if (type == "Sequence" && decoder.value("decoders", Json()).is_array() && decoder["decoders"].size() == 1) {
    return ParseDecoder(decoder["decoders"][0], where + ".decoders[0]");
  }
  return Invalid(where + ".type", absl::StrCat(Quoted(type), " is not supported (only ByteLevel)"));
}

std::vector<int32_t> BpeTokenizer::Encode(const std::string& text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_bos) ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  std::vector<const Regex*> regexes;
  for (const auto& r : splits_) regexes.push_back(r.get());
  if (byte_level_regex_ != nullptr) regexes.push_back(byte_level_regex_.get());
  MatchScratch scratch(regexes);
  raw_added_.Split(text, [&](absl::string_view part, int32_t id) {
    if (id >= 0) {
      ids.push_back(id);
      return;
    }
    normalized_added_.Split(part, [&](absl::string_view segment, int32_t id2) {
      if (id2 >= 0) {
        ids.push_back(id2);
      } else {
        SplitStages(segment, 0, scratch, [&](absl::string_view word) { EncodeWord(word, &ids); });
      }
    });
  });
  if (add_bos) ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  return ids;
}

void BpeTokenizer::SplitStages(absl::string_view piece, size_t stage, const MatchScratch& scratch,
                               absl::FunctionRef<void(absl::string_view)> emit) const {
  if (piece.empty()) return;
  if (stage < splits_.size()) {
    splits_[stage]->Split(piece, scratch.get(stage),
                          [&](absl::string_view sub) { SplitStages(sub, stage + 1, scratch, emit); });
    return;
  }
  // The ByteLevel step works on each piece the Splits made: prefix, then its own regex.
  std::string prefixed;
  if (add_prefix_space_ && piece[0] != ' ') {
    prefixed = absl::StrCat(" ", piece);
    piece = prefixed;
  }
  if (byte_level_regex_ == nullptr) {
    emit(piece);
  } else {
    byte_level_regex_->Split(piece, scratch.get(splits_.size()), emit);
  }
}

void BpeTokenizer::EncodeWord(absl::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    auto it = vocab_by_bytes_.find(word);
    if (it != vocab_by_bytes_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (word.size() > BpeCache::kMaxWordBytes) {
    MergeWord(word, ids);
    return;
  }
  if (cache_.Lookup(word, ids)) return;
  size_t before = ids->size();
  MergeWord(word, ids);
  cache_.Insert(word, ids->data() + before, ids->size() - before);
}

// tokenizers' Word::merge_all: a min-heap of candidate pairs by (rank, position); a
// popped pair whose symbols changed since it was pushed is skipped. O(n log n).
void BpeTokenizer::MergeWord(absl::string_view word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&](int32_t id) {
    int32_t n = static_cast<int32_t>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back(Symbol{id, n - 1, -1, true});
  };
  // Bytes without a token become unk (runs fused into one with fuse_unk) or vanish when
  // there is no unk token, as in tokenizers.
  bool pending_unk = false;
  for (char c : word) {
    int32_t id = byte_ids_[static_cast<uint8_t>(c)];
    if (id >= 0) {
      if (pending_unk) add(unk_id_);
      pending_unk = false;
      add(id);
    } else if (unk_id_ >= 0) {
      if (pending_unk && !fuse_unk_) add(unk_id_);
      pending_unk = true;
    }
  }
  if (pending_unk) add(unk_id_);

  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeRule* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      queue.push(Candidate{m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Stale when the pair no longer produces this token (checked by new id, as
    // tokenizers does).
    const MergeRule* current = FindMerge(left.id, right.id);
    if (current == nullptr || current->new_id != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const MergeRule* m = FindMerge(symbols[left.prev].id, left.id)) {
        queue.push(Candidate{m->rank, left.prev, m->new_id});
      }
    }
    if (left.next >= 0) {
      if (const MergeRule* m = FindMerge(left.id, symbols[left.next].id)) {
        queue.push(Candidate{m->rank, top.pos, m->new_id});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids->push_back(s.id);
  }
}

std::string BpeTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (skip_special && special_[id]) continue;
    out += token_bytes_[id];
  }
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const std::string& json_text) {
  Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Invalid("tokenizer.json", "not valid JSON");
  auto tok = std::make_unique<BpeTokenizer>();
  if (absl::Status s = tok->Init(root); !s.ok()) return s;
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": read error"));
  auto tok = FromJson(text.str());
  if (!tok.ok()) return absl::Status(tok.status().code(), absl::StrCat(path, ": ", tok.status().message()));
  return tok;
}

}  // namespace shardvec::llm
