#include "kernels/knn.h"

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cuda_status.h"
#include "kernels/launch.h"

namespace shardvec::kernels {
namespace {

using internal::SegmentLength;

#define SV_CUDA(expr, what)                                     \
  do {                                                          \
    absl::Status sv_status_ = CudaStatus((expr), (what));      \
    if (!sv_status_.ok()) return sv_status_;                    \
  } while (0)

cudaStream_t StreamOf(const Context& ctx) { return static_cast<cudaStream_t>(ctx.stream()); }

// Temporary device buffers from the stream-ordered pool, freed (in stream order) at
// scope exit.
class Temp {
 public:
  explicit Temp(cudaStream_t stream) : stream_(stream) {}
  ~Temp() {
    for (void* p : blocks_) cudaFreeAsync(p, stream_);
  }
  template <typename T>
  absl::Status Alloc(int64_t count, T** out) {
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(1, sizeof(T) * static_cast<size_t>(count));
    SV_CUDA(cudaMallocAsync(&p, bytes, stream_), "cudaMallocAsync");
    blocks_.push_back(p);
    *out = static_cast<T*>(p);
    return absl::OkStatus();
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> blocks_;
};

absl::Status CheckK(int k) {
  if (k < 1 || k > kMaxK) {
    return absl::InvalidArgumentError(absl::StrCat("k: must be in [1, ", kMaxK, "], got ", k));
  }
  return absl::OkStatus();
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t Budget(const Context& ctx) { return static_cast<int64_t>(ctx.scratch_budget()); }

// Reduces rows of `len` pairs (stride `stride`) in place-or-ping-pong until at most one
// segment is left, then to k pairs at dst (stride dst_stride). `spare` must hold
// nq * CeilDiv(len, seg) * k pairs.
absl::Status ReduceToK(uint32_t* keys, int64_t* vals, int64_t nq, int64_t len, int64_t stride,
                       int k, uint32_t* spare_keys, int64_t* spare_vals, uint32_t* dst_keys,
                       int64_t* dst_vals, int64_t dst_stride, cudaStream_t stream) {
  const int seg = SegmentLength(k);
  uint32_t* cur_k = keys;
  int64_t* cur_v = vals;
  uint32_t* next_k = spare_keys;
  int64_t* next_v = spare_vals;
  int64_t segments = 0;
  while (len > seg) {
    const int64_t next_stride = CeilDiv(len, seg) * k;
    SV_CUDA(internal::SelectRound(cur_k, cur_v, nq, len, stride, k, next_k, next_v, next_stride,
                                  &segments, stream),
            "select round");
    len = segments * k;
    stride = next_stride;
    std::swap(cur_k, next_k);
    std::swap(cur_v, next_v);
  }
  SV_CUDA(internal::SelectRound(cur_k, cur_v, nq, len, stride, k, dst_keys, dst_vals, dst_stride,
                                &segments, stream),
          "select round");
  return absl::OkStatus();
}

}  // namespace

int DeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string DeviceDescription(int device) {
  cudaDeviceProp prop;
  const cudaError_t e = cudaGetDeviceProperties(&prop, device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return absl::StrCat("device ", device, ": ", cudaGetErrorString(e));
  }
  return absl::StrFormat("%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor,
                         prop.multiProcessorCount,
                         static_cast<double>(prop.totalGlobalMem) / (1 << 30));
}

absl::StatusOr<std::unique_ptr<Context>> Context::Create(int device, size_t scratch_budget) {
  const int count = DeviceCount();
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("device: no CUDA device ", device, " (this machine has ", count, ")"));
  }
  std::unique_ptr<Context> ctx(new Context());
  ctx->device_ = device;
  ctx->scratch_budget_ = std::max<size_t>(scratch_budget, size_t{64} << 20);
  SV_CUDA(cudaSetDevice(device), "cudaSetDevice");
  cudaMemPool_t pool;
  SV_CUDA(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
  uint64_t keep = std::numeric_limits<uint64_t>::max();
  SV_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
          "cudaMemPoolSetAttribute");
  cudaStream_t stream;
  SV_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  ctx->stream_ = stream;
  cublasHandle_t handle;
  absl::Status s = CublasStatus(cublasCreate(&handle), "cublasCreate");
  if (!s.ok()) return s;
  ctx->cublas_ = handle;
  s = CublasStatus(cublasSetStream(handle, stream), "cublasSetStream");
  if (!s.ok()) return s;
  return ctx;
}

Context::~Context() {
  cudaSetDevice(device_);
  if (cublas_ != nullptr) cublasDestroy(static_cast<cublasHandle_t>(cublas_));
  if (stream_ != nullptr) {
    cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
    cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
  }
}

absl::Status Context::Synchronize() {
  SV_CUDA(cudaSetDevice(device_), "cudaSetDevice");
  SV_CUDA(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "stream");
  return absl::OkStatus();
}

namespace {

// The k best rows of each query. Either finalized (sorted distances and ids into
// out_dist/out_ids) or, when pair_keys is set, left as nq x k unsorted (key, row) pairs
// whose keys are row_bias + scale * dot (no ||q||^2). tf32: the GEMM runs on tensor
// cores in TF32 (callers re-rank). Temporary memory stays within `budget` bytes.
absl::Status FlatTopK(Context& ctx, const FlatData& db, const float* queries, int64_t nq, int k,
                      Metric metric, bool tf32, float* out_dist, int64_t* out_ids,
                      uint32_t* pair_keys, int64_t* pair_vals, int64_t budget) {
  cudaStream_t stream = StreamOf(ctx);
  const bool ip = metric == Metric::kInnerProduct;
  const bool half = db.storage == Storage::kFloat16;
  Temp temp(stream);

  if (db.n == 0 && pair_keys != nullptr) {
    SV_CUDA(internal::FillMissing(pair_keys, pair_vals, nq, k, k, stream), "fill");
    return absl::OkStatus();
  }
  if (db.n == 0) {
    uint32_t* keys;
    int64_t* vals;
    if (auto s = temp.Alloc(nq * k, &keys); !s.ok()) return s;
    if (auto s = temp.Alloc(nq * k, &vals); !s.ok()) return s;
    SV_CUDA(internal::FillMissing(keys, vals, nq, k, k, stream), "fill");
    SV_CUDA(internal::Finalize(keys, vals, nq, k, k, k, ip, nullptr, 0, nullptr, out_dist, out_ids,
                               stream),
            "finalize");
    return absl::OkStatus();
  }

  // Plan: query blocks of qb rows against database tiles of t rows, within the budget.
  const bool small = nq <= 8;
  const int seg = SegmentLength(k);
  auto bytes_for = [&](int64_t qb, int64_t t) {
    const int64_t nseg = CeilDiv(t, internal::kTileSegment);
    const int64_t cand = k + nseg * k;
    const int64_t spare = CeilDiv(cand, seg) * k;
    return qb * (t * 4 + (cand + spare + k) * 12 + (half ? 2 * db.dim : 0));
  };
  int64_t qb = std::min<int64_t>(nq, 16384);
  int64_t t = db.n;
  while (bytes_for(qb, t) > budget) {
    if (qb > 256 && (qb >= 4 * CeilDiv(t, 1 << 18) || t <= internal::kTileSegment)) {
      qb = CeilDiv(qb, 2);
    } else if (t > internal::kTileSegment) {
      t = CeilDiv(CeilDiv(t, 2), internal::kTileSegment) * internal::kTileSegment;
    } else if (qb > 1) {
      qb = CeilDiv(qb, 2);
    } else {
      break;
    }
  }
  const int64_t nseg_max = CeilDiv(t, internal::kTileSegment);
  const int64_t cand_stride = k + nseg_max * k;
  const int64_t spare_stride = CeilDiv(cand_stride, seg) * k;

  float* dots = nullptr;
  uint32_t *cand_k = nullptr, *spare_k = nullptr, *run_k = nullptr;
  int64_t *cand_v = nullptr, *spare_v = nullptr, *run_v = nullptr;
  __half* q_half = nullptr;
  if (auto s = temp.Alloc(qb * t, &dots); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * cand_stride, &cand_k); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * cand_stride, &cand_v); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * spare_stride, &spare_k); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * spare_stride, &spare_v); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * k, &run_k); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * k, &run_v); !s.ok()) return s;
  if (half && !small) {
    if (auto s = temp.Alloc(qb * db.dim, &q_half); !s.ok()) return s;
  }
  cublasHandle_t handle = static_cast<cublasHandle_t>(ctx.cublas());
  const float scale = ip ? -1.0f : -2.0f;

  for (int64_t q0 = 0; q0 < nq; q0 += qb) {
    const int64_t nb = std::min(qb, nq - q0);
    const float* qblock = queries + q0 * db.dim;
    if (q_half != nullptr) {
      SV_CUDA(internal::ToHalf(qblock, nb * db.dim, q_half, stream), "query to half");
    }
    for (int64_t t0 = 0; t0 < db.n; t0 += t) {
      const int64_t rows = std::min(t, db.n - t0);
      if (small) {
        SV_CUDA(internal::SmallBatchDots(db.vectors, half, db.dim, t0, rows, qblock,
                                         static_cast<int>(nb), dots, rows, stream),
                "distances");
      } else {
        const float one = 1.0f, zero = 0.0f;
        cublasStatus_t st;
        if (half) {
          st = cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows),
                            static_cast<int>(nb), db.dim, &one,
                            static_cast<const __half*>(db.vectors) + t0 * db.dim, CUDA_R_16F,
                            db.dim, q_half, CUDA_R_16F, db.dim, &zero, dots, CUDA_R_32F,
                            static_cast<int>(rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        } else {
          cublasSetMathMode(handle, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
          st = cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows),
                           static_cast<int>(nb), db.dim, &one,
                           static_cast<const float*>(db.vectors) + t0 * db.dim, db.dim, qblock,
                           db.dim, &zero, dots, static_cast<int>(rows));
          cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);
        }
        if (auto s = CublasStatus(st, "GEMM"); !s.ok()) return s;
      }
      // The first tile's candidates start the row; later tiles' follow the running k.
      const bool first = t0 == 0;
      const int64_t offset = first ? 0 : k;
      SV_CUDA(internal::SelectFromTile(dots, nb, rows, rows, db.row_bias, t0, scale, k, cand_k,
                                       cand_v, cand_stride, offset, stream),
              "select");
      if (!first) {
        SV_CUDA(internal::CopyPairs(run_k, run_v, k, cand_k, cand_v, cand_stride, nb, k, stream),
                "copy");
      }
      const int64_t len = offset + CeilDiv(rows, internal::kTileSegment) * k;
      const bool last = t0 + rows >= db.n;
      if (last && len <= seg && pair_keys == nullptr) {  // one segment left: finish here
        SV_CUDA(internal::Finalize(cand_k, cand_v, nb, len, cand_stride, k, ip,
                                   ip ? nullptr : qblock, db.dim, db.ids, out_dist + q0 * k,
                                   out_ids + q0 * k, stream),
                "finalize");
        break;
      }
      uint32_t* dst_k = last && pair_keys != nullptr ? pair_keys + q0 * k : run_k;
      int64_t* dst_v = last && pair_keys != nullptr ? pair_vals + q0 * k : run_v;
      if (auto s = ReduceToK(cand_k, cand_v, nb, len, cand_stride, k, spare_k, spare_v, dst_k,
                             dst_v, k, stream);
          !s.ok()) {
        return s;
      }
      if (last && pair_keys == nullptr) {
        SV_CUDA(internal::Finalize(run_k, run_v, nb, k, k, k, ip, ip ? nullptr : qblock, db.dim,
                                   db.ids, out_dist + q0 * k, out_ids + q0 * k, stream),
                "finalize");
      }
    }
  }
  SV_CUDA(cudaGetLastError(), "flat search");
  return absl::OkStatus();
}

