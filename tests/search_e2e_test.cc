// Router + 3 shards as real processes; 50k random vectors loaded through the CLI;
// 200 queries at k=10 must equal a one-process brute-force search, for each metric.
#include <memory>
#include <string>
#include <vector>

#include "common/vecs_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "index/brute_force.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

constexpr int kDim = 128;
constexpr int64_t kBase = 50000;
constexpr int64_t kQueries = 200;
constexpr int kK = 10;

class SearchE2ETest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = TestDir("search_e2e");
    auto cluster = TestCluster::Start(3, dir);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    base_ = new FloatMatrix(RandomVectors(kBase, kDim, 11));
    queries_ = new FloatMatrix(RandomVectors(kQueries, kDim, 12));
    base_path_ = new std::string(dir + "/base.fvecs");
    queries_path_ = new std::string(dir + "/queries.fvecs");
    ASSERT_TRUE(WriteFvecs(*base_path_, *base_).ok());
    ASSERT_TRUE(WriteFvecs(*queries_path_, *queries_).ok());
  }

  static void TearDownTestSuite() {
    delete cluster_;  // stops every process
    delete base_;
    delete queries_;
    delete base_path_;
    delete queries_path_;
  }

  static index::Metric ToMetric(const std::string& m) {
    if (m == "ip") return index::Metric::kInnerProduct;
    if (m == "cosine") return index::Metric::kCosine;
    return index::Metric::kL2;
  }

  static TestCluster* cluster_;
  static FloatMatrix* base_;
  static FloatMatrix* queries_;
  static std::string* base_path_;
  static std::string* queries_path_;
};

TestCluster* SearchE2ETest::cluster_ = nullptr;
FloatMatrix* SearchE2ETest::base_ = nullptr;
FloatMatrix* SearchE2ETest::queries_ = nullptr;
std::string* SearchE2ETest::base_path_ = nullptr;
std::string* SearchE2ETest::queries_path_ = nullptr;

TEST_P(SearchE2ETest, FlatResultsEqualBruteForce) {
  const std::string metric = GetParam();
  const std::string name = "flat_" + metric;
  CliResult r = cluster_->Cli({"collection", "create", name, "--dim", "128", "--metric", metric, "--index", "Flat"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = cluster_->Cli({"ingest", name, *base_path_});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::HasSubstr("ingested 50000 vectors"));

  // Reference: one process, double precision, ids = row numbers.
  std::vector<uint64_t> base_ids(kBase);
  for (int64_t i = 0; i < kBase; ++i) base_ids[i] = static_cast<uint64_t>(i);
  std::vector<double> want_d;
  std::vector<uint64_t> want_ids;
  index::BruteForceSearch(ToMetric(metric), kDim, kBase, base_->data.data(), base_ids.data(), kQueries,
                          queries_->data.data(), kK, &want_d, &want_ids);

  // Through the router over gRPC: ids and distances.
  v1::SearchRequest req;
  req.set_collection(name);
  req.set_k(kK);
  for (int64_t i = 0; i < kQueries; ++i) {
    req.add_queries()->mutable_values()->Add(queries_->row(i), queries_->row(i) + kDim);
  }
  v1::SearchResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = cluster_->Client()->Search(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(resp.coverage().shards_total(), 3u);
  EXPECT_EQ(resp.coverage().shards_answered(), 3u);
  ASSERT_EQ(resp.results_size(), kQueries);
  std::vector<float> got_d;
  std::vector<uint64_t> got_ids;
  for (const v1::QueryResult& q : resp.results()) {
    ASSERT_EQ(q.ids_size(), kK);
    got_ids.insert(got_ids.end(), q.ids().begin(), q.ids().end());
    got_d.insert(got_d.end(), q.distances().begin(), q.distances().end());
  }
  absl::Status check = index::CheckKnnResult(ToMetric(metric), kK, want_d, want_ids, got_d, got_ids, 1e-5);
  EXPECT_TRUE(check.ok()) << check;

  // Through the CLI, in batches of 64: the same ids as the gRPC call.
  const std::string out = TestDir("search_e2e") + "/" + name + ".ivecs";
  r = cluster_->Cli({"search", name, "--queries", *queries_path_, "--k", "10", "--batch", "64", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<IntMatrix> cli_ids = ReadIvecs(out);
  ASSERT_TRUE(cli_ids.ok()) << cli_ids.status();
  ASSERT_EQ(cli_ids->rows, kQueries);
  ASSERT_EQ(cli_ids->dim, kK);
  for (size_t i = 0; i < got_ids.size(); ++i) {
    ASSERT_EQ(static_cast<uint64_t>(cli_ids->data[i]), got_ids[i]) << "query " << i / kK << " rank " << i % kK;
  }
}

INSTANTIATE_TEST_SUITE_P(Metrics, SearchE2ETest, ::testing::Values("l2", "ip", "cosine"));

}  // namespace
}  // namespace shardvec::testing
