// GPU k-NN kernels against a float64 CPU reference (and FAISS's CPU IVF for IVF-Flat),
// on fresh random data each run (the seed is printed on failure). Outputs are poisoned
// before each search so that unwritten results are caught. Skips where no GPU exists.
#include "kernels/knn.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "index/brute_force.h"

namespace shardvec::kernels {
namespace {

constexpr int64_t kPoisonId = 0x5a5a5a5a5a5a5a5aLL;

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << cudaGetErrorString(cudaGetLastError())

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { Resize(n); }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void Resize(size_t n) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    n_ = n;
    if (cudaMalloc(&ptr_, std::max<size_t>(1, n) * sizeof(T)) != cudaSuccess) ptr_ = nullptr;
  }
  void Upload(const std::vector<T>& v) {
    Resize(v.size());
    cudaMemcpy(ptr_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> Download() const {
    std::vector<T> v(n_);
    cudaMemcpy(v.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }
  T* get() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t n_ = 0;
};

uint64_t FreshSeed() { return std::random_device{}() * uint64_t{2654435761} + std::random_device{}(); }

std::vector<float> RandomVectors(int64_t n, int dim, std::mt19937_64& rng) {
  std::normal_distribution<float> g;
  std::vector<float> v(static_cast<size_t>(n) * dim);
  for (float& x : v) x = g(rng);
  return v;
}

void Normalize(std::vector<float>* v, int dim) {
  for (size_t r = 0; r < v->size() / dim; ++r) {
    double s = 0;
    for (int j = 0; j < dim; ++j) s += double((*v)[r * dim + j]) * (*v)[r * dim + j];
    const float inv = s > 0 ? float(1 / std::sqrt(s)) : 0.f;
    for (int j = 0; j < dim; ++j) (*v)[r * dim + j] *= inv;
  }
}

std::vector<float> RoundToHalf(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __half2float(__float2half_rn(v[i]));
  return out;
}

std::vector<__half> ToHalfHost(const std::vector<float>& v) {
  std::vector<__half> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2half_rn(v[i]);
  return out;
}

void Poison(DeviceBuffer<float>& dist, DeviceBuffer<int64_t>& ids, size_t n) {
  cudaMemset(dist.get(), 0xff, n * sizeof(float));  // NaN
  std::vector<int64_t> p(n, kPoisonId);
  cudaMemcpy(ids.get(), p.data(), n * sizeof(int64_t), cudaMemcpyHostToDevice);
}

// Every output written: no poison left, no NaN distance.
::testing::AssertionResult AllWritten(const std::vector<float>& dist,
                                      const std::vector<int64_t>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] == kPoisonId || std::isnan(dist[i])) {
      return ::testing::AssertionFailure() << "output " << i << " not written";
    }
  }
  return ::testing::AssertionSuccess();
}

class KnnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: GPU kernel tests skipped";
    auto ctx = Context::Create(0);
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = std::move(*ctx);
  }

  struct FlatCase {
    int64_t n;
    int dim;
    int64_t nq;
    int k;
    index::Metric metric;
    Storage storage = Storage::kFloat32;
    double deleted_fraction = 0.0;
    size_t budget = 0;  // 0: the default context
    int64_t filter_min_rows = -1;  // Context::set_filter_min_rows; -1: the default
    float offset = 0;   // added to every coordinate: larger norms, larger TF32 errors
  };

  // Returns how many queries the TF32 path searched again in float32.
  int64_t RunFlat(const FlatCase& c, double base_noise = -1) {
    const uint64_t seed = FreshSeed();
    SCOPED_TRACE(absl::StrCat("n=", c.n, " dim=", c.dim, " nq=", c.nq, " k=", c.k,
                              " metric=", static_cast<int>(c.metric),
                              " f16=", c.storage == Storage::kFloat16, " seed=", seed));
    std::mt19937_64 rng(seed);
    std::vector<float> base = RandomVectors(c.n, c.dim, rng);
    if (base_noise >= 0 && c.n > 0) {  // every row near row 0: distances nearly tie
      for (int64_t i = 1; i < c.n; ++i) {
        for (int j = 0; j < c.dim; ++j) base[i * c.dim + j] = base[j] + base_noise * base[i * c.dim + j];
      }
    }
    std::vector<float> queries = RandomVectors(c.nq, c.dim, rng);
    for (float& v : base) v += c.offset;
    for (float& v : queries) v += c.offset;
    const bool cosine = c.metric == index::Metric::kCosine;
    if (cosine) {
      Normalize(&base, c.dim);
      Normalize(&queries, c.dim);
    }
    const bool half = c.storage == Storage::kFloat16;
    const std::vector<float> stored = half ? RoundToHalf(base) : base;
    std::vector<int64_t> ids(c.n);
    std::vector<uint8_t> deleted(c.n, 0);
    std::vector<float> live_base;
    std::vector<uint64_t> live_ids;
    std::bernoulli_distribution del(c.deleted_fraction);
    for (int64_t i = 0; i < c.n; ++i) {
      ids[i] = i * 7 + 3;
      deleted[i] = c.deleted_fraction > 0 && del(rng);
      if (!deleted[i]) {
        live_ids.push_back(ids[i]);
        live_base.insert(live_base.end(), stored.begin() + i * c.dim,
                         stored.begin() + (i + 1) * c.dim);
      }
    }
    std::vector<double> want_d;
    std::vector<uint64_t> want_ids;
    const index::Metric ref_metric = cosine ? index::Metric::kInnerProduct : c.metric;
    index::BruteForceSearch(ref_metric, c.dim, static_cast<int64_t>(live_ids.size()),
                            live_base.data(), live_ids.data(), c.nq, queries.data(), c.k, &want_d,
                            &want_ids);

    std::unique_ptr<Context> own;
    Context* ctx = ctx_.get();
    if (c.budget != 0) {
      own = *Context::Create(0, c.budget);
      ctx = own.get();
    }
    if (c.filter_min_rows >= 0) ctx->set_filter_min_rows(c.filter_min_rows);
    const Metric metric = c.metric == index::Metric::kL2 ? Metric::kL2 : Metric::kInnerProduct;
    DeviceBuffer<float> d_base_f;
    DeviceBuffer<__half> d_base_h;
    const void* vectors;
    if (half) {
      d_base_h.Upload(ToHalfHost(base));
      vectors = d_base_h.get();
    } else {
      d_base_f.Upload(base);
      vectors = d_base_f.get();
    }
    DeviceBuffer<int64_t> d_ids;
    d_ids.Upload(ids);
    DeviceBuffer<uint8_t> d_deleted;
    d_deleted.Upload(deleted);
    DeviceBuffer<float> d_bias(c.n);
    EXPECT_TRUE(RowBias(*ctx, vectors, c.storage, c.n, c.dim, metric, d_deleted.get(),
                        d_bias.get())
                    .ok());
    DeviceBuffer<float> d_queries;
    d_queries.Upload(queries);
    DeviceBuffer<float> d_dist(c.nq * c.k);
    DeviceBuffer<int64_t> d_out(c.nq * c.k);
    Poison(d_dist, d_out, c.nq * c.k);
    FlatData db{vectors, c.storage, d_bias.get(), d_ids.get(), c.n, c.dim};
    int64_t fallbacks = 0;
    absl::Status s = FlatSearch(*ctx, db, d_queries.get(), c.nq, c.k, metric, d_dist.get(),
                                d_out.get(), &fallbacks);
    EXPECT_TRUE(s.ok()) << s;
    if (!s.ok()) return -1;
    EXPECT_TRUE(ctx->Synchronize().ok());
    const std::vector<float> got_d = d_dist.Download();
    const std::vector<int64_t> got = d_out.Download();
    EXPECT_TRUE(AllWritten(got_d, got));
    std::vector<uint64_t> got_ids(got.begin(), got.end());
    const absl::Status check = index::CheckKnnResult(ref_metric, c.k, want_d, want_ids, got_d,
                                                     got_ids, half ? 1e-2 : 1e-5);
    EXPECT_TRUE(check.ok()) << check;
    return fallbacks;
  }

  std::unique_ptr<Context> ctx_;
};

TEST_F(KnnTest, FlatMatchesReferenceOverDimsAndK) {
  const int dims[] = {64, 100, 128, 768, 1536};
  const int ks[] = {1, 10, 100, 1024, 2000};
  int i = 0;
  for (int dim : dims) {
    for (int k : ks) {
      const index::Metric metric = i % 3 == 0   ? index::Metric::kL2
                                   : i % 3 == 1 ? index::Metric::kInnerProduct
                                                : index::Metric::kCosine;
      const int64_t n = dim >= 768 ? 6007 : 20011;  // not a multiple of any tile
      RunFlat({n, dim, /*nq=*/3, k, metric});      // one pass over the rows per query batch
      RunFlat({n, dim, /*nq=*/37, k, metric});     // GEMM path
      ++i;
    }
  }
}

