// Device code for knn.h: distance kernels, the block radix select, the bitonic sort
// of the final k, the TF32 candidate filter and its re-rank, and the IVF list scan.
// Launchers are declared in launch.h.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "kernels/launch.h"

namespace shardvec::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;
// OrderKey(+inf): keys at or above it are missing results.
constexpr uint32_t kInfKey = 0xff800000u;

// Unsigned order of the keys = numeric order of the floats.
__device__ __forceinline__ uint32_t OrderKey(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float KeyValue(uint32_t key) {
  const uint32_t b = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  return __uint_as_float(b);
}

__host__ __device__ __forceinline__ int64_t MinI64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

struct SelectState {
  uint32_t hist[256];
  uint32_t kth;        // the k-th smallest key
  uint32_t remaining;  // copies of kth among the k smallest
  uint32_t pos_less;
  uint32_t pos_eq;
};

// Radix select, 8 bits a pass: after return (and a barrier) st.kth is the k-th smallest
// key and st.remaining how many keys equal to it belong to the k smallest. 1 <= k <=
// number of keys. for_each(visit) calls visit(key, valid) for each of this thread's
// keys, the same number of times in every thread of the block (the visits use warp
// votes), so keys may live in shared memory or in registers. Histogram updates are
// aggregated per warp (__match_any_sync) because distances of one row share their high
// bits, which would serialise plain atomics.
template <typename ForEach>
__device__ void FindKthBy(int k, SelectState& st, ForEach for_each) {
  const int lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    st.kth = 0;
    st.remaining = k;
  }
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) st.hist[i] = 0;
    __syncthreads();
    const uint32_t prefix = st.kth;
    for_each([&](uint32_t key, bool valid) {
      const bool in = valid && (key & mask) == prefix;
      const unsigned active = __ballot_sync(kFullMask, in);
      if (in) {
        const uint32_t digit = (key >> shift) & 0xffu;
        const unsigned peers = __match_any_sync(active, digit);
        if (lane == __ffs(peers) - 1) atomicAdd(&st.hist[digit], __popc(peers));
      }
    });
    __syncthreads();
    if (threadIdx.x < 32) {
      uint32_t c[8];
      uint32_t sum = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        c[j] = st.hist[lane * 8 + j];
        sum += c[j];
      }
      uint32_t incl = sum;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const uint32_t t = __shfl_up_sync(kFullMask, incl, off);
        if (lane >= off) incl += t;
      }
      const uint32_t excl = incl - sum;
      const uint32_t rem = st.remaining;
      __syncwarp();
      if (excl < rem && rem <= incl) {
        uint32_t run = excl;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (run < rem && run + c[j] >= rem) {
            st.kth = prefix | (static_cast<uint32_t>(lane * 8 + j) << shift);
            st.remaining = rem - run;
          }
          run += c[j];
        }
      }
    }
    mask |= 0xffu << shift;
    __syncthreads();
  }
}

// Visits keys[0..n) in shared memory, blockDim.x at a time.
struct SmemKeys {
  const uint32_t* keys;
  int n;
  template <typename Visit>
  __device__ void operator()(Visit visit) const {
    for (int base = 0; base < n; base += blockDim.x) {
      const int i = base + threadIdx.x;
      visit(i < n ? keys[i] : kMissingKey, i < n, i);
    }
  }
};

__device__ void FindKth(const uint32_t* keys, int n, int k, SelectState& st) {
  const SmemKeys each{keys, n};
  FindKthBy(k, st, [&](auto visit) {
    each([&](uint32_t key, bool valid, int) { visit(key, valid); });
  });
}

// Writes the k smallest keys, with value_of(index), to out[0..k) in any order. Needs
// FindKth's state; for_each(visit) calls visit(key, valid, index) like FindKthBy's.
// Ends with a barrier.
template <typename ForEach, typename ValueOf>
__device__ void CompactSelectedBy(ForEach for_each, ValueOf value_of, int k, SelectState& st,
                                  uint32_t* out_keys, int64_t* out_vals) {
  const int lane = threadIdx.x & 31;
  const uint32_t kth = st.kth;
  const uint32_t need_eq = st.remaining;
  const uint32_t less = static_cast<uint32_t>(k) - need_eq;
  __syncthreads();
  if (threadIdx.x == 0) {
    st.pos_less = 0;
    st.pos_eq = 0;
  }
  __syncthreads();
  const unsigned below = (1u << lane) - 1u;
  for_each([&](uint32_t key, bool valid, int i) {
    const bool lt = valid && key < kth;
    const bool eq = valid && key == kth;
    const unsigned bl = __ballot_sync(kFullMask, lt);
    const unsigned be = __ballot_sync(kFullMask, eq);
    uint32_t base_l = 0, base_e = 0;
    if (lane == 0) {
      if (bl) base_l = atomicAdd(&st.pos_less, __popc(bl));
      if (be) base_e = atomicAdd(&st.pos_eq, __popc(be));
    }
    base_l = __shfl_sync(kFullMask, base_l, 0);
    base_e = __shfl_sync(kFullMask, base_e, 0);
    if (lt) {
      const uint32_t p = base_l + __popc(bl & below);
      out_keys[p] = key;
      out_vals[p] = value_of(i);
    }
    if (eq) {
      const uint32_t p = base_e + __popc(be & below);
      if (p < need_eq) {
        out_keys[less + p] = key;
        out_vals[less + p] = value_of(i);
      }
    }
  });
  __syncthreads();
}

__device__ void CompactSelected(const uint32_t* keys, const int64_t* vals, int n, int k,
                                SelectState& st, uint32_t* out_keys, int64_t* out_vals) {
  CompactSelectedBy(SmemKeys{keys, n}, [vals](int i) { return vals[i]; }, k, st, out_keys,
                    out_vals);
}

// The k best of keys/vals[0..n) to out[0..k): all of them padded with missing pairs when
// n <= k, else a radix select. Ends with a barrier.
__device__ void SelectInto(const uint32_t* keys, const int64_t* vals, int n, int k,
                           SelectState& st, uint32_t* out_keys, int64_t* out_vals) {
  if (n <= k) {
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      out_keys[i] = i < n ? keys[i] : kMissingKey;
      out_vals[i] = i < n ? vals[i] : -1;
    }
    __syncthreads();
    return;
  }
  FindKth(keys, n, k, st);
  CompactSelected(keys, vals, n, k, st, out_keys, out_vals);
}

// Ascending by (key, val); p is a power of two.
__device__ void BitonicSort(uint32_t* keys, int64_t* vals, int p) {
  for (int size = 2; size <= p; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < p / 2; t += blockDim.x) {
        const int i = 2 * t - (t & (stride - 1));
        const int j = i + stride;
        const bool ascending = (i & size) == 0;
        const uint32_t ki = keys[i], kj = keys[j];
        const int64_t vi = vals[i], vj = vals[j];
        const bool greater = ki > kj || (ki == kj && vi > vj);
        if (greater == ascending) {
          keys[i] = kj;
          keys[j] = ki;
          vals[i] = vj;
          vals[j] = vi;
        }
      }
      __syncthreads();
    }
  }
}

// Shared memory of a select block: vals first (8-byte aligned), then keys.
struct PairSmem {
  int64_t* vals;
  uint32_t* keys;
};

__host__ __device__ constexpr size_t Align16(size_t bytes) { return (bytes + 15) & ~size_t{15}; }
__host__ __device__ constexpr size_t PairBytes(int64_t capacity) {
  return 12 * static_cast<size_t>(capacity);
}

__device__ PairSmem CarvePairs(unsigned char* raw, int capacity) {
  PairSmem s;
  s.vals = reinterpret_cast<int64_t*>(raw);
  s.keys = reinterpret_cast<uint32_t*>(raw + sizeof(int64_t) * capacity);
  return s;
}

