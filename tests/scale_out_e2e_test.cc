// Adding and removing shards while a writer and a searcher run without pause: 2 -> 4
// -> 3 shards. Afterwards every record exists exactly once, slots are balanced, no
// request failed, and Flat search equals a brute-force reference.
#include <signal.h>

#include <atomic>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "index/brute_force.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

constexpr int kDim = 16;

std::vector<float> VectorOf(uint64_t id) {
  std::mt19937 rng(static_cast<uint32_t>(id * 2654435761u));
  std::normal_distribution<float> normal;
  std::vector<float> v(kDim);
  for (float& x : v) x = normal(rng);
  return v;
}

std::unique_ptr<ChildProcess> StartExtraShard(const std::string& dir, std::string* address) {
  auto child = ChildProcess::Start({ShardvecBinary(), "shard", "serve", "--port", "0", "--data-dir", dir}, dir + ".log");
  EXPECT_TRUE(child.ok());
  absl::StatusOr<std::string> line = (*child)->WaitForLine("ready", absl::Seconds(60));
  EXPECT_TRUE(line.ok()) << line.status();
  *address = line->substr(line->rfind(' ') + 1);
  return *std::move(child);
}

TEST(ScaleOutE2ETest, TwoToFourToThreeShardsWhileServing) {
  const std::string dir = TestDir("scale_out");
  auto cluster_or = TestCluster::Start(2, dir);
  ASSERT_TRUE(cluster_or.ok()) << cluster_or.status();
  TestCluster& cluster = **cluster_or;
  auto stub = cluster.Client();
  ASSERT_TRUE(CreateCollection(stub.get(), "docs", kDim).ok());

  // Initial load: 20k records.
  std::map<uint64_t, bool> live;  // id -> present
  {
    FloatMatrix m{20000, kDim, {}};
    for (uint64_t id = 0; id < 20000; ++id) {
      std::vector<float> v = VectorOf(id);
      m.data.insert(m.data.end(), v.begin(), v.end());
      live[id] = true;
    }
    v1::UpsertRequest up = MakeUpsert("docs", m, 0);
    v1::UpsertResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Upsert(&ctx, up, &resp).ok());
  }

  std::atomic<bool> stop{false};
  std::atomic<int> write_failures{0}, search_failures{0}, writes{0}, searches{0};
  absl::Mutex mu;
  std::thread writer([&] {
    auto w = cluster.Client();
    std::mt19937 rng(1);
    uint64_t next = 20000;
    while (!stop.load()) {
      v1::UpsertRequest up;
      up.set_collection("docs");
      for (int i = 0; i < 50; ++i, ++next) {
        v1::Record* r = up.add_records();
        r->set_id(next);
        std::vector<float> v = VectorOf(next);
        r->mutable_vector()->Add(v.begin(), v.end());
      }
      v1::UpsertResponse resp;
      grpc::ClientContext ctx;
      grpc::Status s = w->Upsert(&ctx, up, &resp);
      if (!s.ok()) {
        ++write_failures;
        ADD_FAILURE() << "upsert failed: " << s.error_message();
        continue;
      }
      v1::DeleteRequest del;
      del.set_collection("docs");
      for (int i = 0; i < 5; ++i) del.add_ids(rng() % next);
      v1::DeleteResponse deleted;
      grpc::ClientContext dctx;
      s = w->Delete(&dctx, del, &deleted);
      if (!s.ok()) {
        ++write_failures;
        ADD_FAILURE() << "delete failed: " << s.error_message();
      }
      absl::MutexLock lock(&mu);
      for (const v1::Record& r : up.records()) live[r.id()] = true;
      if (s.ok()) {
        for (uint64_t id : del.ids()) live[id] = false;
      }
      ++writes;
    }
  });
  std::thread searcher([&] {
    auto r = cluster.Client();
    std::mt19937 rng(2);
    while (!stop.load()) {
      v1::SearchRequest req;
      req.set_collection("docs");
      req.set_k(10);
      for (int q = 0; q < 4; ++q) {
        std::vector<float> v = VectorOf(1000000 + rng() % 1000);
        req.add_queries()->mutable_values()->Add(v.begin(), v.end());
      }
      v1::SearchResponse resp;
      grpc::ClientContext ctx;
      grpc::Status s = r->Search(&ctx, req, &resp);
      if (!s.ok()) {
        ++search_failures;
        ADD_FAILURE() << "search failed: " << s.error_message();
      }
      ++searches;
    }
  });

  std::string a2, a3;
  std::unique_ptr<ChildProcess> s2 = StartExtraShard(dir + "/extra-2", &a2);
  std::unique_ptr<ChildProcess> s3 = StartExtraShard(dir + "/extra-3", &a3);
  CliResult r = cluster.Cli({"shard", "add", a2});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = cluster.Cli({"shard", "add", a3});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = cluster.Cli({"shard", "remove", cluster.shard_address(0)});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::HasSubstr("removed shard-0"));
  stop = true;
  writer.join();
  searcher.join();
  EXPECT_EQ(write_failures.load(), 0);
  EXPECT_EQ(search_failures.load(), 0);
  EXPECT_GT(writes.load(), 0);
  EXPECT_GT(searches.load(), 0);

  // Three shards, balanced slots, and record counts that add up to the live set.
  v1::ClusterStatusResponse status;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ClusterStatus(&ctx, {}, &status).ok());
  }
  ASSERT_EQ(status.shards_size(), 3);
  uint64_t total = 0;
  uint32_t min_slots = UINT32_MAX, max_slots = 0;
  for (const v1::ShardStatus& sh : status.shards()) {
    EXPECT_TRUE(sh.reachable());
    EXPECT_NE(sh.address(), cluster.shard_address(0));
    min_slots = std::min(min_slots, sh.num_slots());
    max_slots = std::max(max_slots, sh.num_slots());
    for (const v1::CollectionCount& c : sh.collections()) total += c.num_records();
  }
  EXPECT_LE(max_slots - min_slots, 1u);
  std::vector<uint64_t> ids;
  FloatMatrix base{0, kDim, {}};
  for (const auto& [id, present] : live) {
    if (!present) continue;
    ids.push_back(id);
    std::vector<float> v = VectorOf(id);
    base.data.insert(base.data.end(), v.begin(), v.end());
    ++base.rows;
  }
  EXPECT_EQ(total, ids.size()) << "every record exactly once";

  // Every live record is there with its vector; deleted ones are gone.
  v1::GetRequest get;
  get.set_collection("docs");
  get.set_include_vectors(true);
  for (const auto& [id, present] : live) get.add_ids(id);
  v1::GetResponse got;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Get(&ctx, get, &got).ok());
  }
  EXPECT_EQ(static_cast<size_t>(got.records_size()), ids.size());
  for (const v1::Record& rec : got.records()) {
    ASSERT_TRUE(live[rec.id()]) << "deleted id " << rec.id() << " came back";
    EXPECT_THAT(rec.vector(), ::testing::ElementsAreArray(VectorOf(rec.id())));
  }

  // Flat search equals brute force over the live set.
  FloatMatrix queries = RandomVectors(50, kDim, 77);
  v1::SearchRequest req;
  req.set_collection("docs");
  req.set_k(10);
  for (int64_t q = 0; q < queries.rows; ++q) {
    req.add_queries()->mutable_values()->Add(queries.row(q), queries.row(q) + kDim);
  }
  v1::SearchResponse resp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Search(&ctx, req, &resp).ok());
  }
  std::vector<double> want_d;
  std::vector<uint64_t> want_ids;
  index::BruteForceSearch(index::Metric::kL2, kDim, base.rows, base.data.data(), ids.data(), queries.rows,
                          queries.data.data(), 10, &want_d, &want_ids);
  std::vector<float> got_d;
  std::vector<uint64_t> got_ids;
  for (const v1::QueryResult& q : resp.results()) {
    got_ids.insert(got_ids.end(), q.ids().begin(), q.ids().end());
    got_d.insert(got_d.end(), q.distances().begin(), q.distances().end());
  }
  absl::Status check = index::CheckKnnResult(index::Metric::kL2, 10, want_d, want_ids, got_d, got_ids, 1e-5);
  EXPECT_TRUE(check.ok()) << check;
}