TEST_F(KnnTest, FlatFloat16Storage) {
  for (index::Metric metric : {index::Metric::kL2, index::Metric::kInnerProduct}) {
    for (int dim : {64, 100, 128}) {
      RunFlat({20011, dim, 1, 10, metric, Storage::kFloat16});
      RunFlat({20011, dim, 8, 100, metric, Storage::kFloat16});
      RunFlat({20011, dim, 64, 100, metric, Storage::kFloat16});
    }
  }
}

TEST_F(KnnTest, FlatFewerRowsThanKAndEmpty) {
  RunFlat({500, 64, 5, 1024, index::Metric::kL2});
  RunFlat({500, 64, 40, 1024, index::Metric::kInnerProduct});
  RunFlat({0, 64, 5, 10, index::Metric::kL2});
  RunFlat({0, 64, 20, 10, index::Metric::kInnerProduct});
  RunFlat({1, 16, 1, 1, index::Metric::kL2});
}

TEST_F(KnnTest, FlatSkipsDeletedRows) {
  RunFlat({30011, 128, 4, 100, index::Metric::kL2, Storage::kFloat32, 0.3});
  RunFlat({30011, 128, 50, 100, index::Metric::kInnerProduct, Storage::kFloat32, 0.3});
  RunFlat({3000, 32, 10, 2000, index::Metric::kL2, Storage::kFloat32, 0.5});
}

TEST_F(KnnTest, FlatTilesUnderASmallBudget) {
  // 64 MiB cannot hold these distance matrices: query blocks and database tiles.
  RunFlat({200003, 128, 120, 100, index::Metric::kL2, Storage::kFloat32, 0, size_t{64} << 20});
  RunFlat({200003, 64, 2, 1024, index::Metric::kL2, Storage::kFloat32, 0, size_t{64} << 20});
  RunFlat({50021, 64, 600, 10, index::Metric::kInnerProduct, Storage::kFloat32, 0,
           size_t{64} << 20});
}

// Batches of 64+ under L2 take the TF32 tensor-core path with exact re-ranking.
TEST_F(KnnTest, Tf32PathIsExact) {
  FlatData probe{nullptr, Storage::kFloat32, nullptr, nullptr, 50021, 128};
  ASSERT_TRUE(UsesTensorCores(probe, 200, 100, Metric::kL2));
  int64_t fallbacks = 0;
  for (int k : {1, 10, 100, 256}) {
    for (int dim : {64, 100, 128}) {
      fallbacks += RunFlat({50021, dim, 200, k, index::Metric::kL2});
    }
  }
  RunFlat({30011, 128, 100, 100, index::Metric::kL2, Storage::kFloat32, 0.3});  // deletions
  std::printf("TF32 path: %lld of %d queries searched again in float32\n",
              static_cast<long long>(fallbacks), 4 * 3 * 200);
}

// The TF32 path's candidate filter (forced on for these sizes): every row of the exact
// top k must pass it, whatever the dimension (including one that is not a multiple of
// the GEMM's 32-wide steps), k, deletions, query count (several query tiles, a partial
// last one) or norms (an offset makes the TF32 error large against the distance gaps).
TEST_F(KnnTest, Tf32FilterIsExact) {
  ctx_->set_filter_min_rows(0);
  int64_t queries = 0, over_cap = 0;
  auto run = [&](const FlatCase& c) {
    RunFlat(c);
    const Context::FilterStats& st = ctx_->filter_stats();
    EXPECT_EQ(st.queries, c.nq) << "the filtered path did not run";
    // Each query within the cap keeps at least its k exact neighbours.
    EXPECT_GE(st.candidates, int64_t{c.k} * (st.queries - st.over_cap));
    EXPECT_LE(st.candidates, st.cap * (st.queries - st.over_cap));
    queries += st.queries;
    over_cap += st.over_cap;
    EXPECT_LE(st.tiled, st.over_cap);
    std::printf("filter n=%lld dim=%d nq=%lld k=%d offset=%g: sample %lld, cap %lld, %.1f "
                "candidates a query, %lld over the cap\n",
                static_cast<long long>(c.n), c.dim, static_cast<long long>(c.nq), c.k, c.offset,
                static_cast<long long>(st.sample_rows), static_cast<long long>(st.cap),
                static_cast<double>(st.candidates) / std::max<int64_t>(1, st.queries - st.over_cap),
                static_cast<long long>(st.over_cap));
  };
  for (int k : {1, 10, 100, 256}) {
    for (int dim : {64, 100, 128}) run({50021, dim, 300, k, index::Metric::kL2});
  }
  // Long rows: cuBLAS writes a tile that the filter reads (float4 reads need rows % 4 == 0).
  run({12007, 768, 130, 10, index::Metric::kL2});
  run({12008, 384, 130, 100, index::Metric::kL2});
  run({30011, 128, 200, 100, index::Metric::kL2, Storage::kFloat32, 0.3});  // deletions
  run({50021, 128, 300, 10, index::Metric::kL2, Storage::kFloat32, 0, 0, -1, 0.5f});
  run({50021, 128, 300, 10, index::Metric::kL2, Storage::kFloat32, 0, 0, -1, 2.0f});
  // A filter that let every row through would overflow every list.
  EXPECT_LT(over_cap, queries / 4);
}