// Bitonic sort across the 32 lanes of a warp; lane i gets the i-th smallest.
template <typename T>
__device__ __forceinline__ T WarpSortAscending(T v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int size = 2; size <= 32; size <<= 1) {
#pragma unroll
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      const T other = __shfl_xor_sync(kFullMask, v, stride);
      const bool ascending = (lane & size) == 0;
      const bool lower = (lane & stride) == 0;
      v = (lower == ascending) ? min(v, other) : max(v, other);
    }
  }
  return v;
}

// Candidates a tile block keeps after its prefilter; more than this falls back to a
// radix select over the whole segment.
constexpr int kTileCandidates = 2048;
// Keys each thread of a tile block holds in registers: segments of kThreads * kTileKeys.
constexpr int kTileKeys = kTileSegment / kThreads;

// Round one over a segment of a dot-product tile, keys in registers and values implicit
// (the row). For k <= kThreads a prefilter runs first: the k-th smallest of the
// per-thread minima bounds the segment's k-th smallest key (k distinct threads each
// hold a key at or below it), and usually only a few times k keys pass it, so the radix
// select runs on those instead of the whole segment.
__global__ void __launch_bounds__(kThreads, 4)
    SelectFromTileKernel(const float* tile, int64_t rows, int64_t ld, const float* bias,
                         int64_t row0, float scale, int k, uint32_t* out_keys,
                         int64_t* out_vals, int64_t out_stride, int64_t out_offset) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ SelectState st;
  __shared__ uint32_t minima[kThreads];
  int64_t* cand_vals = reinterpret_cast<int64_t*>(smem);
  uint32_t* cand_keys = reinterpret_cast<uint32_t*>(smem + sizeof(int64_t) * kTileCandidates);
  const int64_t q = blockIdx.y;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * kTileSegment;
  const int64_t first_row = row0 + start;
  const int n = static_cast<int>(MinI64(kTileSegment, rows - start));
  const float* in = tile + q * ld + start;
  uint32_t key[kTileKeys];
  uint32_t my_min = kMissingKey;
#pragma unroll
  for (int j = 0; j < kTileKeys; ++j) {
    const int i = j * kThreads + threadIdx.x;
    key[j] = i < n ? OrderKey(bias[first_row + i] + scale * in[i]) : kMissingKey;
    my_min = min(my_min, key[j]);
  }
  auto each = [&](auto visit) {
#pragma unroll
    for (int j = 0; j < kTileKeys; ++j) {
      const int i = j * kThreads + threadIdx.x;
      visit(key[j], i < n, i);
    }
  };
  auto row_of = [first_row](int i) { return first_row + i; };
  const int64_t out = q * out_stride + out_offset + static_cast<int64_t>(blockIdx.x) * k;
  uint32_t* ok = out_keys + out;
  int64_t* ov = out_vals + out;
  if (n <= k) {
    each([&](uint32_t kk, bool valid, int i) {
      if (valid) {
        ok[i] = kk;
        ov[i] = row_of(i);
      }
    });
    for (int i = n + threadIdx.x; i < k; i += blockDim.x) {
      ok[i] = kMissingKey;
      ov[i] = -1;
    }
    return;
  }
  if (k <= kThreads) {
    minima[threadIdx.x] = my_min;
    __syncthreads();
    if (k <= 32) {
      // Warp 0 sorts the minima of 32 groups of 8 thread minima; the k-th of those is
      // an actual key with k distinct groups at or below it: the same kind of bound,
      // for one sort in registers instead of a block-wide radix select.
      if (threadIdx.x < 32) {
        uint32_t v = minima[threadIdx.x * 8];
#pragma unroll
        for (int j = 1; j < 8; ++j) v = min(v, minima[threadIdx.x * 8 + j]);
        v = WarpSortAscending(v);
        if (threadIdx.x == k - 1) st.kth = v;
      }
    } else {
      FindKth(minima, kThreads, k, st);
    }
    __syncthreads();
    const uint32_t bound = st.kth;
    __syncthreads();
    if (threadIdx.x == 0) st.pos_less = 0;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    each([&](uint32_t kk, bool valid, int i) {
      const bool pass = valid && kk <= bound;
      const unsigned ballot = __ballot_sync(kFullMask, pass);
      uint32_t at = 0;
      if (lane == 0 && ballot) at = atomicAdd(&st.pos_less, __popc(ballot));
      at = __shfl_sync(kFullMask, at, 0) + __popc(ballot & ((1u << lane) - 1u));
      if (pass && at < kTileCandidates) {
        cand_keys[at] = kk;
        cand_vals[at] = row_of(i);
      }
    });
    __syncthreads();
    const int count = static_cast<int>(st.pos_less);
    __syncthreads();
    if (count <= 32) {  // the usual case for small k: one warp sorts them
      if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        uint64_t v = lane < count ? (static_cast<uint64_t>(cand_keys[lane]) << 32) | lane
                                  : ~uint64_t{0};
        v = WarpSortAscending(v);
        if (lane < k) {
          ok[lane] = lane < count ? static_cast<uint32_t>(v >> 32) : kMissingKey;
          ov[lane] = lane < count ? cand_vals[v & 0xffffffffu] : -1;
        }
      }
      return;
    }
    if (count <= kTileCandidates) {
      SelectInto(cand_keys, cand_vals, count, k, st, ok, ov);
      return;
    }
  }
  FindKthBy(k, st, [&](auto visit) {
    each([&](uint32_t kk, bool valid, int) { visit(kk, valid); });
  });
  CompactSelectedBy(each, row_of, k, st, ok, ov);
}

__global__ void SelectRoundKernel(const uint32_t* keys, const int64_t* vals, int64_t len,
                                  int64_t stride, int k, int seg_len, uint32_t* out_keys,
                                  int64_t* out_vals, int64_t out_stride) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ SelectState st;
  const PairSmem s = CarvePairs(smem, seg_len);
  const int64_t q = blockIdx.y;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * seg_len;
  const int n = static_cast<int>(MinI64(seg_len, len - start));
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    s.keys[i] = keys[q * stride + start + i];
    s.vals[i] = vals[q * stride + start + i];
  }
  __syncthreads();
  const int64_t out = q * out_stride + static_cast<int64_t>(blockIdx.x) * k;
  SelectInto(s.keys, s.vals, n, k, st, out_keys + out, out_vals + out);
}

__global__ void FinalizeKernel(const uint32_t* keys, const int64_t* vals, int64_t len,
                               int64_t stride, int k, int seg_len, int sort_width,
                               bool inner_product, const float* queries, int dim,
                               const int64_t* id_map, float* out_dist, int64_t* out_ids) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ SelectState st;
  const PairSmem s = CarvePairs(smem, seg_len);
  const PairSmem sorted = CarvePairs(smem + 12 * static_cast<size_t>(seg_len), sort_width);
  const int64_t q = blockIdx.x;
  const int n = static_cast<int>(len);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    s.keys[i] = keys[q * stride + i];
    s.vals[i] = vals[q * stride + i];
  }
  __syncthreads();
  SelectInto(s.keys, s.vals, n, k, st, sorted.keys, sorted.vals);
  for (int i = k + threadIdx.x; i < sort_width; i += blockDim.x) {
    sorted.keys[i] = kMissingKey;
    sorted.vals[i] = -1;
  }
  __syncthreads();
  BitonicSort(sorted.keys, sorted.vals, sort_width);
  __shared__ float q_norm_shared;
  if (threadIdx.x < 32) {
    float acc = 0.0f;
    if (queries != nullptr) {
      for (int j = threadIdx.x; j < dim; j += 32) acc += queries[q * dim + j] * queries[q * dim + j];
    }
    acc = WarpSum(acc);
    if (threadIdx.x == 0) q_norm_shared = acc;
  }
  __syncthreads();
  const float q_norm = q_norm_shared;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const uint32_t key = sorted.keys[j];
    float dist;
    int64_t id;
    if (key >= kInfKey) {
      dist = inner_product ? -INFINITY : INFINITY;
      id = -1;
    } else {
      const float v = KeyValue(key);
      dist = inner_product ? -v : fmaxf(v + q_norm, 0.0f);
      const int64_t val = sorted.vals[j];
      id = id_map != nullptr ? id_map[val] : val;
    }
    out_dist[q * k + j] = dist;
    out_ids[q * k + j] = id;
  }
}

