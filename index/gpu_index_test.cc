// GpuIndex against the double-precision brute force (exact specs, and IVF probing every
// list) and against FaissIndex (IVF with shared centroids). The missing-GPU error and
// spec validation run everywhere; everything else skips without a CUDA device.
#include "index/gpu_index.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "faiss/IndexIVF.h"
#include "faiss/impl/io.h"
#include "faiss/index_io.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "index/brute_force.h"
#include "index/faiss_index.h"
#include "index/index.h"
#include "index/test_util.h"
#include "kernels/knn.h"

namespace shardvec::index {
namespace {

using ::testing::HasSubstr;

constexpr int kDim = 40;

IndexSpec GpuSpec(Metric metric, const std::string& factory, std::vector<int> gpus = {0},
                  int64_t train_threshold = 0, int dim = kDim) {
  IndexSpec spec;
  spec.dim = dim;
  spec.metric = metric;
  spec.factory = factory;
  spec.train_threshold = train_threshold;
  spec.device = Device::kGpu;
  spec.gpus = std::move(gpus);
  return spec;
}

std::unique_ptr<Index> MakeIndex(const IndexSpec& spec) {
  absl::StatusOr<std::unique_ptr<Index>> index = Index::Create(spec);
  EXPECT_TRUE(index.ok()) << index.status();
  return index.ok() ? *std::move(index) : nullptr;
}

GpuIndex& AsGpu(Index& index) { return dynamic_cast<GpuIndex&>(index); }

// n points around 50 fixed centres, so that IVF lists differ in size.
std::vector<float> Clustered(int64_t n, int dim, uint32_t seed) {
  std::mt19937 centre_rng(4242);
  std::normal_distribution<float> normal;
  std::vector<float> centres(50 * dim);
  for (float& v : centres) v = normal(centre_rng);
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0, 0.4f);
  std::uniform_int_distribution<int> pick(0, 49);
  std::vector<float> x(n * dim);
  for (int64_t i = 0; i < n; ++i) {
    const int c = pick(rng);
    for (int j = 0; j < dim; ++j) x[i * dim + j] = centres[c * dim + j] + noise(rng);
  }
  return x;
}


std::vector<float> Normalized(std::vector<float> x, int dim) {
  for (size_t r = 0; r < x.size() / dim; ++r) {
    double s = 0;
    for (int j = 0; j < dim; ++j) s += double(x[r * dim + j]) * x[r * dim + j];
    if (s == 0) continue;
    const double scale = 1 / std::sqrt(s);
    for (int j = 0; j < dim; ++j) x[r * dim + j] = static_cast<float>(x[r * dim + j] * scale);
  }
  return x;
}

std::vector<float> RoundedToHalf(std::vector<float> x) {
  for (float& v : x) v = __half2float(__float2half_rn(v));
  return x;
}

// What the index holds and searches with: its reference is BruteForceSearch under
// RefMetric over Stored() vectors and Queries().
struct Model {
  Metric metric;
  bool half;
  int dim = kDim;
  absl::flat_hash_map<uint64_t, std::vector<float>> rows;

