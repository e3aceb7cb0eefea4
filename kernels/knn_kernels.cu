// Device code for knn.h: distance kernels, the block radix select, the bitonic sort
// of the final k, and the IVF list scan. Launchers are declared in launch.h.
#include <cuda_fp16.h>

#include <cstdint>

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

struct SelectState {
  uint32_t hist[256];
  uint32_t kth;        // the k-th smallest key
  uint32_t remaining;  // copies of kth among the k smallest
  uint32_t pos_less;
  uint32_t pos_eq;
};

// Radix select, 8 bits a pass: after return (and a barrier) st.kth is the k-th smallest
// of keys[0..n) and st.remaining how many keys equal to it belong to the k smallest.
// 1 <= k <= n. Histogram updates are aggregated per warp (__match_any_sync) because
// distances of one row share their high bits, which would serialise plain atomics.
__device__ void FindKth(const uint32_t* keys, int n, int k, SelectState& st) {
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
    for (int base = 0; base < n; base += blockDim.x) {
      const int i = base + threadIdx.x;
      uint32_t key = 0;
      bool in = false;
      if (i < n) {
        key = keys[i];
        in = (key & mask) == prefix;
      }
      const unsigned active = __ballot_sync(kFullMask, in);
      if (in) {
        const uint32_t digit = (key >> shift) & 0xffu;
        const unsigned peers = __match_any_sync(active, digit);
        if (lane == __ffs(peers) - 1) atomicAdd(&st.hist[digit], __popc(peers));
      }
    }
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

// Writes the k smallest pairs of keys/vals[0..n) to out[0..k), in any order. Needs
// FindKth's state; ends with a barrier.
__device__ void CompactSelected(const uint32_t* keys, const int64_t* vals, int n, int k,
                                SelectState& st, uint32_t* out_keys, int64_t* out_vals) {
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
  for (int base = 0; base < n; base += blockDim.x) {
    const int i = base + threadIdx.x;
    const uint32_t key = i < n ? keys[i] : kMissingKey;
    const bool lt = i < n && key < kth;
    const bool eq = i < n && key == kth;
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
      out_vals[p] = vals[i];
    }
    if (eq) {
      const uint32_t p = base_e + __popc(be & below);
      if (p < need_eq) {
        out_keys[less + p] = key;
        out_vals[less + p] = vals[i];
      }
    }
  }
  __syncthreads();
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

__device__ PairSmem CarvePairs(unsigned char* raw, int capacity) {
  PairSmem s;
  s.vals = reinterpret_cast<int64_t*>(raw);
  s.keys = reinterpret_cast<uint32_t*>(raw + sizeof(int64_t) * capacity);
  return s;
}

__global__ void SelectFromTileKernel(const float* tile, int64_t rows, int64_t ld,
                                     const float* bias, int64_t row0, float scale, int k,
                                     int seg_len, uint32_t* out_keys, int64_t* out_vals,
                                     int64_t out_stride, int64_t out_offset) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ SelectState st;
  const PairSmem s = CarvePairs(smem, seg_len);
  const int64_t q = blockIdx.y;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * seg_len;
  const int n = static_cast<int>(MinI64(seg_len, rows - start));
  const float* in = tile + q * ld + start;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t row = row0 + start + i;
    s.keys[i] = OrderKey(bias[row] + scale * in[i]);
    s.vals[i] = row;
  }
  __syncthreads();
  const int64_t out = q * out_stride + out_offset + static_cast<int64_t>(blockIdx.x) * k;
  SelectInto(s.keys, s.vals, n, k, st, out_keys + out, out_vals + out);
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
                               bool inner_product, const float* q_sq_norms,
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
  const float q_norm = q_sq_norms != nullptr ? q_sq_norms[q] : 0.0f;
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
      const float4 v = __ldg(reinterpret_cast<const float4*>(row + j));
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
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + j));
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

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
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

// Squared distance (or negated dot product) of one list row to the query, summed over
// the warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ float RowScore(const T* row, const float* qv, int dim, int lane,
                                          bool inner_product) {
  const float acc = WarpSum(LaneScore<T>(row, qv, dim, lane, inner_product));
  return inner_product ? -acc : acc;
}