// Partial dot products of one row with NQ queries in shared memory, for this lane's
// share of the dimensions.
template <int NQ>
__device__ __forceinline__ void RowDots(const float* row, const float* qs, int dim, int lane,
                                        float (&acc)[NQ]) {
  if ((dim & 3) == 0) {
    for (int j = lane * 4; j < dim; j += 128) {
      const float4 v = __ldcs(reinterpret_cast<const float4*>(row + j));  // read once: stream
#pragma unroll
      for (int qi = 0; qi < NQ; ++qi) {
        const float4 w = *reinterpret_cast<const float4*>(qs + qi * dim + j);
        acc[qi] += v.x * w.x + v.y * w.y + v.z * w.z + v.w * w.w;
      }
    }
  } else {
    for (int j = lane; j < dim; j += 32) {
      const float v = __ldg(row + j);
#pragma unroll
      for (int qi = 0; qi < NQ; ++qi) acc[qi] += v * qs[qi * dim + j];
    }
  }
}

template <int NQ>
__device__ __forceinline__ void RowDots(const __half* row, const float* qs, int dim, int lane,
                                        float (&acc)[NQ]) {
  if ((dim & 7) == 0) {
    for (int j = lane * 8; j < dim; j += 256) {
      const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(row + j));
      const __half2* h = reinterpret_cast<const __half2*>(&raw);
      float v[8];
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        const float2 f = __half22float2(h[t]);
        v[2 * t] = f.x;
        v[2 * t + 1] = f.y;
      }
#pragma unroll
      for (int qi = 0; qi < NQ; ++qi) {
        const float* w = qs + qi * dim + j;
#pragma unroll
        for (int t = 0; t < 8; ++t) acc[qi] += v[t] * w[t];
      }
    }
  } else {
    for (int j = lane; j < dim; j += 32) {
      const float v = __half2float(row[j]);
#pragma unroll
      for (int qi = 0; qi < NQ; ++qi) acc[qi] += v * qs[qi * dim + j];
    }
  }
}

// One warp per row; each row is read once for all NQ queries. Rows are taken
// kUnroll at a time so that several loads per lane are in flight.
template <int NQ, typename T>
__global__ void SmallBatchDotsKernel(const T* x, int dim, int64_t row0, int64_t rows,
                                     const float* queries, int nq, float* dots, int64_t ld) {
  extern __shared__ __align__(16) float qs[];
  for (int i = threadIdx.x; i < NQ * dim; i += blockDim.x) {
    qs[i] = i < nq * dim ? queries[i] : 0.0f;
  }
  __syncthreads();
  constexpr int kUnroll = 4;
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r0 = warp * kUnroll; r0 < rows; r0 += nwarps * kUnroll) {
    float acc[kUnroll][NQ];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int qi = 0; qi < NQ; ++qi) acc[u][qi] = 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (r0 + u < rows) RowDots<NQ>(x + (row0 + r0 + u) * dim, qs, dim, lane, acc[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int qi = 0; qi < NQ; ++qi) {
        const float v = WarpSum(acc[u][qi]);
        if (lane == qi && qi < nq && r0 + u < rows) dots[qi * ld + r0 + u] = v;
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ float LoadAsFloat(const T* p);
template <>
__device__ __forceinline__ float LoadAsFloat<float>(const float* p) {
  return __ldg(p);
}
template <>
__device__ __forceinline__ float LoadAsFloat<__half>(const __half* p) {
  return __half2float(*p);
}

template <typename T>
__global__ void RowBiasKernel(const T* x, int64_t n, int dim, bool inner_product,
                              const uint8_t* deleted, float* out) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t nwarps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = warp; r < n; r += nwarps) {
    float acc = 0.0f;
    if (!inner_product) {
      for (int j = lane; j < dim; j += 32) {
        const float v = LoadAsFloat(x + r * dim + j);
        acc += v * v;
      }
      acc = WarpSum(acc);
    }
    if (lane == 0) out[r] = (deleted != nullptr && deleted[r]) ? INFINITY : acc;
  }
}

__device__ __forceinline__ float Term(float v, float w, bool inner_product) {
  if (inner_product) return v * w;
  const float d = v - w;
  return d * d;
}

// This lane's share of the squared distance (or dot product) of a row to the query.
template <typename T>
__device__ __forceinline__ float LaneScore(const T* row, const float* qv, int dim, int lane,
                                           bool inner_product) {
  float acc = 0.0f;
  for (int j = lane; j < dim; j += 32) acc += Term(LoadAsFloat(row + j), qv[j], inner_product);
  return acc;
}

template <>
__device__ __forceinline__ float LaneScore<float>(const float* row, const float* qv, int dim,
                                                  int lane, bool inner_product) {
  if ((dim & 3) != 0) {
    float acc = 0.0f;
    for (int j = lane; j < dim; j += 32) acc += Term(__ldg(row + j), qv[j], inner_product);
    return acc;
  }
  float acc = 0.0f;
  for (int j = lane * 4; j < dim; j += 128) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(row + j));
    const float4 w = *reinterpret_cast<const float4*>(qv + j);
    acc += Term(v.x, w.x, inner_product) + Term(v.y, w.y, inner_product) +
           Term(v.z, w.z, inner_product) + Term(v.w, w.w, inner_product);
  }
  return acc;
}

// One block per (query, probe): the list is scanned in chunks whose scores join the
// running k best in shared memory, which are reduced back to k when a chunk would not
// fit. Blocks take the (query, probe) pairs in `order` (sorted by list), so that blocks
// running at the same time scan the same lists and share them in L2.
template <typename T>
__global__ void __launch_bounds__(kThreads, 5)
    IvfScanKernel(const void* const* list_vectors, const int64_t* const* list_ids,
                  const int32_t* list_sizes, int dim, const float* queries, const int64_t* lists,
                  const int64_t* order, int nprobe, int k, int chunk, bool inner_product,
                  uint32_t* out_keys, int64_t* out_vals) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ SelectState st;
  const int capacity = k + chunk;
  // Regions start on 16-byte boundaries: int64 values, and float4 reads of the query.
  const PairSmem a = CarvePairs(smem, capacity);
  const PairSmem b = CarvePairs(smem + Align16(PairBytes(capacity)), k);
  float* qv = reinterpret_cast<float*>(smem + Align16(PairBytes(capacity)) + Align16(PairBytes(k)));
  const int64_t qp = order != nullptr ? order[blockIdx.x] : blockIdx.x;
  const int64_t q = qp / nprobe;
  uint32_t* ok = out_keys + qp * k;
  int64_t* ov = out_vals + qp * k;
  const int64_t list = lists[qp];
  const int size = list >= 0 ? list_sizes[list] : 0;
  if (size == 0) {
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      ok[i] = kMissingKey;
      ov[i] = -1;
    }
    return;
  }
  const T* vecs = static_cast<const T*>(list_vectors[list]);
  const int64_t* ids = list_ids[list];
  for (int i = threadIdx.x; i < dim; i += blockDim.x) qv[i] = queries[q * dim + i];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  int count = 0;
  for (int c0 = 0; c0 < size; c0 += chunk) {
    const int m = min(chunk, size - c0);
    // kRows rows per warp at a time, so that their loads are in flight together (one
    // row at a time leaves each warp waiting on memory latency).
    constexpr int kRows = 8;
    for (int r0 = warp * kRows; r0 < m; r0 += nwarps * kRows) {
      float acc[kRows];
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
        acc[u] = r0 + u < m ? LaneScore<T>(vecs + static_cast<int64_t>(c0 + r0 + u) * dim, qv,
                                           dim, lane, inner_product)
                            : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kRows; ++u) {
        const float sum = WarpSum(acc[u]);
        const float score = inner_product ? -sum : sum;
        if (lane == u && r0 + u < m) {
          const int64_t id = ids[c0 + r0 + u];
          a.keys[count + r0 + u] = id < 0 ? kMissingKey : OrderKey(score);
          a.vals[count + r0 + u] = id;
        }
      }
    }
    __syncthreads();
    count += m;
    if (count > k && c0 + chunk < size) {
      FindKth(a.keys, count, k, st);
      CompactSelected(a.keys, a.vals, count, k, st, b.keys, b.vals);
      for (int i = threadIdx.x; i < k; i += blockDim.x) {
        a.keys[i] = b.keys[i];
        a.vals[i] = b.vals[i];
      }
      __syncthreads();
      count = k;
    }
  }
  SelectInto(a.keys, a.vals, count, k, st, ok, ov);
}

