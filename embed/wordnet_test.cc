#include "embed/wordnet.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "embed/text_embedder.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardvec::embed {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// wndb format (man 5 wndb): the license header's lines start with two spaces; a
// synset line is offset, lex_filenum, ss_type, w_cnt (hex), words with lex_id,
// p_cnt, pointers, and after " | " the gloss. Lines copied from WordNet 3.0.
constexpr char kNouns[] =
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  \n"
    "02120997 05 n 02 feline 0 felid 0 001 @ 02075296 n 0000 | any of various lithe-bodied roundheaded "
    "fissiped mammals, many with retractile claws  \n"
    "02127808 05 n 02 big_cat 0 cat 2 003 @ 02120997 n 0000 ~ 02129165 n 0000 ~ 02129604 n 0000 | any of several "
    "large cats typically able to roar and living in the wild  \n"
    "02129165 05 n 03 lion 0 king_of_beasts 0 Panthera_leo 0 002 @ 02127808 n 0000 #m 02128120 n 0000 | large "
    "gregarious predatory feline of Africa and India having a tawny coat with a shaggy mane in the male  \n"
    "02129604 05 n 02 tiger 0 Panthera_tigris 0 001 @ 02127808 n 0000 | large feline of forests in most of Asia "
    "having a tawny coat with black stripes; endangered  \n"
    "08932568 15 n 04 Paris 0 City_of_Light 0 French_capital 0 capital_of_France 0 001 @i 08518505 n 0000 | "
    "the capital and largest city of France; \"Paris is the center of French culture\"  \n";
constexpr char kVerbs[] =
    "00002325 29 v 01 respire 1 002 $ 00001740 v 0000 @ 02108395 v 0000 01 + 02 00 | undergo the biomedical and "
    "metabolic processes of respiration  \n";
constexpr char kAdjectives[] =
    "00014358 00 s 02 abounding 0 galore(ip) 0 001 & 00013887 a 0000 | existing in abundance; \"whiskey galore\"  \n";

TEST(WordNetTest, ParsesSynsetLines) {
  absl::StatusOr<std::vector<Synset>> nouns = ParseDataFile(kNouns, WordNetFile::kNoun, "data.noun");
  ASSERT_TRUE(nouns.ok()) << nouns.status();
  ASSERT_EQ(nouns->size(), 5u);
  const Synset& lion = (*nouns)[2];
  EXPECT_EQ(lion.offset, 2129165u);
  EXPECT_EQ(lion.id(), 102129165u);
  EXPECT_THAT(lion.lemmas, ElementsAre("lion", "king of beasts", "Panthera leo"));
  ASSERT_EQ(lion.hypernyms.size(), 1u);  // "#m" (member holonym) is not a hypernym
  EXPECT_EQ(lion.hypernyms[0].offset, 2127808u);
  EXPECT_FALSE(lion.instance);
  EXPECT_EQ(lion.gloss,
            "large gregarious predatory feline of Africa and India having a tawny coat with a shaggy mane in the male");
  EXPECT_TRUE((*nouns)[4].instance);

  absl::StatusOr<std::vector<Synset>> verbs = ParseDataFile(kVerbs, WordNetFile::kVerb, "data.verb");
  ASSERT_TRUE(verbs.ok()) << verbs.status();
  EXPECT_EQ((*verbs)[0].id(), 200002325u);
  EXPECT_EQ((*verbs)[0].hypernyms.size(), 1u);

  absl::StatusOr<std::vector<Synset>> adjectives = ParseDataFile(kAdjectives, WordNetFile::kAdj, "data.adj");
  ASSERT_TRUE(adjectives.ok()) << adjectives.status();
  EXPECT_THAT((*adjectives)[0].lemmas, ElementsAre("abounding", "galore"));
  EXPECT_EQ((*adjectives)[0].id(), 300014358u);
}

