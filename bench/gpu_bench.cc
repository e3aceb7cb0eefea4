// The project's GPU kernels timed on one device: exact search (float32 and float16
// storage) and IVF-Flat, over batch sizes and k, as ms per batch, QPS, the fraction of
// the bandwidth floor at batch 1, and recall@10 for IVF. Peers (FAISS GPU, PyTorch)
// print the same CSV columns from their own programs in the same run.
//
//   gpu_bench --synthetic 1000000 --dim 128 --csv out.csv
//   gpu_bench --base base.fvecs --queries query.fvecs --groundtruth gt.ivecs --ivf 1024
#include <cuda_fp16.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bench/cuda_util.h"
#include "bench/synth.h"
#include "common/vecs_io.h"
#include "kernels/knn.h"
#include "kernels/launch.h"

namespace shardvec::bench {
namespace {

using kernels::Context;
using kernels::Metric;
using kernels::Storage;

template <typename T>
T* DeviceAlloc(size_t n) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

template <typename T>
T* Upload(const T* host, size_t n) {
  T* d = DeviceAlloc<T>(n);
  CHECK_CUDA(cudaMemcpy(d, host, n * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

struct Row {
  std::string impl = "shardvec";
  std::string dataset, storage, metric, index;
  int64_t n = 0;
  int d = 0, batch = 0, k = 0, nprobe = 0;
  double ms = 0, qps = 0;
  double recall = -1;
  double floor_frac = -1;
};

std::string CsvLine(const Row& r) {
  return absl::StrCat(r.impl, ",", r.dataset, ",", r.n, ",", r.d, ",", r.storage, ",", r.metric,
                      ",", r.index, ",", r.batch, ",", r.k, ",", r.nprobe, ",",
                      absl::StrFormat("%.4f", r.ms), ",", absl::StrFormat("%.1f", r.qps), ",",
                      r.recall >= 0 ? absl::StrFormat("%.4f", r.recall) : "");
}

// Median milliseconds of `run(rep)` over repeats (events on the context's stream), after
// warm-up; at least `min_reps` repeats and about `min_seconds` of work.
template <typename F>
double TimeMs(Context& ctx, F run, int min_reps = 10, double min_seconds = 0.5) {
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.stream());
  for (int i = 0; i < 3; ++i) run(i);
  CHECK_OK(ctx.Synchronize());
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  std::vector<double> times;
  double total = 0;
  for (int rep = 0; rep < 1000; ++rep) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    run(rep);
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    times.push_back(ms);
    total += ms;
    if (static_cast<int>(times.size()) >= min_reps && total >= min_seconds * 1000) break;
    if (static_cast<int>(times.size()) >= 3 && total >= 20 * min_seconds * 1000) break;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double Recall10(const std::vector<int64_t>& got, int k, const std::vector<int64_t>& truth,
                int truth_k, int64_t nq) {
  int64_t hit = 0;
  for (int64_t q = 0; q < nq; ++q) {
    for (int j = 0; j < 10; ++j) {
      const int64_t t = truth[q * truth_k + j];
      for (int i = 0; i < std::min(k, 10); ++i) hit += got[q * k + i] == t;
    }
  }
  return static_cast<double>(hit) / (nq * 10);
}

struct Data {
  std::string name;
  int64_t n = 0;
  int dim = 0;
  std::vector<float> base;
  std::vector<float> queries;
  std::vector<int64_t> truth;  // nq x truth_k, or empty
  int truth_k = 0;
};

Data LoadOrGenerate(const std::string& base, const std::string& queries,
                    const std::string& groundtruth, int64_t synthetic, int dim, int64_t nq) {
  Data d;
  if (!base.empty()) {
    auto b = ReadFvecs(base);
    auto q = ReadFvecs(queries);
    if (!b.ok() || !q.ok()) {
      std::fprintf(stderr, "reading data: %s %s\n", b.status().ToString().c_str(),
                   q.status().ToString().c_str());
      std::exit(1);
    }
    d.name = base.substr(base.find_last_of('/') + 1);
    d.n = b->rows;
    d.dim = b->dim;
    d.base = std::move(b->data);
    d.queries = std::move(q->data);
    if (!groundtruth.empty()) {
      auto g = ReadIvecs(groundtruth);
      if (!g.ok()) {
        std::fprintf(stderr, "%s\n", g.status().ToString().c_str());
        std::exit(1);
      }
      d.truth.assign(g->data.begin(), g->data.end());
      d.truth_k = g->dim;
    }
    return d;
  }
  SynthSpec spec;
  spec.n = synthetic;
  spec.dim = dim;
  spec.seed = 7;
  SynthGenerator gen(spec);
  d.name = absl::StrCat("synth", synthetic >= 1000000 ? absl::StrCat(synthetic / 1000000, "M")
                                                      : absl::StrCat(synthetic));
  d.n = synthetic;
  d.dim = dim;
  d.base.resize(static_cast<size_t>(synthetic) * dim);
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> pool;
  const int64_t chunk = (synthetic + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const int64_t first = t * chunk;
      const int64_t count = std::min(chunk, synthetic - first);
      if (count > 0) gen.BaseRows(first, count, d.base.data() + first * dim);
    });
  }
  for (auto& th : pool) th.join();
  d.queries.resize(static_cast<size_t>(nq) * dim);
  gen.QueryRows(0, nq, d.queries.data());
  return d;
}

void WriteFbin(const std::string& path, const float* x, int64_t n, int dim) {
  std::ofstream f(path, std::ios::binary);
  const int32_t hdr[2] = {static_cast<int32_t>(n), dim};
  f.write(reinterpret_cast<const char*>(hdr), sizeof(hdr));
  f.write(reinterpret_cast<const char*>(x), sizeof(float) * n * dim);
}

// Exact top-k of every query on the GPU (float32, the kernels the tests check) for
// recall when the data set has no ground truth.
std::vector<int64_t> ExactTruth(Context& ctx, const Data& data, int k) {
  float* db = Upload(data.base.data(), data.base.size());
  float* bias = DeviceAlloc<float>(data.n);
  CHECK_OK(kernels::RowBias(ctx, db, Storage::kFloat32, data.n, data.dim, Metric::kL2, nullptr,
                            bias));
  const int64_t nq = static_cast<int64_t>(data.queries.size()) / data.dim;
  float* q = Upload(data.queries.data(), data.queries.size());
  float* dist = DeviceAlloc<float>(nq * k);
  int64_t* ids = DeviceAlloc<int64_t>(nq * k);
  kernels::FlatData flat{db, Storage::kFloat32, bias, nullptr, data.n, data.dim};
  CHECK_OK(kernels::FlatSearch(ctx, flat, q, nq, k, Metric::kL2, dist, ids));
  CHECK_OK(ctx.Synchronize());
  std::vector<int64_t> out(nq * k);
  CHECK_CUDA(cudaMemcpy(out.data(), ids, out.size() * 8, cudaMemcpyDeviceToHost));
  cudaFree(db);
  cudaFree(bias);
  cudaFree(q);
  cudaFree(dist);
  cudaFree(ids);
  return out;
}

void PrintTable(const std::vector<Row>& rows) {
  std::printf("\n| impl | data | n | d | storage | index | batch | k | nprobe | ms/batch | QPS | "
              "recall@10 | x floor |\n|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"
              "---:|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %s | %lld | %d | %s | %s | %d | %d | %d | %.3f | %.0f | %s | %s |\n",
                r.impl.c_str(), r.dataset.c_str(), static_cast<long long>(r.n), r.d,
                r.storage.c_str(), r.index.c_str(), r.batch, r.k, r.nprobe, r.ms, r.qps,
                r.recall >= 0 ? absl::StrFormat("%.3f", r.recall).c_str() : "",
                r.floor_frac > 0 ? absl::StrFormat("%.2f", r.floor_frac).c_str() : "");
  }
  std::fflush(stdout);
}

// Where large-batch time goes: the GEMM into one distance tile (float32 and TF32) and
// round one of the selection over it, each alone, for up to 1024 queries at once.
void BreakDown(Context& ctx, void* db, const Data& data, const float* q, int batch, int k) {
  const int nb = std::min(batch, 1024);
  const int64_t n = data.n;
  float* tile = DeviceAlloc<float>(static_cast<size_t>(nb) * n);
  float* bias = DeviceAlloc<float>(n);
  CHECK_OK(kernels::RowBias(ctx, db, Storage::kFloat32, n, data.dim, Metric::kL2, nullptr, bias));
  const int64_t segs = (n + kernels::internal::kTileSegment - 1) / kernels::internal::kTileSegment;
  uint32_t* keys = DeviceAlloc<uint32_t>(static_cast<size_t>(nb) * segs * k);
  int64_t* vals = DeviceAlloc<int64_t>(static_cast<size_t>(nb) * segs * k);
  cublasHandle_t h = static_cast<cublasHandle_t>(ctx.cublas());
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.stream());
  double gemm_ms[2];
  for (int tf32 = 0; tf32 < 2; ++tf32) {
    gemm_ms[tf32] = TimeMs(ctx, [&](int) {
      const float one = 1, zero = 0;
      cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
      cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), nb, data.dim, &one,
                  static_cast<const float*>(db), data.dim, q, data.dim, &zero, tile,
                  static_cast<int>(n));
      cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    }, 3, 0.2);
  }
  const double select_ms = TimeMs(ctx, [&](int) {
    CHECK_CUDA(kernels::internal::SelectFromTile(tile, nb, n, n, bias, 0, -2.0f, k, keys, vals,
                                                 segs * k, 0, stream));
  }, 3, 0.2);
  // The filter's GEMM alone: thresholds of -inf keep nothing.
  double filter_ms = 0, tile_filter_ms = 0;
  if (kernels::internal::FilterGemmSupports(db, data.dim)) {
    std::vector<float> host_thr(nb, -INFINITY), host_norm(nb, 0.0f);
    float* thr = Upload(host_thr.data(), host_thr.size());
    float* qn = Upload(host_norm.data(), host_norm.size());
    int32_t* count = DeviceAlloc<int32_t>(nb);
    int32_t* cand = DeviceAlloc<int32_t>(nb);
    float* key = DeviceAlloc<float>(nb);
    CHECK_CUDA(cudaMemset(count, 0, sizeof(int32_t) * nb));
    filter_ms = TimeMs(ctx, [&](int) {
      CHECK_CUDA(kernels::internal::FilterGemm(static_cast<const float*>(db), bias, n, data.dim, q,
                                               nb, thr, qn, 0.0f, 0.0f, cand, key, 1, count,
                                               stream));
    }, 3, 0.2);
    tile_filter_ms = TimeMs(ctx, [&](int) {
      CHECK_CUDA(kernels::internal::FilterTile(tile, nb, n, n, 0, bias, thr, qn, 0.0f, 0.0f, cand,
                                               key, 1, count, stream));
    }, 3, 0.2);
    cudaFree(thr);
    cudaFree(qn);
    cudaFree(count);
    cudaFree(cand);
    cudaFree(key);
  }
  const double gb = 2.0 * nb * n * 4 / 1e9;
  std::printf("# breakdown, %d queries x %lld rows, k %d: GEMM fp32 %.2f ms, TF32 %.2f ms "
              "(%.0f GB written); round-one select %.2f ms (%.0f GB/s of tile read); filter "
              "GEMM %.2f ms (%.0f TFLOP/s); tile filter %.2f ms (%.0f GB/s)\n",
              nb, static_cast<long long>(n), k, gemm_ms[0], gemm_ms[1], gb / 2, select_ms,
              gb / 2 / (select_ms / 1000), filter_ms,
              2.0 * nb * n * data.dim / (filter_ms / 1000) / 1e12, tile_filter_ms,
              gb / 2 / (tile_filter_ms / 1000));
  cudaFree(tile);
  cudaFree(bias);
  cudaFree(keys);
  cudaFree(vals);
}