__global__ void MaxFiniteKernel(const float* x, int64_t n, float* out) {
  float m = 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = x[i];
    if (v < INFINITY) m = fmaxf(m, v);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, off));
  // Non-negative floats order like their bit patterns.
  if ((threadIdx.x & 31) == 0) atomicMax(reinterpret_cast<unsigned*>(out), __float_as_uint(m));
}

// One block per query: warps compute exact distances of the candidates, then the
// block checks the bound.
__global__ void RerankL2Kernel(const float* x, int dim, const float* queries,
                               const uint32_t* approx_keys, const int64_t* rows, int kc, int k,
                               float eps, const float* max_sq_norm, uint32_t* out_keys,
                               int64_t* out_vals, uint8_t* ok) {
  extern __shared__ __align__(16) float qv[];
  uint32_t* keys = reinterpret_cast<uint32_t*>(qv + dim);
  __shared__ SelectState st;
  __shared__ uint32_t max_approx;
  __shared__ int any_missing;
  __shared__ float q_sq;
  const int64_t q = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) qv[i] = queries[q * dim + i];
  if (threadIdx.x == 0) {
    max_approx = 0;
    any_missing = 0;
  }
  __syncthreads();
  if (warp == 0) {
    float acc = 0.0f;
    for (int j = lane; j < dim; j += 32) acc += qv[j] * qv[j];
    acc = WarpSum(acc);
    if (lane == 0) q_sq = acc;
  }
  for (int j = warp; j < kc; j += blockDim.x / 32) {
    const int64_t row = rows[q * kc + j];
    const uint32_t approx = approx_keys[q * kc + j];
    uint32_t key = kMissingKey;
    if (row >= 0 && approx < kInfKey) {
      key = OrderKey(WarpSum(LaneScore<float>(x + row * dim, qv, dim, lane, false)));
    }
    if (lane == 0) {
      if (key == kMissingKey) {
        any_missing = 1;
      } else {
        atomicMax(&max_approx, approx);
      }
      keys[j] = key;
      out_keys[q * kc + j] = key;
      out_vals[q * kc + j] = key == kMissingKey ? -1 : row;
    }
  }
  __syncthreads();
  if (any_missing) {  // every live row is a candidate
    if (threadIdx.x == 0) ok[q] = 1;
    return;
  }
  FindKth(keys, kc, k, st);
  if (threadIdx.x == 0) {
    const float kth = KeyValue(st.kth);
    const float q_norm = sqrtf(q_sq);
    const float x_norm = sqrtf(*max_sq_norm);
    const float approx = KeyValue(max_approx);
    // float32 rounding of the approximate key itself, on top of the TF32 error.
    const float rounding = 4.0f * 5.96e-8f * (*max_sq_norm + 2.0f * x_norm * q_norm + q_sq);
    const float bound = approx + q_sq - 2.0f * eps * x_norm * q_norm - rounding;
    ok[q] = kth < bound ? 1 : 0;
  }
}

__global__ void DistancesToKeysKernel(const float* dist, int64_t n, bool inner_product,
                                      uint32_t* keys) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[i] = OrderKey(inner_product ? -dist[i] : dist[i]);
  }
}

__global__ void CopyPairsKernel(const uint32_t* src_keys, const int64_t* src_vals,
                                int64_t src_stride, uint32_t* dst_keys, int64_t* dst_vals,
                                int64_t dst_stride, int k) {
  const int64_t q = blockIdx.x;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    dst_keys[q * dst_stride + j] = src_keys[q * src_stride + j];
    dst_vals[q * dst_stride + j] = src_vals[q * src_stride + j];
  }
}

__global__ void FillMissingKernel(uint32_t* keys, int64_t* vals, int64_t stride, int k) {
  const int64_t q = blockIdx.x;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    keys[q * stride + j] = kMissingKey;
    vals[q * stride + j] = -1;
  }
}

__global__ void ToHalfKernel(const float* in, int64_t n, __half* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2half_rn(in[i]);
  }
}

__global__ void IotaKernel(int64_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = i;
  }
}

int GridFor(int64_t n, int per_block) {
  const int64_t blocks = (n + per_block - 1) / per_block;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks));
}


// Raises a kernel's dynamic shared-memory limit on the current device where dynamic
// plus static shared memory would pass the default 48 KB. The limit is per process and
// device, so it only ever grows (under a lock): a launch needing less must not lower it
// under another thread's launch that needs more.
template <typename Kernel>
cudaError_t AllowSmem(Kernel kernel, size_t bytes) {
  if (bytes + 4096 <= 48 * 1024) return cudaSuccess;  // 4096: room for static shared memory
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> raised;
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  std::lock_guard<std::mutex> lock(mu);
  size_t& limit = raised[{reinterpret_cast<const void*>(kernel), device}];
  if (bytes <= limit) return cudaSuccess;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(bytes));
  if (e == cudaSuccess) limit = bytes;
  return e;
}

template <typename T>
cudaError_t LaunchSmallBatchDots(const T* x, int dim, int64_t row0, int64_t rows,
                                 const float* queries, int nq, float* dots, int64_t ld,
                                 cudaStream_t stream) {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t warps_needed = (rows + 3) / 4;
  auto go = [&](auto kernel, int width) {
    const size_t smem = sizeof(float) * width * dim;
    cudaError_t e = AllowSmem(kernel, smem);
    if (e != cudaSuccess) return e;
    // Exactly the blocks that fit at once: one wave, no tail of half-empty SMs.
    int per_sm = 1;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem);
    if (e != cudaSuccess) return e;
    const int grid = static_cast<int>(MinI64((warps_needed + kThreads / 32 - 1) / (kThreads / 32),
                                             static_cast<int64_t>(sms) * std::max(per_sm, 1)));
    kernel<<<grid, kThreads, smem, stream>>>(x, dim, row0, rows, queries, nq, dots, ld);
    return cudaGetLastError();
  };
  if (nq == 1) return go(SmallBatchDotsKernel<1, T>, 1);
  if (nq == 2) return go(SmallBatchDotsKernel<2, T>, 2);
  if (nq <= 4) return go(SmallBatchDotsKernel<4, T>, 4);
  return go(SmallBatchDotsKernel<8, T>, 8);
}

// ---- Candidate filter of the exact TF32 path (FlatSearch, large batches) ----
//
// A GEMM on the tensor cores (mma.sync m16n8k8 TF32) whose epilogue keeps, for each
// query, only the rows whose approximate key could still be among the k best: key <=
// thr[q] + c1 |x||q| + c2 (|x| + |q|)^2. knn.cc derives thr from a sample of the rows and
// proves that no row of the exact top k is dropped; the survivors' row numbers are
// appended to the query's candidate list, so the nq x n distance tile is never written.

constexpr int kFilterBM = 128;      // queries of a block
constexpr int kFilterBN = 128;      // rows of a block
constexpr int kFilterBK = 32;       // dimensions a pipeline stage holds
constexpr int kFilterStages = 3;
constexpr int kFilterThreads = 256;  // 8 warps: 2 (queries) x 4 (rows), 64 x 32 each
constexpr int kFilterPad = kFilterBK + 4;  // floats a shared row: conflict-free fragments
constexpr size_t kFilterSmem =
    sizeof(float) * kFilterStages * (kFilterBM + kFilterBN) * kFilterPad;

