// Every kind of bad input gets its status code and a message naming the field, and
// none of them changes stored data.
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kDim = 8;
constexpr int kRecords = 200;

class BadInputE2ETest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto cluster = TestCluster::Start(2, TestDir("bad_input_e2e"));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    auto stub = cluster_->Client();
    ASSERT_TRUE(CreateCollection(stub.get(), "docs", kDim).ok());
    v1::UpsertRequest up = GoodUpsert(kRecords);
    v1::UpsertResponse upserted;
    grpc::ClientContext ctx2;
    ASSERT_TRUE(stub->Upsert(&ctx2, up, &upserted).ok());
  }

  static void TearDownTestSuite() { delete cluster_; }

  void SetUp() override {
    stub_ = cluster_->Client();
    before_ = Snapshot();
  }

  // Nothing a rejected request did may show.
  void TearDown() override {
    v1::GetResponse after = Snapshot();
    EXPECT_EQ(after.SerializeAsString(), before_.SerializeAsString()) << "stored data changed";
    v1::ListCollectionsResponse list;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->ListCollections(&ctx, {}, &list).ok());
    ASSERT_EQ(list.collections_size(), 1);
    EXPECT_EQ(list.collections(0).spec().name(), "docs");
    EXPECT_EQ(list.collections(0).num_records(), static_cast<uint64_t>(kRecords));
  }

  static v1::UpsertRequest GoodUpsert(int n) {
    v1::UpsertRequest req;
    req.set_collection("docs");
    for (int i = 0; i < n; ++i) {
      v1::Record* r = req.add_records();
      r->set_id(i);
      for (int j = 0; j < kDim; ++j) r->add_vector(static_cast<float>(i * kDim + j));
      r->mutable_payload()->set_text("doc " + std::to_string(i));
    }
    return req;
  }

  v1::SearchRequest GoodSearch() {
    v1::SearchRequest req;
    req.set_collection("docs");
    req.set_k(5);
    v1::Vector* q = req.add_queries();
    for (int j = 0; j < kDim; ++j) q->add_values(0.5f * j);
    return req;
  }

  v1::GetResponse Snapshot() {
    v1::GetRequest get;
    get.set_collection("docs");
    get.set_include_vectors(true);
    get.set_include_payload(true);
    for (int i = 0; i < kRecords + 10; ++i) get.add_ids(i);
    v1::GetResponse resp;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub_->Get(&ctx, get, &resp).ok());
    return resp;
  }

  grpc::Status Upsert(const v1::UpsertRequest& req) {
    v1::UpsertResponse resp;
    grpc::ClientContext ctx;
    return stub_->Upsert(&ctx, req, &resp);
  }

  grpc::Status Search(const v1::SearchRequest& req) {
    v1::SearchResponse resp;
    grpc::ClientContext ctx;
    return stub_->Search(&ctx, req, &resp);
  }

  grpc::Status Create(const v1::CollectionSpec& spec) {
    v1::CreateCollectionRequest req;
    *req.mutable_spec() = spec;
    v1::CreateCollectionResponse resp;
    grpc::ClientContext ctx;
    return stub_->CreateCollection(&ctx, req, &resp);
  }

  static void ExpectError(const grpc::Status& s, grpc::StatusCode code, const std::string& text) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(text));
  }

  static TestCluster* cluster_;
  std::unique_ptr<v1::ShardVec::Stub> stub_;
  v1::GetResponse before_;
};

TestCluster* BadInputE2ETest::cluster_ = nullptr;

TEST_F(BadInputE2ETest, UpsertWrongDimensionRejectsWholeBatch) {
  // Good records first: none of them may be applied either.
  v1::UpsertRequest req = GoodUpsert(50);
  for (auto& r : *req.mutable_records()) r.mutable_vector()->Set(0, -1.0f);
  req.mutable_records(49)->add_vector(1.0f);
  ExpectError(Upsert(req), grpc::StatusCode::INVALID_ARGUMENT,
              "records[49].vector: dimension 9 does not match collection 'docs' (dim 8)");
}

