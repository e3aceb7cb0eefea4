// Retrieval-augmented generation through real processes: a generator (`shardvec
// generator serve`, the tiny_chat checkpoint on the CPU), a router started with
// --generator and two shards. A Rag call must search exactly as Search does, put those
// passages into the prompt the router documents (router/rag.h), and stream exactly
// the tokens the generator gives that prompt; bad requests are refused by field.
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/process.h"
#include "common/server_util.h"
#include "proto/generator.grpc.pb.h"
#include "router/rag.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kDim = 64;

std::string TinyChat() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/shardvec/llm/testdata/tiny_chat");
}

std::vector<std::string> Passages() {
  return {
      "lion: large gregarious predatory feline of Africa and India with a tawny coat",
      "tiger: large feline of forests in most of Asia having a tawny coat with black stripes",
      "house cat: any domesticated member of the genus Felis",
      "horse: solid-hoofed herbivorous quadruped domesticated since prehistoric times",
      "honeybee: social bee often domesticated for the production of honey",
      "oak: a deciduous tree of the genus Quercus with lobed leaves and acorns",
      "violin: bowed stringed instrument that is the highest member of the violin family",
      "river: a large natural stream of water larger than a creek",
  };
}

struct RagResult {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  v1::RagResponse last;
  int messages = 0;
};

RagResult CallRag(v1::ShardVec::Stub* stub, const v1::RagRequest& req) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub->Rag(&ctx, req);
  RagResult r;
  v1::RagResponse m;
  while (reader->Read(&m)) {
    ++r.messages;
    r.tokens.insert(r.tokens.end(), m.token_ids().begin(), m.token_ids().end());
    r.text += m.text();
    if (m.done()) r.last = m;
  }
  r.status = reader->Finish();
  return r;
}

v1::RagRequest Question(const std::string& collection, const std::string& question, int k = 3) {
  v1::RagRequest req;
  req.set_collection(collection);
  req.set_question(question);
  req.set_k(k);
  req.mutable_generation()->set_max_tokens(12);
  req.mutable_generation()->set_ignore_eos(true);
  return req;
}

class RagE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto gen = ChildProcess::Start({ShardvecBinary(), "generator", "serve", "--model", TinyChat(), "--port", "0",
                                    "--max-seq-len", "512"},
                                   TestDir("rag_e2e") + "/generator.log");
    ASSERT_TRUE(gen.ok()) << gen.status();
    generator_ = gen->release();
    absl::StatusOr<std::string> line = generator_->WaitForLine("ready on", absl::Minutes(1));
    ASSERT_TRUE(line.ok()) << line.status();
    generator_address_ = line->substr(line->rfind(' ') + 1);
    auto cluster = TestCluster::Start(2, TestDir("rag_e2e"), {}, {"--generator", generator_address_});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();

    auto stub = cluster_->Client();
    v1::CreateCollectionRequest create;
    create.mutable_spec()->set_name("kb");
    create.mutable_spec()->set_dim(kDim);
    create.mutable_spec()->set_embedder("hash-tfidf-v1");
    for (const std::string& p : Passages()) create.add_embedder_fit_texts(p);
    v1::CreateCollectionResponse created;
    grpc::ClientContext c1;
    ASSERT_TRUE(stub->CreateCollection(&c1, create, &created).ok());
    v1::UpsertRequest up;
    up.set_collection("kb");
    const std::vector<std::string> passages = Passages();
    for (size_t i = 0; i < passages.size(); ++i) {
      v1::Record* r = up.add_records();
      r->set_id(100 + i);
      r->mutable_payload()->set_text(passages[i]);
      (*r->mutable_payload()->mutable_metadata())["n"] = absl::StrCat(i);
    }
    v1::UpsertResponse upr;
    grpc::ClientContext c2;
    ASSERT_TRUE(stub->Upsert(&c2, up, &upr).ok());
    // A collection of plain vectors, without an embedder.
    ASSERT_TRUE(CreateCollection(stub.get(), "plain", kDim).ok());
  }
  static void TearDownTestSuite() {
    delete cluster_;
    delete generator_;
  }
  static TestCluster* cluster_;
  static ChildProcess* generator_;
  static std::string generator_address_;
};

