#include "embed/wordnet.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

namespace shardvec::embed {
namespace {

constexpr uint64_t kIdBase = 100000000;  // offsets have 8 decimal digits

uint64_t Key(WordNetFile file, uint32_t offset) { return static_cast<uint64_t>(file) * kIdBase + offset; }

// The file a pointer's part of speech lives in ("s", adjective satellites, are in data.adj).
bool FileOfPos(absl::string_view pos, WordNetFile* file) {
  if (pos == "n") *file = WordNetFile::kNoun;
  else if (pos == "v") *file = WordNetFile::kVerb;
  else if (pos == "a" || pos == "s") *file = WordNetFile::kAdj;
  else if (pos == "r") *file = WordNetFile::kAdv;
  else return false;
  return true;
}

// "big_cat" -> "big cat"; "galore(ip)" -> "galore".
std::string Lemma(absl::string_view word) {
  if (!word.empty() && word.back() == ')') {
    const size_t open = word.rfind('(');
    if (open != absl::string_view::npos && open > 0) word = word.substr(0, open);
  }
  return absl::StrReplaceAll(word, {{"_", " "}});
}

class LineParser {
 public:
  LineParser(const std::vector<absl::string_view>& tokens, const std::string& where)
      : tokens_(tokens), where_(where) {}

  absl::Status Next(absl::string_view what, absl::string_view* out) {
    if (pos_ >= tokens_.size()) return absl::InvalidArgumentError(absl::StrCat(where_, ": missing ", what));
    *out = tokens_[pos_++];
    return absl::OkStatus();
  }

  absl::Status Number(absl::string_view what, int base, uint32_t* out) {
    absl::string_view t;
    if (absl::Status s = Next(what, &t); !s.ok()) return s;
    bool ok = base == 16 ? absl::SimpleHexAtoi(t, out) : absl::SimpleAtoi(t, out);
    if (!ok) return absl::InvalidArgumentError(absl::StrCat(where_, ": ", what, " '", t, "' is not a number"));
    return absl::OkStatus();
  }

 private:
  const std::vector<absl::string_view>& tokens_;
  const std::string& where_;
  size_t pos_ = 0;
};

absl::StatusOr<Synset> ParseLine(absl::string_view line, WordNetFile file, const std::string& where) {
  const size_t bar = line.find(" | ");
  absl::string_view head = line.substr(0, bar);
  Synset s;
  s.file = file;
  if (bar != absl::string_view::npos) s.gloss = std::string(absl::StripAsciiWhitespace(line.substr(bar + 3)));
  std::vector<absl::string_view> tokens = absl::StrSplit(head, ' ', absl::SkipEmpty());
  LineParser p(tokens, where);
  absl::string_view t;
  if (absl::Status st = p.Number("synset_offset", 10, &s.offset); !st.ok()) return st;
  if (absl::Status st = p.Next("lex_filenum", &t); !st.ok()) return st;
  if (absl::Status st = p.Next("ss_type", &t); !st.ok()) return st;
  WordNetFile type_file;
  if (!FileOfPos(t, &type_file) || type_file != file) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ss_type '", t, "' does not belong in data.", FileName(file)));
  }
  uint32_t words = 0;
  if (absl::Status st = p.Number("w_cnt", 16, &words); !st.ok()) return st;
  if (words == 0) return absl::InvalidArgumentError(absl::StrCat(where, ": w_cnt is 0"));
  for (uint32_t i = 0; i < words; ++i) {
    if (absl::Status st = p.Next("word", &t); !st.ok()) return st;
    s.lemmas.push_back(Lemma(t));
    if (absl::Status st = p.Next("lex_id", &t); !st.ok()) return st;
  }
  uint32_t pointers = 0;
  if (absl::Status st = p.Number("p_cnt", 10, &pointers); !st.ok()) return st;
  for (uint32_t i = 0; i < pointers; ++i) {
    absl::string_view symbol, pos;
    uint32_t offset = 0;
    if (absl::Status st = p.Next("pointer_symbol", &symbol); !st.ok()) return st;
    if (absl::Status st = p.Number("pointer offset", 10, &offset); !st.ok()) return st;
    if (absl::Status st = p.Next("pointer pos", &pos); !st.ok()) return st;
    if (absl::Status st = p.Next("pointer source/target", &t); !st.ok()) return st;
    if (symbol != "@" && symbol != "@i") continue;
    WordNetFile target;
    if (!FileOfPos(pos, &target)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": pointer pos '", pos, "' is unknown"));
    }
    s.hypernyms.push_back({target, offset});
    s.instance = s.instance || symbol == "@i";
  }
  // Verb frames follow; nothing here needs them.
  return s;
}

}  // namespace