// Runs search(sub_queries, m, sub_dist, sub_ids) on the queries at `which` (ascending) and
// scatters the results into out_dist / out_ids.
template <typename Search>
absl::Status OnSubset(Context& ctx, const float* queries, int dim, int k,
                      const std::vector<int64_t>& which, float* out_dist, int64_t* out_ids,
                      Search search) {
  cudaStream_t stream = StreamOf(ctx);
  const int64_t m = static_cast<int64_t>(which.size());
  Temp temp(stream);
  int64_t *rows = nullptr, *ri = nullptr;
  float *rq = nullptr, *rd = nullptr;
  if (auto st = temp.Alloc(m, &rows); !st.ok()) return st;
  if (auto st = temp.Alloc(m * dim, &rq); !st.ok()) return st;
  if (auto st = temp.Alloc(m * k, &rd); !st.ok()) return st;
  if (auto st = temp.Alloc(m * k, &ri); !st.ok()) return st;
  // From pageable memory the copy has read `which` by the time it returns.
  SV_CUDA(cudaMemcpyAsync(rows, which.data(), sizeof(int64_t) * m, cudaMemcpyHostToDevice, stream),
          "copy rows");
  SV_CUDA(internal::CopyRows(queries, rows, rq, nullptr, m, dim, stream), "gather");
  if (auto st = search(rq, m, rd, ri); !st.ok()) return st;
  SV_CUDA(internal::CopyRows(rd, nullptr, out_dist, rows, m, k, stream), "scatter");
  SV_CUDA(internal::CopyRows(ri, nullptr, out_ids, rows, m, 2 * int64_t{k}, stream), "scatter");
  return absl::OkStatus();
}