TEST_F(BadInputE2ETest, UpsertNanAndInf) {
  v1::UpsertRequest req = GoodUpsert(10);
  for (auto& r : *req.mutable_records()) r.mutable_vector()->Set(1, 42.0f);
  req.mutable_records(3)->set_vector(5, std::numeric_limits<float>::quiet_NaN());
  ExpectError(Upsert(req), grpc::StatusCode::INVALID_ARGUMENT, "records[3].vector[5]: NaN");
  req.mutable_records(3)->set_vector(5, std::numeric_limits<float>::infinity());
  ExpectError(Upsert(req), grpc::StatusCode::INVALID_ARGUMENT, "records[3].vector[5]: Inf");
}

TEST_F(BadInputE2ETest, SearchDimensionNanAndK) {
  v1::SearchRequest req = GoodSearch();
  ASSERT_TRUE(Search(req).ok());
  v1::SearchRequest wrong = req;
  wrong.mutable_queries(0)->add_values(1);
  ExpectError(Search(wrong), grpc::StatusCode::INVALID_ARGUMENT, "queries[0]: dimension 9");
  v1::SearchRequest nan = req;
  nan.mutable_queries(0)->set_values(2, std::nanf(""));
  ExpectError(Search(nan), grpc::StatusCode::INVALID_ARGUMENT, "queries[0][2]: NaN");
  v1::SearchRequest inf = req;
  inf.mutable_queries(0)->set_values(7, -std::numeric_limits<float>::infinity());
  ExpectError(Search(inf), grpc::StatusCode::INVALID_ARGUMENT, "queries[0][7]: Inf");
  for (int k : {0, -3, 4097, 1 << 30}) {
    v1::SearchRequest bad_k = req;
    bad_k.set_k(k);
    ExpectError(Search(bad_k), grpc::StatusCode::INVALID_ARGUMENT, "k: " + std::to_string(k) + " is out of range");
  }
}

TEST_F(BadInputE2ETest, UnknownCollection) {
  v1::SearchRequest req = GoodSearch();
  req.set_collection("nope");
  ExpectError(Search(req), grpc::StatusCode::NOT_FOUND, "collection: 'nope' does not exist");
  v1::UpsertRequest up = GoodUpsert(1);
  up.set_collection("nope");
  ExpectError(Upsert(up), grpc::StatusCode::NOT_FOUND, "collection: 'nope' does not exist");
  v1::DropCollectionRequest drop;
  drop.set_name("nope");
  v1::DropCollectionResponse dropped;
  grpc::ClientContext ctx;
  ExpectError(stub_->DropCollection(&ctx, drop, &dropped), grpc::StatusCode::NOT_FOUND, "'nope' does not exist");
}

TEST_F(BadInputE2ETest, DuplicateAndInvalidCollections) {
  v1::CollectionSpec spec;
  spec.set_name("docs");
  spec.set_dim(kDim);
  ExpectError(Create(spec), grpc::StatusCode::ALREADY_EXISTS, "name: collection 'docs' already exists");
  spec.set_name("other");
  spec.set_dim(0);
  ExpectError(Create(spec), grpc::StatusCode::INVALID_ARGUMENT, "dim: 0 is out of range");
  spec.set_dim(kDim);
  spec.set_name("bad name!");
  ExpectError(Create(spec), grpc::StatusCode::INVALID_ARGUMENT, "name:");
  // FAISS rejects the factory string on the shards; the router rolls back, so
  // TearDown finds no "other" collection anywhere.
  spec.set_name("other");
  spec.set_index_spec("NotAnIndex123");
  ExpectError(Create(spec), grpc::StatusCode::INVALID_ARGUMENT, "index_spec");
  spec.set_index_spec("IVF16,PQ3");  // 3 does not divide dim 8
  ExpectError(Create(spec), grpc::StatusCode::INVALID_ARGUMENT, "index_spec");
}

TEST_F(BadInputE2ETest, EmptyBatches) {
  v1::UpsertRequest up;
  up.set_collection("docs");
  ExpectError(Upsert(up), grpc::StatusCode::INVALID_ARGUMENT, "records: empty batch");
  v1::SearchRequest search = GoodSearch();
  search.clear_queries();
  ExpectError(Search(search), grpc::StatusCode::INVALID_ARGUMENT, "queries: empty batch");
  v1::DeleteRequest del;
  del.set_collection("docs");
  v1::DeleteResponse deleted;
  grpc::ClientContext ctx;
  ExpectError(stub_->Delete(&ctx, del, &deleted), grpc::StatusCode::INVALID_ARGUMENT, "ids: empty batch");
  v1::GetRequest get;
  get.set_collection("docs");
  v1::GetResponse got;
  grpc::ClientContext ctx2;
  ExpectError(stub_->Get(&ctx2, get, &got), grpc::StatusCode::INVALID_ARGUMENT, "ids: empty batch");
}