uint64_t Synset::id() const { return Key(file, offset); }

const char* FileName(WordNetFile file) {
  switch (file) {
    case WordNetFile::kNoun:
      return "noun";
    case WordNetFile::kVerb:
      return "verb";
    case WordNetFile::kAdj:
      return "adj";
    case WordNetFile::kAdv:
      return "adv";
  }
  return "?";
}

absl::StatusOr<std::vector<Synset>> ParseDataFile(absl::string_view contents, WordNetFile file,
                                                  const std::string& path) {
  std::vector<Synset> synsets;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (absl::StripAsciiWhitespace(line).empty() || absl::StartsWith(line, "  ")) continue;
    absl::StatusOr<Synset> s = ParseLine(line, file, absl::StrCat(path, ": line ", line_number));
    if (!s.ok()) return s.status();
    synsets.push_back(*std::move(s));
  }
  return synsets;
}

absl::StatusOr<WordNet> WordNet::Load(const std::string& dir) {
  std::vector<Synset> all;
  for (WordNetFile file : {WordNetFile::kNoun, WordNetFile::kVerb, WordNetFile::kAdj, WordNetFile::kAdv}) {
    const std::string path = absl::StrCat(dir, "/data.", FileName(file));
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return absl::NotFoundError(
          absl::StrCat(path, ": cannot open (WordNet's data files come with Debian's wordnet-base package)"));
    }
    std::stringstream buffer;
    buffer << in.rdbuf();
    absl::StatusOr<std::vector<Synset>> synsets = ParseDataFile(buffer.str(), file, path);
    if (!synsets.ok()) return synsets.status();
    for (Synset& s : *synsets) all.push_back(std::move(s));
  }
  return FromSynsets(std::move(all));
}

WordNet WordNet::FromSynsets(std::vector<Synset> synsets) {
  WordNet wn;
  wn.synsets_ = std::move(synsets);
  for (size_t i = 0; i < wn.synsets_.size(); ++i) wn.by_id_[wn.synsets_[i].id()] = i;
  return wn;
}

const Synset* WordNet::Find(const SynsetRef& ref) const {
  auto it = by_id_.find(Key(ref.file, ref.offset));
  return it == by_id_.end() ? nullptr : &synsets_[it->second];
}

std::string WordNet::HypernymLemmas(const Synset& s) const {
  std::vector<std::string> parts;
  for (const SynsetRef& ref : s.hypernyms) {
    if (const Synset* h = Find(ref); h != nullptr) parts.push_back(absl::StrJoin(h->lemmas, ", "));
  }
  return absl::StrJoin(parts, "; ");
}

std::string WordNet::Text(const Synset& s) const {
  std::string text = absl::StrCat(absl::StrJoin(s.lemmas, ", "), " (", FileName(s.file), "): ", s.gloss);
  std::vector<std::string> kinds;
  for (const SynsetRef& ref : s.hypernyms) {
    const Synset* h = Find(ref);
    if (h == nullptr) continue;
    // The parent's definition without its usage examples.
    absl::string_view definition = h->gloss;
    definition = definition.substr(0, definition.find("; \""));
    kinds.push_back(absl::StrCat(absl::StrJoin(h->lemmas, ", "), ": ", definition));
  }
  if (!kinds.empty()) {
    absl::StrAppend(&text, ". ", s.instance ? "An instance of " : "A kind of ", absl::StrJoin(kinds, "; "), ".");
  }
  return text;
}

std::map<std::string, std::string> WordNet::Metadata(const Synset& s) const {
  return {{"pos", FileName(s.file)},
          {"offset", absl::StrFormat("%08d", s.offset)},
          {"lemmas", absl::StrJoin(s.lemmas, ", ")},
          {"hypernyms", HypernymLemmas(s)}};
}

}  // namespace shardvec::embed