// The queries at `redo` (ascending) are searched again in float32 and their rows of
// out_dist / out_ids overwritten.
absl::Status SearchAgain(Context& ctx, const FlatData& db, const float* queries, int k,
                         const std::vector<int64_t>& redo, float* out_dist, int64_t* out_ids) {
  if (redo.empty()) return absl::OkStatus();
  return OnSubset(ctx, queries, db.dim, k, redo, out_dist, out_ids,
                  [&](const float* rq, int64_t m, float* rd, int64_t* ri) {
                    return FlatTopK(ctx, db, rq, m, k, Metric::kL2, /*tf32=*/false, rd, ri,
                                    nullptr, nullptr, Budget(ctx));
                  });
}

// Queries whose ok flag (device, nq bytes) is 0 are searched again in float32;
// *fallbacks counts them. Synchronizes the stream.
absl::Status SearchAgainWhereNotOk(Context& ctx, const FlatData& db, const float* queries,
                                   int64_t nq, int k, const uint8_t* ok, float* out_dist,
                                   int64_t* out_ids, int64_t* fallbacks) {
  cudaStream_t stream = StreamOf(ctx);
  std::vector<uint8_t> host_ok(nq);
  SV_CUDA(cudaMemcpyAsync(host_ok.data(), ok, nq, cudaMemcpyDeviceToHost, stream), "copy flags");
  SV_CUDA(cudaStreamSynchronize(stream), "search");
  std::vector<int64_t> redo;
  for (int64_t q = 0; q < nq; ++q) {
    if (!host_ok[q]) redo.push_back(q);
  }
  if (fallbacks != nullptr) *fallbacks = static_cast<int64_t>(redo.size());
  return SearchAgain(ctx, db, queries, k, redo, out_dist, out_ids);
}

