// FAISS's GPU indexes behind Index ("faiss:" specs): exact results equal brute force,
// writes and snapshots behave like the CPU backend, IVF equals the CPU backend for the
// same training. Skips without a GPU.
#include "index/faiss_gpu_index.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "index/brute_force.h"
#include "index/faiss_index.h"
#include "index/index.h"
#include "index/test_util.h"
#include "kernels/knn.h"

namespace shardvec::index {
namespace {

constexpr int kDim = 64;

std::vector<float> Random(int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> g;
  std::vector<float> v(static_cast<size_t>(n) * kDim);
  for (float& x : v) x = g(rng);
  return v;
}

IndexSpec GpuSpec(Metric metric, const std::string& factory) {
  IndexSpec spec;
  spec.dim = kDim;
  spec.metric = metric;
  spec.factory = factory;
  spec.device = Device::kGpu;
  return spec;
}

class FaissGpuIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: FAISS GPU tests skipped";
  }
};

// Searches `index` and checks the result against brute force over (ids, x).
void ExpectExact(const Index& index, Metric metric, const std::vector<uint64_t>& ids,
                 const std::vector<float>& x, const std::vector<float>& queries, int k) {
  const int64_t nq = static_cast<int64_t>(queries.size()) / kDim;
  std::vector<float> d(nq * k);
  std::vector<uint64_t> l(nq * k);
  ASSERT_TRUE(index.Search(nq, queries.data(), k, {}, d.data(), l.data()).ok());
  std::vector<double> want_d;
  std::vector<uint64_t> want_l;
  BruteForceSearch(metric, kDim, static_cast<int64_t>(ids.size()), x.data(), ids.data(), nq,
                   queries.data(), k, &want_d, &want_l);
  const absl::Status check = CheckKnnResult(metric, k, want_d, want_l, d, l, 1e-5);
  EXPECT_TRUE(check.ok()) << check;
}

TEST_F(FaissGpuIndexTest, FlatIsExactThroughWritesAndSnapshots) {
  std::mt19937_64 rng(std::random_device{}());
  for (Metric metric : {Metric::kL2, Metric::kInnerProduct, Metric::kCosine}) {
    SCOPED_TRACE(static_cast<int>(metric));
    auto index = Index::Create(GpuSpec(metric, "faiss:Flat"));
    ASSERT_TRUE(index.ok()) << index.status();
    const int64_t n = 5000;
    std::vector<float> x = Random(n, rng);
    std::vector<uint64_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = i * 3 + 1;
    ASSERT_TRUE((*index)->Upsert(n, ids.data(), x.data()).ok());
    const std::vector<float> queries = Random(20, rng);
    ExpectExact(**index, metric, ids, x, queries, 10);
    // Replace the first 1000 vectors, remove the next 1000: the GPU copy follows.
    std::vector<float> fresh = Random(1000, rng);
    ASSERT_TRUE((*index)->Upsert(1000, ids.data(), fresh.data()).ok());
    int64_t removed = 0;
    ASSERT_TRUE((*index)->Remove(1000, ids.data() + 1000, &removed).ok());
    EXPECT_EQ(removed, 1000);
    std::copy(fresh.begin(), fresh.end(), x.begin());
    ids.erase(ids.begin() + 1000, ids.begin() + 2000);
    x.erase(x.begin() + 1000 * kDim, x.begin() + 2000 * kDim);
    EXPECT_EQ((*index)->size(), n - 1000);
    ExpectExact(**index, metric, ids, x, queries, 100);
    StringSink sink;
    ASSERT_TRUE((*index)->Save(&sink).ok());
    StringSource source(sink.bytes);
    auto loaded = Index::Load(GpuSpec(metric, "faiss:Flat"), &source);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    ExpectExact(**loaded, metric, ids, x, queries, 10);
  }
}

TEST_F(FaissGpuIndexTest, IvfEqualsTheCpuBackendWithItsTraining) {
  std::mt19937_64 rng(std::random_device{}());
  const int64_t n = 20000;
  std::vector<float> centers = Random(100, rng);
  std::vector<float> x(n * kDim);
  std::normal_distribution<float> noise(0.f, 0.3f);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = static_cast<int64_t>(rng() % 100);
    for (int j = 0; j < kDim; ++j) x[i * kDim + j] = centers[c * kDim + j] + noise(rng);
  }
  std::vector<uint64_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = i + 7;
  auto gpu = Index::Create(GpuSpec(Metric::kL2, "faiss:IVF64,Flat"));
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ASSERT_TRUE((*gpu)->Upsert(n, ids.data(), x.data()).ok());
  ASSERT_TRUE((*gpu)->is_trained());  // past 39 x 64 vectors
  auto trained = (*gpu)->TrainedTemplate();
  ASSERT_TRUE(trained.ok());
  IndexSpec cpu_spec{kDim, Metric::kL2, "IVF64,Flat"};
  auto cpu = Index::Create(cpu_spec);
  ASSERT_TRUE(cpu.ok());
  ASSERT_TRUE((*cpu)->InstallTrained(*trained).ok());
  ASSERT_TRUE((*cpu)->Upsert(n, ids.data(), x.data()).ok());
  const std::vector<float> queries = Random(50, rng);
  const int k = 10;
  SearchParams params;
  params.nprobe = 8;
  std::vector<float> gd(50 * k), cd(50 * k);
  std::vector<uint64_t> gl(50 * k), cl(50 * k);
  ASSERT_TRUE((*gpu)->Search(50, queries.data(), k, params, gd.data(), gl.data()).ok());
  ASSERT_TRUE((*cpu)->Search(50, queries.data(), k, params, cd.data(), cl.data()).ok());
  int same = 0;
  for (int i = 0; i < 50 * k; ++i) same += gl[i] == cl[i];
  EXPECT_GE(same, 50 * k * 99 / 100);
}

TEST_F(FaissGpuIndexTest, BadInputNamesTheField) {
  auto bad = Index::Create(GpuSpec(Metric::kL2, "faiss:HNSW32"));
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("index_spec"), std::string::npos);
  auto index = Index::Create(GpuSpec(Metric::kL2, "faiss:Flat"));
  ASSERT_TRUE(index.ok());
  std::vector<float> q(kDim, 1.f), d(4000);
  std::vector<uint64_t> l(4000);
  const absl::Status s = (*index)->Search(1, q.data(), 4000, {}, d.data(), l.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("k:"), std::string::npos);
}

}  // namespace
}  // namespace shardvec::index
