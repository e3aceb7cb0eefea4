// WordNet as a sample corpus: one record per synset of the Princeton WordNet database
// files (Debian's wordnet-base installs them in /usr/share/wordnet; format: man 5 wndb).
//
//   absl::StatusOr<embed::WordNet> wn = embed::WordNet::Load("/usr/share/wordnet");
//   for (const embed::Synset& s : wn->synsets()) {
//     uint64_t id = s.id();                   // 102129165 for the lion (noun 02129165)
//     std::string text = wn->Text(s);         // "lion, king of beasts, Panthera leo (noun): large
//                                             //  gregarious predatory feline ... A kind of big cat,
//                                             //  cat: any of several large cats typically ...."
//     auto metadata = wn->Metadata(s);        // pos, offset, lemmas, hypernyms
//   }
//
// The text is what a reader (or a RAG prompt) sees and also what gets embedded: the
// lemmas, the gloss, and what kind of thing it is (each hypernym's lemmas and
// definition), so that "large wild cat" meets the lion both in its own gloss ("large
// ... feline") and in its parent's ("big cat, cat: any of several large cats ...
// living in the wild"). Immutable once loaded; thread-compatible.
#ifndef SHARDVEC_EMBED_WORDNET_H_
#define SHARDVEC_EMBED_WORDNET_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardvec::embed {

// The four data files, in id order: data.noun is file 1, data.verb 2, data.adj 3,
// data.adv 4.
enum class WordNetFile { kNoun = 1, kVerb = 2, kAdj = 3, kAdv = 4 };

struct SynsetRef {
  WordNetFile file;
  uint32_t offset = 0;
};

struct Synset {
  WordNetFile file = WordNetFile::kNoun;
  // Byte offset of the synset's line in its data file: WordNet's own synset key.
  uint32_t offset = 0;
  // Lemmas with spaces for underscores and adjective markers ("(a)", "(p)") removed.
  std::vector<std::string> lemmas;
  // "@" (hypernym) and "@i" (instance hypernym) pointers.
  std::vector<SynsetRef> hypernyms;
  bool instance = false;  // the hypernyms are instance hypernyms (a named thing)
  std::string gloss;

  // Stable record id: file number x 10^8 + offset, e.g. 102129165 for noun 02129165.
  uint64_t id() const;
};

// "noun", "verb", "adj", "adv".
const char* FileName(WordNetFile file);

// The synsets of one data file's contents; license lines (two leading spaces) are
// skipped. `path` names the file in errors: INVALID_ARGUMENT "PATH: line N: ...".
absl::StatusOr<std::vector<Synset>> ParseDataFile(absl::string_view contents, WordNetFile file,
                                                  const std::string& path);

class WordNet {
 public:
  // Reads data.noun, data.verb, data.adj and data.adv from `dir`; NOT_FOUND naming the
  // file (and the Debian package) when one is missing.
  static absl::StatusOr<WordNet> Load(const std::string& dir);
  // From parsed synsets (tests).
  static WordNet FromSynsets(std::vector<Synset> synsets);

  const std::vector<Synset>& synsets() const { return synsets_; }
  // "lemma, lemma (noun): gloss. A kind of hypernym lemmas: their definition; ...".
  std::string Text(const Synset& s) const;
  // pos, offset, lemmas, hypernyms (their lemmas, "; " between synsets).
  std::map<std::string, std::string> Metadata(const Synset& s) const;

 private:
  const Synset* Find(const SynsetRef& ref) const;
  std::string HypernymLemmas(const Synset& s) const;

  std::vector<Synset> synsets_;
  absl::flat_hash_map<uint64_t, size_t> by_id_;
};

}  // namespace shardvec::embed

#endif  // SHARDVEC_EMBED_WORDNET_H_