// Exact search through TF32 tensor cores: the GEMM ranks k' >= 2k + 32 candidates, whose
// distances are then computed exactly in float32. A query is exact when its k-th exact
// distance is below the k'-th approximate one minus the largest TF32 error any row can
// have (2 eps ||x||max ||q||, eps bounding |<x,q>_tf32 - <x,q>| / (||x|| ||q||)); the
// few queries where that fails are searched again in float32.
absl::Status FlatSearchTf32(Context& ctx, const FlatData& db, const float* queries, int64_t nq,
                            int k, float* out_dist, int64_t* out_ids, int64_t* fallbacks) {
  cudaStream_t stream = StreamOf(ctx);
  // A wider margin means fewer fallbacks; up to 256 the tile select's prefilter holds.
  const int kc = std::min(std::max(2 * k + 32, std::min(4 * k + 64, 256)), kMaxK);
  Temp temp(stream);
  uint32_t *pair_k = nullptr, *exact_k = nullptr;
  int64_t *pair_v = nullptr, *exact_v = nullptr;
  uint8_t* ok = nullptr;
  float* max_norm = nullptr;
  if (auto s = temp.Alloc(nq * kc, &pair_k); !s.ok()) return s;
  if (auto s = temp.Alloc(nq * kc, &pair_v); !s.ok()) return s;
  if (auto s = temp.Alloc(nq * kc, &exact_k); !s.ok()) return s;
  if (auto s = temp.Alloc(nq * kc, &exact_v); !s.ok()) return s;
  if (auto s = temp.Alloc(nq, &ok); !s.ok()) return s;
  if (auto s = temp.Alloc(1, &max_norm); !s.ok()) return s;
  if (auto s = FlatTopK(ctx, db, queries, nq, kc, Metric::kL2, /*tf32=*/true, nullptr, nullptr,
                        pair_k, pair_v, Budget(ctx));
      !s.ok()) {
    return s;
  }
  SV_CUDA(internal::MaxFinite(db.row_bias, db.n, max_norm, stream), "max norm");
  // TF32 keeps 10 mantissa bits: each product is off by at most 2^-10 relative, plus
  // float32 accumulation over dim terms; 10% slack on top.
  const float eps = 1.1f * (std::ldexp(1.0f, -10) + db.dim * std::ldexp(1.0f, -23));
  SV_CUDA(internal::RerankL2(static_cast<const float*>(db.vectors), db.dim, queries, nq, pair_k,
                             pair_v, kc, k, eps, max_norm, exact_k, exact_v, ok, stream),
          "re-rank");
  SV_CUDA(internal::Finalize(exact_k, exact_v, nq, kc, kc, k, /*inner_product=*/false, nullptr, 0,
                             db.ids, out_dist, out_ids, stream),
          "finalize");
  return SearchAgainWhereNotOk(ctx, db, queries, nq, k, ok, out_dist, out_ids, fallbacks);
}

// How a FlatSearchFiltered pass is sized (PlanFilter).
struct FilterPlan {
  int64_t sample_rows;
  int cap;
  int64_t spare_stride;
  int64_t qb;  // queries a pass takes at once
  float c1;
  float c2;
  // 0: FilterGemm. Else cuBLAS's TF32 GEMM writes tiles of this many rows and FilterTile
  // reads them: for long rows, where cuBLAS's GEMM is faster than FilterGemm's.
  int64_t tile_rows;
};

// From this dimension on, cuBLAS's GEMM plus FilterTile beat FilterGemm. On an H100, per
// 1024 queries x 1M rows: 4.09 against 2.49 + 1.86 ms at 256 dims, 11.76 against 5.01 +
// 1.87 ms at 768.
constexpr int kFilterTileMinDim = 320;
// ... and from this batch on the filter beats the distance-tile path at such dimensions
// (at 768, k = 10: 0.78x its QPS at batch 256, 1.15x at 1024, 1.5x at 4096).
constexpr int64_t kFilterTileMinBatch = 1024;

// SHARDVEC_FILTER_TRACE=1: each step of the filter waits for the stream and prints its
// time to stderr. For tuning runs only: the waits cost time themselves.
class StepTimer {
 public:
  explicit StepTimer(cudaStream_t stream)
      : stream_(stream), on_(std::getenv("SHARDVEC_FILTER_TRACE") != nullptr) {
    if (on_) cudaStreamSynchronize(stream_);
    start_ = std::chrono::steady_clock::now();
  }
  void Mark(const char* step) {
    if (!on_) return;
    cudaStreamSynchronize(stream_);
    const auto now = std::chrono::steady_clock::now();
    std::fprintf(stderr, "filter trace: %s %.3f ms\n", step,
                 std::chrono::duration<double, std::milli>(now - start_).count());
    start_ = now;
  }
 private:
  cudaStream_t stream_;
  bool on_;
  std::chrono::steady_clock::time_point start_;
};

// A second stream and the events that pass two tiles between it and the context's stream.
struct SideStream {
  cudaStream_t stream = nullptr;
  cudaEvent_t written[2] = {nullptr, nullptr};
  cudaEvent_t filtered[2] = {nullptr, nullptr};
  cudaEvent_t done = nullptr;