__device__ __forceinline__ void CpAsync16(float* smem, const float* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  // A source size of 0 fills the 16 bytes with zeros and reads nothing.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void MmaTf32(float (&c)[4], const uint32_t (&a)[4],
                                        const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ float RoundToTf32(float v) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return __uint_as_float(r);
}

// The bound on |approximate key - exact distance + |q|^2| for a row of norm xn.
__device__ __forceinline__ float FilterMargin(float xn, float qn, float c1, float c2) {
  const float s = xn + qn;
  return c1 * xn * qn + c2 * s * s;
}

// One warp per query: the query rounded to TF32, its norm, and its threshold: the largest
// key plus own margin of its k nearest sample rows.
__global__ void FilterPrepKernel(const float* queries, int64_t nq, int dim,
                                 const uint32_t* sample_keys, const int64_t* sample_rows,
                                 const float* sample_bias, int k, float c1, float c2,
                                 float* q_tf32, float* q_norm, float* thr, int32_t* count) {
  const int lane = threadIdx.x & 31;
  const int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + (threadIdx.x >> 5);
  if (q >= nq) return;
  float sq = 0.0f;
  for (int j = lane; j < dim; j += 32) {
    const float v = queries[q * dim + j];
    sq += v * v;
    q_tf32[q * dim + j] = RoundToTf32(v);
  }
  const float qn = sqrtf(WarpSum(sq));
  uint32_t kth = 0;
  float bound = -INFINITY;
  for (int j = lane; j < k; j += 32) {
    const uint32_t key = sample_keys[q * k + j];
    kth = max(kth, key);
    if (key < kInfKey) {
      const float xn = sqrtf(sample_bias[sample_rows[q * k + j]]);
      bound = fmaxf(bound, KeyValue(key) + FilterMargin(xn, qn, c1, c2));
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    kth = max(kth, __shfl_xor_sync(kFullMask, kth, off));
    bound = fmaxf(bound, __shfl_xor_sync(kFullMask, bound, off));
  }
  if (lane == 0) {
    q_norm[q] = qn;
    const bool missing = kth >= kInfKey;  // fewer than k live sample rows
    thr[q] = missing ? -INFINITY : bound;
    count[q] = missing ? kNoThreshold : 0;
  }
}

// A block takes one tile of kFilterBM queries and a run of row tiles of kFilterBN rows;
// its copy pipeline runs on across row tiles, so with a short dim (4 steps at 128) the
// pipeline does not drain and refill for each tile. Row r passes for query q where
//   bias_r - 2 <x_r, q> <= thr_q + c1 |x_r||q| + c2 (|x_r| + |q|)^2,
// evaluated as (1 - c2) bias_r - 2 dot - (c1 + 2 c2) |x_r| |q| <= thr_q + c2 |q|^2.
__global__ void __launch_bounds__(kFilterThreads, 2)
    FilterGemmKernel(const float* __restrict__ x, const float* __restrict__ bias, int64_t n,
                     int dim, const float* __restrict__ q, int nq, int q_tiles,
                     int64_t tiles_per_block, const float* __restrict__ thr,
                     const float* __restrict__ q_norm, float c1, float c2,
                     int32_t* __restrict__ cand, float* __restrict__ cand_key, int cap,
                     int32_t* count) {
  extern __shared__ __align__(16) float fsm[];
  float* qs = fsm;
  float* xs = fsm + kFilterStages * kFilterBM * kFilterPad;
  // Query tiles vary fastest, so blocks running together share their rows in L2.
  const int q0 = static_cast<int>(blockIdx.x % q_tiles) * kFilterBM;
  const int64_t row_tiles = (n + kFilterBN - 1) / kFilterBN;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.x / q_tiles) * tiles_per_block;
  const int64_t tile_end = MinI64(row_tiles, tile_begin + tiles_per_block);
  if (tile_begin >= tile_end) return;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wm = warp >> 2;  // 64 queries
  const int wn = warp & 3;   // 32 rows
  const int g = lane >> 2;
  const int t = lane & 3;
  const int ktiles = (dim + kFilterBK - 1) / kFilterBK;
  const int64_t steps = (tile_end - tile_begin) * ktiles;

  // Each thread copies 16 bytes of rows lrow + 32 i (i < 4) of both tiles a stage.
  static_assert(kFilterBM == 128 && kFilterBN == 128 && kFilterBK == 32, "copy layout");
  const int lrow = tid >> 3;
  const int lcol = (tid & 7) * 4;
  const float* qsrc = q + static_cast<int64_t>(q0 + lrow) * dim + lcol;
  const int64_t step32 = 32 * static_cast<int64_t>(dim);
  unsigned q_live = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) q_live |= (q0 + lrow + 32 * i < nq ? 1u : 0u) << i;
  int64_t load_tile = tile_begin;  // the next stage to load: row tile and dim step
  int load_kt = 0;
  auto load_next = [&](int stage) {
    float* qd = qs + (stage * kFilterBM + lrow) * kFilterPad + lcol;
    float* xd = xs + (stage * kFilterBN + lrow) * kFilterPad + lcol;
    const int k0 = load_kt * kFilterBK;
    const bool kin = k0 + lcol < dim;
    const int64_t r = load_tile * kFilterBN + lrow;
    const float* xsrc = x + r * dim + lcol + k0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const bool qv = kin && (q_live >> i & 1u);
      const bool xv = kin && r + 32 * i < n;
      CpAsync16(qd + 32 * i * kFilterPad, qv ? qsrc + i * step32 + k0 : q, qv);
      CpAsync16(xd + 32 * i * kFilterPad, xv ? xsrc + i * step32 : x, xv);
    }
    if (++load_kt == ktiles) {
      load_kt = 0;
      ++load_tile;
    }
  };

  // This thread's 8 queries: wm*64 + mi*16 + g + 8h. Their right-hand sides and norms.
  float rhs[4][2], qn[4][2];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int qi = q0 + wm * 64 + mi * 16 + g + 8 * h;
      const float norm = qi < nq ? __ldg(q_norm + qi) : 0.0f;
      qn[mi][h] = norm;
      rhs[mi][h] = qi < nq ? __ldg(thr + qi) + c2 * norm * norm : -INFINITY;
    }
  }
  const float row_coef = c1 + 2.0f * c2;

  float acc[4][4][4];
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

#pragma unroll
  for (int s = 0; s < kFilterStages - 1; ++s) {
    if (s < steps) load_next(s);
    CpAsyncCommit();
  }
  int kt = 0;
  int64_t tile = tile_begin;
  for (int64_t s = 0; s < steps; ++s) {
    CpAsyncWait<kFilterStages - 2>();
    // Stage s has landed for every thread, and every warp is done with stage s - 1,
    // which the next load overwrites.
    __syncthreads();
    if (s + kFilterStages - 1 < steps) {
      load_next(static_cast<int>((s + kFilterStages - 1) % kFilterStages));
    }
    CpAsyncCommit();
    const int stage = static_cast<int>(s % kFilterStages);
    const float* qa = qs + (stage * kFilterBM + wm * 64 + g) * kFilterPad + t;
    const float* xb = xs + (stage * kFilterBN + wn * 32 + g) * kFilterPad + t;
#pragma unroll
    for (int ks = 0; ks < kFilterBK / 8; ++ks) {
      uint32_t b[4][2];
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const float* p = xb + ni * 8 * kFilterPad + ks * 8;
        b[ni][0] = __float_as_uint(p[0]);
        b[ni][1] = __float_as_uint(p[4]);
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        const float* p = qa + mi * 16 * kFilterPad + ks * 8;
        const uint32_t a[4] = {__float_as_uint(p[0]), __float_as_uint(p[8 * kFilterPad]),
                               __float_as_uint(p[4]), __float_as_uint(p[8 * kFilterPad + 4])};
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) MmaTf32(acc[mi][ni], a, b[ni]);
      }
    }
    if (++kt < ktiles) continue;
    // Epilogue of this row tile: accumulator (mi, ni, e) is query wm*64 + mi*16 + g +
    // 8*(e/2) against row wn*32 + ni*8 + 2t + e%2.
    kt = 0;
    const int64_t r0 = tile * kFilterBN + wn * 32 + 2 * t;
    ++tile;
    float u[4][2], v[4][2];
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t j = r0 + ni * 8 + e;
        // Deleted rows and padding (bias +inf) fail: the left side is +inf or NaN.
        const float bj = j < n ? __ldg(bias + j) : INFINITY;
        u[ni][e] = (1.0f - c2) * bj;
        v[ni][e] = row_coef * sqrtf(bj);
      }
    }