void FlatBench(Context& ctx, const Data& data, const std::vector<int>& batches,
               const std::vector<int>& ks, const std::vector<std::string>& storages,
               double copy_bw, std::vector<Row>* rows) {
  const int64_t nq_all = static_cast<int64_t>(data.queries.size()) / data.dim;
  float* q = Upload(data.queries.data(), data.queries.size());
  const int64_t default_filter_rows = ctx.filter_min_rows();
  for (const std::string& storage : storages) {
    const bool half = storage == "f16";
    // "f32-notc": float32 with the tensor-core (TF32 + exact re-rank) path turned off;
    // "f32-tile": that path through a TF32 distance tile instead of the GEMM's filter.
    ctx.set_allow_tf32(storage != "f32-notc");
    ctx.set_filter_min_rows(storage == "f32-tile" ? std::numeric_limits<int64_t>::max()
                                                  : default_filter_rows);
    void* db;
    if (half) {
      db = DeviceAlloc<__half>(data.base.size());
      float* tmp = Upload(data.base.data(), data.base.size());
      CHECK_OK(kernels::ToHalf(ctx, tmp, static_cast<int64_t>(data.base.size()), db));
      CHECK_OK(ctx.Synchronize());
      cudaFree(tmp);
    } else {
      db = Upload(data.base.data(), data.base.size());
    }
    const Storage st = half ? Storage::kFloat16 : Storage::kFloat32;
    float* bias = DeviceAlloc<float>(data.n);
    CHECK_OK(kernels::RowBias(ctx, db, st, data.n, data.dim, Metric::kL2, nullptr, bias));
    kernels::FlatData flat{db, st, bias, nullptr, data.n, data.dim};
    const double scanned = static_cast<double>(data.n) * data.dim * (half ? 2 : 4);
    for (int batch : batches) {
      for (int k : ks) {
        // Query sets rotate so that repeats do not reuse one batch.
        const int64_t sets = std::max<int64_t>(1, nq_all / batch);
        std::vector<float> qbig;
        const float* qptr = q;
        float* qdev = nullptr;
        if (batch > nq_all) {  // tile the query set up to the batch size
          for (int64_t i = 0; i < batch; ++i) {
            const float* src = data.queries.data() + (i % nq_all) * data.dim;
            qbig.insert(qbig.end(), src, src + data.dim);
          }
          qdev = Upload(qbig.data(), qbig.size());
          qptr = qdev;
        }
        float* dist = DeviceAlloc<float>(static_cast<size_t>(batch) * k);
        int64_t* ids = DeviceAlloc<int64_t>(static_cast<size_t>(batch) * k);
        int64_t fallbacks = 0, searched = 0;
        const double ms = TimeMs(ctx, [&](int rep) {
          const float* qs = qdev ? qptr : qptr + (rep % sets) * batch * data.dim;
          int64_t fb = 0;
          CHECK_OK(kernels::FlatSearch(ctx, flat, qs, batch, k, Metric::kL2, dist, ids, &fb));
          fallbacks += fb;
          searched += batch;
        });
        if (kernels::UsesTensorCores(flat, batch, k, Metric::kL2) && ctx.allow_tf32()) {
          std::printf("# TF32 path (%s), batch %d k %d: %lld of %lld queries re-searched in "
                      "float32\n",
                      storage.c_str(), batch, k, static_cast<long long>(fallbacks),
                      static_cast<long long>(searched));
          const kernels::Context::FilterStats& fs = ctx.filter_stats();
          if (fs.queries > 0) {
            std::printf("#   filter (last batch): sample %lld rows, cap %lld, %.0f candidates a "
                        "query, %lld of %lld over the cap, %lld of those through the tile\n",
                        static_cast<long long>(fs.sample_rows), static_cast<long long>(fs.cap),
                        static_cast<double>(fs.candidates) /
                            std::max<int64_t>(1, fs.queries - fs.over_cap),
                        static_cast<long long>(fs.over_cap), static_cast<long long>(fs.queries),
                        static_cast<long long>(fs.tiled));
          }
        }
        Row r;
        r.dataset = data.name;
        r.n = data.n;
        r.d = data.dim;
        r.storage = storage;
        r.metric = "l2";
        r.index = "flat";
        r.batch = batch;
        r.k = k;
        r.ms = ms;
        r.qps = batch / (ms / 1000);
        if (batch == 1) {
          r.floor_frac = ms / (scanned / copy_bw * 1000);
          // Where batch-1 time goes: the one pass over the rows alone.
          float* dots = DeviceAlloc<float>(data.n);
          const double scan_ms = TimeMs(ctx, [&](int rep) {
            CHECK_CUDA(kernels::internal::SmallBatchDots(
                db, half, data.dim, 0, data.n, q + (rep % sets) * data.dim, 1, dots, data.n,
                static_cast<cudaStream_t>(ctx.stream())));
          });
          const int64_t segs =
              (data.n + kernels::internal::kTileSegment - 1) / kernels::internal::kTileSegment;
          uint32_t* ck = DeviceAlloc<uint32_t>(segs * k);
          int64_t* cv = DeviceAlloc<int64_t>(segs * k);
          cudaStream_t stream = static_cast<cudaStream_t>(ctx.stream());
          const double select_ms = TimeMs(ctx, [&](int) {
            CHECK_CUDA(kernels::internal::SelectFromTile(dots, 1, data.n, data.n, bias, 0, -2.0f,
                                                         k, ck, cv, segs * k, 0, stream));
          });
          double final_ms = -1;  // Finalize takes one segment; more needs select rounds
          if (segs * k <= kernels::internal::SegmentLength(k)) {
            final_ms = TimeMs(ctx, [&](int) {
              CHECK_CUDA(kernels::internal::Finalize(ck, cv, 1, segs * k, segs * k, k, false,
                                                     nullptr, 0, nullptr, dist, ids, stream));
            });
          }
          std::printf("# batch 1 k %d %s: search %.3f ms = row pass %.3f + select %.3f + "
                      "finalize %.3f + rest; floor %.3f ms\n", k, storage.c_str(), ms, scan_ms,
                      select_ms, final_ms, scanned / copy_bw * 1000);
          cudaFree(ck);
          cudaFree(cv);
          cudaFree(dots);
        }
        if (batch >= 256 && k == ks.front() && !half && data.n <= 2000000) {
          BreakDown(ctx, db, data, qdev ? qptr : q, batch, k);
        }
        rows->push_back(r);
        std::printf("%s\n", CsvLine(r).c_str());
        std::fflush(stdout);
        cudaFree(dist);
        cudaFree(ids);
        if (qdev) cudaFree(qdev);
      }
    }
    cudaFree(db);
    cudaFree(bias);
  }
  cudaFree(q);
}