// One block per (query, probe): the list is scanned in chunks whose scores join the
// running k best in shared memory, which are reduced back to k when a chunk would not
// fit.
template <typename T>
__global__ void IvfScanKernel(const void* const* list_vectors, const int64_t* const* list_ids,
                              const int32_t* list_sizes, int dim, const float* queries,
                              const int64_t* lists, int nprobe, int k, int chunk,
                              bool inner_product, uint32_t* out_keys, int64_t* out_vals) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ SelectState st;
  const int capacity = k + chunk;
  const PairSmem a = CarvePairs(smem, capacity);
  const PairSmem b = CarvePairs(smem + 12 * static_cast<size_t>(capacity), k);
  float* qv = reinterpret_cast<float*>(smem + 12 * static_cast<size_t>(capacity + k));
  const int64_t qp = blockIdx.x;
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
    for (int r = warp; r < m; r += nwarps) {
      const float score =
          RowScore<T>(vecs + static_cast<int64_t>(c0 + r) * dim, qv, dim, lane, inner_product);
      if (lane == 0) {
        const int64_t id = ids[c0 + r];
        a.keys[count + r] = id < 0 ? kMissingKey : OrderKey(score);
        a.vals[count + r] = id;
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

size_t PairBytes(int64_t capacity) { return 12 * static_cast<size_t>(capacity); }

// Raises a kernel's dynamic shared-memory limit where dynamic plus static shared memory
// would pass the default 48 KB.
template <typename Kernel>
cudaError_t AllowSmem(Kernel kernel, size_t bytes) {
  if (bytes + sizeof(SelectState) <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

template <typename T>
cudaError_t LaunchSmallBatchDots(const T* x, int dim, int64_t row0, int64_t rows,
                                 const float* queries, int nq, float* dots, int64_t ld,
                                 cudaStream_t stream) {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t warps_needed = (rows + 3) / 4;
  const int grid = static_cast<int>(
      MinI64((warps_needed + 7) / 8, static_cast<int64_t>(sms) * 8));
  auto go = [&](auto kernel, int width) {
    const size_t smem = sizeof(float) * width * dim;
    cudaError_t e = AllowSmem(kernel, smem);
    if (e != cudaSuccess) return e;
    kernel<<<grid, kThreads, smem, stream>>>(x, dim, row0, rows, queries, nq, dots, ld);
    return cudaGetLastError();
  };
  if (nq == 1) return go(SmallBatchDotsKernel<1, T>, 1);
  if (nq == 2) return go(SmallBatchDotsKernel<2, T>, 2);
  if (nq <= 4) return go(SmallBatchDotsKernel<4, T>, 4);
  return go(SmallBatchDotsKernel<8, T>, 8);
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
  const int seg = SegmentLength(k);
  const size_t smem = PairBytes(seg);
  cudaError_t e = AllowSmem(SelectFromTileKernel, smem);
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>((rows + seg - 1) / seg), static_cast<unsigned>(nq));
  SelectFromTileKernel<<<grid, kThreads, smem, stream>>>(tile, rows, ld, bias, row0, scale, k,
                                                         seg, out_keys, out_vals, out_stride,
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
                     int64_t stride, int k, bool inner_product, const float* q_sq_norms,
                     const int64_t* id_map, float* out_dist, int64_t* out_ids,
                     cudaStream_t stream) {
  const int seg = SegmentLength(k);
  const int width = SortWidth(k);
  const size_t smem = PairBytes(seg) + PairBytes(width);
  cudaError_t e = AllowSmem(FinalizeKernel, smem);
  if (e != cudaSuccess) return e;
  FinalizeKernel<<<static_cast<unsigned>(nq), kThreads, smem, stream>>>(
      keys, vals, len, stride, k, seg, width, inner_product, q_sq_norms, id_map, out_dist,
      out_ids);
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

cudaError_t IvfScan(const void* const* list_vectors, const int64_t* const* list_ids,
                    const int32_t* list_sizes, bool half, int dim, const float* queries,
                    int64_t nq, const int64_t* lists, int nprobe, int k, bool inner_product,
                    uint32_t* out_keys, int64_t* out_vals, cudaStream_t stream) {
  if (nq == 0) return cudaSuccess;
  const int chunk = 1024;
  const size_t smem = PairBytes(k + chunk) + PairBytes(k) + sizeof(float) * dim;
  const unsigned grid = static_cast<unsigned>(nq * nprobe);
  cudaError_t e;
  if (half) {
    e = AllowSmem(IvfScanKernel<__half>, smem);
    if (e != cudaSuccess) return e;
    IvfScanKernel<__half><<<grid, kThreads, smem, stream>>>(list_vectors, list_ids, list_sizes,
                                                            dim, queries, lists, nprobe, k, chunk,
                                                            inner_product, out_keys, out_vals);
  } else {
    e = AllowSmem(IvfScanKernel<float>, smem);
    if (e != cudaSuccess) return e;
    IvfScanKernel<float><<<grid, kThreads, smem, stream>>>(list_vectors, list_ids, list_sizes,
                                                           dim, queries, lists, nprobe, k, chunk,
                                                           inner_product, out_keys, out_vals);
  }
  return cudaGetLastError();
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

cudaError_t SquaredNorms(const float* x, int64_t n, int dim, float* out, cudaStream_t stream) {
  return RowBias(x, false, n, dim, false, nullptr, out, stream);
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

}  // namespace shardvec::kernels::internal
