// A shard killed mid-run: searches fail with UNAVAILABLE naming it, or return the
// other shards' results with coverage when partial results are allowed; the router
// keeps serving.
#include <signal.h>

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

using ::testing::HasSubstr;

constexpr int kDim = 32;
constexpr int kRecords = 3000;
constexpr int kK = 10;

// InitialMap splits the 4096 slots into equal contiguous ranges.
int OwnerOf(uint64_t id, int shards) { return static_cast<int>(SlotOf(id) * shards / kNumSlots); }

TEST(ShardFailureE2ETest, KilledShardGivesUnavailableOrPartialResults) {
  auto cluster_or = TestCluster::Start(3, TestDir("shard_failure_e2e"));
  ASSERT_TRUE(cluster_or.ok()) << cluster_or.status();
  TestCluster& cluster = **cluster_or;
  auto stub = cluster.Client();

  ASSERT_TRUE(CreateCollection(stub.get(), "docs", kDim).ok());
  FloatMatrix data = RandomVectors(kRecords, kDim, 21);
  v1::UpsertRequest up = MakeUpsert("docs", data, 0);
  v1::UpsertResponse upserted;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Upsert(&ctx, up, &upserted).ok());
  }

  FloatMatrix queries = RandomVectors(20, kDim, 22);
  v1::SearchRequest search;
  search.set_collection("docs");
  search.set_k(kK);
  for (int q = 0; q < queries.rows; ++q) {
    search.add_queries()->mutable_values()->Add(queries.row(q), queries.row(q) + kDim);
  }
  {
    v1::SearchResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Search(&ctx, search, &resp).ok());
  }

  cluster.shard(1)->Signal(SIGKILL);
  ASSERT_NE(cluster.shard(1)->Wait(absl::Seconds(30)), -1);
  const std::string dead = cluster.shard_address(1);

  // Without allow_partial_results: UNAVAILABLE naming the shard and its address.
  {
    v1::SearchResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub->Search(&ctx, search, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("shard shard-1 (" + dead + ")"));
  }

  // With it: the two live shards' exact results, and coverage naming the dead one.
  v1::SearchRequest partial = search;
  partial.set_allow_partial_results(true);
  v1::SearchResponse resp;
  {
    grpc::ClientContext ctx;
    grpc::Status s = stub->Search(&ctx, partial, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(resp.coverage().shards_total(), 3u);
  EXPECT_EQ(resp.coverage().shards_answered(), 2u);
  ASSERT_EQ(resp.coverage().shards_size(), 3);
  EXPECT_TRUE(resp.coverage().shards(0).ok());
  EXPECT_FALSE(resp.coverage().shards(1).ok());
  EXPECT_EQ(resp.coverage().shards(1).address(), dead);
  EXPECT_THAT(resp.coverage().shards(1).error(), HasSubstr("UNAVAILABLE"));
  EXPECT_TRUE(resp.coverage().shards(2).ok());

  std::vector<float> live;
  std::vector<uint64_t> live_ids;
  for (int i = 0; i < kRecords; ++i) {
    if (OwnerOf(i, 3) == 1) continue;
    live.insert(live.end(), data.row(i), data.row(i) + kDim);
    live_ids.push_back(i);
  }
  ASSERT_GT(live_ids.size(), 1500u);
  ASSERT_LT(live_ids.size(), 2500u);
  std::vector<double> want_d;
  std::vector<uint64_t> want_ids;
  index::BruteForceSearch(index::Metric::kL2, kDim, static_cast<int64_t>(live_ids.size()), live.data(),
                          live_ids.data(), queries.rows, queries.data.data(), kK, &want_d, &want_ids);
  std::vector<float> got_d;
  std::vector<uint64_t> got_ids;
  for (const v1::QueryResult& q : resp.results()) {
    got_ids.insert(got_ids.end(), q.ids().begin(), q.ids().end());
    got_d.insert(got_d.end(), q.distances().begin(), q.distances().end());
  }
  absl::Status check = index::CheckKnnResult(index::Metric::kL2, kK, want_d, want_ids, got_d, got_ids, 1e-5);
  EXPECT_TRUE(check.ok()) << check;

  // The router keeps serving: status reports the dead shard, writes to live shards
  // succeed, and a write to the dead shard's slots fails naming it.
  CliResult st = cluster.Cli({"status"});
  ASSERT_EQ(st.exit_code, 0) << st.err;
  EXPECT_THAT(st.out, HasSubstr(dead));
  EXPECT_THAT(st.out, HasSubstr("NO"));
  uint64_t live_id = 0, dead_id = 0;
  while (OwnerOf(live_id, 3) == 1) ++live_id;
  while (OwnerOf(dead_id, 3) != 1) ++dead_id;
  v1::UpsertRequest one;
  one.set_collection("docs");
  *one.add_records() = up.records(static_cast<int>(live_id));
  {
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->Upsert(&ctx, one, &upserted).ok());
  }
  *one.mutable_records(0) = up.records(static_cast<int>(dead_id));
  {
    grpc::ClientContext ctx;
    grpc::Status s = stub->Upsert(&ctx, one, &upserted);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_THAT(s.error_message(), HasSubstr("shard-1"));
  }
  EXPECT_TRUE(cluster.router()->Running());
}

}  // namespace
}  // namespace shardvec::testing