TestCluster* RagE2ETest::cluster_ = nullptr;
ChildProcess* RagE2ETest::generator_ = nullptr;
std::string RagE2ETest::generator_address_;

TEST_F(RagE2ETest, AnswersFromTheSearchedPassagesWithTheDocumentedPrompt) {
  auto stub = cluster_->Client();
  const v1::RagRequest req = Question("kb", "Which large feline has black stripes?");
  RagResult rag = CallRag(stub.get(), req);
  ASSERT_TRUE(rag.status.ok()) << rag.status.error_message();

  // The sources are what Search returns for the same question, numbered in order.
  v1::SearchRequest search;
  search.set_collection("kb");
  search.set_k(3);
  search.set_include_payload(true);
  search.add_text_queries(req.question());
  v1::SearchResponse found;
  grpc::ClientContext sctx;
  ASSERT_TRUE(stub->Search(&sctx, search, &found).ok());
  const v1::QueryResult& hits = found.results(0);
  ASSERT_EQ(rag.last.sources_size(), hits.ids_size());
  std::vector<router::RagPassage> passages;
  for (int i = 0; i < hits.ids_size(); ++i) {
    const v1::RagSource& s = rag.last.sources(i);
    EXPECT_EQ(s.number(), static_cast<uint32_t>(i + 1));
    EXPECT_EQ(s.id(), hits.ids(i));
    EXPECT_FLOAT_EQ(s.distance(), hits.distances(i));
    EXPECT_EQ(s.text(), hits.payloads(i).text());
    EXPECT_EQ(s.metadata().at("n"), hits.payloads(i).metadata().at("n"));
    passages.push_back({hits.ids(i), hits.payloads(i).text()});
  }
  EXPECT_EQ(rag.last.sources(0).id(), 101u);  // the tiger

  // The answer is the generator's own completion of the documented prompt.
  auto gen = v1::Generator::NewStub(MakeChannel(generator_address_));
  v1::GenerateRequest direct;
  direct.set_prompt(router::BuildRagPrompt(req.question(), passages));
  *direct.mutable_params() = req.generation();
  grpc::ClientContext gctx;
  auto reader = gen->Generate(&gctx, direct);
  std::vector<int32_t> expected;
  std::string expected_text;
  v1::GenerateResponse piece;
  uint32_t prompt_tokens = 0;
  while (reader->Read(&piece)) {
    expected.insert(expected.end(), piece.token_ids().begin(), piece.token_ids().end());
    expected_text += piece.text();
    prompt_tokens = piece.prompt_tokens();
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(rag.tokens, expected);
  EXPECT_EQ(rag.text, expected_text);
  EXPECT_EQ(rag.tokens.size(), 12u);
  EXPECT_TRUE(rag.last.done());
  EXPECT_EQ(rag.last.finish_reason(), "max_tokens");
  EXPECT_EQ(rag.last.prompt_tokens(), prompt_tokens);
}

TEST_F(RagE2ETest, QueryVectorFindsItsOwnPassage) {
  auto stub = cluster_->Client();
  v1::GetRequest get;
  get.set_collection("kb");
  get.add_ids(106);  // the violin
  v1::GetResponse got;
  grpc::ClientContext gctx;
  ASSERT_TRUE(stub->Get(&gctx, get, &got).ok());
  ASSERT_EQ(got.records_size(), 1);
  v1::RagRequest req = Question("kb", "What is this?", 2);
  req.mutable_query_vector()->CopyFrom(got.records(0).vector());
  RagResult rag = CallRag(stub.get(), req);
  ASSERT_TRUE(rag.status.ok()) << rag.status.error_message();
  ASSERT_EQ(rag.last.sources_size(), 2);
  EXPECT_EQ(rag.last.sources(0).id(), 106u);
}

TEST_F(RagE2ETest, BadRequestsAreRefusedByField) {
  auto stub = cluster_->Client();
  struct Case {
    std::string name;
    v1::RagRequest req;
    grpc::StatusCode code;
    std::string field;
  };
  std::vector<Case> cases;
  cases.push_back({"empty question", Question("kb", ""), grpc::StatusCode::INVALID_ARGUMENT, "question"});
  cases.push_back({"question too long", Question("kb", std::string(5000, 'a')), grpc::StatusCode::INVALID_ARGUMENT,
                   "question"});
  cases.push_back({"k too large", Question("kb", "lion?", 33), grpc::StatusCode::INVALID_ARGUMENT, "k"});
  cases.push_back({"negative k", Question("kb", "lion?", -1), grpc::StatusCode::INVALID_ARGUMENT, "k"});
  cases.push_back({"unknown collection", Question("nope", "lion?"), grpc::StatusCode::NOT_FOUND, "nope"});
  cases.push_back({"text on a collection without an embedder", Question("plain", "lion?"),
                   grpc::StatusCode::FAILED_PRECONDITION, "embedder"});
  v1::RagRequest wrong_dim = Question("kb", "lion?");
  wrong_dim.add_query_vector(1.0f);
  cases.push_back({"vector of the wrong dimension", wrong_dim, grpc::StatusCode::INVALID_ARGUMENT, "dim"});
  v1::RagRequest wrong_embedder = Question("kb", "lion?");
  for (int i = 0; i < kDim; ++i) wrong_embedder.add_query_vector(0.1f);
  wrong_embedder.set_embedder("some-other-model");
  cases.push_back({"vector from another embedder", wrong_embedder, grpc::StatusCode::INVALID_ARGUMENT, "embedder"});
  v1::RagRequest bad_temperature = Question("kb", "lion?");
  bad_temperature.mutable_generation()->set_temperature(-2);
  cases.push_back({"generator refusal keeps its code", bad_temperature, grpc::StatusCode::INVALID_ARGUMENT,
                   "params.temperature"});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    RagResult r = CallRag(stub.get(), c.req);
    EXPECT_EQ(r.status.error_code(), c.code) << r.status.error_message();
    EXPECT_THAT(r.status.error_message(), HasSubstr(c.field));
    EXPECT_TRUE(r.tokens.empty());
  }
}

