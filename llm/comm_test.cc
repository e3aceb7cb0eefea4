#include "llm/comm.h"

#include <functional>
#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardvec::llm {
namespace {

using ::testing::HasSubstr;

// Runs body(rank, comm) on one thread per rank.
void OnRanks(InProcessGroup& g, const std::function<void(int, Communicator*)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < g.size(); ++r) threads.emplace_back(body, r, g.Get(r));
  for (auto& t : threads) t.join();
}

std::vector<float> RankData(int rank, size_t n) {
  std::mt19937 rng(1000 + rank);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng) * std::pow(10.0f, static_cast<float>(rank % 3));
  return v;
}

TEST(InProcessGroupTest, AllReduceSumIsRankOrderedAndIdenticalOnAllRanks) {
  for (int T : {1, 2, 3, 4}) {
    for (size_t n : {size_t{0}, size_t{2}, size_t{1001}}) {
      InProcessGroup g(T);
      std::vector<float> want(n, 0.0f);
      for (size_t i = 0; i < n; ++i) {
        float s = RankData(0, n)[i];
        for (int r = 1; r < T; ++r) s += RankData(r, n)[i];
        want[i] = s;
      }
      std::vector<std::vector<float>> got(T);
      OnRanks(g, [&](int r, Communicator* c) {
        EXPECT_EQ(c->rank(), r);
        EXPECT_EQ(c->size(), T);
        got[r] = RankData(r, n);
        EXPECT_TRUE(c->AllReduceSum(got[r].data(), n, CommType::kFloat32).ok());
      });
      for (int r = 0; r < T; ++r) EXPECT_EQ(got[r], want) << "T=" << T << " n=" << n;
    }
  }
}

TEST(InProcessGroupTest, AllReduceIntegerTypes) {
  InProcessGroup g(3);
  std::vector<std::vector<int32_t>> ints(3);
  std::vector<std::vector<uint8_t>> bytes(3);
  OnRanks(g, [&](int r, Communicator* c) {
    ints[r] = {r, -10 * r, 1 << 20};
    bytes[r] = {uint8_t(r), 100};
    EXPECT_TRUE(c->AllReduceSum(ints[r].data(), 3, CommType::kInt32).ok());
    EXPECT_TRUE(c->AllReduceSum(bytes[r].data(), 2, CommType::kUInt8).ok());
    std::vector<uint16_t> bf(4);
    EXPECT_EQ(c->AllReduceSum(bf.data(), 4, CommType::kBFloat16).code(),
              absl::StatusCode::kUnimplemented);
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(ints[r], (std::vector<int32_t>{3, -30, 3 << 20}));
    EXPECT_EQ(bytes[r], (std::vector<uint8_t>{3, 44}));  // 300 wraps mod 256
  }
}

TEST(InProcessGroupTest, AllGatherAndBroadcast) {
  const int T = 4;
  InProcessGroup g(T);
  std::vector<std::vector<int32_t>> gathered(T), in_place(T), bcast(T);
  std::vector<std::vector<uint8_t>> host(T);
  OnRanks(g, [&](int r, Communicator* c) {
    const std::vector<int32_t> mine = {r * 10, r * 10 + 1, r * 10 + 2};
    gathered[r].resize(3 * T);
    EXPECT_TRUE(c->AllGather(mine.data(), gathered[r].data(), 3, CommType::kInt32).ok());
    // In place: the send buffer is this rank's slot of recv.
    in_place[r].assign(2 * T, -1);
    in_place[r][2 * r] = r;
    in_place[r][2 * r + 1] = -r;
    EXPECT_TRUE(
        c->AllGather(in_place[r].data() + 2 * r, in_place[r].data(), 2, CommType::kInt32).ok());
    bcast[r] = {r, r, r};
    EXPECT_TRUE(c->Broadcast(bcast[r].data(), 3, CommType::kInt32, /*root=*/2).ok());
    host[r] = {uint8_t(r), 7, 7, 7, 7};
    EXPECT_TRUE(c->BroadcastHost(host[r].data(), 5, 1).ok());
    EXPECT_EQ(c->Broadcast(bcast[r].data(), 3, CommType::kInt32, T).code(),
              absl::StatusCode::kInvalidArgument);
  });
  for (int r = 0; r < T; ++r) {
    for (int s = 0; s < T; ++s) {
      for (int i = 0; i < 3; ++i) EXPECT_EQ(gathered[r][3 * s + i], s * 10 + i);
      EXPECT_EQ(in_place[r][2 * s], s);
      EXPECT_EQ(in_place[r][2 * s + 1], -s);
    }
    EXPECT_EQ(bcast[r], (std::vector<int32_t>{2, 2, 2}));
    EXPECT_EQ(host[r], (std::vector<uint8_t>{1, 7, 7, 7, 7}));
  }
}

TEST(InProcessGroupTest, MismatchedCallsFailOnEveryRankAndTheGroupRecovers) {
  InProcessGroup g(3);
  OnRanks(g, [&](int r, Communicator* c) {
    std::vector<float> v(8, 1.0f);
    absl::Status s = c->AllReduceSum(v.data(), r == 2 ? 4 : 8, CommType::kFloat32);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("rank 2"));
    EXPECT_EQ(v, std::vector<float>(8, 1.0f));  // untouched
    EXPECT_TRUE(c->AllReduceSum(v.data(), 8, CommType::kFloat32).ok());
    EXPECT_EQ(v, std::vector<float>(8, 3.0f));
  });
}

TEST(InProcessGroupTest, ManyBackToBackCollectives) {
  // Fast ranks re-enter the next collective while slow ones leave the last: the
  // generation-counted barrier keeps rounds apart.
  const int T = 4, rounds = 500;
  InProcessGroup g(T);
  std::vector<int> bad(T, 0);
  OnRanks(g, [&](int r, Communicator* c) {
    for (int i = 0; i < rounds; ++i) {
      int32_t v[2] = {r + i, 1};
      if (!c->AllReduceSum(v, 2, CommType::kInt32).ok()) ++bad[r];
      if (v[0] != T * i + T * (T - 1) / 2 || v[1] != T) ++bad[r];
      int32_t b = r == i % T ? i : -1;
      if (!c->Broadcast(&b, 1, CommType::kInt32, i % T).ok()) ++bad[r];
      if (b != i) ++bad[r];
    }
  });
  EXPECT_EQ(bad, std::vector<int>(T, 0));
}

TEST(InProcessGroupTest, GetOutOfRangeIsNull) {
  InProcessGroup g(2);
  EXPECT_EQ(g.Get(2), nullptr);
  EXPECT_EQ(g.Get(-1), nullptr);
  EXPECT_NE(g.Get(1), nullptr);
}

}  // namespace
}  // namespace shardvec::llm
