// Acknowledged writes survive kill -9 of the shard, at many points during a stream of
// upserts and deletes; no batch is ever half applied; a corrupt snapshot is detected
// and the shard rebuilds from its record store.
#include <signal.h>

#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

constexpr int kDim = 8;
constexpr uint64_t kIdPool = 600;
constexpr int kKillPoints = 22;

struct Value {
  std::vector<float> vector;
  std::string text;
  bool operator==(const Value& o) const { return vector == o.vector && text == o.text; }
};
using State = std::map<uint64_t, Value>;  // id -> value; absent ids are deleted

// One write: either an upsert of `upserts` or a delete of `deletes`.
struct Batch {
  int64_t number = 0;
  std::map<uint64_t, Value> upserts;
  std::vector<uint64_t> deletes;
  void ApplyTo(State* s) const {
    for (const auto& [id, v] : upserts) (*s)[id] = v;
    for (uint64_t id : deletes) s->erase(id);
  }
};

Batch MakeBatch(int64_t number, std::mt19937* rng) {
  Batch b;
  b.number = number;
  const int size = 1 + static_cast<int>((*rng)() % 40);
  if ((*rng)() % 4 == 0) {
    for (int i = 0; i < size; ++i) b.deletes.push_back((*rng)() % kIdPool);
    return b;
  }
  for (int i = 0; i < size; ++i) {
    uint64_t id = (*rng)() % kIdPool;
    Value v;
    // Distinct per (batch, id) and of unit scale, so each is its own nearest neighbour.
    std::mt19937 values(static_cast<uint32_t>(number * 1000003 + static_cast<int64_t>(id)));
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    for (int j = 0; j < kDim; ++j) v.vector.push_back(unit(values));
    v.text = absl::StrCat("batch ", number, " id ", id);
    b.upserts[id] = v;
  }
  return b;
}

grpc::Status Send(v1::ShardVec::Stub* stub, const Batch& b) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
  if (!b.deletes.empty()) {
    v1::DeleteRequest req;
    req.set_collection("dur");
    for (uint64_t id : b.deletes) req.add_ids(id);
    v1::DeleteResponse resp;
    return stub->Delete(&ctx, req, &resp);
  }
  v1::UpsertRequest req;
  req.set_collection("dur");
  for (const auto& [id, v] : b.upserts) {
    v1::Record* r = req.add_records();
    r->set_id(id);
    r->mutable_vector()->Add(v.vector.begin(), v.vector.end());
    r->mutable_payload()->set_text(v.text);
  }
  v1::UpsertResponse resp;
  return stub->Upsert(&ctx, req, &resp);
}

// The shard's state for every id of the pool, read through the router; retried
// until the router reaches the restarted shard (bounded).
absl::StatusOr<State> ReadState(v1::ShardVec::Stub* stub) {
  v1::GetRequest req;
  req.set_collection("dur");
  req.set_include_vectors(true);
  req.set_include_payload(true);
  for (uint64_t id = 0; id < kIdPool; ++id) req.add_ids(id);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (true) {
    v1::GetResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    grpc::Status s = stub->Get(&ctx, req, &resp);
    if (s.ok()) {
      State state;
      for (const v1::Record& r : resp.records()) {
        state[r.id()] = Value{{r.vector().begin(), r.vector().end()}, r.payload().text()};
      }
      return state;
    }
    if (absl::Now() > deadline) return absl::DeadlineExceededError(s.error_message());
  }
}

// Every stored vector finds its own id first: the index matches the store.
void ExpectSearchable(v1::ShardVec::Stub* stub, const State& state) {
  v1::SearchRequest req;
  req.set_collection("dur");
  req.set_k(1);
  std::vector<uint64_t> ids;
  for (const auto& [id, v] : state) {
    if (ids.size() == 50) break;
    ids.push_back(id);
    req.add_queries()->mutable_values()->Add(v.vector.begin(), v.vector.end());
  }
  if (ids.empty()) return;
  v1::SearchResponse resp;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub->Search(&ctx, req, &resp).ok());
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_EQ(resp.results(i).ids_size(), 1);
    EXPECT_EQ(resp.results(i).ids(0), ids[i]);
    EXPECT_LT(resp.results(i).distances(0), 1e-5f) << "id " << ids[i];
  }
}