// Polls the router's map file until a move is recorded in it (bounded).
bool WaitForMove(const std::string& map_path) {
  for (const absl::Time deadline = absl::Now() + absl::Seconds(60); absl::Now() < deadline;) {
    std::ifstream in(map_path);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.find("phase: COPYING") != std::string::npos) return true;
  }
  return false;
}

void Load(TestCluster& cluster, int64_t n) {
  ASSERT_TRUE(CreateCollection(cluster.Client().get(), "docs", kDim).ok());
  for (int64_t first = 0; first < n; first += 50000) {
    FloatMatrix m = RandomVectors(50000, kDim, static_cast<uint32_t>(first));
    v1::UpsertRequest up = MakeUpsert("docs", m, first);
    v1::UpsertResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(cluster.Client()->Upsert(&ctx, up, &resp).ok());
  }
}

// Every id of [0, n) exactly once: present, and the per-shard counts add up to n.
void ExpectExactlyOnce(v1::ShardVec::Stub* stub, int64_t n);

// Loads n records, starts an extra shard and `shardvec shard add` for it, and returns
// once the router's map records a move in progress.
struct MoveInProgress {
  std::string address;
  std::unique_ptr<ChildProcess> extra;
  std::unique_ptr<ChildProcess> add;
};

MoveInProgress StartAddAndWaitForMove(TestCluster& cluster, const std::string& dir, int64_t n) {
  MoveInProgress m;
  Load(cluster, n);
  m.extra = StartExtraShard(dir + "/extra", &m.address);
  auto add = ChildProcess::Start({ShardvecBinary(), "--router", cluster.router_address(), "shard", "add", m.address});
  EXPECT_TRUE(add.ok());
  if (add.ok()) m.add = *std::move(add);
  EXPECT_TRUE(WaitForMove(dir + "/router/cluster_map.textproto")) << "no move appeared in " << dir;
  return m;
}

