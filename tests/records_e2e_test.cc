// Record semantics through the router: upsert replaces by id, payloads round-trip,
// delete removes, get returns in request order, search params reach the shards.
#include <memory>
#include <string>
#include <vector>

#include "common/slot.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "index/brute_force.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

constexpr int kDim = 16;

class RecordsE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cluster = TestCluster::Start(3, TestDir("records_e2e_" + std::string(
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name())));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    stub_ = cluster_->Client();
  }

  grpc::Status Create(const std::string& name, const std::string& index) {
    return CreateCollection(stub_.get(), name, kDim, index);
  }

  grpc::Status Upsert(const std::string& name, const FloatMatrix& m, uint64_t first_id, bool payloads) {
    v1::UpsertRequest req = MakeUpsert(name, m, first_id);
    for (v1::Record& r : *req.mutable_records()) {
      if (!payloads) break;
      r.mutable_payload()->set_text("passage " + std::to_string(r.id()));
      (*r.mutable_payload()->mutable_metadata())["source"] = "test";
    }
    v1::UpsertResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Upsert(&ctx, req, &resp);
    if (s.ok()) {
      EXPECT_EQ(resp.upserted(), static_cast<uint64_t>(m.rows));
    }
    return s;
  }

  v1::SearchResponse Search(const std::string& name, const float* q, int k, bool payload = false, int nprobe = 0) {
    v1::SearchRequest req;
    req.set_collection(name);
    req.set_k(k);
    req.set_include_payload(payload);
    req.mutable_params()->set_nprobe(nprobe);
    req.add_queries()->mutable_values()->Add(q, q + kDim);
    v1::SearchResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->Search(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  std::unique_ptr<TestCluster> cluster_;
  std::unique_ptr<v1::ShardVec::Stub> stub_;
};

TEST_F(RecordsE2ETest, UpsertGetDeleteAndPayloads) {
  ASSERT_TRUE(Create("docs", "Flat").ok());
  FloatMatrix data = RandomVectors(300, kDim, 5);
  ASSERT_TRUE(Upsert("docs", data, 1000, /*payloads=*/true).ok());

  // Get: request order, vectors and payloads as written, unknown ids reported.
  v1::GetRequest get;
  get.set_collection("docs");
  get.set_include_vectors(true);
  get.set_include_payload(true);
  for (uint64_t id : {1299ull, 1000ull, 77ull, 1150ull}) get.add_ids(id);
  v1::GetResponse got;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Get(&ctx, get, &got).ok());
  }
  ASSERT_EQ(got.records_size(), 3);
  EXPECT_EQ(got.records(0).id(), 1299u);
  EXPECT_EQ(got.records(1).id(), 1000u);
  EXPECT_EQ(got.records(2).id(), 1150u);
  EXPECT_THAT(got.missing_ids(), ::testing::ElementsAre(77u));
  EXPECT_THAT(got.records(2).vector(), ::testing::ElementsAreArray(data.row(150), data.row(150) + kDim));
  EXPECT_EQ(got.records(2).payload().text(), "passage 1150");
  EXPECT_EQ(got.records(2).payload().metadata().at("source"), "test");

  // Search returns payloads with hits; a stored vector is its own nearest neighbour.
  v1::SearchResponse r = Search("docs", data.row(42), 3, /*payload=*/true);
  ASSERT_EQ(r.results(0).ids_size(), 3);
  EXPECT_EQ(r.results(0).ids(0), 1042u);
  EXPECT_FLOAT_EQ(r.results(0).distances(0), 0.0f);
  ASSERT_EQ(r.results(0).payloads_size(), 3);
  EXPECT_EQ(r.results(0).payloads(0).text(), "passage 1042");

  // Upsert replaces by id: id 1042 moves to a new vector.
  FloatMatrix moved = RandomVectors(1, kDim, 99);
  ASSERT_TRUE(Upsert("docs", moved, 1042, false).ok());
  r = Search("docs", moved.row(0), 1);
  EXPECT_EQ(r.results(0).ids(0), 1042u);
  EXPECT_FLOAT_EQ(r.results(0).distances(0), 0.0f);
  r = Search("docs", data.row(42), 1);
  EXPECT_NE(r.results(0).ids(0), 1042u) << "the old vector of 1042 must be gone";

  // Delete: counts only existing ids; deleted ids vanish from get and search.
  v1::DeleteRequest del;
  del.set_collection("docs");
  for (uint64_t id = 1000; id < 1010; ++id) del.add_ids(id);
  del.add_ids(5);  // never existed
  v1::DeleteResponse deleted;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Delete(&ctx, del, &deleted).ok());
  }
  EXPECT_EQ(deleted.deleted(), 10u);
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Delete(&ctx, del, &deleted).ok());
  }
  EXPECT_EQ(deleted.deleted(), 0u);
  for (int i = 0; i < 10; ++i) {
    r = Search("docs", data.row(i), 5);
    for (uint64_t id : r.results(0).ids()) EXPECT_FALSE(id >= 1000 && id < 1010) << "deleted id " << id;
  }
  v1::DescribeCollectionRequest describe;
  describe.set_name("docs");
  v1::DescribeCollectionResponse info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->DescribeCollection(&ctx, describe, &info).ok());
  }
  EXPECT_EQ(info.collection().num_records(), 290u);
}

TEST_F(RecordsE2ETest, IvfNprobeReachesShardsAndFullProbeIsExact) {
  // 3 x ~1000 vectors per shard crosses IVF16's training threshold (39 x 16).
  ASSERT_TRUE(Create("ivf", "IVF16,Flat").ok());
  FloatMatrix data = RandomVectors(3000, kDim, 8);
  ASSERT_TRUE(Upsert("ivf", data, 0, false).ok());
  FloatMatrix queries = RandomVectors(50, kDim, 9);
  std::vector<uint64_t> ids(3000);
  for (int i = 0; i < 3000; ++i) ids[i] = i;
  std::vector<double> want_d;
  std::vector<uint64_t> want_ids;
  index::BruteForceSearch(index::Metric::kL2, kDim, 3000, data.data.data(), ids.data(), 50, queries.data.data(), 10,
                          &want_d, &want_ids);
  std::vector<uint64_t> full, one;
  for (int q = 0; q < 50; ++q) {
    v1::SearchResponse r = Search("ivf", queries.row(q), 10, false, /*nprobe=*/16);
    full.insert(full.end(), r.results(0).ids().begin(), r.results(0).ids().end());
    r = Search("ivf", queries.row(q), 10, false, /*nprobe=*/1);
    one.insert(one.end(), r.results(0).ids().begin(), r.results(0).ids().end());
  }
  EXPECT_DOUBLE_EQ(index::RecallAtK(10, want_ids, full), 1.0);
  // Random data has no cluster structure, so one list of 16 finds far from all.
  EXPECT_LT(index::RecallAtK(10, want_ids, one), 0.9);
}

TEST_F(RecordsE2ETest, DropThenRecreateStartsEmpty) {
  ASSERT_TRUE(Create("tmp", "Flat").ok());
  ASSERT_TRUE(Upsert("tmp", RandomVectors(20, kDim, 1), 0, false).ok());
  CliResult r = cluster_->Cli({"collection", "drop", "tmp"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = cluster_->Cli({"collection", "list"});
  EXPECT_THAT(r.out, ::testing::Not(::testing::HasSubstr("tmp")));
  ASSERT_TRUE(Create("tmp", "Flat").ok());
  r = cluster_->Cli({"collection", "describe", "tmp"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::HasSubstr("0 records"));
}

}  // namespace
}  // namespace shardvec::testing