TEST(DurabilityE2ETest, AckedWritesSurviveKill9AtManyPoints) {
  // Frequent snapshots, so kills land before, during and after them and recovery
  // takes both paths: snapshot plus change-log replay, and rebuild from the store.
  auto cluster_or = TestCluster::Start(1, TestDir("durability_kill"), {"--snapshot-after-ops", "15"});
  ASSERT_TRUE(cluster_or.ok()) << cluster_or.status();
  TestCluster& cluster = **cluster_or;
  auto stub = cluster.Client();
  ASSERT_TRUE(CreateCollection(stub.get(), "dur", kDim).ok());

  std::mt19937 rng(2026);
  State acked;
  int64_t next_batch = 0;
  int unknown_applied = 0, unknown_lost = 0;
  for (int kill = 0; kill < kKillPoints; ++kill) {
    // The writer runs until its first failure; the kill lands after a random number
    // of acknowledged batches, so at a different point of the stream each time.
    const int64_t kill_after = 5 + static_cast<int64_t>(rng() % 200);
    absl::Mutex mu;
    int64_t acked_now = 0;
    bool writer_stopped = false;
    std::optional<Batch> in_flight;
    State local = acked;
    std::thread writer([&] {
      std::mt19937 wrng(static_cast<uint32_t>(kill * 7919));
      while (true) {
        Batch b = MakeBatch(next_batch++, &wrng);
        {
          absl::MutexLock lock(&mu);
          in_flight = b;
        }
        if (!Send(stub.get(), b).ok()) {  // the kill: `b` is in doubt
          absl::MutexLock lock(&mu);
          writer_stopped = true;
          return;
        }
        absl::MutexLock lock(&mu);
        b.ApplyTo(&local);
        in_flight.reset();
        ++acked_now;
      }
    });
    {
      absl::MutexLock lock(&mu);
      // Also wakes if the writer stops on its own (a shard that died unasked).
      auto ready = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return acked_now >= kill_after || writer_stopped; };
      mu.Await(absl::Condition(&ready));
    }
    const bool failed_early = writer_stopped && acked_now < kill_after;
    cluster.shard(0)->Signal(SIGKILL);
    writer.join();
    ASSERT_FALSE(failed_early) << "the writer failed before kill " << kill << "; see shard-0.log";
    ASSERT_TRUE(cluster.RestartShard(0).ok()) << "restart " << kill;

    absl::StatusOr<State> observed = ReadState(stub.get());
    ASSERT_TRUE(observed.ok()) << observed.status();
    // Every acked write is there, and the batch in doubt is applied entirely or not at all.
    if (*observed == local) {
      ++unknown_lost;
    } else {
      ASSERT_TRUE(in_flight.has_value()) << "kill " << kill << ": state differs from the acknowledged writes";
      State with = local;
      in_flight->ApplyTo(&with);
      ASSERT_TRUE(*observed == with) << "kill " << kill << ": batch " << in_flight->number << " is half applied";
      ++unknown_applied;
      local = with;
    }
    acked = local;
    ExpectSearchable(stub.get(), acked);
  }
  EXPECT_EQ(unknown_applied + unknown_lost, kKillPoints);
  EXPECT_GT(acked.size(), 100u);
}

TEST(DurabilityE2ETest, CorruptOrTruncatedSnapshotIsRebuiltFromTheStore) {
  auto cluster_or = TestCluster::Start(1, TestDir("durability_snapshot"));
  ASSERT_TRUE(cluster_or.ok()) << cluster_or.status();
  TestCluster& cluster = **cluster_or;
  auto stub = cluster.Client();
  ASSERT_TRUE(CreateCollection(stub.get(), "dur", kDim).ok());
  std::mt19937 rng(7);
  State expected;
  for (int64_t b = 0; b < 30; ++b) {
    Batch batch = MakeBatch(b, &rng);
    ASSERT_TRUE(Send(stub.get(), batch).ok());
    batch.ApplyTo(&expected);
  }
  const std::string snapshot = cluster.shard_data_dir(0) + "/snapshots/collection-1.snap";
  for (const std::string damage : {"flip", "truncate"}) {
    cluster.shard(0)->Stop();  // SIGTERM: a clean shutdown writes a snapshot
    std::fstream f(snapshot, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good()) << "no snapshot written at shutdown: " << snapshot;
    f.seekg(0, std::ios::end);
    const std::streamoff size = f.tellg();
    if (damage == "flip") {
      f.seekp(size / 2);
      char c = 0x5a;
      f.write(&c, 1);
      f.close();
    } else {
      f.close();
      ASSERT_EQ(truncate(snapshot.c_str(), size - 100), 0);
    }
    ASSERT_TRUE(cluster.RestartShard(0).ok());
    absl::StatusOr<State> observed = ReadState(stub.get());
    ASSERT_TRUE(observed.ok()) << observed.status();
    EXPECT_TRUE(*observed == expected) << damage;
    ExpectSearchable(stub.get(), expected);
    std::ifstream log(TestDir("durability_snapshot") + "/shard-0.log");
    std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    EXPECT_THAT(text, ::testing::HasSubstr(damage == "flip" ? "checksum mismatch" : "no end marker"));
    EXPECT_THAT(text, ::testing::HasSubstr("rebuilt from the store"));
  }
}

}  // namespace
}  // namespace shardvec::testing