TEST(ScaleOutE2ETest, ShardKilledMidMoveRollsBackOrResumes) {
  for (const std::string victim : {"source", "target"}) {
    SCOPED_TRACE(victim);
    const std::string dir = TestDir("scale_out_shard_crash_" + victim);
    auto cluster_or = TestCluster::Start(1, dir);
    ASSERT_TRUE(cluster_or.ok()) << cluster_or.status();
    TestCluster& cluster = **cluster_or;
    const int64_t n = 150000;
    MoveInProgress move = StartAddAndWaitForMove(cluster, dir, n);
    ASSERT_FALSE(::testing::Test::HasFailure());
    const std::string& address = move.address;
    std::unique_ptr<ChildProcess>& extra = move.extra;
    ChildProcess* killed = victim == "source" ? cluster.shard(0) : extra.get();
    killed->Signal(SIGKILL);
    ASSERT_NE(killed->Wait(absl::Seconds(30)), -1);
    move.add->ReadRest(absl::Minutes(2));
    EXPECT_NE(move.add->Wait(absl::Seconds(30)), 0) << "the add must fail when a shard dies under it";

    // Bring the dead shard back on its address and data directory.
    if (victim == "source") {
      ASSERT_TRUE(cluster.RestartShard(0).ok());
    } else {
      extra->Stop();
      const std::string port = address.substr(address.rfind(':') + 1);
      auto again = ChildProcess::Start({ShardvecBinary(), "shard", "serve", "--port", port, "--data-dir", dir + "/extra"},
                                       dir + "/extra.log");
      ASSERT_TRUE(again.ok());
      ASSERT_TRUE((*again)->WaitForLine("ready", absl::Seconds(60)).ok());
      extra = *std::move(again);
      // The target could not be cleared: the move stays recorded, and a restarted
      // router redoes it.
      ASSERT_TRUE(cluster.RestartRouter().ok());
    }
    // Retrying the add finishes the job; nothing was lost or duplicated.
    CliResult r = cluster.Cli({"shard", "add", address});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ExpectExactlyOnce(cluster.Client().get(), n);
  }
}

void ExpectExactlyOnce(v1::ShardVec::Stub* stub, int64_t n) {
  v1::ClusterStatusResponse status;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ClusterStatus(&ctx, {}, &status).ok());
  }
  uint64_t total = 0;
  uint32_t min_slots = UINT32_MAX, max_slots = 0;
  for (const v1::ShardStatus& sh : status.shards()) {
    EXPECT_TRUE(sh.reachable()) << sh.id();
    min_slots = std::min(min_slots, sh.num_slots());
    max_slots = std::max(max_slots, sh.num_slots());
    for (const v1::CollectionCount& c : sh.collections()) total += c.num_records();
  }
  EXPECT_EQ(total, static_cast<uint64_t>(n));
  EXPECT_LE(max_slots - min_slots, 1u);
  for (int64_t first = 0; first < n; first += 50000) {
    v1::GetRequest get;
    get.set_collection("docs");
    for (int64_t id = first; id < std::min(n, first + 50000); ++id) get.add_ids(static_cast<uint64_t>(id));
    v1::GetResponse got;
    grpc::ClientContext ctx;
    grpc::Status s = stub->Get(&ctx, get, &got);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(got.missing_ids_size(), 0);
  }
}

TEST(ScaleOutE2ETest, RouterKilledMidMoveResumesWithoutLossOrDuplicates) {
  const std::string dir = TestDir("scale_out_crash");
  auto cluster_or = TestCluster::Start(2, dir);
  ASSERT_TRUE(cluster_or.ok()) << cluster_or.status();
  TestCluster& cluster = **cluster_or;
  const int64_t n = 150000;
  MoveInProgress move = StartAddAndWaitForMove(cluster, dir, n);
  ASSERT_FALSE(::testing::Test::HasFailure());
  const std::string& address = move.address;
  const std::string map_path = dir + "/router/cluster_map.textproto";
  cluster.router()->Signal(SIGKILL);
  ASSERT_NE(cluster.router()->Wait(absl::Seconds(30)), -1);
  move.add->Wait(absl::Seconds(30));

  // The restarted router finishes the interrupted move before it serves.
  ASSERT_TRUE(cluster.RestartRouter().ok());
  std::ifstream in(map_path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.find("migrations"), std::string::npos) << text;
  // Running the add again finishes the balancing.
  CliResult r = cluster.Cli({"shard", "add", address});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ExpectExactlyOnce(cluster.Client().get(), n);
}

}  // namespace
}  // namespace shardvec::testing