  Metric RefMetric() const { return metric == Metric::kCosine ? Metric::kInnerProduct : metric; }
  std::vector<float> Stored(const float* x, int64_t n) const {
    std::vector<float> v(x, x + n * dim);
    if (metric == Metric::kCosine) v = Normalized(std::move(v), dim);
    return half ? RoundedToHalf(std::move(v)) : v;
  }
  std::vector<float> Queries(const std::vector<float>& q) const {
    return metric == Metric::kCosine ? Normalized(q, dim) : q;
  }
  void Upsert(int64_t n, const uint64_t* ids, const float* x) {
    const std::vector<float> stored = Stored(x, n);
    for (int64_t i = 0; i < n; ++i) {
      rows[ids[i]].assign(stored.begin() + i * dim, stored.begin() + (i + 1) * dim);
    }
  }
  void Remove(int64_t n, const uint64_t* ids) {
    for (int64_t i = 0; i < n; ++i) rows.erase(ids[i]);
  }
  void Reference(const std::vector<float>& queries, int k, std::vector<double>* d,
                 std::vector<uint64_t>* ids) const {
    std::vector<uint64_t> base_ids;
    std::vector<float> base;
    for (const auto& [id, v] : rows) {
      base_ids.push_back(id);
      base.insert(base.end(), v.begin(), v.end());
    }
    const std::vector<float> q = Queries(queries);
    BruteForceSearch(RefMetric(), dim, static_cast<int64_t>(base_ids.size()), base.data(),
                     base_ids.data(), static_cast<int64_t>(q.size()) / dim, q.data(), k, d, ids);
  }
};

struct Results {
  std::vector<float> d;
  std::vector<uint64_t> ids;
};

Results Search(const Index& index, const std::vector<float>& q, int k, int nprobe = 0) {
  const int64_t nq = static_cast<int64_t>(q.size()) / index.spec().dim;
  Results r{std::vector<float>(nq * k, std::nanf("")), std::vector<uint64_t>(nq * k, 12345)};
  SearchParams params;
  params.nprobe = nprobe;
  const absl::Status s = index.Search(nq, q.data(), k, params, r.d.data(), r.ids.data());
  EXPECT_TRUE(s.ok()) << s;
  return r;
}

// Exact per the brute force on what the model holds (nprobe: every list for IVF).
::testing::AssertionResult Exact(const Index& index, const Model& model,
                                 const std::vector<float>& queries, int k) {
  const int nprobe = 1 << 20;
  const Results got = Search(index, queries, k, nprobe);
  std::vector<double> want_d;
  std::vector<uint64_t> want_ids;
  model.Reference(queries, k, &want_d, &want_ids);
  // A GEMM over float16 rows rounds the queries to float16 as well.
  const absl::Status check = CheckKnnResult(model.RefMetric(), k, want_d, want_ids, got.d, got.ids,
                                            model.half ? 1e-2 : 1e-5);
  if (check.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << check;
}

const char* MetricName(Metric m) {
  return m == Metric::kL2 ? "L2" : m == Metric::kInnerProduct ? "IP" : "cosine";
}

// Runs everywhere: on a machine without a GPU this is the error users see.
TEST(GpuIndexDeviceTest, MissingGpuIsFailedPreconditionNamingDevice) {
  const int count = kernels::DeviceCount();
  IndexSpec spec = GpuSpec(Metric::kL2, "Flat", {});
  if (count > 0) spec.gpus = {count};
  absl::StatusOr<std::unique_ptr<Index>> index = Index::Create(spec);
  ASSERT_EQ(index.status().code(), absl::StatusCode::kFailedPrecondition) << index.status();
  EXPECT_THAT(index.status().message(), HasSubstr("device: "));
  if (count == 0) {
    EXPECT_EQ(index.status().message(),
              "device: collection asks for a GPU but this machine has none");
  } else {
    EXPECT_EQ(index.status().message(),
              absl::StrCat("device: GPU ", count, " requested, this machine has ", count));
  }
  if (count > 0) {
    spec.gpus = {0, -1};
    EXPECT_EQ(Index::Create(spec).status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

// Runs everywhere: the spec is checked before the devices.
#ifndef SHARDVEC_FAISS_GPU
// "faiss:" specs ask for FAISS's GPU backend, which only --config=faiss_gpu builds have.
TEST(GpuIndexDeviceTest, FaissGpuSpecWithoutThatBuildIsInvalid) {
  absl::Status s = Index::Create(GpuSpec(Metric::kL2, "faiss:Flat")).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("index_spec"), std::string::npos) << s;
  EXPECT_NE(s.message().find("faiss_gpu"), std::string::npos) << s;
}
#endif

TEST(GpuIndexDeviceTest, SpecsTheGpuCannotRunAreInvalid) {
  for (const char* factory : {"HNSW32", "IVF16,PQ8", "PQ8", "SQ8", "IVF,Flat", "IVF0,Flat",
                              "IVF-3,Flat", "IVF16", "IVF16,Flat,Refine", "flat", "IDMap,Flat"}) {
    absl::Status s = Index::Create(GpuSpec(Metric::kL2, factory)).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << factory << ": " << s;
    EXPECT_THAT(s.message(), HasSubstr("index_spec: '"));
    EXPECT_THAT(s.message(), HasSubstr("IVF<n>,SQfp16"));
  }
  absl::Status s = Index::Create(GpuSpec(Metric::kL2, "Flat", {0}, 0, /*dim=*/0)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("dim"));
  s = Index::Create(GpuSpec(Metric::kL2, "IVF64,Flat", {0}, /*train_threshold=*/10)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("train_threshold"));
}

class GpuIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (kernels::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: GPU index tests skipped";
  }
};

TEST_F(GpuIndexTest, ExactSpecsEqualBruteForce) {
  const std::vector<float> queries = Clustered(40, kDim, 2);
  const std::vector<float> few(queries.begin(), queries.begin() + 3 * kDim);  // one-pass kernel
  for (const char* factory : {"Flat", "SQfp16", ""}) {
    for (Metric metric : {Metric::kL2, Metric::kInnerProduct, Metric::kCosine}) {
      SCOPED_TRACE(absl::StrCat(factory, " ", MetricName(metric)));
      auto index = MakeIndex(GpuSpec(metric, factory));
      ASSERT_NE(index, nullptr);
      EXPECT_EQ(index->spec().factory, std::string(factory).empty() ? "Flat" : factory);
      EXPECT_TRUE(index->is_trained());
      Model model{metric, std::string(factory) == "SQfp16"};
      const int64_t n = 3000;
      const std::vector<float> x = Clustered(n, kDim, 1);
      const std::vector<uint64_t> ids = RandomIds(n, 3);
      // Two calls: the second grows the device arrays.
      ASSERT_TRUE(index->Upsert(1000, ids.data(), x.data()).ok());
      ASSERT_TRUE(index->Upsert(n - 1000, ids.data() + 1000, x.data() + 1000 * kDim).ok());
      model.Upsert(n, ids.data(), x.data());
      EXPECT_EQ(index->size(), n);
      EXPECT_TRUE(Exact(*index, model, queries, 10));
      EXPECT_TRUE(Exact(*index, model, few, 10));
      EXPECT_TRUE(Exact(*index, model, queries, 300));
    }
  }
}

TEST_F(GpuIndexTest, FewerRowsThanKAndEmpty) {
  auto index = MakeIndex(GpuSpec(Metric::kInnerProduct, "Flat"));
  ASSERT_NE(index, nullptr);
  const std::vector<float> q = Clustered(2, kDim, 9);
  Results r = Search(*index, q, 5);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(r.ids[i], kNoId);
    EXPECT_EQ(r.d[i], -std::numeric_limits<float>::infinity());
  }
  const std::vector<float> x = Clustered(3, kDim, 1);
  const std::vector<uint64_t> ids = {7, 8, 9};
  ASSERT_TRUE(index->Upsert(3, ids.data(), x.data()).ok());
  r = Search(*index, q, 5);
  EXPECT_NE(r.ids[2], kNoId);
  EXPECT_EQ(r.ids[3], kNoId);
  EXPECT_EQ(r.ids[4], kNoId);
}

TEST_F(GpuIndexTest, UpsertReplacesAndRemoveDeletes) {
  for (const char* factory : {"Flat", "IVF16,Flat"}) {
    SCOPED_TRACE(factory);
    auto index = MakeIndex(GpuSpec(Metric::kL2, factory, {0}, /*train_threshold=*/500));
    ASSERT_NE(index, nullptr);
    Model model{Metric::kL2, false};
    const int64_t n = 2000;
    std::vector<float> x = Clustered(n, kDim, 11);
    const std::vector<uint64_t> ids = RandomIds(n, 12);
    ASSERT_TRUE(index->Upsert(n, ids.data(), x.data()).ok());
    model.Upsert(n, ids.data(), x.data());
    EXPECT_TRUE(index->is_trained());
    // New vectors for 300 existing ids, one of them twice in the call (the last wins).
    std::vector<uint64_t> again(ids.begin(), ids.begin() + 300);
    again.push_back(ids[5]);
    std::vector<float> y = Clustered(301, kDim, 13);
    ASSERT_TRUE(index->Upsert(301, again.data(), y.data()).ok());
    std::vector<float> y_last(y.begin(), y.begin() + 300 * kDim);
    std::copy(y.end() - kDim, y.end(), y_last.begin() + 5 * kDim);
    model.Upsert(300, again.data(), y_last.data());
    EXPECT_EQ(index->size(), n);
    // Remove 200 present ids, 3 absent ones and one twice.
    std::vector<uint64_t> gone(ids.begin() + 1000, ids.begin() + 1200);
    gone.push_back(ids[1000]);
    gone.push_back(1);
    gone.push_back(2);
    gone.push_back(3);
    int64_t removed = -1;
    ASSERT_TRUE(index->Remove(static_cast<int64_t>(gone.size()), gone.data(), &removed).ok());
    EXPECT_EQ(removed, 200);
    model.Remove(200, gone.data());
    EXPECT_EQ(index->size(), n - 200);
    const std::vector<float> queries = Clustered(30, kDim, 14);
    EXPECT_TRUE(Exact(*index, model, queries, 20));
    // Searching for a replaced vector's new value finds it first.
    Results r = Search(*index, std::vector<float>(y.end() - kDim, y.end()), 1, 16);
    EXPECT_EQ(r.ids[0], ids[5]);
    EXPECT_NEAR(r.d[0], 0.0f, 1e-2);
  }
}

TEST_F(GpuIndexTest, BadInputIsRejected) {
  auto index = MakeIndex(GpuSpec(Metric::kL2, "Flat"));
  ASSERT_NE(index, nullptr);
  std::vector<float> x = Clustered(2, kDim, 1);
  std::vector<uint64_t> ids = {1, kNoId};
  absl::Status s = index->Upsert(2, ids.data(), x.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("ids"));
  ids[1] = 2;
  x[kDim + 3] = std::numeric_limits<float>::quiet_NaN();
  s = index->Upsert(2, ids.data(), x.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index->size(), 0);
  std::vector<float> d(10);
  std::vector<uint64_t> l(10);
  EXPECT_EQ(index->Search(1, x.data(), 0, {}, d.data(), l.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index->Search(1, x.data(), kMaxK + 1, {}, d.data(), l.data()).code(),
            absl::StatusCode::kInvalidArgument);
  SearchParams params;
  params.nprobe = -1;
  EXPECT_EQ(index->Search(1, x.data(), 5, params, d.data(), l.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(index->Train(2, x.data()).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(index->InstallTrained("x").code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<std::string> tmpl = index->TrainedTemplate();
  ASSERT_TRUE(tmpl.ok());
  EXPECT_EQ(*tmpl, "");
}

TEST_F(GpuIndexTest, TombstonesAreCompactedAway) {
  for (const char* factory : {"SQfp16", "IVF32,Flat"}) {
    SCOPED_TRACE(factory);
    auto index = MakeIndex(GpuSpec(Metric::kL2, factory, {0}, /*train_threshold=*/2000));
    ASSERT_NE(index, nullptr);
    GpuIndex& gpu = AsGpu(*index);
    Model model{Metric::kL2, std::string(factory) == "SQfp16"};
    const int64_t n = 6000;
    const std::vector<float> x = Clustered(n, kDim, 21);
    const std::vector<uint64_t> ids = RandomIds(n, 22);
    ASSERT_TRUE(index->Upsert(n, ids.data(), x.data()).ok());
    model.Upsert(n, ids.data(), x.data());
    // A few removals stay tombstones.
    ASSERT_TRUE(index->Remove(100, ids.data(), nullptr).ok());
    model.Remove(100, ids.data());
    EXPECT_EQ(gpu.tombstones(), 100);
    const std::vector<float> queries = Clustered(25, kDim, 23);
    EXPECT_TRUE(Exact(*index, model, queries, 50));
    // Replacing 2000 more makes 2100 of 8000 rows dead: past a quarter, compacted.
    const std::vector<float> y = Clustered(2000, kDim, 24);
    ASSERT_TRUE(index->Upsert(2000, ids.data() + 100, y.data()).ok());
    model.Upsert(2000, ids.data() + 100, y.data());
    EXPECT_EQ(gpu.tombstones(), 0);
    EXPECT_EQ(index->size(), n - 100);
    EXPECT_TRUE(Exact(*index, model, queries, 50));
    // Rows keep working after compaction moved them: replace and remove some.
    ASSERT_TRUE(index->Remove(1000, ids.data() + 3000, nullptr).ok());
    model.Remove(1000, ids.data() + 3000);
    ASSERT_TRUE(index->Upsert(500, ids.data() + 200, x.data()).ok());
    model.Upsert(500, ids.data() + 200, x.data());
    EXPECT_EQ(index->size(), n - 1100);
    EXPECT_TRUE(Exact(*index, model, queries, 50));
    // Removing nearly everything compacts down to a few rows, and again to none.
    std::vector<uint64_t> all(ids.begin(), ids.end());
    ASSERT_TRUE(index->Remove(n - 3, all.data(), nullptr).ok());
    model.Remove(n - 3, all.data());
    EXPECT_EQ(gpu.tombstones(), 0);
    EXPECT_TRUE(Exact(*index, model, queries, 5));
    ASSERT_TRUE(index->Remove(n, all.data(), nullptr).ok());
    EXPECT_EQ(index->size(), 0);
    const Results r = Search(*index, queries, 3, 32);
    EXPECT_EQ(r.ids[0], kNoId);
    ASSERT_TRUE(index->Upsert(100, ids.data(), x.data()).ok());
    model.rows.clear();
    model.Upsert(100, ids.data(), x.data());
    EXPECT_TRUE(Exact(*index, model, queries, 10));
  }
}

// The same device listed twice: two partitions, searched in parallel and merged.
TEST_F(GpuIndexTest, PartitionsSplitRowsAndMergeResults) {
  for (const char* factory : {"Flat", "IVF16,SQfp16"}) {
    for (Metric metric : {Metric::kL2, Metric::kCosine}) {
      SCOPED_TRACE(absl::StrCat(factory, " ", MetricName(metric)));
      auto index = MakeIndex(GpuSpec(metric, factory, {0, 0, 0}, /*train_threshold=*/1000));
      ASSERT_NE(index, nullptr);
      GpuIndex& gpu = AsGpu(*index);
      EXPECT_EQ(index->spec().gpus, (std::vector<int>{0, 0, 0}));
      Model model{metric, std::string(factory) == "IVF16,SQfp16"};
      const int64_t n = 3000;
      const std::vector<float> x = Clustered(n, kDim, 31);
      const std::vector<uint64_t> ids = RandomIds(n, 32);
      ASSERT_TRUE(index->Upsert(n, ids.data(), x.data()).ok());
      model.Upsert(n, ids.data(), x.data());
      EXPECT_EQ(gpu.partition_sizes(), (std::vector<int64_t>{1000, 1000, 1000}));
      const std::vector<float> queries = Clustered(20, kDim, 33);
      EXPECT_TRUE(Exact(*index, model, queries, 10));
      EXPECT_TRUE(Exact(*index, model, queries, 1500));  // more than one partition holds
      // Emptying the first partition's share sends new rows there first.
      ASSERT_TRUE(index->Remove(900, ids.data(), nullptr).ok());
      model.Remove(900, ids.data());
      const std::vector<float> y = Clustered(600, kDim, 34);
      const std::vector<uint64_t> more = RandomIds(600, 35);
      ASSERT_TRUE(index->Upsert(600, more.data(), y.data()).ok());
      model.Upsert(600, more.data(), y.data());
      EXPECT_EQ(gpu.partition_sizes(), (std::vector<int64_t>{700, 1000, 1000}));
      EXPECT_TRUE(Exact(*index, model, queries, 100));
    }
  }
}

TEST_F(GpuIndexTest, ConcurrentSearchesAndSave) {
  auto index = MakeIndex(GpuSpec(Metric::kInnerProduct, "IVF8,Flat", {0, 0}, 400));
  ASSERT_NE(index, nullptr);
  const std::vector<float> x = Clustered(4000, kDim, 41);
  const std::vector<uint64_t> ids = RandomIds(4000, 42);
  ASSERT_TRUE(index->Upsert(4000, ids.data(), x.data()).ok());
  const std::vector<float> queries = Clustered(16, kDim, 43);
  const Results want = Search(*index, queries, 20, 4);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(6, 0);
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        if (t == 5) {
          StringSink sink;
          mismatches[t] += index->Save(&sink).ok() ? 0 : 1;
          continue;
        }
        const Results got = Search(*index, queries, 20, 4);
        mismatches[t] += got.ids != want.ids;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches, std::vector<int>(6, 0));
}

TEST_F(GpuIndexTest, StagesUntilTrainThresholdThenTrains) {
  auto index = MakeIndex(GpuSpec(Metric::kCosine, "IVF16,Flat", {0, 0}, /*train_threshold=*/1000));
  ASSERT_NE(index, nullptr);
  EXPECT_EQ(index->spec().train_threshold, 1000);
  GpuIndex& gpu = AsGpu(*index);
  Model model{Metric::kCosine, false};
  const std::vector<float> x = Clustered(1200, kDim, 51);
  const std::vector<uint64_t> ids = RandomIds(1200, 52);
  ASSERT_TRUE(index->Upsert(600, ids.data(), x.data()).ok());
  model.Upsert(600, ids.data(), x.data());
  EXPECT_FALSE(index->is_trained());
  EXPECT_EQ(index->TrainedTemplate().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(gpu.ListOf(ids[0]), -1);
  const std::vector<float> queries = Clustered(10, kDim, 53);
  // Staged rows are searched exactly, whatever nprobe says.
  const Results staged = Search(*index, queries, 10, 1);
  std::vector<double> want_d;
  std::vector<uint64_t> want_ids;
  model.Reference(queries, 10, &want_d, &want_ids);
  EXPECT_TRUE(
      CheckKnnResult(Metric::kInnerProduct, 10, want_d, want_ids, staged.d, staged.ids, 1e-5).ok());
  ASSERT_TRUE(index->Upsert(600, ids.data() + 600, x.data() + 600 * kDim).ok());
  model.Upsert(600, ids.data() + 600, x.data() + 600 * kDim);
  EXPECT_TRUE(index->is_trained());
  EXPECT_EQ(index->size(), 1200);
  for (int i = 0; i < 1200; i += 97) {
    EXPECT_GE(gpu.ListOf(ids[i]), 0);
    EXPECT_LT(gpu.ListOf(ids[i]), 16);
  }
  EXPECT_TRUE(Exact(*index, model, queries, 10));
  EXPECT_EQ(index->Train(1200, x.data()).code(), absl::StatusCode::kFailedPrecondition);

  // Explicit training on a sample moves what is staged.
  auto other = MakeIndex(GpuSpec(Metric::kL2, "IVF16,Flat", {0}));
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->Upsert(100, ids.data(), x.data()).ok());
  EXPECT_EQ(other->Train(10, x.data()).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(other->Train(1200, x.data()).ok());
  EXPECT_TRUE(other->is_trained());
  EXPECT_EQ(other->size(), 100);
  Model l2{Metric::kL2, false};
  l2.Upsert(100, ids.data(), x.data());
  EXPECT_TRUE(Exact(*other, l2, queries, 10));
}

::testing::AssertionResult SameResults(const Results& a, const Results& b) {
  if (a.ids != b.ids) return ::testing::AssertionFailure() << "ids differ";
  for (size_t i = 0; i < a.d.size(); ++i) {
    if (std::fabs(a.d[i] - b.d[i]) > 1e-4f * std::max(1.0f, std::fabs(a.d[i]))) {
      return ::testing::AssertionFailure()
             << "distance " << i << ": " << a.d[i] << " vs " << b.d[i];
    }
  }
  return ::testing::AssertionSuccess();
}

TEST_F(GpuIndexTest, SaveThenLoadAnswersIdentically) {
  struct Case {
    const char* factory;
    int64_t rows;  // IVF stages below 1000
  };
  for (const Case& c : {Case{"Flat", 2500}, Case{"SQfp16", 2500}, Case{"IVF16,Flat", 2500},
                        Case{"IVF16,SQfp16", 2500}, Case{"IVF16,Flat", 600}}) {
    SCOPED_TRACE(absl::StrCat(c.factory, " rows ", c.rows));
    const IndexSpec spec = GpuSpec(Metric::kL2, c.factory, {0}, /*train_threshold=*/1000);
    auto index = MakeIndex(spec);
    ASSERT_NE(index, nullptr);
    const std::vector<float> x = Clustered(c.rows, kDim, 61);
    const std::vector<uint64_t> ids = RandomIds(c.rows, 62);
    ASSERT_TRUE(index->Upsert(c.rows, ids.data(), x.data()).ok());
    ASSERT_TRUE(index->Remove(50, ids.data() + 10, nullptr).ok());  // tombstones, not saved
    const std::vector<float> queries = Clustered(20, kDim, 63);
    const Results want = Search(*index, queries, 15, 3);
    StringSink sink;
    ASSERT_TRUE(index->Save(&sink).ok());
    for (const std::vector<int>& gpus : {std::vector<int>{0}, std::vector<int>{0, 0}}) {
      SCOPED_TRACE(absl::StrCat(gpus.size(), " partitions"));
      IndexSpec load_spec = spec;
      load_spec.gpus = gpus;
      StringSource source(sink.bytes);
      absl::StatusOr<std::unique_ptr<Index>> loaded = Index::Load(load_spec, &source);
      ASSERT_TRUE(loaded.ok()) << loaded.status();
      EXPECT_EQ(source.pos, sink.bytes.size());
      EXPECT_EQ((*loaded)->size(), index->size());
      EXPECT_EQ((*loaded)->is_trained(), index->is_trained());
      EXPECT_EQ(AsGpu(**loaded).tombstones(), 0);
      EXPECT_EQ((*loaded)->TrainedTemplate().ok(), index->TrainedTemplate().ok());
      if (index->TrainedTemplate().ok()) {
        EXPECT_EQ(*(*loaded)->TrainedTemplate(), *index->TrainedTemplate());
      }
      for (int i = 60; i < c.rows; i += 101) {
        EXPECT_EQ(AsGpu(**loaded).ListOf(ids[i]), AsGpu(*index).ListOf(ids[i]));
      }
      EXPECT_TRUE(SameResults(Search(**loaded, queries, 15, 3), want));
      // The loaded index keeps working.
      ASSERT_TRUE((*loaded)->Remove(5, ids.data() + 100, nullptr).ok());
      EXPECT_EQ((*loaded)->size(), index->size() - 5);
    }
    // Damaged bytes are DATA_LOSS, never a crash.
    StringSource truncated(sink.bytes.substr(0, sink.bytes.size() - 7));
    EXPECT_EQ(Index::Load(spec, &truncated).status().code(), absl::StatusCode::kDataLoss);
    std::string bad_magic = sink.bytes;
    bad_magic[0] ^= 0x40;
    StringSource wrong(bad_magic);
    EXPECT_EQ(Index::Load(spec, &wrong).status().code(), absl::StatusCode::kDataLoss);
    IndexSpec other_dim = spec;
    other_dim.dim = kDim + 1;
    StringSource mismatch(sink.bytes);
    EXPECT_EQ(Index::Load(other_dim, &mismatch).status().code(), absl::StatusCode::kDataLoss);
  }
}

// For the same spec, data, centroids and nprobe the GPU and FAISS's CPU IVF agree: list
// assignment, neighbours and distances. Templates go both ways.
TEST_F(GpuIndexTest, IvfEqualsFaissCpuWithSharedCentroids) {
  const int64_t n = 20000;
  const int nq = 50;
  const std::vector<float> x = Clustered(n, kDim, 71);
  const std::vector<uint64_t> ids = RandomIds(n, 72);
  const std::vector<float> queries = Clustered(nq, kDim, 73);
  struct Case {
    const char* factory;
    Metric metric;
    bool cpu_trains;
  };
  for (const Case& c :
       {Case{"IVF64,Flat", Metric::kL2, true}, Case{"IVF64,Flat", Metric::kInnerProduct, false},
        Case{"IVF64,Flat", Metric::kCosine, true}, Case{"IVF64,SQfp16", Metric::kL2, false}}) {
    SCOPED_TRACE(absl::StrCat(c.factory, " ", MetricName(c.metric),
                              c.cpu_trains ? " CPU trains" : " GPU trains"));
    IndexSpec cpu_spec{kDim, c.metric, c.factory, /*train_threshold=*/n};
    absl::StatusOr<std::unique_ptr<FaissIndex>> cpu = FaissIndex::Create(cpu_spec);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    auto gpu = MakeIndex(GpuSpec(c.metric, c.factory, {0}, n));
    ASSERT_NE(gpu, nullptr);
    Index& trainer = c.cpu_trains ? static_cast<Index&>(**cpu) : *gpu;
    Index& learner = c.cpu_trains ? *gpu : static_cast<Index&>(**cpu);
    ASSERT_TRUE(trainer.Upsert(n, ids.data(), x.data()).ok());  // reaches the threshold: trains
    ASSERT_TRUE(trainer.is_trained());
    absl::StatusOr<std::string> tmpl = trainer.TrainedTemplate();
    ASSERT_TRUE(tmpl.ok()) << tmpl.status();
    ASSERT_TRUE(learner.InstallTrained(*tmpl).ok());
    ASSERT_TRUE(learner.Upsert(n, ids.data(), x.data()).ok());
    EXPECT_EQ(*learner.TrainedTemplate(), *tmpl);

    // List assignment: the GPU's against the template's quantizer on the CPU.
    faiss::VectorIOReader reader;
    reader.data.assign(tmpl->begin(), tmpl->end());
    std::unique_ptr<faiss::Index> parsed(faiss::read_index(&reader));
    auto* ivf = dynamic_cast<faiss::IndexIVF*>(parsed.get());
    ASSERT_NE(ivf, nullptr);
    const std::vector<float> prepared = c.metric == Metric::kCosine ? Normalized(x, kDim) : x;
    std::vector<faiss::Index::idx_t> assign(n);
    ivf->quantizer->assign(n, prepared.data(), assign.data());
    int64_t same = 0;
    for (int64_t i = 0; i < n; ++i) same += AsGpu(*gpu).ListOf(ids[i]) == assign[i];
    EXPECT_GE(same, n - n / 1000) << "GPU and CPU list assignment differ";

    for (int nprobe : {1, 8, 64}) {
      const int k = 20;
      const Results g = Search(*gpu, queries, k, nprobe);
      const Results want = Search(**cpu, queries, k, nprobe);
      int64_t match = 0;
      for (int64_t i = 0; i < nq * k; ++i) {
        match += g.ids[i] == want.ids[i];
        EXPECT_NEAR(g.d[i], want.d[i], 1e-3 * std::max(1.0f, std::fabs(want.d[i])))
            << "nprobe " << nprobe << " at " << i;
      }
      // FAISS's CPU IVF-SQ stores float16 residuals, the GPU float16 vectors: near
      // ties may swap there.
      const bool sq = std::string(c.factory).find("SQ") != std::string::npos;
      EXPECT_GE(match, nq * k * (sq ? 95 : 99) / 100) << "nprobe " << nprobe;
    }
  }
}

}  // namespace
}  // namespace shardvec::index