#pragma unroll
    for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float lhs = fmaf(-2.0f, acc[mi][ni][2 * h + e], u[ni][e]);
            lhs = fmaf(-v[ni][e], qn[mi][h], lhs);
            if (lhs <= rhs[mi][h]) {
              const int qi = q0 + wm * 64 + mi * 16 + g + 8 * h;
              // Once a list is known to overflow, stop counting: it is searched again.
              if (*reinterpret_cast<volatile int32_t*>(count + qi) <= cap) {
                const int32_t at = atomicAdd(count + qi, 1);
                if (at < cap) {
                  const int64_t j = r0 + ni * 8 + e;
                  cand[static_cast<int64_t>(qi) * cap + at] = static_cast<int32_t>(j);
                  cand_key[static_cast<int64_t>(qi) * cap + at] =
                      fmaf(-2.0f, acc[mi][ni][2 * h + e], __ldg(bias + j));
                }
              }
            }
            acc[mi][ni][2 * h + e] = 0.0f;
          }
        }
      }
    }
  }
}

// FilterGemm's test over a dot-product tile that cuBLAS wrote (nq x rows, leading
// dimension ld, rows row0...): for long rows cuBLAS's TF32 GEMM is the faster part.
// kVec: rows, ld and row0 are multiples of 4, and the tile and biases are read as float4.
template <bool kVec>
__global__ void FilterTileKernel(const float* tile, int64_t rows, int64_t ld, int64_t row0,
                                 const float* bias, const float* thr, const float* q_norm,
                                 float c1, float c2, int32_t* cand, float* cand_key, int cap,
                                 int32_t* count) {
  const int64_t q = blockIdx.y;
  if (count[q] > cap) return;  // over the cap already, or no threshold
  const float qn = q_norm[q];
  const float rhs = thr[q] + c2 * qn * qn;
  const float coef = c1 + 2.0f * c2;
  const float* in = tile + q * ld;
  constexpr int kWidth = kVec ? 4 : 1;
  constexpr int kUnroll = kVec ? 2 : 4;
  const int64_t groups = rows / kWidth;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t base = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; base < groups;
       base += step * kUnroll) {
    float dot[kUnroll][kWidth], bj[kUnroll][kWidth];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t g = base + u * step;
      if constexpr (kVec) {
        const float4 d4 = g < groups ? __ldcs(reinterpret_cast<const float4*>(in) + g)
                                     : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const float4 b4 = g < groups ? __ldg(reinterpret_cast<const float4*>(bias + row0) + g)
                                     : make_float4(INFINITY, INFINITY, INFINITY, INFINITY);
        dot[u][0] = d4.x, dot[u][1] = d4.y, dot[u][2] = d4.z, dot[u][3] = d4.w;
        bj[u][0] = b4.x, bj[u][1] = b4.y, bj[u][2] = b4.z, bj[u][3] = b4.w;
      } else {
        dot[u][0] = g < groups ? __ldcs(in + g) : 0.0f;
        bj[u][0] = g < groups ? __ldg(bias + row0 + g) : INFINITY;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int e = 0; e < kWidth; ++e) {
        float lhs = fmaf(-2.0f, dot[u][e], (1.0f - c2) * bj[u][e]);
        lhs = fmaf(-coef * sqrtf(bj[u][e]), qn, lhs);
        if (lhs <= rhs && *reinterpret_cast<volatile int32_t*>(count + q) <= cap) {
          const int32_t at = atomicAdd(count + q, 1);
          if (at < cap) {
            cand[q * cap + at] = static_cast<int32_t>(row0 + (base + u * step) * kWidth + e);
            cand_key[q * cap + at] = fmaf(-2.0f, dot[u][e], bj[u][e]);
          }
        }
      }
    }
  }
}

// Exact distance of every candidate position i in [0, n) for which test(i) holds, one warp
// per row: lanes test 32 positions, then the warp scores each passing row together.
// keys[i] / vals[i] get the result; the largest distance goes into *dmax (as bits:
// non-negative). Every thread of the block calls it.
template <typename Test>
__device__ void ExactWhere(const float* x, int dim, const float* qv, const int32_t* rows, int n,
                           Test test, uint32_t* keys, int64_t* vals, uint32_t* dmax) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  for (int base = warp * 32; base < n; base += warps * 32) {
    const int i = base + lane;
    unsigned todo = __ballot_sync(kFullMask, i < n && test(i));
    while (todo != 0) {
      const int j = base + __ffs(todo) - 1;
      todo &= todo - 1;
      const int32_t row = rows[j];
      const float d =
          WarpSum(LaneScore<float>(x + static_cast<int64_t>(row) * dim, qv, dim, lane, false));
      if (lane == 0) {
        keys[j] = OrderKey(d);
        vals[j] = row;
        atomicMax(dmax, __float_as_uint(fmaxf(d, 0.0f)));
      }
    }
  }
}

// One block per query: exact float32 distances of the candidates that can still be among
// the k best (of the first cap of an overflowed list), as nq x cap (key, row) pairs, the
// others missing. Exact distances of the k best by TF32 key give D >= the k-th exact
// distance; a candidate matters only if its key is within D - |q|^2 plus its margin.
__global__ void RerankCandidatesKernel(const float* x, const float* bias, int dim,
                                       const float* queries, const int32_t* cand,
                                       const float* cand_key, int cap, const int32_t* count,
                                       int k, float c1, float c2, uint32_t* out_keys,
                                       int64_t* out_vals) {
  extern __shared__ __align__(16) float qv[];
  __shared__ SelectState st;
  __shared__ uint32_t dmax;
  __shared__ float q_sq;
  const int64_t q = blockIdx.x;
  const int c = count[q];
  const int live = c >= kNoThreshold ? 0 : min(c, cap);
  uint32_t* keys = out_keys + q * cap;
  int64_t* vals = out_vals + q * cap;
  for (int i = threadIdx.x; i < cap; i += blockDim.x) {
    keys[i] = kMissingKey;
    vals[i] = -1;
  }
  if (live == 0) return;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) qv[i] = queries[q * dim + i];
  if (threadIdx.x == 0) dmax = 0;
  __syncthreads();  // also orders the missing pairs before the exact ones
  const int32_t* rows = cand + q * cap;
  if (live <= k) {
    ExactWhere(x, dim, qv, rows, live, [](int) { return true; }, keys, vals, &dmax);
    return;
  }
  if (threadIdx.x < 32) {
    float acc = 0.0f;
    for (int j = threadIdx.x; j < dim; j += 32) acc += qv[j] * qv[j];
    acc = WarpSum(acc);
    if (threadIdx.x == 0) q_sq = acc;
  }
  const float* ck = cand_key + q * cap;
  // The k-th smallest TF32 key, by a radix select over the keys in global memory.
  FindKthBy(k, st, [&](auto visit) {
    for (int base = 0; base < live; base += blockDim.x) {
      const int i = base + threadIdx.x;
      visit(i < live ? OrderKey(ck[i]) : kMissingKey, i < live);
    }
  });
  const uint32_t kth = st.kth;
  ExactWhere(x, dim, qv, rows, live, [&](int i) { return OrderKey(ck[i]) <= kth; }, keys, vals,
             &dmax);
  __syncthreads();
  const float d = __uint_as_float(dmax);
  const float qs = q_sq;
  const float rhs = d - qs + c2 * (d + qs);
  const float qn = sqrtf(qs);
  ExactWhere(
      x, dim, qv, rows, live,
      [&](int i) {
        const float key = ck[i];
        return OrderKey(key) > kth &&
               key <= rhs + FilterMargin(sqrtf(__ldg(bias + rows[i])), qn, c1, c2);
      },
      keys, vals, &dmax);
}

