#include "embed/text_embedder.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardvec::embed {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::vector<absl::string_view> kCorpus = {
    "the lion is a large wild cat", "the tiger is a large striped cat", "the house cat is small",
    "a stock market report", "the market fell today"};

double Norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += double{x} * x;
  return std::sqrt(s);
}

double Dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double{a[i]} * b[i];
  return s;
}

std::vector<float> Doc(const TextEmbedder& e, absl::string_view text) {
  std::vector<float> v(e.dim());
  EXPECT_TRUE(e.EmbedDocument(text, v.data()).ok());
  return v;
}

std::vector<float> Query(const TextEmbedder& e, absl::string_view text) {
  std::vector<float> v(e.dim());
  EXPECT_TRUE(e.EmbedQuery(text, v.data()).ok());
  return v;
}

// These values are the format: a change here changes every stored vector, and needs a
// new embedder version (hash-tfidf-v2), not an edit of the expectations.
TEST(TextEmbedderTest, HashIsFixed) {
  EXPECT_EQ(Hash64(""), 0x7bd3144f29c0cc9eULL);
  EXPECT_EQ(Hash64("cat"), 0xb2b92d1dc0e23702ULL);
  EXPECT_EQ(Hash64("hello world", 42), 0x3bde6f776c2c3b16ULL);
}

TEST(TextEmbedderTest, VectorsAreFixed) {
  absl::StatusOr<TextEmbedder> tf_only = TextEmbedder::Fit(8, {});
  ASSERT_TRUE(tf_only.ok());
  EXPECT_EQ(tf_only->spec(), "hash-tfidf-v1:dim=8");
  EXPECT_THAT(Query(*tf_only, "large wild cat"),
              ElementsAre(0.0f, 0.085366562f, 0.711387992f, 0.39837724f, 0.170733124f, -0.170733124f, -0.512199402f,
                          -0.085366562f));

  absl::StatusOr<TextEmbedder> fitted = TextEmbedder::Fit(16, kCorpus);
  ASSERT_TRUE(fitted.ok());
  EXPECT_EQ(fitted->spec(), "hash-tfidf-v1:dim=16:idf=bc59ed7f9b7f4d95");
  EXPECT_EQ(fitted->documents(), 5u);
  EXPECT_DOUBLE_EQ(fitted->pivot(), 4.1395662049464601);
  const std::vector<float> v = Doc(*fitted, kCorpus[0]);
  EXPECT_THAT(std::vector<float>(v.begin(), v.begin() + 4),
              ElementsAre(0.729329765f, 0.406560332f, 0.0782484189f, -0.0748908296f));
}

TEST(TextEmbedderTest, SameSpecAndTableGiveBitIdenticalVectors) {
  absl::StatusOr<TextEmbedder> a = TextEmbedder::Fit(64, kCorpus);
  absl::StatusOr<TextEmbedder> b = TextEmbedder::Fit(64, kCorpus);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->spec(), b->spec());
  EXPECT_EQ(a->table(), b->table());
  absl::StatusOr<TextEmbedder> loaded = TextEmbedder::FromSpec(a->spec(), a->table());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (absl::string_view text : {"large wild cat", "Markets fell; reports say so.", "Ünïcode café ΑΒΓ"}) {
    const std::vector<float> x = Doc(*a, text), y = Doc(*b, text), z = Doc(*loaded, text);
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0) << text;
    EXPECT_EQ(std::memcmp(x.data(), z.data(), x.size() * sizeof(float)), 0) << text;
  }
}

TEST(TextEmbedderTest, UnitLengthInEveryDimension) {
  for (int dim : {2, 3, 16, 256, 1000}) {
    absl::StatusOr<TextEmbedder> e = TextEmbedder::Fit(dim, kCorpus);
    ASSERT_TRUE(e.ok());
    // The fitted table does not depend on the dimension.
    EXPECT_EQ(e->spec(), absl::StrCat("hash-tfidf-v1:dim=", dim, ":idf=bc59ed7f9b7f4d95"));
    for (absl::string_view text : {"cat", "the lion is a large wild cat", "zebra zebra zebra"}) {
      EXPECT_NEAR(Norm(Doc(*e, text)), 1.0, 1e-6) << dim << " " << text;
      EXPECT_NEAR(Norm(Query(*e, text)), 1.0, 1e-6) << dim << " " << text;
    }
  }
}

TEST(TextEmbedderTest, TokenizeLowercasesAndSplitsUnicodePunctuation) {
  EXPECT_THAT(Tokenize("Hello, World!  ÜBER—café «ΑΒΓ» Вода x2"),
              ElementsAre("hello", "world", "über", "café", "αβγ", "вода", "x2"));
  EXPECT_TRUE(Tokenize(" ,.;!? — ").empty());
}