  absl::Status Init() {
    SV_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    for (cudaEvent_t* e : {&written[0], &written[1], &filtered[0], &filtered[1], &done}) {
      SV_CUDA(cudaEventCreateWithFlags(e, cudaEventDisableTiming), "cudaEventCreate");
    }
    return absl::OkStatus();
  }
  // Waits for the side stream first: the tiles it reads are freed in the context's stream
  // order, which (after an error) need not follow it.
  ~SideStream() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    for (cudaEvent_t e : {written[0], written[1], filtered[0], filtered[1], done}) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

// The filter for nq queries, thresholds from the k best TF32 keys over `sample`. Writes
// out_dist / out_ids (complete where count[q] <= cap) and count.
absl::Status FilterPass(Context& ctx, const FlatData& db, const FlatData& sample,
                        const float* queries, int64_t nq, int k, const FilterPlan& p,
                        float* out_dist, int64_t* out_ids, int32_t* count) {
  cudaStream_t stream = StreamOf(ctx);
  const int dim = db.dim;
  const float* x = static_cast<const float*>(db.vectors);
  const int64_t qb = std::min(p.qb, nq);
  Temp temp(stream);
  float *q_tf32 = nullptr, *qn = nullptr, *thr = nullptr;
  uint32_t *sample_k = nullptr, *keys = nullptr, *spare_k = nullptr, *run_k = nullptr;
  int64_t *sample_v = nullptr, *vals = nullptr, *spare_v = nullptr, *run_v = nullptr;
  int32_t* cand = nullptr;
  float* cand_key = nullptr;
  float* dots[2] = {nullptr, nullptr};
  cublasHandle_t handle = static_cast<cublasHandle_t>(ctx.cublas());
  SideStream side;
  if (p.tile_rows > 0) {
    if (auto st = side.Init(); !st.ok()) return st;
    for (float*& d : dots) {
      if (auto st = temp.Alloc(qb * p.tile_rows, &d); !st.ok()) return st;
    }
  }
  if (auto st = temp.Alloc(qb * dim, &q_tf32); !st.ok()) return st;
  if (auto st = temp.Alloc(qb, &qn); !st.ok()) return st;
  if (auto st = temp.Alloc(qb, &thr); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * k, &sample_k); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * k, &sample_v); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * p.cap, &cand); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * p.cap, &cand_key); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * p.cap, &keys); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * p.cap, &vals); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * p.spare_stride, &spare_k); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * p.spare_stride, &spare_v); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * k, &run_k); !st.ok()) return st;
  if (auto st = temp.Alloc(qb * k, &run_v); !st.ok()) return st;
  StepTimer timer(stream);
  for (int64_t q0 = 0; q0 < nq; q0 += qb) {
    const int64_t nb = std::min(qb, nq - q0);
    const float* qblock = queries + q0 * dim;
    if (auto st = FlatTopK(ctx, sample, qblock, nb, k, Metric::kL2, /*tf32=*/true, nullptr,
                           nullptr, sample_k, sample_v, Budget(ctx) / 2);
        !st.ok()) {
      return st;
    }
    SV_CUDA(internal::FilterPrep(qblock, nb, dim, sample_k, sample_v, sample.row_bias, k, p.c1,
                                 p.c2, q_tf32, qn, thr, count + q0, stream),
            "filter thresholds");
    timer.Mark("sample and thresholds");
    if (p.tile_rows == 0) {
      SV_CUDA(internal::FilterGemm(x, db.row_bias, db.n, dim, q_tf32, nb, thr, qn, p.c1, p.c2,
                                   cand, cand_key, p.cap, count + q0, stream),
              "filter GEMM");
    } else {
      // GEMM into one tile while the side stream filters the other: the GEMM is bound by
      // the tensor cores, the filter by memory, and they share the SMs.
      int i = 0;
      for (int64_t t0 = 0; t0 < db.n; t0 += p.tile_rows, ++i) {
        const int b = i % 2;
        const int64_t rows = std::min(p.tile_rows, db.n - t0);
        if (i >= 2) SV_CUDA(cudaStreamWaitEvent(stream, side.filtered[b], 0), "wait");
        const float one = 1.0f, zero = 0.0f;
        cublasSetMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH);
        const cublasStatus_t gs = cublasSgemm(
            handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows), static_cast<int>(nb), dim,
            &one, x + t0 * dim, dim, qblock, dim, &zero, dots[b], static_cast<int>(rows));
        cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);
        if (auto st = CublasStatus(gs, "GEMM"); !st.ok()) return st;
        SV_CUDA(cudaEventRecord(side.written[b], stream), "record");
        SV_CUDA(cudaStreamWaitEvent(side.stream, side.written[b], 0), "wait");
        SV_CUDA(internal::FilterTile(dots[b], nb, rows, rows, t0, db.row_bias, thr, qn, p.c1,
                                     p.c2, cand, cand_key, p.cap, count + q0, side.stream),
                "filter tile");
        SV_CUDA(cudaEventRecord(side.filtered[b], side.stream), "record");
      }
      SV_CUDA(cudaEventRecord(side.done, side.stream), "record");
      SV_CUDA(cudaStreamWaitEvent(stream, side.done, 0), "wait");
    }
    timer.Mark("filtering GEMM");
    SV_CUDA(internal::RerankCandidates(x, db.row_bias, dim, qblock, nb, cand, cand_key, p.cap,
                                       count + q0, k, p.c1, p.c2, keys, vals, stream),
            "re-rank");
    timer.Mark("re-rank");
    if (auto st = ReduceToK(keys, vals, nb, p.cap, p.cap, k, spare_k, spare_v, run_k, run_v, k,
                            stream);
        !st.ok()) {
      return st;
    }
    SV_CUDA(internal::Finalize(run_k, run_v, nb, k, k, k, /*inner_product=*/false, nullptr, 0,
                               db.ids, out_dist + q0 * k, out_ids + q0 * k, stream),
            "finalize");
    timer.Mark("select and sort");
  }
  return absl::OkStatus();
}