// Rows 0, stride, 2 stride, ... (s of them) and their biases, packed.
__global__ void GatherStridedKernel(const float* x, const float* bias, int dim, int64_t stride,
                                    int64_t s, float* out_x, float* out_bias) {
  const int64_t r = blockIdx.x;
  const float* from = x + r * stride * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) out_x[r * dim + j] = from[j];
  if (threadIdx.x == 0) out_bias[r] = bias[r * stride];
}

}  // namespace

cudaError_t SmallBatchDots(const void* x, bool half, int dim, int64_t row0, int64_t rows,
                           const float* queries, int nq, float* dots, int64_t ld,
                           cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (half) {
    return LaunchSmallBatchDots(static_cast<const __half*>(x), dim, row0, rows, queries, nq, dots,
                                ld, stream);
  }
  return LaunchSmallBatchDots(static_cast<const float*>(x), dim, row0, rows, queries, nq, dots, ld,
                              stream);
}

cudaError_t SelectFromTile(const float* tile, int64_t nq, int64_t rows, int64_t ld,
                           const float* bias, int64_t row0, float scale, int k,
                           uint32_t* out_keys, int64_t* out_vals, int64_t out_stride,
                           int64_t out_offset, cudaStream_t stream) {
  const size_t smem = PairBytes(kTileCandidates);
  cudaError_t e = AllowSmem(SelectFromTileKernel, smem);
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>((rows + kTileSegment - 1) / kTileSegment),
                  static_cast<unsigned>(nq));
  SelectFromTileKernel<<<grid, kThreads, smem, stream>>>(tile, rows, ld, bias, row0, scale, k,
                                                         out_keys, out_vals, out_stride,
                                                         out_offset);
  return cudaGetLastError();
}

cudaError_t SelectRound(const uint32_t* keys, const int64_t* vals, int64_t nq, int64_t len,
                        int64_t stride, int k, uint32_t* out_keys, int64_t* out_vals,
                        int64_t out_stride, int64_t* segments, cudaStream_t stream) {
  const int seg = SegmentLength(k);
  const size_t smem = PairBytes(seg);
  cudaError_t e = AllowSmem(SelectRoundKernel, smem);
  if (e != cudaSuccess) return e;
  *segments = (len + seg - 1) / seg;
  const dim3 grid(static_cast<unsigned>(*segments), static_cast<unsigned>(nq));
  SelectRoundKernel<<<grid, kThreads, smem, stream>>>(keys, vals, len, stride, k, seg, out_keys,
                                                      out_vals, out_stride);
  return cudaGetLastError();
}

cudaError_t Finalize(const uint32_t* keys, const int64_t* vals, int64_t nq, int64_t len,
                     int64_t stride, int k, bool inner_product, const float* queries, int dim,
                     const int64_t* id_map, float* out_dist, int64_t* out_ids,
                     cudaStream_t stream) {
  const int seg = SegmentLength(k);
  const int width = SortWidth(k);
  const size_t smem = PairBytes(seg) + PairBytes(width);
  cudaError_t e = AllowSmem(FinalizeKernel, smem);
  if (e != cudaSuccess) return e;
  FinalizeKernel<<<static_cast<unsigned>(nq), kThreads, smem, stream>>>(
      keys, vals, len, stride, k, seg, width, inner_product, queries, dim, id_map, out_dist,
      out_ids);
  return cudaGetLastError();
}

cudaError_t MaxFinite(const float* x, int64_t n, float* out, cudaStream_t stream) {
  cudaError_t e = cudaMemsetAsync(out, 0, sizeof(float), stream);
  if (e != cudaSuccess || n == 0) return e;
  MaxFiniteKernel<<<GridFor(n, kThreads * 8), kThreads, 0, stream>>>(x, n, out);
  return cudaGetLastError();
}

cudaError_t RerankL2(const float* x, int dim, const float* queries, int64_t nq,
                     const uint32_t* approx_keys, const int64_t* rows, int kc, int k, float eps,
                     const float* max_sq_norm, uint32_t* out_keys, int64_t* out_vals, uint8_t* ok,
                     cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  const size_t smem = sizeof(float) * dim + sizeof(uint32_t) * kc;
  cudaError_t e = AllowSmem(RerankL2Kernel, smem);
  if (e != cudaSuccess) return e;
  RerankL2Kernel<<<static_cast<unsigned>(nq), kThreads, smem, stream>>>(
      x, dim, queries, approx_keys, rows, kc, k, eps, max_sq_norm, out_keys, out_vals, ok);
  return cudaGetLastError();
}

cudaError_t DistancesToKeys(const float* dist, int64_t n, bool inner_product, uint32_t* keys,
                            cudaStream_t stream) {
  DistancesToKeysKernel<<<GridFor(n, kThreads), kThreads, 0, stream>>>(dist, n, inner_product,
                                                                       keys);
  return cudaGetLastError();
}

cudaError_t CopyPairs(const uint32_t* src_keys, const int64_t* src_vals, int64_t src_stride,
                      uint32_t* dst_keys, int64_t* dst_vals, int64_t dst_stride, int64_t nq,
                      int k, cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  CopyPairsKernel<<<static_cast<unsigned>(nq), kThreads, 0, stream>>>(
      src_keys, src_vals, src_stride, dst_keys, dst_vals, dst_stride, k);
  return cudaGetLastError();
}

cudaError_t FillMissing(uint32_t* keys, int64_t* vals, int64_t nq, int64_t stride, int k,
                        cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  FillMissingKernel<<<static_cast<unsigned>(nq), kThreads, 0, stream>>>(keys, vals, stride, k);
  return cudaGetLastError();
}

// (query, probe) pairs from which IvfScan orders its blocks by list.
constexpr int64_t kSortedScanPairs = 8192;

cudaError_t IvfScan(const void* const* list_vectors, const int64_t* const* list_ids,
                    const int32_t* list_sizes, bool half, int dim, const float* queries,
                    int64_t nq, const int64_t* lists, int nprobe, int k, bool inner_product,
                    uint32_t* out_keys, int64_t* out_vals, cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  const int chunk = 1024;
  const size_t smem = Align16(PairBytes(k + chunk)) + Align16(PairBytes(k)) + sizeof(float) * dim;
  const int64_t pairs = nq * nprobe;
  const unsigned grid = static_cast<unsigned>(pairs);
  // Large batches take the (query, probe) pairs sorted by list number; small ones gain
  // nothing from it and would pay for the sort.
  int64_t *sorted_lists = nullptr, *index = nullptr, *order = nullptr;
  void* sort_temp = nullptr;
  size_t sort_bytes = 0;
  cudaError_t e = cudaSuccess;
  if (pairs >= kSortedScanPairs) {
    e = cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, lists, sorted_lists, index, order,
                                        pairs, 0, 32, stream);
    if (e == cudaSuccess) e = cudaMallocAsync(&sorted_lists, sizeof(int64_t) * pairs, stream);
    if (e == cudaSuccess) e = cudaMallocAsync(&index, sizeof(int64_t) * pairs, stream);
    if (e == cudaSuccess) e = cudaMallocAsync(&order, sizeof(int64_t) * pairs, stream);
    if (e == cudaSuccess) e = cudaMallocAsync(&sort_temp, sort_bytes, stream);
    if (e == cudaSuccess) {
      IotaKernel<<<GridFor(pairs, kThreads), kThreads, 0, stream>>>(index, pairs);
      e = cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, lists, sorted_lists, index,
                                          order, pairs, 0, 32, stream);
    }
  }
  if (e != cudaSuccess) {  // cudaFreeAsync(nullptr) is a no-op
    cudaFreeAsync(sorted_lists, stream);
    cudaFreeAsync(index, stream);
    cudaFreeAsync(order, stream);
    cudaFreeAsync(sort_temp, stream);
    return e;
  }
  if (half) {
    e = AllowSmem(IvfScanKernel<__half>, smem);
    if (e != cudaSuccess) return e;
    IvfScanKernel<__half><<<grid, kThreads, smem, stream>>>(list_vectors, list_ids, list_sizes,
                                                            dim, queries, lists, order, nprobe, k,
                                                            chunk, inner_product, out_keys,
                                                            out_vals);
  } else {
    e = AllowSmem(IvfScanKernel<float>, smem);
    if (e != cudaSuccess) return e;
    IvfScanKernel<float><<<grid, kThreads, smem, stream>>>(list_vectors, list_ids, list_sizes,
                                                           dim, queries, lists, order, nprobe, k,
                                                           chunk, inner_product, out_keys,
                                                           out_vals);
  }
  e = cudaGetLastError();
  cudaFreeAsync(sorted_lists, stream);
  cudaFreeAsync(index, stream);
  cudaFreeAsync(order, stream);
  cudaFreeAsync(sort_temp, stream);
  return e;
}