TEST(TextEmbedderTest, DeterministicLogMatchesTheLibrary) {
  EXPECT_EQ(DeterministicLog(1.0), 0.0);
  for (double x : {1e-300, 1e-5, 0.3, 2.0, 10.0, 117660.0, 1e300}) {
    EXPECT_NEAR(DeterministicLog(x), std::log(x), 1e-15 * std::max(1.0, std::fabs(std::log(x)))) << x;
  }
}

TEST(TextEmbedderTest, SimilarTextsAreCloserThanUnrelatedOnes) {
  absl::StatusOr<TextEmbedder> e = TextEmbedder::Fit(1024, kCorpus);
  ASSERT_TRUE(e.ok());
  const std::vector<float> q = Query(*e, "a big wild cat");
  EXPECT_GT(Dot(q, Doc(*e, "the lion is a large wild cat")), Dot(q, Doc(*e, "a stock market report")) + 0.2);
  // Character n-grams: an inflected form still shares features ("<ca", "cat", "<cat").
  const SparseVector cats = *e->SparseQuery("cats");
  EXPECT_GT(TextEmbedder::Score(cats, *e->SparseDocument("the house cat is small")), 0.02f);
  EXPECT_EQ(TextEmbedder::Score(cats, *e->SparseDocument("the market fell today")), 0.0f);
}

TEST(TextEmbedderTest, IdfDiscountsWordsEveryDocumentHas) {
  const std::vector<absl::string_view> corpus = {"the report", "the market", "the weather", "the garden",
                                                 "the river",  "the city",   "the music",   "the film"};
  absl::StatusOr<TextEmbedder> fitted = TextEmbedder::Fit(256, corpus);
  absl::StatusOr<TextEmbedder> tf_only = TextEmbedder::Fit(256, {});
  ASSERT_TRUE(fitted.ok() && tf_only.ok());
  auto score = [](const TextEmbedder& e, absl::string_view q, absl::string_view d) {
    return TextEmbedder::Score(*e.SparseQuery(q), *e.SparseDocument(d));
  };
  // "the" is everywhere, "zebra" nowhere: with idf the zebra document wins clearly.
  const float common = score(*fitted, "the zebra", "the the the the report");
  const float rare = score(*fitted, "the zebra", "a zebra");
  EXPECT_GT(rare - common, 0.2f);
  EXPECT_LT(score(*tf_only, "the zebra", "a zebra") - score(*tf_only, "the zebra", "the the the the report"), 0.1f);
}

TEST(TextEmbedderTest, DenseDotProductEstimatesTheExactScore) {
  absl::StatusOr<TextEmbedder> e = TextEmbedder::Fit(4096, kCorpus);
  ASSERT_TRUE(e.ok());
  for (absl::string_view d : kCorpus) {
    const float exact = TextEmbedder::Score(*e->SparseQuery("large cat market"), *e->SparseDocument(d));
    EXPECT_NEAR(Dot(Query(*e, "large cat market"), Doc(*e, d)), exact, 0.08) << d;
  }
}

TEST(TextEmbedderTest, RefusesTextWithoutWords) {
  absl::StatusOr<TextEmbedder> e = TextEmbedder::Fit(8, {});
  ASSERT_TRUE(e.ok());
  std::vector<float> v(8);
  absl::Status s = e->EmbedDocument(" -- !! ", v.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("no words"));
  EXPECT_EQ(e->EmbedQuery("", v.data()).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TextEmbedderTest, SpecsAreChecked) {
  EXPECT_TRUE(TextEmbedder::CheckRequest("hash-tfidf-v1", 256).ok());
  EXPECT_TRUE(TextEmbedder::CheckRequest("hash-tfidf-v1:dim=256", 256).ok());
  for (absl::string_view bad : {"word2vec", "hash-tfidf-v1:dim=128", "hash-tfidf-v1:dim=256:idf=0123456789abcdef",
                                "hash-tfidf-v1:size=3"}) {
    absl::Status s = TextEmbedder::CheckRequest(bad, 256);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.message(), HasSubstr("embedder:")) << bad;
  }
  EXPECT_EQ(TextEmbedder::CheckRequest("hash-tfidf-v1", 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TextEmbedder::FromSpec("hash-tfidf-v1", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TextEmbedder::FromSpec("hash-tfidf-v1:dim=0", "").status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<TextEmbedder> fitted = TextEmbedder::Fit(16, kCorpus);
  ASSERT_TRUE(fitted.ok());
  std::string damaged = fitted->table();
  damaged[damaged.size() - 1] ^= 1;
  absl::Status s = TextEmbedder::FromSpec(fitted->spec(), damaged).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("fingerprint"));
  EXPECT_EQ(TextEmbedder::FromSpec(fitted->spec(), "").status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace shardvec::embed
