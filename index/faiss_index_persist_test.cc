// Snapshots (Save/Load) and shared training (TrainedTemplate/InstallTrained).
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "index/faiss_index.h"
#include "index/test_util.h"

namespace shardvec::index {
namespace {

constexpr int kDim = 16;

std::vector<float> Random(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n * kDim);
  for (float& v : x) v = normal(rng);
  return x;
}

struct Results {
  std::vector<float> d;
  std::vector<uint64_t> ids;
};

Results SearchAll(const Index& index, const std::vector<float>& q, int k) {
  const int64_t nq = static_cast<int64_t>(q.size()) / kDim;
  Results r{std::vector<float>(nq * k), std::vector<uint64_t>(nq * k)};
  SearchParams params;
  params.nprobe = 4;
  params.ef_search = 32;
  EXPECT_TRUE(index.Search(nq, q.data(), k, params, r.d.data(), r.ids.data()).ok());
  return r;
}

class PersistTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PersistTest, SaveThenLoadAnswersIdentically) {
  IndexSpec spec{kDim, Metric::kL2, GetParam(), /*train_threshold=*/0};
  auto index = FaissIndex::Create(spec);
  ASSERT_TRUE(index.ok()) << index.status();
  const int64_t n = 3000;
  std::vector<float> x = Random(n, 1);
  std::vector<uint64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = 1000 + 7 * i;
  ASSERT_TRUE((*index)->Upsert(n, ids.data(), x.data()).ok());
  std::vector<uint64_t> gone = {1000, 1007, 1014};
  ASSERT_TRUE((*index)->Remove(3, gone.data(), nullptr).ok());

  StringSink sink;
  ASSERT_TRUE((*index)->Save(&sink).ok());
  StringSource source(sink.bytes);
  auto loaded = Index::Load(spec, &source);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->size(), (*index)->size());
  EXPECT_EQ((*loaded)->is_trained(), (*index)->is_trained());
  std::vector<float> q = Random(20, 2);
  Results a = SearchAll(**index, q, 10);
  Results b = SearchAll(**loaded, q, 10);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.d, b.d);
  for (uint64_t id : b.ids) EXPECT_THAT(gone, ::testing::Not(::testing::Contains(id)));

  // The loaded index keeps working: an upsert lands and is found.
  std::vector<float> one = Random(1, 3);
  uint64_t new_id = 5;
  ASSERT_TRUE((*loaded)->Upsert(1, &new_id, one.data()).ok());
  Results c = SearchAll(**loaded, one, 1);
  EXPECT_EQ(c.ids[0], new_id);

  // Truncated or garbled bytes are DATA_LOSS, never a crash.
  StringSource truncated(sink.bytes.substr(0, sink.bytes.size() / 2));
  EXPECT_EQ(Index::Load(spec, &truncated).status().code(), absl::StatusCode::kDataLoss);
  StringSource garbage(std::string(100, 'x'));
  EXPECT_EQ(Index::Load(spec, &garbage).status().code(), absl::StatusCode::kDataLoss);
}

// Flat and HNSW need no training; IVF16 trains at 624 vectors; IVF512 stays staged.
INSTANTIATE_TEST_SUITE_P(Factories, PersistTest,
                         ::testing::Values("Flat", "IVF16,Flat", "IVF512,Flat", "HNSW16", "IVF16,PQ4"));

TEST(SharedTrainingTest, InstalledTemplateGivesIdenticalResults) {
  IndexSpec spec{kDim, Metric::kL2, "IVF32,Flat", 0};
  auto trainer = FaissIndex::Create(spec);
  auto other = FaissIndex::Create(spec);
  ASSERT_TRUE(trainer.ok() && other.ok());
  EXPECT_EQ((*trainer)->TrainedTemplate().status().code(), absl::StatusCode::kFailedPrecondition);
  std::vector<float> sample = Random(2000, 4);
  ASSERT_TRUE((*trainer)->Train(2000, sample.data()).ok());
  absl::StatusOr<std::string> tmpl = (*trainer)->TrainedTemplate();
  ASSERT_TRUE(tmpl.ok());
  ASSERT_FALSE(tmpl->empty());

  // Vectors staged before the template arrives move into the trained index.
  std::vector<float> x = Random(500, 5);
  std::vector<uint64_t> ids(500);
  for (int i = 0; i < 500; ++i) ids[i] = i;
  ASSERT_TRUE((*other)->Upsert(250, ids.data(), x.data()).ok());
  EXPECT_FALSE((*other)->is_trained());
  ASSERT_TRUE((*other)->InstallTrained(*tmpl).ok());
  EXPECT_TRUE((*other)->is_trained());
  ASSERT_TRUE((*other)->Upsert(250, ids.data() + 250, x.data() + 250 * kDim).ok());
  ASSERT_TRUE((*trainer)->Upsert(500, ids.data(), x.data()).ok());
  std::vector<float> q = Random(30, 6);
  Results a = SearchAll(**trainer, q, 5);
  Results b = SearchAll(**other, q, 5);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ((*other)->InstallTrained(*tmpl).code(), absl::StatusCode::kFailedPrecondition);

  auto wrong_dim = FaissIndex::Create({kDim * 2, Metric::kL2, "IVF32,Flat", 0});
  EXPECT_EQ((*wrong_dim)->InstallTrained(*tmpl).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*wrong_dim)->InstallTrained("garbage").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardvec::index
