// GpuMerger against router::MergeTopK: the same hits, distances (bit for bit) and
// payloads, on random per-shard lists with duplicate ids across lists, ties, short and
// empty lists and payloads. The host half runs everywhere with a CPU selection whose
// ties fall in random order; the GPU cases skip without a CUDA device.
#include "router/gpu_merge.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/knn.h"
#include "router/merge.h"

namespace shardvec::router {
namespace {

struct Shape {
  int m = 4;       // lists per query
  int k = 10;
  bool ties = true;        // distances from a small set (and -0.0 beside 0.0)
  double dup_rate = 0.3;   // chance that a hit repeats an id of an earlier list
  int max_copies = 2;      // lists an id may appear in
  bool infinities = false;  // some hits at the padding's distance
  double same_distance = 0.7;  // chance that a repeated id has its earlier distance
};

// One query's lists, nearest first, ties within a list in random order.
std::vector<v1::QueryResult> RandomLists(const Shape& shape, bool larger_is_better, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> length(0, shape.k);
  std::uniform_real_distribution<double> unit(0, 1);
  std::uniform_int_distribution<int> level(0, 8);
  const bool payloads = unit(rng) < 0.7;
  const int bare_list = unit(rng) < 0.2 ? std::uniform_int_distribution<int>(0, shape.m - 1)(rng) : -1;
  std::vector<v1::QueryResult> lists(shape.m);
  struct Seen {
    uint64_t id;
    float distance;
    int copies;
  };
  std::vector<Seen> earlier;
  uint64_t next_id = std::uniform_int_distribution<uint64_t>(0, 1000)(rng);
  for (int l = 0; l < shape.m; ++l) {
    const int n = unit(rng) < 0.3 ? shape.k : length(rng);
    std::vector<std::pair<float, uint64_t>> hits;
    std::vector<uint64_t> taken;
    std::vector<uint64_t> repeated;
    for (int i = 0; i < n; ++i) {
      float d;
      if (shape.ties) {
        d = level(rng) * 0.25f;
        if (d == 0 && unit(rng) < 0.5) d = -0.0f;
      } else {
        d = static_cast<float>(unit(rng) * 10);
      }
      if (shape.infinities && unit(rng) < 0.1) {
        d = larger_is_better ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
      }
      uint64_t id = next_id;
      next_id += 1 + std::uniform_int_distribution<uint64_t>(0, 3)(rng);
      if (!earlier.empty() && unit(rng) < shape.dup_rate) {
        Seen& s = earlier[std::uniform_int_distribution<size_t>(0, earlier.size() - 1)(rng)];
        if (s.copies < shape.max_copies && std::find(taken.begin(), taken.end(), s.id) == taken.end()) {
          id = s.id;
          ++s.copies;
          repeated.push_back(id);
          if (unit(rng) < shape.same_distance) d = s.distance;  // the same record on both shards
        }
      }
      taken.push_back(id);
      hits.push_back({d, id});
    }
    std::stable_sort(hits.begin(), hits.end(), [&](const auto& a, const auto& b) {
      return larger_is_better ? a.first > b.first : a.first < b.first;
    });
    for (const auto& [d, id] : hits) {
      lists[l].add_ids(id);
      lists[l].add_distances(d);
      if (payloads && l != bare_list) lists[l].add_payloads()->set_text(absl::StrCat("doc ", id, " from list ", l));
      if (std::find(repeated.begin(), repeated.end(), id) == repeated.end()) earlier.push_back({id, d, 1});
    }
  }
  return lists;
}

std::vector<const v1::QueryResult*> Pointers(const std::vector<v1::QueryResult>& lists) {
  std::vector<const v1::QueryResult*> p;
  for (const v1::QueryResult& r : lists) p.push_back(&r);
  return p;
}

v1::QueryResult CpuMerge(const std::vector<const v1::QueryResult*>& lists, int k, bool larger_is_better) {
  v1::QueryResult out;
  MergeTopK(lists, k, larger_is_better, &out);
  return out;
}

// Bytes compare distances bit for bit (-0.0 is not 0.0) and payloads in full.
void ExpectSame(const v1::QueryResult& got, const v1::QueryResult& want, const std::string& where) {
  EXPECT_EQ(got.SerializeAsString(), want.SerializeAsString())
      << where << "\ngot:\n" << got.DebugString() << "want:\n" << want.DebugString();
}

// What the GPU selects: the k2 best positions of the padded m x k_in layout, equal
// distances in random order, and (as the kernels do) -1 for some entries at the
// padding's distance.
std::vector<int64_t> CpuSelect(const std::vector<v1::QueryResult>& lists, int k_in, int k2, bool larger_is_better,
                               std::mt19937_64& rng) {
  const float pad =
      larger_is_better ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
  std::vector<float> dist(lists.size() * k_in, pad);
  for (size_t l = 0; l < lists.size(); ++l) {
    for (int i = 0; i < lists[l].ids_size(); ++i) dist[l * k_in + i] = lists[l].distances(i);
  }
  std::vector<int64_t> order(dist.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return larger_is_better ? dist[a] > dist[b] : dist[a] < dist[b];
  });
  order.resize(k2);
  for (int64_t& p : order) {
    if (dist[p] == pad && rng() % 2 == 0) p = -1;
  }
  return order;
}

uint64_t FreshSeed() { return std::random_device{}() * uint64_t{2654435761} + std::random_device{}(); }

TEST(GpuMergeHostTest, CandidatesGiveMergeTopKsAnswer) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  absl::flat_hash_set<uint64_t> seen;
  for (bool larger_is_better : {false, true}) {
    for (Shape shape : {Shape{}, Shape{2, 1}, Shape{7, 50}, Shape{3, 20, false}, Shape{5, 16, false, 0.5, 3},
                        Shape{4, 8, true, 0.3, 2, true}, Shape{6, 10, false, 0.5, 2, false, 0.0}}) {
      int undecided = 0;
      for (int q = 0; q < 300; ++q) {
        std::vector<v1::QueryResult> lists = RandomLists(shape, larger_is_better, rng);
        int k_in = 0;
        for (const auto& r : lists) k_in = std::max(k_in, r.ids_size());
        if (k_in == 0) continue;
        const int64_t len = int64_t{shape.m} * k_in;
        const int k2 = static_cast<int>(std::min<int64_t>(len, 2 * shape.k));
        const std::vector<int64_t> best = CpuSelect(lists, k_in, k2, larger_is_better, rng);
        v1::QueryResult got;
        absl::StatusOr<bool> decided = gpu_merge_internal::MergeFromCandidates(
            Pointers(lists), shape.m, k_in, best.data(), k2, shape.k, larger_is_better, &got, &seen);
        ASSERT_TRUE(decided.ok()) << decided.status();
        const std::string where = absl::StrCat("ip=", larger_is_better, " m=", shape.m, " k=", shape.k, " q=", q);
        if (!*decided) {
          EXPECT_EQ(got.ids_size(), 0) << where;
          ++undecided;
          continue;
        }
        ExpectSame(got, CpuMerge(Pointers(lists), shape.k, larger_is_better), where);
      }
      // Without equal distances and with at most two copies of an id, 2k candidates
      // always decide.
      if (!shape.ties && shape.same_distance == 0 && shape.max_copies <= 2) {
        EXPECT_EQ(undecided, 0);
      }
    }
  }
}