cudaError_t RowBias(const void* x, bool half, int64_t n, int dim, bool inner_product,
                    const uint8_t* deleted, float* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int grid = GridFor(n, kThreads / 32);
  if (half) {
    RowBiasKernel<__half><<<grid, kThreads, 0, stream>>>(static_cast<const __half*>(x), n, dim,
                                                         inner_product, deleted, out);
  } else {
    RowBiasKernel<float><<<grid, kThreads, 0, stream>>>(static_cast<const float*>(x), n, dim,
                                                        inner_product, deleted, out);
  }
  return cudaGetLastError();
}

cudaError_t ToHalf(const float* in, int64_t n, void* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ToHalfKernel<<<GridFor(n, kThreads), kThreads, 0, stream>>>(in, n, static_cast<__half*>(out));
  return cudaGetLastError();
}

cudaError_t Iota(int64_t* out, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  IotaKernel<<<GridFor(n, kThreads), kThreads, 0, stream>>>(out, n);
  return cudaGetLastError();
}

__global__ void CopyRowsKernel(const uint32_t* __restrict__ src, const int64_t* src_rows,
                               uint32_t* __restrict__ dst, const int64_t* dst_rows,
                               int64_t row_words) {
  const int64_t i = blockIdx.x;
  const uint32_t* from = src + (src_rows != nullptr ? src_rows[i] : i) * row_words;
  uint32_t* to = dst + (dst_rows != nullptr ? dst_rows[i] : i) * row_words;
  for (int64_t w = threadIdx.x; w < row_words; w += blockDim.x) to[w] = from[w];
}

cudaError_t CopyRows(const void* src, const int64_t* src_rows, void* dst, const int64_t* dst_rows,
                     int64_t n, int64_t row_words, cudaStream_t stream) {
  if (n == 0 || row_words == 0) return cudaSuccess;
  CopyRowsKernel<<<static_cast<unsigned>(n), 128, 0, stream>>>(
      static_cast<const uint32_t*>(src), src_rows, static_cast<uint32_t*>(dst), dst_rows, row_words);
  return cudaGetLastError();
}

cudaError_t FilterPrep(const float* queries, int64_t nq, int dim, const uint32_t* sample_keys,
                       const int64_t* sample_rows, const float* sample_bias, int k, float c1,
                       float c2, float* q_tf32, float* q_norm, float* thr, int32_t* count,
                       cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  const int per_block = kThreads / 32;
  FilterPrepKernel<<<static_cast<unsigned>((nq + per_block - 1) / per_block), kThreads, 0,
                     stream>>>(queries, nq, dim, sample_keys, sample_rows, sample_bias, k, c1, c2,
                               q_tf32, q_norm, thr, count);
  return cudaGetLastError();
}

bool FilterGemmSupports(const void* x, int dim) {
  return dim % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

cudaError_t FilterGemm(const float* x, const float* bias, int64_t n, int dim, const float* q_tf32,
                       int64_t nq, const float* thr, const float* q_norm, float c1, float c2,
                       int32_t* cand, float* cand_key, int cap, int32_t* count,
                       cudaStream_t stream) {
  if (nq == 0 || n == 0) return cudaSuccess;
  cudaError_t e = AllowSmem(FilterGemmKernel, kFilterSmem);
  if (e != cudaSuccess) return e;
  int device = 0, sms = 0;
  e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  // About 8 blocks per SM in all (4 waves of 2), each a run of row tiles.
  const int q_tiles = static_cast<int>((nq + kFilterBM - 1) / kFilterBM);
  const int64_t row_tiles = (n + kFilterBN - 1) / kFilterBN;
  const int64_t runs = std::max<int64_t>(1, std::min<int64_t>(row_tiles, 8 * sms / q_tiles));
  const int64_t per_block = (row_tiles + runs - 1) / runs;
  const int64_t blocks = static_cast<int64_t>(q_tiles) * ((row_tiles + per_block - 1) / per_block);
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  FilterGemmKernel<<<static_cast<unsigned>(blocks), kFilterThreads, kFilterSmem, stream>>>(
      x, bias, n, dim, q_tf32, static_cast<int>(nq), q_tiles, per_block, thr, q_norm, c1, c2,
      cand, cand_key, cap, count);
  return cudaGetLastError();
}

cudaError_t FilterTile(const float* tile, int64_t nq, int64_t rows, int64_t ld, int64_t row0,
                       const float* bias, const float* thr, const float* q_norm, float c1,
                       float c2, int32_t* cand, float* cand_key, int cap, int32_t* count,
                       cudaStream_t stream) {
  if (nq == 0 || rows == 0) return cudaSuccess;
  if (nq > 65535) return cudaErrorInvalidValue;
  const bool vec = rows % 4 == 0 && ld % 4 == 0 && row0 % 4 == 0 &&
                   reinterpret_cast<uintptr_t>(tile) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(bias) % 16 == 0;
  const int64_t per_block = int64_t{kThreads} * 8;
  const int64_t chunks = std::min<int64_t>((rows + per_block - 1) / per_block, 1024);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(nq));
  if (vec) {
    FilterTileKernel<true><<<grid, kThreads, 0, stream>>>(tile, rows, ld, row0, bias, thr, q_norm,
                                                          c1, c2, cand, cand_key, cap, count);
  } else {
    FilterTileKernel<false><<<grid, kThreads, 0, stream>>>(tile, rows, ld, row0, bias, thr, q_norm,
                                                           c1, c2, cand, cand_key, cap, count);
  }
  return cudaGetLastError();
}

cudaError_t RerankCandidates(const float* x, const float* bias, int dim, const float* queries,
                             int64_t nq, const int32_t* cand, const float* cand_key, int cap,
                             const int32_t* count, int k, float c1, float c2, uint32_t* out_keys,
                             int64_t* out_vals, cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  const size_t smem = sizeof(float) * dim;
  cudaError_t e = AllowSmem(RerankCandidatesKernel, smem);
  if (e != cudaSuccess) return e;
  RerankCandidatesKernel<<<static_cast<unsigned>(nq), kThreads, smem, stream>>>(
      x, bias, dim, queries, cand, cand_key, cap, count, k, c1, c2, out_keys, out_vals);
  return cudaGetLastError();
}

cudaError_t GatherStrided(const float* x, const float* bias, int dim, int64_t stride, int64_t s,
                          float* out_x, float* out_bias, cudaStream_t stream) {
  if (s == 0) return cudaSuccess;
  GatherStridedKernel<<<static_cast<unsigned>(s), 128, 0, stream>>>(x, bias, dim, stride, s,
                                                                     out_x, out_bias);
  return cudaGetLastError();
}

}  // namespace shardvec::kernels::internal