// Small enough for compute-sanitizer: both filters (the GEMM's at 128 dims, the tile's at
// 384), lists over the cap (near ties) and the distance tile after them.
TEST_F(KnnTest, Tf32FilterSmallCases) {
  ctx_->set_filter_min_rows(0);
  RunFlat({9001, 128, 130, 10, index::Metric::kL2});
  EXPECT_EQ(ctx_->filter_stats().queries, 130);
  RunFlat({9004, 384, 70, 10, index::Metric::kL2});
  EXPECT_EQ(ctx_->filter_stats().queries, 70);
  RunFlat({9001, 128, 70, 10, index::Metric::kL2}, 1e-4);
  EXPECT_EQ(ctx_->filter_stats().over_cap, 70);
}

// Several query blocks under the smallest budget, and rows the GEMM cannot read with
// 16-byte copies (dim 66), which take the distance-tile path instead.
TEST_F(KnnTest, Tf32FilterUnderASmallBudgetAndOddDims) {
  RunFlat({100003, 128, 1500, 256, index::Metric::kL2, Storage::kFloat32, 0, size_t{64} << 20, 0});
  RunFlat({20011, 66, 100, 10, index::Metric::kL2, Storage::kFloat32, 0, 0, 0});
  EXPECT_EQ(ctx_->filter_stats().queries, 0);
}

// Rows that nearly tie defeat the TF32 error bound; those queries must fall back and
// still come out exact.
TEST_F(KnnTest, Tf32FallsBackOnNearTies) {
  const int64_t fallbacks = RunFlat({20011, 128, 100, 10, index::Metric::kL2}, 1e-4);
  EXPECT_GT(fallbacks, 0);
  // With the filter on every row passes, so every list overflows: with room for all
  // 20011 rows the second pass holds them.
  EXPECT_EQ(RunFlat({20011, 128, 100, 10, index::Metric::kL2, Storage::kFloat32, 0, 0,
                     /*filter=*/0},
                    1e-4),
            0);
  EXPECT_EQ(ctx_->filter_stats().over_cap, 100);
  EXPECT_EQ(ctx_->filter_stats().tiled, 0);
  // 40009 rows pass 8 times the cap: the distance tile takes over, and its proof fails.
  const int64_t filtered = RunFlat(
      {40009, 128, 100, 10, index::Metric::kL2, Storage::kFloat32, 0, 0, /*filter=*/0}, 1e-4);
  EXPECT_EQ(ctx_->filter_stats().tiled, 100);
  EXPECT_GT(filtered, 0);
}