TEST(GpuMergeHostTest, RejectsMalformedCandidates) {
  v1::QueryResult a, b;
  for (int i = 0; i < 3; ++i) {
    a.add_ids(i);
    a.add_distances(i * 1.0f);
    b.add_ids(10 + i);
    b.add_distances(i * 1.0f + 0.5f);
  }
  absl::flat_hash_set<uint64_t> seen;
  v1::QueryResult out;
  const int64_t out_of_range[] = {0, -2};
  EXPECT_FALSE(gpu_merge_internal::MergeFromCandidates({&a, &b}, 2, 3, out_of_range, 2, 1, false, &out, &seen).ok());
  const int64_t unsorted[] = {3, 0};
  EXPECT_FALSE(gpu_merge_internal::MergeFromCandidates({&a, &b}, 2, 3, unsorted, 2, 1, false, &out, &seen).ok());
  const int64_t good[] = {0, 3};
  absl::StatusOr<bool> decided = gpu_merge_internal::MergeFromCandidates({&a, &b}, 2, 3, good, 2, 1, false, &out,
                                                                        &seen);
  ASSERT_TRUE(decided.ok());
  EXPECT_TRUE(*decided);
  EXPECT_EQ(out.ids_size(), 1);
  EXPECT_EQ(out.ids(0), 0u);
}

// A k above kernels::kMaxK / 2 (and lists that are all empty) never reach the device.
TEST(GpuMergeHostTest, WhatTheKernelsCannotSelectMergesOnTheCpu) {
  std::mt19937_64 rng(7);
  GpuMerger merger(GpuMergeOptions{});
  const int k = kernels::kMaxK;
  std::vector<std::vector<v1::QueryResult>> storage;
  std::vector<std::vector<const v1::QueryResult*>> queries;
  for (int q = 0; q < 3; ++q) storage.push_back(RandomLists(Shape{3, k, false}, false, rng));
  for (const auto& lists : storage) queries.push_back(Pointers(lists));
  google::protobuf::RepeatedPtrField<v1::QueryResult> out;
  ASSERT_TRUE(merger.Merge(queries, k, false, &out).ok());
  ASSERT_EQ(out.size(), 3);
  for (int q = 0; q < 3; ++q) ExpectSame(out[q], CpuMerge(queries[q], k, false), absl::StrCat("q=", q));

  std::vector<v1::QueryResult> empty(4);
  out.Clear();
  ASSERT_TRUE(merger.Merge({Pointers(empty), Pointers(empty)}, 10, true, &out).ok());
  ASSERT_EQ(out.size(), 2);
  EXPECT_EQ(out[0].ids_size(), 0);
}