// The plan for nq queries with lists of up to `cap` rows (0: the usual size).
FilterPlan PlanFilter(const Context& ctx, const FlatData& db, int64_t nq, int k, int64_t cap) {
  const int64_t n = db.n;
  const int dim = db.dim;
  FilterPlan p;
  // Per query, the sample costs s rows (TF32 GEMM and select); the filter keeps about
  // k n / s rows, each an atomic append and a slot in the re-rank's select, r times a
  // sample row: s = sqrt(r k n) balances them (r = 40 measured best on an H100 at 128
  // and 768 dims, once the re-rank computed only the candidates that matter).
  const double r = 40.0;
  p.sample_rows = std::min(
      n, std::max<int64_t>(8 * int64_t{k}, static_cast<int64_t>(std::sqrt(r * k * n))));
  if (cap == 0) {
    // At least 4096: one select round for the re-ranked list whenever k <= 2048.
    const int64_t expected = CeilDiv(int64_t{k} * n, p.sample_rows);
    cap = std::max<int64_t>(SegmentLength(k), CeilDiv(6 * expected + 2 * k + 256, 32) * 32);
  }
  p.cap = static_cast<int>(std::min<int64_t>(n, cap));
  p.spare_stride = CeilDiv(p.cap, SegmentLength(k)) * k;
  // Half the budget for a pass's buffers (a quarter for the two tiles, if any), half for
  // the sample's search.
  p.tile_rows = 0;
  if (dim >= kFilterTileMinDim) {
    // A multiple of 8192 (whole float4 groups), or all rows.
    const int64_t rows = Budget(ctx) / 8 / (4 * std::min<int64_t>(nq, 4096));
    p.tile_rows = std::min<int64_t>(n, std::max<int64_t>(1, rows / 8192) * 8192);
  }
  const int64_t per_query =
      20 * int64_t{p.cap} + 12 * (p.spare_stride + 2 * k) + 4 * (dim + 2 * p.tile_rows) + 12;
  p.qb = std::max<int64_t>(1, std::min<int64_t>(65535, Budget(ctx) / 2 / per_query));
  const float eps = 1.25f * (std::ldexp(1.0f, -9) + dim * std::ldexp(1.0f, -22));
  p.c1 = 2.0f * eps;
  p.c2 = 1.25f * (2.0f * dim + 8.0f) * std::ldexp(1.0f, -24);
  return p;
}

// The queries whose count passes the cap (count: device, nq).
absl::Status OverCap(Context& ctx, const int32_t* count, int64_t nq, int cap,
                     std::vector<int64_t>* over, int64_t* kept) {
  cudaStream_t stream = StreamOf(ctx);
  std::vector<int32_t> host(nq);
  SV_CUDA(cudaMemcpyAsync(host.data(), count, sizeof(int32_t) * nq, cudaMemcpyDeviceToHost,
                          stream),
          "copy counts");
  SV_CUDA(cudaStreamSynchronize(stream), "filter");
  over->clear();
  for (int64_t q = 0; q < nq; ++q) {
    if (host[q] <= cap) {
      if (kept != nullptr) *kept += host[q];
    } else {
      over->push_back(q);
    }
  }
  return absl::OkStatus();
}

// Exact search through TF32 tensor cores without a distance tile.
//
// Every (n/s)-th row forms a sample of s rows. The largest of a query's k smallest TF32
// keys over the sample, each plus its row's error bound, bounds the query's k-th exact
// float32 distance from above (k sample rows are that close). The GEMM over
// all rows then keeps a row only when its own key is within that bound plus its own
// error, which every row of the exact top k is; about k n / s rows a query pass, and are
// re-ranked in float32. Errors: the query is rounded to TF32 and the row truncated, so a
// product is off by at most 2^-9 of |x||q| once the float32 accumulation is added
// (c1 = 2 eps on the key); the float32 sums behind ||x||^2, the key and the exact distance
// add c2 (|x| + |q|)^2.
//
// A query whose list passes `cap` rows (often one just outside a dense region, whose
// rows all fall within the TF32 margin of its bound) is filtered again with 8 times the
// room; one still over, or whose sample has fewer than k live rows, is searched through a
// TF32 distance tile (FlatSearchTf32).
absl::Status FlatSearchFiltered(Context& ctx, const FlatData& db, const float* queries,
                                int64_t nq, int k, float* out_dist, int64_t* out_ids,
                                int64_t* fallbacks) {
  cudaStream_t stream = StreamOf(ctx);
  const int dim = db.dim;
  const FilterPlan p = PlanFilter(ctx, db, nq, k, 0);
  const int64_t stride = db.n / p.sample_rows;
  Temp temp(stream);
  float *sx = nullptr, *sbias = nullptr;
  int32_t* count = nullptr;
  if (auto st = temp.Alloc(p.sample_rows * dim, &sx); !st.ok()) return st;
  if (auto st = temp.Alloc(p.sample_rows, &sbias); !st.ok()) return st;
  if (auto st = temp.Alloc(nq, &count); !st.ok()) return st;
  SV_CUDA(internal::GatherStrided(static_cast<const float*>(db.vectors), db.row_bias, dim, stride,
                                  p.sample_rows, sx, sbias, stream),
          "sample");
  const FlatData sample{sx, Storage::kFloat32, sbias, nullptr, p.sample_rows, dim};
  if (auto st = FilterPass(ctx, db, sample, queries, nq, k, p, out_dist, out_ids, count);
      !st.ok()) {
    return st;
  }
  Context::FilterStats stats;
  stats.queries = nq;
  stats.sample_rows = p.sample_rows;
  stats.cap = p.cap;
  std::vector<int64_t> over;
  if (auto st = OverCap(ctx, count, nq, p.cap, &over, &stats.candidates); !st.ok()) return st;
  StepTimer timer(stream);
  stats.over_cap = static_cast<int64_t>(over.size());
  if (fallbacks != nullptr) *fallbacks = 0;
  // Over the cap: once more with 8 times the room, then through a distance tile.
  std::vector<int64_t> tiled;
  if (!over.empty()) {
    const FilterPlan wide = PlanFilter(ctx, db, stats.over_cap, k, 8 * int64_t{p.cap});
    if (auto st = OnSubset(
            ctx, queries, dim, k, over, out_dist, out_ids,
            [&](const float* rq, int64_t m, float* rd, int64_t* ri) -> absl::Status {
              Temp t(stream);
              int32_t* rc = nullptr;
              if (auto s = t.Alloc(m, &rc); !s.ok()) return s;
              if (auto s = FilterPass(ctx, db, sample, rq, m, k, wide, rd, ri, rc); !s.ok()) {
                return s;
              }
              std::vector<int64_t> still;
              if (auto s = OverCap(ctx, rc, m, wide.cap, &still, nullptr); !s.ok()) return s;
              for (int64_t i : still) tiled.push_back(over[i]);
              return absl::OkStatus();
            });
        !st.ok()) {
      return st;
    }
  }
  stats.tiled = static_cast<int64_t>(tiled.size());
  timer.Mark("lists over the cap, again");
  if (!tiled.empty()) {
    if (auto st = OnSubset(ctx, queries, dim, k, tiled, out_dist, out_ids,
                           [&](const float* rq, int64_t m, float* rd, int64_t* ri) {
                             return FlatSearchTf32(ctx, db, rq, m, k, rd, ri, fallbacks);
                           });
        !st.ok()) {
      return st;
    }
  }
  timer.Mark("through the tile");
  ctx.set_filter_stats(stats);
  return absl::OkStatus();
}

}  // namespace