TEST_F(KnnTest, MergeTopKEqualsSortedReference) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (Metric metric : {Metric::kL2, Metric::kInnerProduct}) {
    const int nq = 50, m = 7, k_in = 100, k = 64;
    std::vector<float> dist(nq * m * k_in);
    std::vector<int64_t> ids(dist.size());
    std::uniform_real_distribution<float> u(0.f, 10.f);
    for (size_t i = 0; i < dist.size(); ++i) {
      dist[i] = u(rng);
      ids[i] = static_cast<int64_t>(i);
    }
    DeviceBuffer<float> d_dist;
    d_dist.Upload(dist);
    DeviceBuffer<int64_t> d_ids;
    d_ids.Upload(ids);
    DeviceBuffer<float> o_dist(nq * k);
    DeviceBuffer<int64_t> o_ids(nq * k);
    Poison(o_dist, o_ids, nq * k);
    ASSERT_TRUE(MergeTopK(*ctx_, d_dist.get(), d_ids.get(), nq, m, k_in, k, metric, o_dist.get(),
                          o_ids.get())
                    .ok());
    ASSERT_TRUE(ctx_->Synchronize().ok());
    const auto got_d = o_dist.Download();
    const auto got = o_ids.Download();
    ASSERT_TRUE(AllWritten(got_d, got));
    for (int q = 0; q < nq; ++q) {
      std::vector<int64_t> order(m * k_in);
      std::iota(order.begin(), order.end(), int64_t{q} * m * k_in);
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return metric == Metric::kL2 ? dist[a] < dist[b] : dist[a] > dist[b];
      });
      for (int j = 0; j < k; ++j) {
        ASSERT_EQ(got[q * k + j], ids[order[j]]) << "query " << q << " position " << j;
        ASSERT_EQ(got_d[q * k + j], dist[order[j]]);
      }
    }
  }
}