TEST(WordNetTest, TextAndMetadataNameTheKindOfThing) {
  absl::StatusOr<std::vector<Synset>> nouns = ParseDataFile(kNouns, WordNetFile::kNoun, "data.noun");
  ASSERT_TRUE(nouns.ok());
  WordNet wn = WordNet::FromSynsets(*std::move(nouns));
  const Synset& lion = wn.synsets()[2];
  EXPECT_EQ(wn.Text(lion),
            "lion, king of beasts, Panthera leo (noun): large gregarious predatory feline of Africa and India having a "
            "tawny coat with a shaggy mane in the male. A kind of big cat, cat: any of several large cats typically "
            "able to roar and living in the wild.");
  EXPECT_THAT(wn.Metadata(lion),
              ElementsAre(std::pair<const std::string, std::string>("hypernyms", "big cat, cat"),
                          std::pair<const std::string, std::string>("lemmas", "lion, king of beasts, Panthera leo"),
                          std::pair<const std::string, std::string>("offset", "02129165"),
                          std::pair<const std::string, std::string>("pos", "noun")));
  // A hypernym outside the data read is left out.
  EXPECT_EQ(wn.Text(wn.synsets()[4]),
            "Paris, City of Light, French capital, capital of France (noun): the capital and largest city of France; "
            "\"Paris is the center of French culture\"");
}

TEST(WordNetTest, BadLinesNameFileAndLine) {
  absl::StatusOr<std::vector<Synset>> r =
      ParseDataFile("  license\n02129165 05 n 03 lion 0\n", WordNetFile::kNoun, "/x/data.noun");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("/x/data.noun: line 2: missing word"));
  r = ParseDataFile("00001740 29 v 01 breathe 0 000 | draw air\n", WordNetFile::kNoun, "data.noun");
  EXPECT_THAT(r.status().message(), HasSubstr("ss_type 'v' does not belong in data.noun"));
  r = ParseDataFile("00001740 29 n zz breathe 0 000 | draw air\n", WordNetFile::kNoun, "data.noun");
  EXPECT_THAT(r.status().message(), HasSubstr("w_cnt 'zz' is not a number"));
  EXPECT_EQ(WordNet::Load("/nonexistent").status().code(), absl::StatusCode::kNotFound);
}

constexpr char kWordNetDir[] = "/usr/share/wordnet";

// The README's query on the real data: dense candidates, then the exact score, as the
// router does for text queries (router/text.h).
TEST(WordNetTest, RealFilesFindLionAndTigerForLargeWildCat) {
  if (!std::filesystem::exists(std::string(kWordNetDir) + "/data.noun")) {
    GTEST_SKIP() << kWordNetDir << " is absent (Debian's wordnet-base installs it)";
  }
  absl::StatusOr<WordNet> wn = WordNet::Load(kWordNetDir);
  ASSERT_TRUE(wn.ok()) << wn.status();
  const size_t n = wn->synsets().size();
  EXPECT_GT(n, 100000u);
  std::vector<std::string> texts;
  texts.reserve(n);
  for (const Synset& s : wn->synsets()) texts.push_back(wn->Text(s));
  absl::StatusOr<TextEmbedder> e = TextEmbedder::Fit(256, std::vector<absl::string_view>(texts.begin(), texts.end()));
  ASSERT_TRUE(e.ok());

  const char* query = "large wild cat";
  std::vector<float> q(256), d(256);
  ASSERT_TRUE(e->EmbedQuery(query, q.data()).ok());
  std::vector<std::pair<float, size_t>> dense(n);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(e->EmbedDocument(texts[i], d.data()).ok());
    float dot = 0;
    for (int j = 0; j < 256; ++j) dot += q[j] * d[j];
    dense[i] = {-dot, i};
  }
  constexpr size_t kCandidates = 100;
  std::partial_sort(dense.begin(), dense.begin() + kCandidates, dense.end());
  const SparseVector sq = *e->SparseQuery(query);
  std::vector<std::pair<float, uint64_t>> exact;
  for (size_t c = 0; c < kCandidates; ++c) {
    const size_t i = dense[c].second;
    exact.push_back({-TextEmbedder::Score(sq, *e->SparseDocument(texts[i])), wn->synsets()[i].id()});
  }
  std::sort(exact.begin(), exact.end());
  std::vector<uint64_t> top;
  for (size_t r = 0; r < 10; ++r) top.push_back(exact[r].second);
  EXPECT_THAT(top, ::testing::IsSupersetOf({uint64_t{102129165}, uint64_t{102129604}}));  // lion, tiger
}

}  // namespace
}  // namespace shardvec::embed