bool UsesTensorCores(const FlatData& db, int64_t nq, int k, Metric metric) {
  return db.storage == Storage::kFloat32 && metric == Metric::kL2 && nq >= 64 && k <= 256 &&
         db.dim >= 32 && db.n >= 4 * (2 * int64_t{k} + 32);
}

absl::Status FlatSearch(Context& ctx, const FlatData& db, const float* queries, int64_t nq, int k,
                        Metric metric, float* out_dist, int64_t* out_ids, int64_t* fallbacks) {
  if (absl::Status s = CheckK(k); !s.ok()) return s;
  if (nq < 0) return absl::InvalidArgumentError("nq: must be >= 0");
  if (db.dim <= 0) return absl::InvalidArgumentError("dim: must be positive");
  if (db.n < 0 || db.n > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("n: must be in [0, 2^31) rows per device");
  }
  if (fallbacks != nullptr) *fallbacks = 0;
  ctx.set_filter_stats({});
  if (nq == 0) return absl::OkStatus();
  SV_CUDA(cudaSetDevice(ctx.device()), "cudaSetDevice");
  if (ctx.allow_tf32() && UsesTensorCores(db, nq, k, metric)) {
    // With long rows the filter wins only on large batches: its fixed costs (a second
    // pass for lists over the cap reads every row again) outweigh the tile it saves.
    const bool filter =
        internal::FilterGemmSupports(db.vectors, db.dim) &&
        (ctx.filter_min_rows() == 0 ||
         (db.n >= ctx.filter_min_rows() &&
          (db.dim < kFilterTileMinDim || nq >= kFilterTileMinBatch)));
    if (filter) return FlatSearchFiltered(ctx, db, queries, nq, k, out_dist, out_ids, fallbacks);
    return FlatSearchTf32(ctx, db, queries, nq, k, out_dist, out_ids, fallbacks);
  }
  return FlatTopK(ctx, db, queries, nq, k, metric, /*tf32=*/false, out_dist, out_ids, nullptr,
                  nullptr, Budget(ctx));
}

absl::Status IvfAssign(Context& ctx, const IvfData& ivf, const float* queries, int64_t nq,
                       int nprobe, Metric metric, int64_t* out_lists) {
  if (ivf.nlist <= 0) return absl::FailedPreconditionError("index: not trained");
  nprobe = std::min(nprobe, ivf.nlist);
  if (nprobe < 1) return absl::InvalidArgumentError("nprobe: must be positive");
  SV_CUDA(cudaSetDevice(ctx.device()), "cudaSetDevice");
  Temp temp(StreamOf(ctx));
  float* dist;
  if (auto s = temp.Alloc(nq * nprobe, &dist); !s.ok()) return s;
  FlatData centroids;
  centroids.vectors = ivf.centroids;
  centroids.storage = Storage::kFloat32;
  centroids.row_bias = ivf.centroid_bias;
  centroids.ids = nullptr;
  centroids.n = ivf.nlist;
  centroids.dim = ivf.dim;
  return FlatSearch(ctx, centroids, queries, nq, nprobe, metric, dist, out_lists);
}