// Without the device the merge fails and leaves the output alone: the router then
// merges on the CPU.
TEST(GpuMergeHostTest, MissingDeviceIsAnErrorThatLeavesTheOutputAlone) {
  std::mt19937_64 rng(11);
  GpuMergeOptions options;
  options.device = kernels::DeviceCount();  // one past the last
  GpuMerger merger(options);
  std::vector<v1::QueryResult> lists = RandomLists(Shape{}, false, rng);
  lists[0].add_ids(123456);
  lists[0].add_distances(100.f);
  google::protobuf::RepeatedPtrField<v1::QueryResult> out;
  out.Add()->add_ids(1);
  for (int attempt = 0; attempt < 2; ++attempt) {
    absl::Status s = merger.Merge({Pointers(lists)}, 10, false, &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    ASSERT_EQ(out.size(), 1);
    EXPECT_EQ(out[0].ids_size(), 1);
  }
}

class GpuMergeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: GPU merge tests skipped";
  }
};

// Batches as the router sends them: the same lists per query for every shard count,
// with unsorted lists and NaNs in a few queries (merged on the CPU, the same answer).
TEST_F(GpuMergeTest, EqualsMergeTopK) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (bool larger_is_better : {false, true}) {
    for (Shape shape : {Shape{}, Shape{2, 1}, Shape{8, 100}, Shape{3, 20, false}, Shape{5, 16, false, 0.5, 3},
                        Shape{4, 8, true, 0.3, 2, true}, Shape{16, 1024, false, 0.1}}) {
      for (int64_t chunk_entries : {int64_t{1} << 23, int64_t{5000}}) {
        SCOPED_TRACE(absl::StrCat("ip=", larger_is_better, " m=", shape.m, " k=", shape.k, " ties=", shape.ties,
                                  " chunk=", chunk_entries));
        const int nq = shape.k >= 1024 ? 40 : 700;
        std::vector<std::vector<v1::QueryResult>> storage;
        for (int q = 0; q < nq; ++q) storage.push_back(RandomLists(shape, larger_is_better, rng));
        if (!shape.ties) {
          // A list out of order and a NaN: MergeTopK's answer is kept for those too.
          auto& unsorted = storage[1][0];
          if (unsorted.distances_size() >= 2) unsorted.mutable_distances()->SwapElements(0, 1);
          auto& nan = storage[2][0];
          if (nan.distances_size() >= 1) nan.set_distances(0, std::numeric_limits<float>::quiet_NaN());
        }
        std::vector<std::vector<const v1::QueryResult*>> queries;
        for (const auto& lists : storage) queries.push_back(Pointers(lists));
        GpuMergeOptions options;
        options.chunk_entries = chunk_entries;
        GpuMerger merger(options);
        for (int round = 0; round < 2; ++round) {  // the second reuses the buffers
          google::protobuf::RepeatedPtrField<v1::QueryResult> out;
          absl::Status s = merger.Merge(queries, shape.k, larger_is_better, &out);
          ASSERT_TRUE(s.ok()) << s;
          ASSERT_EQ(out.size(), nq);
          for (int q = 0; q < nq; ++q) {
            ExpectSame(out[q], CpuMerge(queries[q], shape.k, larger_is_better), absl::StrCat("q=", q));
            if (HasFailure()) return;
          }
        }
      }
    }
  }
}

// Shards that all answer with fewer than k hits, and some queries with fewer lists.
TEST_F(GpuMergeTest, ShortListsAndMissingLists) {
  std::mt19937_64 rng(FreshSeed());
  std::vector<std::vector<v1::QueryResult>> storage;
  for (int q = 0; q < 300; ++q) {
    storage.push_back(RandomLists(Shape{3, 5}, false, rng));
    if (q % 3 == 0) storage.back().pop_back();
  }
  std::vector<std::vector<const v1::QueryResult*>> queries;
  for (const auto& lists : storage) queries.push_back(Pointers(lists));
  GpuMerger merger(GpuMergeOptions{});
  google::protobuf::RepeatedPtrField<v1::QueryResult> out;
  ASSERT_TRUE(merger.Merge(queries, 64, false, &out).ok());
  ASSERT_EQ(out.size(), 300);
  for (int q = 0; q < 300; ++q) ExpectSame(out[q], CpuMerge(queries[q], 64, false), absl::StrCat("q=", q));
}

}  // namespace
}  // namespace shardvec::router