// IVF-Flat with FAISS's trained centroids: GPU list assignment and search equal FAISS's
// CPU IndexIVFFlat for the same nprobe.
TEST_F(KnnTest, IvfFlatMatchesFaissCpu) {
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed=", seed));
  std::mt19937_64 rng(seed);
  for (bool half : {false, true}) {
    for (Metric metric : {Metric::kL2, Metric::kInnerProduct}) {
      SCOPED_TRACE(absl::StrCat("half=", half, " ip=", metric == Metric::kInnerProduct));
      const int dim = 64, nlist = 64;
      const int64_t n = 20000, nq = 160;
      // Clustered data, so that lists differ in size.
      std::vector<float> centers = RandomVectors(200, dim, rng);
      std::vector<float> base(n * dim);
      std::normal_distribution<float> g(0.f, 0.3f);
      std::uniform_int_distribution<int> pick(0, 199);
      for (int64_t i = 0; i < n; ++i) {
        const int c = pick(rng);
        for (int j = 0; j < dim; ++j) base[i * dim + j] = centers[c * dim + j] + g(rng);
      }
      if (half) base = RoundToHalf(base);
      std::vector<float> queries = RandomVectors(nq, dim, rng);
      const faiss::MetricType fm =
          metric == Metric::kL2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT;
      faiss::IndexFlat quantizer(dim, fm);
      faiss::IndexIVFFlat cpu(&quantizer, dim, nlist, fm);
      cpu.train(n, base.data());
      std::vector<faiss::Index::idx_t> cpu_ids(n);
      for (int64_t i = 0; i < n; ++i) cpu_ids[i] = i * 3 + 1;
      cpu.add_with_ids(n, base.data(), cpu_ids.data());

      // GPU lists from FAISS's own assignment.
      std::vector<faiss::Index::idx_t> assign(n);
      quantizer.assign(n, base.data(), assign.data());
      const std::vector<float> centroids(quantizer.get_xb(), quantizer.get_xb() + nlist * dim);
      DeviceBuffer<float> d_centroids;
      d_centroids.Upload(centroids);
      DeviceBuffer<float> d_cbias(nlist);
      ASSERT_TRUE(RowBias(*ctx_, d_centroids.get(), Storage::kFloat32, nlist, dim, metric,
                          nullptr, d_cbias.get())
                      .ok());
      std::vector<std::vector<float>> list_vecs(nlist);
      std::vector<std::vector<int64_t>> list_ids(nlist);
      for (int64_t i = 0; i < n; ++i) {
        list_vecs[assign[i]].insert(list_vecs[assign[i]].end(), base.begin() + i * dim,
                                    base.begin() + (i + 1) * dim);
        list_ids[assign[i]].push_back(cpu_ids[i]);
      }
      std::vector<std::unique_ptr<DeviceBuffer<float>>> lv_f;
      std::vector<std::unique_ptr<DeviceBuffer<__half>>> lv_h;
      std::vector<std::unique_ptr<DeviceBuffer<int64_t>>> li;
      std::vector<const void*> vec_ptrs(nlist);
      std::vector<const int64_t*> id_ptrs(nlist);
      std::vector<int32_t> sizes(nlist);
      int32_t max_size = 0;
      for (int l = 0; l < nlist; ++l) {
        if (half) {
          lv_h.push_back(std::make_unique<DeviceBuffer<__half>>());
          lv_h.back()->Upload(ToHalfHost(list_vecs[l]));
          vec_ptrs[l] = lv_h.back()->get();
        } else {
          lv_f.push_back(std::make_unique<DeviceBuffer<float>>());
          lv_f.back()->Upload(list_vecs[l]);
          vec_ptrs[l] = lv_f.back()->get();
        }
        li.push_back(std::make_unique<DeviceBuffer<int64_t>>());
        li.back()->Upload(list_ids[l]);
        id_ptrs[l] = li.back()->get();
        sizes[l] = static_cast<int32_t>(list_ids[l].size());
        max_size = std::max(max_size, sizes[l]);
      }
      DeviceBuffer<const void*> d_vec_ptrs;
      d_vec_ptrs.Upload(vec_ptrs);
      DeviceBuffer<const int64_t*> d_id_ptrs;
      d_id_ptrs.Upload(id_ptrs);
      DeviceBuffer<int32_t> d_sizes;
      d_sizes.Upload(sizes);
      IvfData ivf;
      ivf.centroids = d_centroids.get();
      ivf.centroid_bias = d_cbias.get();
      ivf.nlist = nlist;
      ivf.dim = dim;
      ivf.storage = half ? Storage::kFloat16 : Storage::kFloat32;
      ivf.vectors = d_vec_ptrs.get();
      ivf.ids = d_id_ptrs.get();
      ivf.sizes = d_sizes.get();
      ivf.max_list_size = max_size;

      // Assignment of the base on the GPU equals FAISS's (ties aside: none expected).
      DeviceBuffer<float> d_base;
      d_base.Upload(base);
      DeviceBuffer<int64_t> d_assign(n);
      ASSERT_TRUE(IvfAssign(*ctx_, ivf, d_base.get(), n, 1, metric, d_assign.get()).ok());
      ASSERT_TRUE(ctx_->Synchronize().ok());
      const auto gpu_assign = d_assign.Download();
      int64_t same = 0;
      for (int64_t i = 0; i < n; ++i) same += gpu_assign[i] == assign[i];
      EXPECT_GE(same, n - n / 1000) << "GPU and CPU list assignment differ";

      DeviceBuffer<float> d_queries;
      d_queries.Upload(queries);
      // 160 x 64 (query, probe) pairs take the list-sorted scan, fewer the plain one.
      for (int nprobe : {1, 8, 64}) {
        for (int k : {7, 10, 100}) {  // odd k: shared-memory alignment
          DeviceBuffer<float> d_dist(nq * k);
          DeviceBuffer<int64_t> d_out(nq * k);
          Poison(d_dist, d_out, nq * k);
          absl::Status s = IvfSearch(*ctx_, ivf, d_queries.get(), nq, k, nprobe, metric,
                                     d_dist.get(), d_out.get());
          ASSERT_TRUE(s.ok()) << s;
          ASSERT_TRUE(ctx_->Synchronize().ok());
          const auto got_d = d_dist.Download();
          const auto got = d_out.Download();
          ASSERT_TRUE(AllWritten(got_d, got));
          cpu.nprobe = nprobe;
          std::vector<float> want_d(nq * k);
          std::vector<faiss::Index::idx_t> want(nq * k);
          cpu.search(nq, queries.data(), k, want_d.data(), want.data());
          int64_t match = 0;
          for (int64_t i = 0; i < nq * k; ++i) {
            match += got[i] == want[i];
            if (want[i] >= 0) {
              EXPECT_NEAR(got_d[i], want_d[i], 1e-4 * std::max(1.0f, std::fabs(want_d[i])))
                  << "nprobe " << nprobe << " k " << k << " at " << i;
            } else {
              EXPECT_EQ(got[i], -1);
            }
          }
          EXPECT_GE(match, nq * k * 99 / 100) << "nprobe " << nprobe << " k " << k;
        }
      }
    }
  }
}

TEST_F(KnnTest, BadArgumentsAreRejected) {
  FlatData db;
  db.dim = 8;
  absl::Status s = FlatSearch(*ctx_, db, nullptr, 1, 0, Metric::kL2, nullptr, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("k"), std::string::npos);
  s = FlatSearch(*ctx_, db, nullptr, 1, kMaxK + 1, Metric::kL2, nullptr, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  auto missing = Context::Create(DeviceCount());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(missing.status().message().find("device"), std::string::npos);
}

}  // namespace
}  // namespace shardvec::kernels