absl::Status IvfSearch(Context& ctx, const IvfData& ivf, const float* queries, int64_t nq, int k,
                       int nprobe, Metric metric, float* out_dist, int64_t* out_ids) {
  if (absl::Status s = CheckK(k); !s.ok()) return s;
  if (nprobe < 1) return absl::InvalidArgumentError("nprobe: must be positive");
  if (ivf.nlist <= 0) return absl::FailedPreconditionError("index: not trained");
  if (nq <= 0) return absl::OkStatus();
  nprobe = std::min(nprobe, ivf.nlist);
  SV_CUDA(cudaSetDevice(ctx.device()), "cudaSetDevice");
  cudaStream_t stream = StreamOf(ctx);
  const bool ip = metric == Metric::kInnerProduct;
  const int seg = SegmentLength(k);
  const int64_t len = static_cast<int64_t>(nprobe) * k;
  const int64_t spare_stride = CeilDiv(len, seg) * k;
  const int64_t per_query = (len + spare_stride + k) * 12 + nprobe * 8;
  const int64_t qb = std::max<int64_t>(
      1, std::min<int64_t>(nq, static_cast<int64_t>(ctx.scratch_budget()) / per_query));
  Temp temp(stream);
  int64_t* lists;
  uint32_t *cand_k = nullptr, *spare_k = nullptr, *run_k = nullptr;
  int64_t *cand_v = nullptr, *spare_v = nullptr, *run_v = nullptr;
  if (auto s = temp.Alloc(qb * nprobe, &lists); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * len, &cand_k); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * len, &cand_v); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * spare_stride, &spare_k); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * spare_stride, &spare_v); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * k, &run_k); !s.ok()) return s;
  if (auto s = temp.Alloc(qb * k, &run_v); !s.ok()) return s;
  for (int64_t q0 = 0; q0 < nq; q0 += qb) {
    const int64_t nb = std::min(qb, nq - q0);
    const float* qblock = queries + q0 * ivf.dim;
    if (auto s = IvfAssign(ctx, ivf, qblock, nb, nprobe, metric, lists); !s.ok()) return s;
    SV_CUDA(internal::IvfScan(ivf.vectors, ivf.ids, ivf.sizes, ivf.storage == Storage::kFloat16,
                              ivf.dim, qblock, nb, lists, nprobe, k, ip, cand_k, cand_v, stream),
            "list scan");
    if (auto s = ReduceToK(cand_k, cand_v, nb, len, len, k, spare_k, spare_v, run_k, run_v, k,
                           stream);
        !s.ok()) {
      return s;
    }
    SV_CUDA(internal::Finalize(run_k, run_v, nb, k, k, k, ip, nullptr, 0, nullptr, out_dist + q0 * k,
                               out_ids + q0 * k, stream),
            "finalize");
  }
  return absl::OkStatus();
}

absl::Status MergeTopK(Context& ctx, const float* dist, const int64_t* ids, int64_t nq, int m,
                       int k_in, int k, Metric metric, float* out_dist, int64_t* out_ids) {
  if (absl::Status s = CheckK(k); !s.ok()) return s;
  if (m < 1 || k_in < 1) return absl::InvalidArgumentError("m, k_in: must be positive");
  if (nq <= 0) return absl::OkStatus();
  SV_CUDA(cudaSetDevice(ctx.device()), "cudaSetDevice");
  cudaStream_t stream = StreamOf(ctx);
  const bool ip = metric == Metric::kInnerProduct;
  const int64_t len = static_cast<int64_t>(m) * k_in;
  const int seg = SegmentLength(k);
  Temp temp(stream);
  uint32_t *keys = nullptr, *spare_k = nullptr, *run_k = nullptr;
  int64_t *vals = nullptr, *spare_v = nullptr, *run_v = nullptr;
  const int64_t spare_stride = CeilDiv(len, seg) * k;
  if (auto s = temp.Alloc(nq * len, &keys); !s.ok()) return s;
  if (auto s = temp.Alloc(nq * len, &vals); !s.ok()) return s;
  if (auto s = temp.Alloc(nq * spare_stride, &spare_k); !s.ok()) return s;
  if (auto s = temp.Alloc(nq * spare_stride, &spare_v); !s.ok()) return s;
  if (auto s = temp.Alloc(nq * k, &run_k); !s.ok()) return s;
  if (auto s = temp.Alloc(nq * k, &run_v); !s.ok()) return s;
  SV_CUDA(internal::DistancesToKeys(dist, nq * len, ip, keys, stream), "keys");
  SV_CUDA(cudaMemcpyAsync(vals, ids, sizeof(int64_t) * nq * len, cudaMemcpyDeviceToDevice, stream),
          "copy ids");
  if (auto s = ReduceToK(keys, vals, nq, len, len, k, spare_k, spare_v, run_k, run_v, k, stream);
      !s.ok()) {
    return s;
  }
  SV_CUDA(internal::Finalize(run_k, run_v, nq, k, k, k, ip, nullptr, 0, nullptr, out_dist, out_ids,
                             stream),
          "finalize");
  return absl::OkStatus();
}

absl::Status RowBias(Context& ctx, const void* vectors, Storage storage, int64_t n, int dim,
                     Metric metric, const uint8_t* deleted, float* out) {
  SV_CUDA(cudaSetDevice(ctx.device()), "cudaSetDevice");
  SV_CUDA(internal::RowBias(vectors, storage == Storage::kFloat16, n, dim,
                            metric == Metric::kInnerProduct, deleted, out, StreamOf(ctx)),
          "row bias");
  return absl::OkStatus();
}

absl::Status ToHalf(Context& ctx, const float* in, int64_t n, void* out) {
  SV_CUDA(cudaSetDevice(ctx.device()), "cudaSetDevice");
  SV_CUDA(internal::ToHalf(in, n, out, StreamOf(ctx)), "to half");
  return absl::OkStatus();
}

}  // namespace shardvec::kernels
