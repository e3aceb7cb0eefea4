#include "llm/model.h"

#include <cmath>
#include <algorithm>
#include <map>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "llm/comm.h"

namespace shardvec::llm {
namespace {

TEST(SampleUniformTest, PinnedValues) {
  // u = (splitmix64(splitmix64(seed) ^ step) >> 40) / 2^24; the CUDA path uses the same
  // numbers, so they are pinned here (computed independently in Python).
  EXPECT_EQ(SampleUniform(0, 0), 10946269 / 16777216.0f);
  EXPECT_EQ(SampleUniform(1, 0), 6177195 / 16777216.0f);
  EXPECT_EQ(SampleUniform(0, 1), 570621 / 16777216.0f);
  EXPECT_EQ(SampleUniform(42, 7), 1443373 / 16777216.0f);
  EXPECT_EQ(SampleUniform(~uint64_t{0}, 123456789), 15794581 / 16777216.0f);
}

TEST(SampleUniformTest, RangeAndSpread) {
  double sum = 0;
  int low = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const float u = SampleUniform(99, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    low += u < 0.1f;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.01);
  EXPECT_NEAR(low / static_cast<double>(n), 0.1, 0.01);
}

TEST(SampleTokenTest, GreedyTakesLowestIdOnTiesAndSkipsNaN) {
  const std::vector<float> l = {1.0f, 3.0f, -2.0f, 3.0f, NAN, 2.9f};
  EXPECT_EQ(SampleToken(l.data(), 6, {}), 1);
  const std::vector<float> nan_first = {NAN, -5.0f, -4.0f};
  EXPECT_EQ(SampleToken(nan_first.data(), 3, {}), 2);
  SamplingParams p;
  p.top_p = 0.1f;  // ignored when greedy
  p.seed = 5;
  EXPECT_EQ(SampleToken(l.data(), 6, p), 1);
}

std::vector<float> LogProbs(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(static_cast<float>(std::log(x)));
  return l;
}

std::map<int, int> Histogram(const std::vector<float>& logits, float t, float top_p, int n) {
  std::map<int, int> h;
  for (int i = 0; i < n; ++i) {
    ++h[SampleToken(logits.data(), static_cast<int>(logits.size()), {t, top_p, 3, uint64_t(i)})];
  }
  return h;
}

TEST(SampleTokenTest, TopPKeepsTheSmallestPrefix) {
  const std::vector<float> l = LogProbs({0.15, 0.5, 0.05, 0.3});
  const int n = 20000;
  // 0.5 + 0.3 >= 0.75: tokens 1 and 3 only, in proportion 5 : 3.
  std::map<int, int> h = Histogram(l, 1.0f, 0.75f, n);
  EXPECT_EQ(h.size(), 2u);
  EXPECT_NEAR(h[1] / double(n), 0.5 / 0.8, 0.015);
  EXPECT_NEAR(h[3] / double(n), 0.3 / 0.8, 0.015);
  // 0.4: the top token alone.
  h = Histogram(l, 1.0f, 0.4f, 1000);
  EXPECT_EQ(h.size(), 1u);
  EXPECT_EQ(h[1], 1000);
  // 1.0: everything, in proportion.
  h = Histogram(l, 1.0f, 1.0f, n);
  EXPECT_EQ(h.size(), 4u);
  EXPECT_NEAR(h[0] / double(n), 0.15, 0.015);
  EXPECT_NEAR(h[2] / double(n), 0.05, 0.01);
}

TEST(SampleTokenTest, EqualProbabilitiesSortByIdAndTemperatureSharpens) {
  const std::vector<float> flat(8, 0.25f);
  // Probabilities 1/8 each: top_p 0.5 keeps ids 0..3 (ties broken by id).
  std::map<int, int> h = Histogram(flat, 0.7f, 0.5f, 4000);
  EXPECT_EQ(h.size(), 4u);
  EXPECT_EQ(h.rbegin()->first, 3);
  // A tiny temperature makes the top token certain; a huge one flattens.
  const std::vector<float> l = LogProbs({0.15, 0.5, 0.05, 0.3});
  h = Histogram(l, 1e-3f, 1.0f, 500);
  EXPECT_EQ(h[1], 500);
  h = Histogram(l, 1000.0f, 1.0f, 20000);
  EXPECT_NEAR(h[2] / 20000.0, 0.25, 0.015);
}

TEST(SampleTokenTest, DeterministicInSeedAndStep) {
  std::vector<float> l(300);
  for (size_t i = 0; i < l.size(); ++i) l[i] = std::sin(i * 0.37f) * 3;
  SamplingParams p{0.9f, 0.95f, 11, 4};
  const int32_t a = SampleToken(l.data(), 300, p);
  EXPECT_EQ(SampleToken(l.data(), 300, p), a);
  // The choice is the token whose cumulative range holds u * kept mass: recompute.
  std::vector<std::pair<float, int>> probs;
  const float mx = *std::max_element(l.begin(), l.end());
  for (int i = 0; i < 300; ++i) probs.push_back({std::exp((l[i] - mx) / 0.9f), i});
  std::sort(probs.begin(), probs.end(), [](auto x, auto y) {
    return x.first != y.first ? x.first > y.first : x.second < y.second;
  });
  double total = 0;  // in id order
  for (int i = 0; i < 300; ++i) total += std::exp((l[i] - mx) / 0.9f);
  std::vector<double> cum;
  for (auto& q : probs) {
    cum.push_back((cum.empty() ? 0.0 : cum.back()) + q.first);
    if (cum.back() >= 0.95f * total) break;
  }
  const double target = SampleUniform(11, 4) * cum.back();
  size_t j = 0;
  while (cum[j] <= target) ++j;
  EXPECT_EQ(a, probs[j].second);
  // Over steps, several distinct tokens come up.
  std::map<int, int> seen;
  for (uint64_t s = 0; s < 50; ++s) ++seen[SampleToken(l.data(), 300, {0.9f, 0.95f, 11, s})];
  EXPECT_GT(seen.size(), 3u);
}

// The documented rule with a full sort, to check the implementation (which sorts lazily,
// bucket by bucket). NaN logits count as probability 0.
int32_t ReferenceSample(const std::vector<float>& l, const SamplingParams& p) {
  const int V = static_cast<int>(l.size());
  float mx = -INFINITY;
  for (float x : l) {
    if (x > mx) mx = x;
  }
  std::vector<float> prob(V);
  double total = 0;
  for (int i = 0; i < V; ++i) {
    const float x = (l[i] - mx) / p.temperature;
    total += prob[i] = std::isnan(x) ? 0.0f : std::exp(x);
  }
  std::vector<int32_t> order(V);
  for (int i = 0; i < V; ++i) order[i] = i;
  if (p.top_p < 1.0f) {  // top_p = 1: id order
    std::sort(order.begin(), order.end(),
              [&](int32_t a, int32_t b) { return prob[a] != prob[b] ? prob[a] > prob[b] : a < b; });
  }
  std::vector<double> cum;
  double kept = total;
  for (int32_t id : order) {
    cum.push_back((cum.empty() ? 0.0 : cum.back()) + prob[id]);
    if (p.top_p < 1.0f && cum.back() >= p.top_p * total) break;
  }
  if (p.top_p < 1.0f) kept = cum.back();  // all of it if rounding never reached top_p
  const double target = SampleUniform(p.seed, p.step) * kept;
  for (size_t j = 0; j < cum.size(); ++j) {
    if (cum[j] > target) return order[j];
  }
  return order[cum.size() - 1];
}

TEST(SampleTokenTest, MatchesFullSortReferenceOnLargeVocabularies) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int V : {1, 2, 7, 1000, 20000, 128256}) {  // 128256: Llama 3's vocabulary
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<float> l(V);
      for (float& x : l) x = normal(rng) * (kind == 1 ? 0.05f : 4.0f);  // 1: nearly flat
      for (int i = 0; i < V; i += 97) l[i] = l[0];  // plenty of exact ties
      if (kind == 2 && V > 2) {  // NaN and -inf logits, a dominant token
        l[1] = NAN;
        l[V / 2] = -INFINITY;
        l[V - 1] = 40.0f;
      }
      for (float t : {0.3f, 1.0f, 5.0f}) {  // 5: flat, the kept prefix is long
        for (float top_p : {0.05f, 0.5f, 0.9f, 0.999f, 1.0f}) {
          for (uint64_t step = 0; step < (V > 20000 ? 2u : 8u); ++step) {
            const SamplingParams p{t, top_p, 17, step};
            ASSERT_EQ(SampleToken(l.data(), V, p), ReferenceSample(l, p))
                << "V=" << V << " kind=" << kind << " t=" << t << " top_p=" << top_p
                << " step=" << step;
          }
        }
      }
    }
  }
}