TEST_F(RagE2ETest, RouterWithoutGeneratorRefusesRag) {
  auto plain = TestCluster::Start(1, TestDir("rag_e2e_no_generator"));
  ASSERT_TRUE(plain.ok()) << plain.status();
  auto stub = (*plain)->Client();
  RagResult r = CallRag(stub.get(), Question("kb", "lion?"));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(r.status.error_message(), HasSubstr("generator"));
}

TEST_F(RagE2ETest, CliStreamsTheAnswerAndListsTheSources) {
  CliResult r = cluster_->Cli({"rag", "kb", "Which large feline has black stripes?", "--k", "2", "--max-tokens", "6"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("Sources:"));
  EXPECT_THAT(r.out, HasSubstr("[1] 101"));
  EXPECT_THAT(r.out, HasSubstr("[2] "));
  EXPECT_THAT(r.out, HasSubstr("6 generated"));
}

TEST(RagPrompt, NumbersSourcesAndFindsCitations) {
  const std::string prompt = router::BuildRagPrompt("why?", {{7, "first passage"}, {9, "second"}});
  EXPECT_THAT(prompt, HasSubstr("\n[1] first passage\n[2] second\n"));
  EXPECT_THAT(prompt, HasSubstr("Question: why?\nAnswer:"));
  // A long passage is cut at a character boundary (é is two bytes).
  std::string long_text;
  for (int i = 0; i < 3000; ++i) long_text += "\xC3\xA9";
  const std::string cut = router::BuildRagPrompt("q", {{1, long_text}});
  EXPECT_LT(cut.size(), long_text.size());
  EXPECT_EQ(cut.find("\xC3\xA9 ..."), cut.find(" ...") - 2);
  EXPECT_EQ(router::CitedSources("see [2] and [1, 3]", 3), (std::vector<bool>{true, true, true}));
  EXPECT_EQ(router::CitedSources("[4] [0] [2", 3), (std::vector<bool>{false, false, false}));
  EXPECT_EQ(router::CitedSources("as [1][3] say", 3), (std::vector<bool>{true, false, true}));
  EXPECT_EQ(router::CitedSources("[99999999999999999999]", 3), (std::vector<bool>{false, false, false}));
}

}  // namespace
}  // namespace shardvec::testing