TEST_F(BadInputE2ETest, OversizeBatchAndMessage) {
  v1::SearchRequest search = GoodSearch();
  while (search.queries_size() <= 16384) *search.add_queries() = search.queries(0);
  ExpectError(Search(search), grpc::StatusCode::INVALID_ARGUMENT, "queries: batch of 16385 exceeds the limit");

  v1::SearchRequest too_many_results = GoodSearch();
  while (too_many_results.queries_size() < 2048) *too_many_results.add_queries() = too_many_results.queries(0);
  too_many_results.set_k(4096);
  ExpectError(Search(too_many_results), grpc::StatusCode::INVALID_ARGUMENT, "k: 2048 queries x k 4096");

  // Over the 64 MiB message limit: gRPC refuses it before any handler runs.
  v1::UpsertRequest huge = GoodUpsert(1);
  huge.mutable_records(0)->mutable_payload()->set_text(std::string(65 << 20, 'x'));
  ExpectError(Upsert(huge), grpc::StatusCode::RESOURCE_EXHAUSTED, "larger than max");

  // Under the message limit but over the payload limit: named.
  v1::UpsertRequest big_payload = GoodUpsert(2);
  big_payload.mutable_records(1)->mutable_payload()->set_text(std::string(2 << 20, 'y'));
  ExpectError(Upsert(big_payload), grpc::StatusCode::INVALID_ARGUMENT, "records[1].payload");
}

TEST_F(BadInputE2ETest, ColumnarBlockChecksSizesValuesAndIds) {
  v1::UpsertRequest req;
  req.set_collection("docs");
  v1::RecordBlock* block = req.mutable_block();
  std::vector<float> x(3 * kDim, 1.5f);
  for (uint64_t id : {500, 501, 502}) block->add_ids(id);
  block->set_vectors(reinterpret_cast<const char*>(x.data()), (x.size() - 1) * sizeof(float));
  ExpectError(Upsert(req), grpc::StatusCode::INVALID_ARGUMENT, "block.vectors: 92 bytes for 3 ids does not match collection 'docs' (dim 8, so 96 bytes)");
  x[2 * kDim + 4] = std::nanf("");
  block->set_vectors(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float));
  ExpectError(Upsert(req), grpc::StatusCode::INVALID_ARGUMENT, "block.vectors[2][4]: NaN");
  x[2 * kDim + 4] = 0;
  block->set_vectors(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float));
  block->add_payloads()->set_text("only one");
  ExpectError(Upsert(req), grpc::StatusCode::INVALID_ARGUMENT, "block.payloads: 1, expected none or one per id (3)");
  block->clear_payloads();
  block->set_ids(1, ~uint64_t{0});
  ExpectError(Upsert(req), grpc::StatusCode::INVALID_ARGUMENT, "block.ids[1]");
}

TEST_F(BadInputE2ETest, ReservedId) {
  v1::UpsertRequest req = GoodUpsert(3);
  req.mutable_records(2)->set_id(~uint64_t{0});
  ExpectError(Upsert(req), grpc::StatusCode::INVALID_ARGUMENT, "records[2].id");
}

TEST_F(BadInputE2ETest, CliFailsWithOneLineErrorAndNonZeroExit) {
  const std::string q = TestDir("bad_input_e2e") + "/q.fvecs";
  ASSERT_TRUE(WriteFvecs(q, RandomVectors(2, kDim + 1, 3)).ok());
  CliResult r = cluster_->Cli({"search", "docs", "--queries", q, "--k", "3"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err, "error: INVALID_ARGUMENT: queries[0]: dimension 9 does not match collection 'docs' (dim 8)\n");
  r = cluster_->Cli({"search", "nope", "--queries", q});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.err, "error: NOT_FOUND: collection: 'nope' does not exist\n");
  r = cluster_->Cli({"ingest", "docs", "/nonexistent/file.fvecs"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("error: NOT_FOUND: /nonexistent/file.fvecs: cannot open"));
  r = cluster_->Cli({"collection", "create", "x", "--dim", "8", "--metric", "hamming"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("--metric: 'hamming' is not l2, ip or cosine"));
}

}  // namespace
}  // namespace shardvec::testing