// Rows sampled on several threads choose what SampleToken chooses row by row; greedy rows
// take the argmax; null rows are left alone.
TEST(SampleTokenTest, SampleTokensOnThreadsEqualsOneAtATime) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const int V = 5000, n = 11;
  std::vector<std::vector<float>> logits(n, std::vector<float>(V));
  std::vector<const float*> rows(n);
  std::vector<SamplingParams> params(n);
  for (int i = 0; i < n; ++i) {
    for (float& x : logits[i]) x = normal(rng);
    rows[i] = logits[i].data();
    params[i] = {i % 3 == 0 ? 0.0f : 0.8f, i % 2 == 0 ? 0.9f : 1.0f, uint64_t(100 + i), uint64_t(i)};
  }
  rows[4] = nullptr;
  for (int threads : {1, 3, 0}) {
    std::vector<int32_t> out(n, -7);
    SampleTokens(rows, V, params, out.data(), threads);
    for (int i = 0; i < n; ++i) {
      const int32_t want = rows[i] == nullptr ? -7 : SampleToken(rows[i], V, params[i]);
      EXPECT_EQ(out[i], want) << "row " << i << " threads " << threads;
    }
  }
}

TEST(BroadcastBatchTest, FollowersReceiveTheBatchThenStop) {
  InProcessGroup group(3);
  ForwardBatch sent;
  sent.tokens = {5, 6, 7, 8};
  sent.positions = {0, 1, 2, 9};
  sent.slots = {1, 1, 1, 0};
  sent.sample_rows = {2, 3};
  sent.sampling = {{0.5f, 0.9f, 123, 4}, {0.0f, 1.0f, ~uint64_t{0}, 77}};
  std::vector<ForwardBatch> got(3);
  std::vector<int> batches(3, 0);
  std::vector<std::thread> threads;
  for (int r = 1; r < 3; ++r) {
    threads.emplace_back([&, r] {
      while (true) {
        ForwardBatch b;
        b.tokens = {99};  // overwritten
        bool stop = false;
        ASSERT_TRUE(BroadcastBatch(group.Get(r), &b, &stop).ok());
        if (stop) return;
        got[r] = b;
        ++batches[r];
      }
    });
  }
  bool stop = false;
  ASSERT_TRUE(BroadcastBatch(group.Get(0), &sent, &stop).ok());
  ForwardBatch empty_rows = sent;
  empty_rows.sample_rows.clear();
  empty_rows.sampling.clear();
  ASSERT_TRUE(BroadcastBatch(group.Get(0), &empty_rows, &stop).ok());
  ASSERT_TRUE(BroadcastBatch(group.Get(0), &sent, &stop).ok());
  stop = true;
  ASSERT_TRUE(BroadcastBatch(group.Get(0), &sent, &stop).ok());
  for (auto& t : threads) t.join();
  for (int r = 1; r < 3; ++r) {
    EXPECT_EQ(batches[r], 3);
    EXPECT_EQ(got[r].tokens, sent.tokens);
    EXPECT_EQ(got[r].positions, sent.positions);
    EXPECT_EQ(got[r].slots, sent.slots);
    EXPECT_EQ(got[r].sample_rows, sent.sample_rows);
    ASSERT_EQ(got[r].sampling.size(), 2u);
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(got[r].sampling[i].temperature, sent.sampling[i].temperature);
      EXPECT_EQ(got[r].sampling[i].top_p, sent.sampling[i].top_p);
      EXPECT_EQ(got[r].sampling[i].seed, sent.sampling[i].seed);
      EXPECT_EQ(got[r].sampling[i].step, sent.sampling[i].step);
    }
  }
}

TEST(BroadcastBatchTest, RootRejectsInconsistentBatchBeforeSending) {
  InProcessGroup group(1);
  ForwardBatch b;
  b.tokens = {1, 2};
  b.positions = {0};
  b.slots = {0, 0};
  bool stop = false;
  EXPECT_EQ(BroadcastBatch(group.Get(0), &b, &stop).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardvec::llm