// IVF-Flat with k-means centroids trained on the GPU (Lloyd, assignment by the same
// kernels), lists packed in one buffer.
void IvfBench(Context& ctx, const Data& data, int nlist, const std::vector<int>& nprobes,
              const std::vector<int>& batches, const std::vector<int>& ks,
              const std::vector<int64_t>& truth, int truth_k, std::vector<Row>* rows) {
  const int dim = data.dim;
  const int64_t n = data.n;
  std::mt19937_64 rng(11);
  const int64_t sample = std::min<int64_t>(n, int64_t{nlist} * 64);
  std::vector<int64_t> pick(n);
  for (int64_t i = 0; i < n; ++i) pick[i] = i;
  std::shuffle(pick.begin(), pick.end(), rng);
  std::vector<float> train(sample * dim);
  for (int64_t i = 0; i < sample; ++i) {
    std::copy_n(data.base.data() + pick[i] * dim, dim, train.data() + i * dim);
  }
  std::vector<float> centroids(static_cast<size_t>(nlist) * dim);
  for (int c = 0; c < nlist; ++c) std::copy_n(train.data() + c * dim, dim, centroids.data() + c * dim);
  float* d_train = Upload(train.data(), train.size());
  float* d_cent = DeviceAlloc<float>(centroids.size());
  float* d_cbias = DeviceAlloc<float>(nlist);
  int64_t* d_assign = DeviceAlloc<int64_t>(std::max(sample, n));
  std::vector<int64_t> assign(sample);
  // The host centroids on the device, as an IVF with no lists yet.
  auto upload_centroids = [&] {
    CHECK_CUDA(cudaMemcpy(d_cent, centroids.data(), centroids.size() * 4, cudaMemcpyHostToDevice));
    CHECK_OK(kernels::RowBias(ctx, d_cent, Storage::kFloat32, nlist, dim, Metric::kL2, nullptr,
                              d_cbias));
    kernels::IvfData q;
    q.centroids = d_cent;
    q.centroid_bias = d_cbias;
    q.nlist = nlist;
    q.dim = dim;
    return q;
  };
  auto t0 = std::chrono::steady_clock::now();
  for (int iter = 0; iter < 20; ++iter) {
    CHECK_OK(kernels::IvfAssign(ctx, upload_centroids(), d_train, sample, 1, Metric::kL2,
                                d_assign));
    CHECK_OK(ctx.Synchronize());
    CHECK_CUDA(cudaMemcpy(assign.data(), d_assign, sample * 8, cudaMemcpyDeviceToHost));
    std::vector<double> sum(centroids.size(), 0.0);
    std::vector<int64_t> count(nlist, 0);
    for (int64_t i = 0; i < sample; ++i) {
      ++count[assign[i]];
      for (int j = 0; j < dim; ++j) sum[assign[i] * dim + j] += train[i * dim + j];
    }
    for (int c = 0; c < nlist; ++c) {
      if (count[c] == 0) {  // re-seed an empty centroid on a random sample row
        std::copy_n(train.data() + (rng() % sample) * dim, dim, centroids.data() + c * dim);
        continue;
      }
      for (int j = 0; j < dim; ++j) centroids[c * dim + j] = sum[c * dim + j] / count[c];
    }
  }
  const double train_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  kernels::IvfData ivf = upload_centroids();
  float* d_base = Upload(data.base.data(), data.base.size());
  CHECK_OK(kernels::IvfAssign(ctx, ivf, d_base, n, 1, Metric::kL2, d_assign));
  CHECK_OK(ctx.Synchronize());
  std::vector<int64_t> list_of(n);
  CHECK_CUDA(cudaMemcpy(list_of.data(), d_assign, n * 8, cudaMemcpyDeviceToHost));
  cudaFree(d_base);
  cudaFree(d_train);
  // Pack rows by list.
  std::vector<int64_t> offsets(nlist + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++offsets[list_of[i] + 1];
  for (int c = 0; c < nlist; ++c) offsets[c + 1] += offsets[c];
  std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
  std::vector<float> packed(static_cast<size_t>(n) * dim);
  std::vector<int64_t> packed_ids(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = fill[list_of[i]]++;
    std::copy_n(data.base.data() + i * dim, dim, packed.data() + p * dim);
    packed_ids[p] = i;
  }
  float* d_packed = Upload(packed.data(), packed.size());
  int64_t* d_packed_ids = Upload(packed_ids.data(), packed_ids.size());
  std::vector<const void*> vec_ptrs(nlist);
  std::vector<const int64_t*> id_ptrs(nlist);
  std::vector<int32_t> sizes(nlist);
  int32_t max_size = 0;
  for (int c = 0; c < nlist; ++c) {
    vec_ptrs[c] = d_packed + offsets[c] * dim;
    id_ptrs[c] = d_packed_ids + offsets[c];
    sizes[c] = static_cast<int32_t>(offsets[c + 1] - offsets[c]);
    max_size = std::max(max_size, sizes[c]);
  }
  ivf.vectors = Upload(vec_ptrs.data(), vec_ptrs.size());
  ivf.ids = Upload(id_ptrs.data(), id_ptrs.size());
  ivf.sizes = Upload(sizes.data(), sizes.size());
  ivf.max_list_size = max_size;
  std::printf("# IVF%d: k-means %.1f s on %lld rows, largest list %d\n", nlist, train_s,
              static_cast<long long>(sample), max_size);

  const int64_t nq_all = static_cast<int64_t>(data.queries.size()) / dim;
  float* q = Upload(data.queries.data(), data.queries.size());
  for (int nprobe : nprobes) {
    // Recall over the whole query set at k = 10.
    float* rd = DeviceAlloc<float>(nq_all * 10);
    int64_t* ri = DeviceAlloc<int64_t>(nq_all * 10);
    CHECK_OK(kernels::IvfSearch(ctx, ivf, q, nq_all, 10, nprobe, Metric::kL2, rd, ri));
    CHECK_OK(ctx.Synchronize());
    std::vector<int64_t> got(nq_all * 10);
    CHECK_CUDA(cudaMemcpy(got.data(), ri, got.size() * 8, cudaMemcpyDeviceToHost));
    const double recall = Recall10(got, 10, truth, truth_k, nq_all);
    cudaFree(rd);
    cudaFree(ri);
    for (int batch : batches) {
      if (batch > nq_all) continue;
      for (int k : ks) {
        const int64_t sets = std::max<int64_t>(1, nq_all / batch);
        float* dist = DeviceAlloc<float>(static_cast<size_t>(batch) * k);
        int64_t* ids = DeviceAlloc<int64_t>(static_cast<size_t>(batch) * k);
        const double ms = TimeMs(ctx, [&](int rep) {
          CHECK_OK(kernels::IvfSearch(ctx, ivf, q + (rep % sets) * batch * dim, batch, k, nprobe,
                                      Metric::kL2, dist, ids));
        });
        Row r;
        r.dataset = data.name;
        r.n = n;
        r.d = dim;
        r.storage = "f32";
        r.metric = "l2";
        r.index = absl::StrCat("IVF", nlist, ",Flat");
        r.batch = batch;
        r.k = k;
        r.nprobe = nprobe;
        r.ms = ms;
        r.qps = batch / (ms / 1000);
        r.recall = recall;
        rows->push_back(r);
        std::printf("%s\n", CsvLine(r).c_str());
        std::fflush(stdout);
        cudaFree(dist);
        cudaFree(ids);
      }
    }
  }
  cudaFree(q);
  cudaFree(d_packed);
  cudaFree(d_packed_ids);
  cudaFree(d_cent);
  cudaFree(d_cbias);
  cudaFree(d_assign);
}

int Main(int argc, char** argv) {
  CLI::App app{"shardvec GPU kernel benchmark"};
  std::string base, queries, groundtruth, csv, write_base, write_queries, write_truth;
  int64_t synthetic = 1000000;
  int dim = 128;
  int64_t nq = 10000;
  std::vector<int> batches{1, 16, 256, 4096};
  std::vector<int> ks{10, 100};
  std::vector<std::string> storages{"f32", "f32-tile", "f32-notc", "f16"};
  std::vector<int> nprobes{8, 16, 32, 64};
  int ivf = 0;
  bool flat = true;
  size_t budget_mb = 4096;
  app.add_option("--base", base, ".fvecs base vectors (else synthetic)");
  app.add_option("--queries", queries, "query vectors");
  app.add_option("--groundtruth", groundtruth, ".ivecs ground truth");
  app.add_option("--synthetic", synthetic, "rows of synthetic data (bench/synth.h)");
  app.add_option("--dim", dim, "synthetic dimension");
  app.add_option("--nq", nq, "synthetic queries");
  app.add_option("--batches", batches)->delimiter(',');
  app.add_option("--ks", ks)->delimiter(',');
  app.add_option("--storage", storages)->delimiter(',');
  app.add_option("--ivf", ivf, "nlist: also run IVF-Flat");
  app.add_option("--nprobes", nprobes)->delimiter(',');
  app.add_option("--flat", flat, "run exact search");
  app.add_option("--budget-mb", budget_mb, "scratch budget per search");
  app.add_option("--csv", csv, "append CSV rows here");
  app.add_option("--write-base", write_base, "write the base as .fbin (for peers)");
  app.add_option("--write-queries", write_queries, "write the queries as .fbin");
  app.add_option("--write-truth", write_truth, "write exact top-100 ids as .ivecs");
  CLI11_PARSE(app, argc, argv);

  if (kernels::DeviceCount() == 0) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  std::printf("# device: %s\n", kernels::DeviceDescription(0).c_str());
  auto ctx_or = Context::Create(0, budget_mb << 20);
  CHECK_OK(ctx_or.status());
  Context& ctx = **ctx_or;
  const auto t0 = std::chrono::steady_clock::now();
  Data data = LoadOrGenerate(base, queries, groundtruth, synthetic, dim, nq);
  std::printf("# data %s: %lld x %d, %zu queries (%.1f s)\n", data.name.c_str(),
              static_cast<long long>(data.n), data.dim, data.queries.size() / data.dim,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (!write_base.empty()) WriteFbin(write_base, data.base.data(), data.n, data.dim);
  if (!write_queries.empty()) {
    WriteFbin(write_queries, data.queries.data(),
              static_cast<int64_t>(data.queries.size()) / data.dim, data.dim);
  }
  const double bw = CopyBandwidth();
  std::printf("# device-to-device copy: %.0f GB/s (read + write)\n", bw / 1e9);
  std::vector<Row> rows;
  if (flat) FlatBench(ctx, data, batches, ks, storages, bw, &rows);
  if (ivf > 0 || !write_truth.empty()) {
    std::vector<int64_t> truth = data.truth;
    int truth_k = data.truth_k;
    if (truth.empty()) {
      truth = ExactTruth(ctx, data, 100);
      truth_k = 100;
    }
    if (!write_truth.empty()) {  // .ivecs: per query, int32 count then int32 ids
      std::ofstream f(write_truth, std::ios::binary);
      for (size_t q = 0; q < truth.size() / truth_k; ++q) {
        f.write(reinterpret_cast<const char*>(&truth_k), 4);
        for (int j = 0; j < truth_k; ++j) {
          const int32_t x = static_cast<int32_t>(truth[q * truth_k + j]);
          f.write(reinterpret_cast<const char*>(&x), 4);
        }
      }
    }
    if (ivf > 0) IvfBench(ctx, data, ivf, nprobes, batches, ks, truth, truth_k, &rows);
  }
  PrintTable(rows);
  if (!csv.empty()) {
    std::ofstream f(csv, std::ios::app);
    for (const Row& r : rows) f << CsvLine(r) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace shardvec::bench

int main(int argc, char** argv) { return shardvec::bench::Main(argc, argv); }
