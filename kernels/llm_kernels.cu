// Device code for llm_kernels.h. Arithmetic is float32 throughout; elements (bf16 or f32)
// are only the storage of weights, GEMM inputs and the KV cache.
#include <cuda_bf16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <utility>

#include "kernels/llm_kernels.h"

namespace shardvec::kernels::llm {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
std::atomic<bool> g_programmatic_launch{false};

// Programmatic dependent launch: a kernel lets its successor launch at once
// (AllowNext) and waits for its predecessor's completion and memory (WaitPrior) before
// it touches activations. Without the launch attribute both are no-ops.
__device__ __forceinline__ void WaitPrior() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void AllowNext() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <typename... KArgs, typename... Args>
cudaError_t Launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  if (g_programmatic_launch.load(std::memory_order_relaxed)) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

__device__ __forceinline__ float ToF(float v) { return v; }
__device__ __forceinline__ float ToF(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T FromF(float v);
template <>
__device__ __forceinline__ float FromF<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// Sum over a block of blockDim.x (a multiple of 32, <= 1024) threads; all get the result.
__device__ float BlockSum(float v, float* scratch /* 32 floats */) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  float t = lane < warps ? scratch[lane] : 0.f;
  t = WarpSum(t);
  __syncthreads();  // scratch may be reused by the caller
  return t;
}

__device__ __forceinline__ float Silu(float g) { return g / (1.0f + expf(-g)); }

// ---------------------------------------------------------------- embedding, norm

template <typename T>
__global__ void EmbedGatherKernel(const T* __restrict__ table, const int32_t* __restrict__ tokens,
                                  int hidden, float* __restrict__ out) {
  AllowNext();
  WaitPrior();
  const int r = blockIdx.x;
  const T* src = table + static_cast<int64_t>(tokens[r]) * hidden;
  float* dst = out + static_cast<int64_t>(r) * hidden;
  for (int d = threadIdx.x; d < hidden; d += blockDim.x) dst[d] = ToF(src[d]);
}

template <typename T>
__global__ void AddRmsNormKernel(float* __restrict__ h, const float* __restrict__ delta,
                                 const int32_t* __restrict__ row_map, int hidden,
                                 const T* __restrict__ w, float eps, T* __restrict__ out) {
  __shared__ float scratch[32];
  AllowNext();
  WaitPrior();
  const int i = blockIdx.x;
  const int src = row_map != nullptr ? row_map[i] : i;
  float* hr = h + static_cast<int64_t>(src) * hidden;
  const float* dr = delta != nullptr ? delta + static_cast<int64_t>(src) * hidden : nullptr;
  const bool write_back = row_map == nullptr && dr != nullptr;
  float ss = 0.f;
  for (int d = threadIdx.x; d < hidden; d += blockDim.x) {
    float v = hr[d];
    if (dr != nullptr) v += dr[d];
    if (write_back) hr[d] = v;
    ss += v * v;
  }
  ss = BlockSum(ss, scratch);
  const float r = rsqrtf(ss / static_cast<float>(hidden) + eps);
  T* o = out + static_cast<int64_t>(i) * hidden;
  for (int d = threadIdx.x; d < hidden; d += blockDim.x) {
    float v = hr[d];  // this thread's own write of the first pass, when written back
    if (dr != nullptr && !write_back) v += dr[d];
    o[d] = FromF<T>(v * r * ToF(w[d]));
  }
}

// ---------------------------------------------------------------- rotary + KV write

template <typename T>
__global__ void RopeKvWriteKernel(const float* __restrict__ qkv, int q_heads, int kv_heads,
                                  int head_dim, const int32_t* __restrict__ positions,
                                  const int32_t* __restrict__ slots,
                                  const float* __restrict__ inv_freq, float* __restrict__ q_out,
                                  T* __restrict__ k_cache, T* __restrict__ v_cache,
                                  int max_seq_len) {
  AllowNext();
  WaitPrior();
  const int r = blockIdx.x;
  const int half = head_dim / 2;
  const int width = (q_heads + 2 * kv_heads) * head_dim;
  const float* row = qkv + static_cast<int64_t>(r) * width;
  const int pos = positions[r];
  const int64_t slot = slots[r];
  const float fpos = static_cast<float>(pos);
  // Rotated pairs of the query and key heads.
  const int pairs = (q_heads + kv_heads) * half;
  for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
    const int head = idx / half, i = idx % half;
    float s, c;
    sincosf(fpos * inv_freq[i], &s, &c);
    const float x1 = row[head * head_dim + 2 * i];  // rope-paired rows (QkvPairedRow)
    const float x2 = row[head * head_dim + 2 * i + 1];
    const float y1 = x1 * c - x2 * s;
    const float y2 = x2 * c + x1 * s;
    if (head < q_heads) {
      float* qo = q_out + (static_cast<int64_t>(r) * q_heads + head) * head_dim;
      qo[i] = y1;
      qo[i + half] = y2;
    } else {
      const int kvh = head - q_heads;
      T* kc = k_cache + ((slot * kv_heads + kvh) * max_seq_len + pos) * head_dim;
      kc[i] = FromF<T>(y1);
      kc[i + half] = FromF<T>(y2);
    }
  }
  const float* vrow = row + (q_heads + kv_heads) * head_dim;
  for (int idx = threadIdx.x; idx < kv_heads * head_dim; idx += blockDim.x) {
    const int kvh = idx / head_dim, d = idx % head_dim;
    v_cache[((slot * kv_heads + kvh) * max_seq_len + pos) * head_dim + d] = FromF<T>(vrow[idx]);
  }
}

// ---------------------------------------------------------------- attention

__device__ __forceinline__ void Unpack16(uint4 v, float* f /* [8] */, __nv_bfloat16) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void Unpack16(uint4 v, float* f /* [4] */, float) {
  f[0] = __uint_as_float(v.x);
  f[1] = __uint_as_float(v.y);
  f[2] = __uint_as_float(v.z);
  f[3] = __uint_as_float(v.w);
}

// Online-softmax state of N query rows with E accumulated values each: max -inf, sum 0.
template <int N, int E>
__device__ __forceinline__ void ResetSoftmax(float (&m)[N], float (&l)[N], float (&acc)[N][E]) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    m[j] = -INFINITY;
    l[j] = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[j][e] = 0.f;
  }
}

constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kAttnPerWarp = kAttnTileVectors / kAttnWarps;  // query vectors per warp
constexpr int kKeyChunk = 32;                                 // keys per pass, one per lane

size_t AttnSmemBytes(int head_dim) {
  return sizeof(float) * (static_cast<size_t>(kAttnTileVectors) * head_dim +
                          static_cast<size_t>(kKeyChunk) * (head_dim + 1) +
                          static_cast<size_t>(kKeyChunk) * head_dim);
}

// One block: one tile of rows, one kv head, one split of the keys. Each lane scores one
// key of a 32-key chunk against a query vector (keys padded in shared memory so lanes hit
// distinct banks), the warp does the online softmax, and each lane accumulates E output
// dimensions (d = lane + 32 e).
template <typename T, int E>
__global__ void __launch_bounds__(kAttnThreads)
    AttentionKernel(const float* __restrict__ q, const AttnTile* __restrict__ tiles,
                    AttnShape shape, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                    int split_len, int max_splits, float scale, float* __restrict__ partial,
                    int32_t* __restrict__ counters, T* __restrict__ out, bool older_ready) {
  extern __shared__ float smem[];
  __shared__ int ticket;
  AllowNext();
  // The tiles come from the step's input copy, which completed before the step's first
  // kernel, so they (and, with older_ready, the keys before each tile's first position,
  // written by earlier steps) may be read before waiting on the q/k/v projection.
  const int D = shape.head_dim;
  const AttnTile tile = tiles[blockIdx.x];
  const int kvh = blockIdx.y;
  const int split = blockIdx.z;
  const int pos_last = tile.pos_begin + tile.n_rows - 1;
  const int key_begin = split * split_len;
  const int key_end = min(key_begin + split_len, pos_last + 1);

  const int group = shape.q_heads / shape.kv_heads;
  const int nv = tile.n_rows * group;
  float* qs = smem;                               // [kAttnTileVectors][D], scaled
  float* ks = qs + kAttnTileVectors * D;          // [kKeyChunk][D + 1]
  float* vs = ks + kKeyChunk * (D + 1);           // [kKeyChunk][D]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qstride = shape.q_heads * D;
  const int64_t cache_base =
      (static_cast<int64_t>(tile.slot) * shape.kv_heads + kvh) * shape.max_seq_len;
  // Keys j in [jlo, jhi) of the chunk at k0 (nk valid keys, zeros past them) to shared memory.
  auto load_chunk = [&](int k0, int nk, int jlo, int jhi) {
    const T* kc = k_cache + (cache_base + k0) * D;
    const T* vc = v_cache + (cache_base + k0) * D;
    constexpr int EV = 16 / sizeof(T);  // elements per 16-byte load
    if (D % EV == 0) {
      for (int idx = tid; idx < kKeyChunk * D / EV; idx += kAttnThreads) {
        const int e0 = idx * EV, j = e0 / D, d = e0 % D;
        if (j < jlo || j >= jhi) continue;
        float kf[EV], vf[EV];
        if (j < nk) {
          Unpack16(*reinterpret_cast<const uint4*>(kc + e0), kf, T());
          Unpack16(*reinterpret_cast<const uint4*>(vc + e0), vf, T());
        } else {
#pragma unroll
          for (int e = 0; e < EV; ++e) kf[e] = vf[e] = 0.f;
        }
#pragma unroll
        for (int e = 0; e < EV; ++e) {
          ks[j * (D + 1) + d + e] = kf[e];
          vs[e0 + e] = vf[e];
        }
      }
    } else {
      for (int idx = tid; idx < kKeyChunk * D; idx += kAttnThreads) {
        const int j = idx / D, d = idx % D;
        if (j < jlo || j >= jhi) continue;
        const bool in = j < nk;
        ks[j * (D + 1) + d] = in ? ToF(kc[idx]) : 0.f;
        vs[idx] = in ? ToF(vc[idx]) : 0.f;
      }
    }
  };
  // Keys of the first chunk already in the cache before this step: loaded before the wait.
  const int pre = older_ready && key_begin < key_end
                      ? max(0, min(min(kKeyChunk, key_end - key_begin), tile.pos_begin - key_begin))
                      : 0;
  if (pre > 0) load_chunk(key_begin, min(kKeyChunk, key_end - key_begin), 0, pre);
  WaitPrior();
  if (key_begin >= key_end) return;

  for (int idx = tid; idx < nv * D; idx += kAttnThreads) {
    const int v = idx / D, d = idx % D;
    const int row = tile.row_begin + v / group, head = kvh * group + v % group;
    qs[idx] = q[static_cast<int64_t>(row) * qstride + head * D + d] * scale;
  }

  float m[kAttnPerWarp], l[kAttnPerWarp], acc[kAttnPerWarp][E];
  ResetSoftmax(m, l, acc);

  for (int k0 = key_begin; k0 < key_end; k0 += kKeyChunk) {
    const int nk = min(kKeyChunk, key_end - k0);
    __syncthreads();  // the previous chunk is no longer read (and qs is complete)
    load_chunk(k0, nk, k0 == key_begin ? pre : 0, kKeyChunk);
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kAttnPerWarp; ++j) {
      const int v = warp + j * kAttnWarps;
      if (v >= nv) break;
      const int pos = tile.pos_begin + v / group;
      const int key = k0 + lane;
      const bool valid = lane < nk && key <= pos;
      float sc = -INFINITY;
      if (valid) {
        const float* qv = qs + v * D;
        const float* kr = ks + lane * (D + 1);
        float s0 = 0.f, s1 = 0.f;
        int d = 0;
        for (; d + 1 < D; d += 2) {
          s0 = fmaf(qv[d], kr[d], s0);
          s1 = fmaf(qv[d + 1], kr[d + 1], s1);
        }
        if (d < D) s0 = fmaf(qv[d], kr[d], s0);
        sc = s0 + s1;
      }
      const float cmax = WarpMax(sc);
      const float mnew = fmaxf(m[j], cmax);
      if (mnew == -INFINITY) continue;  // nothing visible yet (uniform across the warp)
      const float p = valid ? expf(sc - mnew) : 0.f;
      const float corr = expf(m[j] - mnew);
      l[j] = l[j] * corr + WarpSum(p);
      m[j] = mnew;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[j][e] *= corr;
      for (int kk = 0; kk < nk; ++kk) {
        const float pk = __shfl_sync(kFullMask, p, kk);
        const float* vr = vs + kk * D;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int d = lane + 32 * e;
          if (d < D) acc[j][e] = fmaf(pk, vr[d], acc[j][e]);
        }
      }
    }
  }

#pragma unroll
  for (int j = 0; j < kAttnPerWarp; ++j) {
    const int v = warp + j * kAttnWarps;
    if (v >= nv) break;
    const int pos = tile.pos_begin + v / group;
    if (pos < key_begin) continue;  // this row sees no key of this split
    const int row = tile.row_begin + v / group, head = kvh * group + v % group;
    if (max_splits == 1) {
      const float inv = 1.0f / l[j];
      T* o = out + static_cast<int64_t>(row) * qstride + head * D;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int d = lane + 32 * e;
        if (d < D) o[d] = FromF<T>(acc[j][e] * inv);
      }
    } else {
      float* po = partial +
                  ((static_cast<int64_t>(row) * shape.q_heads + head) * max_splits + split) * (D + 2);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int d = lane + 32 * e;
        if (d < D) po[d] = acc[j][e];
      }
      if (lane == 0) {
        po[D] = m[j];
        po[D + 1] = l[j];
      }
    }
  }
  if (max_splits == 1) return;

  // The last of the tile's non-empty splits to finish combines them (threadfence
  // reduction): partials are read from L2, where the other blocks' writes are visible.
  __threadfence();
  __syncthreads();
  int32_t* counter = counters + static_cast<int64_t>(blockIdx.x) * gridDim.y + kvh;
  if (tid == 0) ticket = atomicAdd(counter, 1);
  __syncthreads();
  const int active = min(max_splits, pos_last / split_len + 1);
  if (ticket != active - 1) return;
  __threadfence();
#pragma unroll
  for (int j = 0; j < kAttnPerWarp; ++j) {
    const int v = warp + j * kAttnWarps;
    if (v >= nv) break;
    const int pos = tile.pos_begin + v / group;
    const int row = tile.row_begin + v / group, head = kvh * group + v % group;
    const int splits = min(max_splits, pos / split_len + 1);
    const float* base =
        partial + (static_cast<int64_t>(row) * shape.q_heads + head) * max_splits * (D + 2);
    float mx = -INFINITY;
    for (int sp = 0; sp < splits; ++sp) mx = fmaxf(mx, __ldcg(base + sp * (D + 2) + D));
    float total = 0.f, o[E];
#pragma unroll
    for (int e = 0; e < E; ++e) o[e] = 0.f;
    for (int sp = 0; sp < splits; ++sp) {
      const float* ps = base + sp * (D + 2);
      const float wgt = expf(__ldcg(ps + D) - mx);
      total += __ldcg(ps + D + 1) * wgt;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int d = lane + 32 * e;
        if (d < D) o[e] = fmaf(__ldcg(ps + d), wgt, o[e]);
      }
    }
    const float inv = 1.0f / total;
    T* op = out + static_cast<int64_t>(row) * qstride + head * D;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int d = lane + 32 * e;
      if (d < D) op[d] = FromF<T>(o[e] * inv);
    }
  }
  if (tid == 0) *counter = 0;  // ready for the next launch
}

struct DeviceInfo {
  int sms = 0, smem_sm = 0;
};

// Cached per device (queried outside graph capture by PrepareKernels).
const DeviceInfo* GetDeviceInfo() {
  static DeviceInfo cache[64];
  static std::atomic<bool> ready[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device >= 64) return nullptr;
  if (!ready[device].load()) {
    DeviceInfo d;
    if (cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&d.smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) !=
            cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    cache[device] = d;
    ready[device].store(true);
  }
  return &cache[device];
}

// ---- decode attention: tiles of one row, keys held in registers.
//
// One block per (tile, hpb query heads of one kv head) of W warps; hpb is chosen so that
// the grid spreads over the SMs (DecHeadsPerBlock). A key is read by `lanes` lanes (its row's
// 16-byte vectors, rounded up to a power of two), so a warp takes 32 / lanes keys at once
// and the block W times that (a "pass"); lane (key, c) holds vector c of its key's K and V
// rows and scores the key against the same columns of q (in shared memory) of the block's
// query heads at once, so one K load serves them all. The keys written by
// earlier steps (those before the tile's position) of the first kDecPasses passes are
// loaded into registers before waiting on the q/k/v projection (programmatic launch);
// after the wait only q and the current position's key and value are read. Keys past
// those passes are read after the wait, kDecPasses passes at a time (a "round"). Each warp
// keeps a softmax over its keys, rescaled once per round; its key groups are summed with
// shuffles, and the block combines its warps' partial results in shared memory. So no
// partial results go through global memory and nothing is left to a second kernel.

// Passes held in registers, and warps for a block of `heads` query heads: 16 (at most 128
// registers a thread), 8 for more than 4 heads (the kernel's 8), whose accumulators take
// more.
constexpr int kDecPasses = 4;
__host__ __device__ constexpr int DecWarps(int heads) { return heads > 4 ? 8 : 16; }

// Lanes per key: the row's 16-byte vectors rounded up to a power of two (<= 32).
__host__ __device__ constexpr int DecLanes(int vectors) {
  int l = 1;
  while (l < vectors) l *= 2;
  return l;
}

template <typename T, int G, int W = DecWarps(G)>
__global__ void __launch_bounds__(W * 32)
    DecodeAttentionKernel(const float* __restrict__ q, const AttnTile* __restrict__ tiles,
                          AttnShape shape, const T* __restrict__ k_cache,
                          const T* __restrict__ v_cache, int hpb, float scale,
                          T* __restrict__ out) {
  // [W][hpb][D + 2]: acc, m, l of each warp; then q.
  extern __shared__ __align__(16) float dec_part[];
  AllowNext();
  constexpr int EV = 16 / sizeof(T);  // elements per 16-byte vector
  constexpr int NP = kDecPasses;
  const int D = shape.head_dim, group = shape.q_heads / shape.kv_heads;
  const int vpr = D / EV, lanes = DecLanes(vpr), kw_n = 32 / lanes;
  const int kp = W * kw_n;  // keys per pass
  const AttnTile tile = tiles[blockIdx.x];
  // This block's query heads: [h0, h0 + hpb) of kv head kvh.
  const int nb = group / hpb, kvh = blockIdx.y / nb;
  const int h0 = kvh * group + (blockIdx.y % nb) * hpb;
  const int pos = tile.pos_begin, row = tile.row_begin;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int c = lane % lanes, kw = lane / lanes;
  const bool col = c < vpr;
  const int64_t cache_base =
      (static_cast<int64_t>(tile.slot) * shape.kv_heads + kvh) * shape.max_seq_len;
  const T* kc = k_cache + cache_base * D + c * EV;
  const T* vc = v_cache + cache_base * D + c * EV;
  const int first = warp * kw_n + kw;  // this lane's key in pass 0
  const int nkeys = pos + 1;
  const uint4 zero = make_uint4(0, 0, 0, 0);

  uint4 kr[NP], vr[NP];
  // Keys written by earlier steps.
#pragma unroll
  for (int p = 0; p < NP; ++p) {
    const int j = p * kp + first;
    const bool older = col && j < pos;
    kr[p] = older ? *reinterpret_cast<const uint4*>(kc + static_cast<int64_t>(j) * D) : zero;
    vr[p] = older ? *reinterpret_cast<const uint4*>(vc + static_cast<int64_t>(j) * D) : zero;
  }
  WaitPrior();
  // The current key, or'd into its (zeroed) pass by masks: a conditional store to kr[p]
  // would become a store at a computed index, and the arrays would go to local memory.
  if (col && pos < NP * kp && pos % kp == first) {
    const uint4 kn = *reinterpret_cast<const uint4*>(kc + static_cast<int64_t>(pos) * D);
    const uint4 vn = *reinterpret_cast<const uint4*>(vc + static_cast<int64_t>(pos) * D);
#pragma unroll
    for (int p = 0; p < NP; ++p) {
      const uint32_t mk = p == pos / kp ? 0xffffffffu : 0u;
      kr[p].x |= kn.x & mk;
      kr[p].y |= kn.y & mk;
      kr[p].z |= kn.z & mk;
      kr[p].w |= kn.w & mk;
      vr[p].x |= vn.x & mk;
      vr[p].y |= vn.y & mk;
      vr[p].z |= vn.z & mk;
      vr[p].w |= vn.w & mk;
    }
  }
  // q of the block's heads, scaled, into shared memory (read as broadcasts below, so that
  // it takes no registers through the passes).
  float* qs = dec_part + W * hpb * (D + 2);  // [hpb][D]
  const int qstride = shape.q_heads * D;
  const float* qrow = q + static_cast<int64_t>(row) * qstride + h0 * D;
  for (int i = tid * 4; i < hpb * D; i += W * 32 * 4) {
    float4 v = *reinterpret_cast<const float4*>(qrow + i);
    v.x *= scale;
    v.y *= scale;
    v.z *= scale;
    v.w *= scale;
    *reinterpret_cast<float4*>(qs + i) = v;
  }
  __syncthreads();

  float m[G], l[G], acc[G][EV];
  ResetSoftmax(m, l, acc);
  for (int round = 0; round * NP * kp < nkeys; ++round) {
    const int base = round * NP * kp + first;
    if (round > 0) {
#pragma unroll
      for (int p = 0; p < NP; ++p) {
        const int j = base + p * kp;
        const bool ok = col && j < nkeys;
        kr[p] = ok ? *reinterpret_cast<const uint4*>(kc + static_cast<int64_t>(j) * D) : zero;
        vr[p] = ok ? *reinterpret_cast<const uint4*>(vc + static_cast<int64_t>(j) * D) : zero;
      }
    }
    // Scores of this round's keys against every head; the key's lanes sum their columns.
    float s[NP][G];
#pragma unroll
    for (int p = 0; p < NP; ++p) {
      float kf[EV];
      Unpack16(kr[p], kf, T());
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float s0 = 0.f, s1 = 0.f;
        if (h < hpb && col) {
          const float4* qv = reinterpret_cast<const float4*>(qs + h * D + c * EV);
#pragma unroll
          for (int e4 = 0; e4 < EV / 4; ++e4) {
            const float4 qq = qv[e4];
            s0 = fmaf(qq.x, kf[4 * e4], s0);
            s1 = fmaf(qq.y, kf[4 * e4 + 1], s1);
            s0 = fmaf(qq.z, kf[4 * e4 + 2], s0);
            s1 = fmaf(qq.w, kf[4 * e4 + 3], s1);
          }
        }
        s[p][h] = s0 + s1;
      }
    }
    for (int off = lanes / 2; off > 0; off >>= 1) {
#pragma unroll
      for (int p = 0; p < NP; ++p) {
#pragma unroll
        for (int h = 0; h < G; ++h) s[p][h] += __shfl_xor_sync(kFullMask, s[p][h], off);
      }
    }
    float mnew[G];
#pragma unroll
    for (int h = 0; h < G; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int p = 0; p < NP; ++p) {
        if (base + p * kp < nkeys) mx = fmaxf(mx, s[p][h]);
      }
      for (int off = lanes; off < 32; off <<= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, off));
      }
      mnew[h] = fmaxf(m[h], mx);
    }
    if (mnew[0] == -INFINITY) break;  // no key of this warp here (nor later)
#pragma unroll
    for (int h = 0; h < G; ++h) {
      const float corr = expf(m[h] - mnew[h]);  // 0 in the first round (m = -inf)
      m[h] = mnew[h];
      l[h] *= corr;
#pragma unroll
      for (int e = 0; e < EV; ++e) acc[h][e] *= corr;
    }
#pragma unroll
    for (int p = 0; p < NP; ++p) {
      float vf[EV];
      Unpack16(vr[p], vf, T());
      const bool valid = base + p * kp < nkeys;
#pragma unroll
      for (int h = 0; h < G; ++h) {
        const float w = valid ? expf(s[p][h] - m[h]) : 0.f;
        l[h] += w;
#pragma unroll
        for (int e = 0; e < EV; ++e) acc[h][e] = fmaf(w, vf[e], acc[h][e]);
      }
    }
  }
  // The warp's key groups, summed (m is the same on every lane of the warp).
  for (int off = lanes; off < 32; off <<= 1) {
#pragma unroll
    for (int h = 0; h < G; ++h) {
      l[h] += __shfl_xor_sync(kFullMask, l[h], off);
#pragma unroll
      for (int e = 0; e < EV; ++e) acc[h][e] += __shfl_xor_sync(kFullMask, acc[h][e], off);
    }
  }
  if (kw == 0) {
#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (h >= hpb) continue;
      float* pw = dec_part + (warp * hpb + h) * (D + 2);
      if (col) {
#pragma unroll
        for (int e = 0; e < EV; ++e) pw[c * EV + e] = acc[h][e];
      }
      if (c == 0) {
        pw[D] = m[h];
        pw[D + 1] = l[h];
      }
    }
  }
  __syncthreads();
  // Thread (head, d) combines the warps' partial results in order.
  for (int idx = tid; idx < hpb * D; idx += W * 32) {
    const int h = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < W; ++w) mx = fmaxf(mx, dec_part[(w * hpb + h) * (D + 2) + D]);
    float total = 0.f, o = 0.f;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      const float* pw = dec_part + (w * hpb + h) * (D + 2);
      const float wgt = expf(pw[D] - mx);  // a warp with no key: m = -inf, weight 0
      total = fmaf(pw[D + 1], wgt, total);
      o = fmaf(pw[d], wgt, o);
    }
    out[static_cast<int64_t>(row) * qstride + (h0 + h) * D + d] = FromF<T>(o / total);
  }
}

// Query heads per block: the fewest (a divisor of the group, at most kMaxDecodeGroup) that
// keep the grid within one block per SM, so that the work of a kv head spreads over
// several SMs while they are free (one block per kv head puts all of its heads' keys
// through one SM's instruction issue: about 2 us per 32-key chunk with 16 warps busy).
// SHARDVEC_DECODE_HEADS (a divisor of the group) forces the choice, for tuning runs.
int DecHeadsPerBlock(const AttnShape& s, int n_tiles) {
  const int group = s.q_heads / s.kv_heads;
  static const int forced = [] {
    const char* v = std::getenv("SHARDVEC_DECODE_HEADS");
    return v != nullptr ? std::atoi(v) : 0;
  }();
  if (forced > 0 && forced <= kMaxDecodeGroup && group % forced == 0) return forced;
  const DeviceInfo* d = GetDeviceInfo();
  const int64_t sms = d != nullptr ? d->sms : 0;
  int best = 0;
  for (int h = 1; h <= std::min(group, kMaxDecodeGroup); ++h) {
    if (group % h != 0) continue;
    best = h;
    if (static_cast<int64_t>(n_tiles) * (s.q_heads / h) <= sms) break;
  }
  return best;
}

// Keys loaded before the wait, for the smallest block any heads-per-block choice gives.
template <typename T>
int DecKeys(const AttnShape& s) {
  const int group = s.q_heads / s.kv_heads;
  int warps = DecWarps(1);
  for (int h = 1; h <= group; ++h) {
    if (group % h == 0 && h <= kMaxDecodeGroup) warps = std::min(warps, DecWarps(h));
  }
  return kDecPasses * warps * (32 / DecLanes(s.head_dim * static_cast<int>(sizeof(T)) / 16));
}

template <typename T>
cudaError_t LaunchDecodeAttention(const float* q, const AttnTile* tiles, int n_tiles,
                                  const AttnShape& s, const void* k_cache, const void* v_cache,
                                  void* out, cudaStream_t stream, int heads_per_block) {
  const int D = s.head_dim, group = s.q_heads / s.kv_heads;
  const int hpb = heads_per_block > 0 ? heads_per_block : DecHeadsPerBlock(s, n_tiles);
  if (hpb <= 0 || hpb > kMaxDecodeGroup || group % hpb != 0) return cudaErrorInvalidValue;
  const dim3 grid(n_tiles, s.q_heads / hpb);
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  const auto* kc = static_cast<const T*>(k_cache);
  const auto* vc = static_cast<const T*>(v_cache);
  auto* o = static_cast<T*>(out);
  const int warps = DecWarps(hpb);
  const size_t smem = sizeof(float) * (warps * hpb * (D + 2) + hpb * D);
  auto launch = [&](auto kernel) {
    return Launch(kernel, grid, dim3(warps * 32), smem, stream, q, tiles, s, kc, vc, hpb, scale,
                  o);
  };
  if (hpb <= 1) return launch(DecodeAttentionKernel<T, 1>);
  if (hpb <= 2) return launch(DecodeAttentionKernel<T, 2>);
  if (hpb <= 4) return launch(DecodeAttentionKernel<T, 4>);
  return launch(DecodeAttentionKernel<T, 8>);
}

// ---------------------------------------------------------------- SwiGLU, GEMV

template <typename T>
__global__ void SwiGluKernel(const float* __restrict__ gu, int64_t total, int inter,
                             T* __restrict__ out) {
  AllowNext();
  WaitPrior();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / inter, j = i % inter;
    const float g = gu[r * 2 * inter + 2 * j], u = gu[r * 2 * inter + 2 * j + 1];
    out[i] = FromF<T>(Silu(g) * u);
  }
}

// Weights are streamed once: no L1 allocation, so x (re-read by every warp) stays there.
__device__ __forceinline__ uint4 LoadWeight(const uint4* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

__device__ __forceinline__ float Dot16(uint4 w, uint4 x, float acc, __nv_bfloat16) {
  const uint32_t wu[4] = {w.x, w.y, w.z, w.w};
  const uint32_t xu[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    acc = fmaf(__uint_as_float(wu[i] << 16), __uint_as_float(xu[i] << 16), acc);
    acc = fmaf(__uint_as_float(wu[i] & 0xffff0000u), __uint_as_float(xu[i] & 0xffff0000u), acc);
  }
  return acc;
}
__device__ __forceinline__ float Dot16(uint4 w, uint4 x, float acc, float) {
  acc = fmaf(__uint_as_float(w.x), __uint_as_float(x.x), acc);
  acc = fmaf(__uint_as_float(w.y), __uint_as_float(x.y), acc);
  acc = fmaf(__uint_as_float(w.z), __uint_as_float(x.z), acc);
  acc = fmaf(__uint_as_float(w.w), __uint_as_float(x.w), acc);
  return acc;
}

constexpr int kGemvWarps = 8;
constexpr int kGemvThreads = kGemvWarps * 32;
constexpr int kGemvUnroll = 4;
constexpr int kGemvMaxSmem = 96 * 1024;  // the fused norm's x rows
constexpr int kGemvStaggerPhases = 4;

// The fused LM-head argmax: a (value, id) candidate as one 64-bit key whose unsigned order
// is llm::SampleToken's greedy order (a larger number wins, ties go to the lower id, a NaN
// never beats a number), so blocks can merge with atomicMax. A NaN gets high word 0, below
// every number (-inf included); all NaN leaves id 0, as the scan does. 0 means "none".
__device__ __forceinline__ unsigned long long ArgKey(float v, int id) {
  const unsigned long long low = ~static_cast<uint32_t>(id);
  if (isnan(v)) return low;
  uint32_t u = __float_as_uint(v == 0.f ? 0.f : v);  // -0 ties with +0
  u = (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(u) << 32) | low;
}

// The fused norm (deferred): writes elem(h[src] * norm_w) for the M rows into xs (shared
// memory) and sets rsc[mm] = rsqrt(mean(h[src]^2) + eps), the scale the dot products get
// in the epilogue, so only one block barrier stands between the wait on the producer of h
// and the weight math.
template <typename T, int M>
__device__ __forceinline__ void NormRowsToShared(const GemvParams& p, T* xs,
                                                 float (&red)[kGemvWarps][2 * M],
                                                 float (&rsc)[M]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, k = p.k;
  const T* gw = static_cast<const T*>(p.norm_w);
  constexpr int EV = 16 / sizeof(T);  // elements per 16-byte chunk
  const int kc = k / EV;
#pragma unroll
  for (int mm = 0; mm < M; ++mm) {
    const int src = p.row_map != nullptr ? p.row_map[mm] : mm;
    const float* hr = p.norm_h + static_cast<int64_t>(src) * k;
    float ss = 0.f;
    for (int c = threadIdx.x; c < kc; c += kGemvThreads) {
      const float4* hv4 = reinterpret_cast<const float4*>(hr + c * EV);
      float hv[EV], gv[EV];
#pragma unroll
      for (int e = 0; e < EV / 4; ++e) {
        const float4 v = hv4[e];
        hv[4 * e] = v.x;
        hv[4 * e + 1] = v.y;
        hv[4 * e + 2] = v.z;
        hv[4 * e + 3] = v.w;
      }
      Unpack16(__ldg(reinterpret_cast<const uint4*>(gw + c * EV)), gv, T());
      alignas(16) T o[EV];
#pragma unroll
      for (int e = 0; e < EV; ++e) {
        ss = fmaf(hv[e], hv[e], ss);
        o[e] = FromF<T>(hv[e] * gv[e]);
      }
      *reinterpret_cast<uint4*>(xs + mm * k + c * EV) = *reinterpret_cast<const uint4*>(o);
    }
    ss = WarpSum(ss);
    if (lane == 0) red[warp][mm] = ss;
  }
  __syncthreads();
#pragma unroll
  for (int mm = 0; mm < M; ++mm) {
    float ss = 0.f;
#pragma unroll
    for (int q = 0; q < kGemvWarps; ++q) ss += red[q][mm];
    rsc[mm] = rsqrtf(ss / static_cast<float>(k) + p.eps);
  }
  // red is written again only after another barrier, which every thread reaches after
  // reading it here.
}

// The epilogue of one warp's row pair (row0, row0 + 1): acc holds the finished sums (every
// lane the same). Stores or adds them, or applies SwiGLU or rope + the KV write; with the
// fused argmax, keeps the best key per input row in best.
template <typename T, int M>
__device__ __forceinline__ void GemvPairOut(const GemvParams& p, int row0, const float (&acc)[2][M],
                                            int lane, unsigned long long (&best)[M]) {
  constexpr int R = 2;
  const int n = p.n;
  switch (p.epilogue) {
    case GemvEpilogue::kStoreF32:
    case GemvEpilogue::kAddF32: {
      float* out = static_cast<float*>(p.y);
      const bool add = p.epilogue == GemvEpilogue::kAddF32;
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int mm = 0; mm < M; ++mm) {
          if (lane == r * M + mm && row0 + r < n) {
            float* o = out + static_cast<int64_t>(mm) * n + row0 + r;
            *o = add ? *o + acc[r][mm] : acc[r][mm];
          }
        }
      }
      if (p.argmax_out != nullptr) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (row0 + r >= n) continue;
#pragma unroll
          for (int mm = 0; mm < M; ++mm) best[mm] = max(best[mm], ArgKey(acc[r][mm], row0 + r));
        }
      }
      break;
    }
    case GemvEpilogue::kSwiGlu: {
      // rows row0 (gate) and row0 + 1 (up) of an interleaved pair; n is even.
      T* out = static_cast<T*>(p.y);
      const int j = row0 / 2, inter = n / 2;
#pragma unroll
      for (int mm = 0; mm < M; ++mm) {
        if (lane == mm) {
          out[static_cast<int64_t>(mm) * inter + j] = FromF<T>(Silu(acc[0][mm]) * acc[1][mm]);
        }
      }
      break;
    }
    case GemvEpilogue::kQkvRope: {
      const int D = p.head_dim, half = D / 2;
      const int rotated = (p.q_heads + p.kv_heads) * D;
#pragma unroll
      for (int mm = 0; mm < M; ++mm) {
        if (lane != mm) continue;
        const int pos = p.positions[mm];
        const int64_t slot_m = p.slots[mm];
        const float x1 = acc[0][mm], x2 = acc[1][mm];
        if (row0 < rotated) {
          const int head = row0 / D, i = (row0 % D) / 2;
          float sn, cs;
          sincosf(static_cast<float>(pos) * p.inv_freq[i], &sn, &cs);
          const float y1 = x1 * cs - x2 * sn, y2 = x2 * cs + x1 * sn;
          if (head < p.q_heads) {
            float* qo = p.q_out + (static_cast<int64_t>(mm) * p.q_heads + head) * D;
            qo[i] = y1;
            qo[i + half] = y2;
          } else {
            T* kc = static_cast<T*>(p.k_cache) +
                    ((slot_m * p.kv_heads + head - p.q_heads) * p.max_seq_len + pos) * D;
            kc[i] = FromF<T>(y1);
            kc[i + half] = FromF<T>(y2);
          }
        } else {
          const int v0 = row0 - rotated, kvh = v0 / D, d = v0 % D;
          T* vc = static_cast<T*>(p.v_cache) +
                  ((slot_m * p.kv_heads + kvh) * p.max_seq_len + pos) * D;
          vc[d] = FromF<T>(x1);
          vc[d + 1] = FromF<T>(x2);
        }
      }
      break;
    }
  }
}

// The fused argmax's end (every thread of the block calls it): the block's best per row is
// merged into the row's key with atomicMax; the last block to finish writes the ids and
// leaves the scratch zeroed for the next launch.
template <int M>
__device__ __forceinline__ void GemvArgMaxFinish(const GemvParams& p,
                                                 const unsigned long long (&best)[M],
                                                 unsigned long long (&best_s)[kGemvWarps][M],
                                                 int* ticket) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0 && warp < kGemvWarps) {
#pragma unroll
    for (int mm = 0; mm < M; ++mm) best_s[warp][mm] = best[mm];
  }
  __syncthreads();
  auto* keys = static_cast<unsigned long long*>(p.argmax_scratch);
  int* counter = reinterpret_cast<int*>(keys + M);
  if (threadIdx.x < M) {
    unsigned long long b = 0;
#pragma unroll
    for (int q = 0; q < kGemvWarps; ++q) b = max(b, best_s[q][threadIdx.x]);
    if (b != 0) atomicMax(keys + threadIdx.x, b);
    __threadfence();
  }
  __syncthreads();
  if (threadIdx.x == 0) *ticket = atomicAdd(counter, 1);
  __syncthreads();
  if (*ticket != static_cast<int>(gridDim.x) - 1) return;
  __threadfence();
  if (threadIdx.x < M) {
    const unsigned long long b = atomicExch(keys + threadIdx.x, 0ull);
    p.argmax_out[threadIdx.x] = b == 0 ? 0 : static_cast<int32_t>(~static_cast<uint32_t>(b));
  }
  if (threadIdx.x == 0) *counter = 0;
}

// Rows are handled in pairs (a warp's two rows), `ks` warps of a block splitting one pair's
// k range (split-K inside the block, reduced through shared memory in a fixed order, so
// results do not depend on timing), kGemvWarps / ks pairs per block. The launcher picks
// ks so that small matrices (o, down, q/k/v) still spread over several blocks per SM and
// every warp's slice is a few 16-byte loads per lane, all in flight at once. Blocks walk
// the groups of pairs with a grid-stride loop, so that the grid is one even wave. The first
// weights are loaded before waiting on the previous kernel, so under programmatic launch
// the weight stream starts while the producer of x finishes. With the fused norm, each
// block first writes the normalised x rows into shared memory (NormRowsToShared). x is
// read through generic loads.
template <typename T, int M, bool kNorm>
__global__ void __launch_bounds__(kGemvThreads)
    GemvKernel(const GemvParams p, int ks, unsigned stagger_ns) {
  // Few rows: more weight loads in flight per lane (a whole 2048-wide row pair of a warp
  // prefetched before the wait).
  constexpr int R = 2, U = M <= 2 ? 2 * kGemvUnroll : kGemvUnroll;
  extern __shared__ __align__(16) unsigned char gemv_smem[];
  __shared__ float red[kGemvWarps][R * M];
  __shared__ unsigned long long best_s[kGemvWarps][M];
  __shared__ int ticket;
  AllowNext();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = p.n, k = p.k;
  const int pb = kGemvWarps / ks;  // row pairs per block
  const int slot = warp / ks, part = warp % ks;
  const int nvec = k * static_cast<int>(sizeof(T)) / 16;
  const int cv = (nvec + ks - 1) / ks;
  const int kb = min(nvec, part * cv), ke = min(nvec, kb + cv);
  const int groups = (n + 2 * pb - 1) / (2 * pb);
  const T* w = static_cast<const T*>(p.w);

  uint4 wv[R][U];
  auto load = [&](int row0, int base) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint4* wr =
          reinterpret_cast<const uint4*>(w + static_cast<int64_t>(min(row0 + r, n - 1)) * k);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int idx = base + u * 32;
        wv[r][u] = idx < ke ? LoadWeight(wr + idx) : make_uint4(0, 0, 0, 0);
      }
    }
  };
  int g = blockIdx.x;
  // With the shared counter, blocks start their first loads in kGemvStaggerPhases phases
  // stagger_ns apart: blocks that start together issue their loads in bursts in lockstep
  // and leave DRAM idle while they all compute; staggered, their bursts interleave, and the
  // late blocks take fewer groups from the counter.
  if (stagger_ns > 0 && g % kGemvStaggerPhases != 0) {
    __nanosleep(stagger_ns * (g % kGemvStaggerPhases));
  }
  if (g < groups && (g * pb + slot) * R < n) load((g * pb + slot) * R, kb + lane);
  WaitPrior();

  const uint4* xv = reinterpret_cast<const uint4*>(p.x);
  float rsc[M];
#pragma unroll
  for (int mm = 0; mm < M; ++mm) rsc[mm] = 1.f;
  if (kNorm) {
    NormRowsToShared<T, M>(p, reinterpret_cast<T*>(gemv_smem), red, rsc);
    xv = reinterpret_cast<const uint4*>(gemv_smem);
  }

  unsigned long long best[M];
#pragma unroll
  for (int mm = 0; mm < M; ++mm) best[mm] = 0;
  bool first = true;
  // Groups after the first: the next in grid-stride order, or, with p.sched, the next one
  // not yet taken by any block (fetched at the start of a group, read after a barrier at
  // its end), so that blocks that get more bandwidth take more groups.
  __shared__ int next_s[2];
  const bool dynamic = p.sched != nullptr;
  int it = 0;
  auto advance = [&]() {
    if (!dynamic) return g + static_cast<int>(gridDim.x);
    __syncthreads();
    return next_s[it++ & 1];
  };
  for (; g < groups; g = advance()) {
    if (dynamic && threadIdx.x == 0) next_s[it & 1] = atomicAdd(p.sched, 1) + gridDim.x;
    const int row0 = (g * pb + slot) * R;
    const bool active = row0 < n;
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int mm = 0; mm < M; ++mm) acc[r][mm] = 0.f;
    }
    if (active) {
      if (!first) load(row0, kb + lane);
      for (int base = kb + lane; base < ke;) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int idx = base + u * 32;
          if (idx < ke) {
#pragma unroll
            for (int mm = 0; mm < M; ++mm) {
              const uint4 xx =
                  kNorm ? xv[mm * nvec + idx] : __ldg(xv + static_cast<int64_t>(mm) * nvec + idx);
#pragma unroll
              for (int r = 0; r < R; ++r) acc[r][mm] = Dot16(wv[r][u], xx, acc[r][mm], T());
            }
          }
        }
        base += 32 * U;
        if (base >= ke) break;
        load(row0, base);
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int mm = 0; mm < M; ++mm) acc[r][mm] = WarpSum(acc[r][mm]);
      }
    }
    first = false;
    if (ks > 1) {
      __syncthreads();  // the previous group's partial sums are read
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
#pragma unroll
          for (int mm = 0; mm < M; ++mm) red[warp][r * M + mm] = acc[r][mm];
        }
      }
      __syncthreads();
      if (part != 0 || !active) continue;
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int mm = 0; mm < M; ++mm) {
          float s = 0.f;
          for (int q = 0; q < ks; ++q) s += red[slot * ks + q][r * M + mm];
          acc[r][mm] = s;
        }
      }
    } else if (!active) {
      continue;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int mm = 0; mm < M; ++mm) acc[r][mm] *= rsc[mm];
    }
    GemvPairOut<T, M>(p, row0, acc, lane, best);
  }
  if (dynamic && threadIdx.x == 0) {
    // The last block to finish leaves the counters zeroed for the next launch.
    __threadfence();
    if (atomicAdd(p.sched + 1, 1) == static_cast<int>(gridDim.x) - 1) {
      p.sched[0] = 0;
      p.sched[1] = 0;
    }
  }
  if (p.argmax_out != nullptr) GemvArgMaxFinish<M>(p, best, best_s, &ticket);
}

// Blocks of kKernel (kThreads threads) that fit on the device at once with `smem` bytes of
// dynamic shared memory each (the register limit cached per device).
template <auto kKernel, int kThreads>
int ResidentBlocks(size_t smem) {
  static std::atomic<int> per_sm_cache[64];
  int device = 0;
  const DeviceInfo* d = GetDeviceInfo();
  if (d == nullptr || cudaGetDevice(&device) != cudaSuccess) return 0;
  if (per_sm_cache[device].load() == 0) {
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, kThreads, 0) !=
        cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    per_sm_cache[device].store(std::max(per_sm, 1));
  }
  int per_sm = per_sm_cache[device].load();
  if (smem > 0) per_sm = std::max(1, std::min(per_sm, d->smem_sm / static_cast<int>(smem + 1024)));
  return d->sms * per_sm;
}

template <typename T, int M>
cudaError_t ConfigureGemv() {
  static std::atomic<bool> configured[64];
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  if (device < 64 && configured[device].load()) return cudaSuccess;
  const DeviceInfo* d = GetDeviceInfo();
  if (d == nullptr) return cudaErrorUnknown;
  e = cudaFuncSetAttribute(GemvKernel<T, M, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           kGemvMaxSmem);
  // Fills the occupancy caches now, so that no query happens while a graph is captured.
  if (e == cudaSuccess && (ResidentBlocks<GemvKernel<T, M, true>, kGemvThreads>(0) == 0 ||
                           ResidentBlocks<GemvKernel<T, M, false>, kGemvThreads>(0) == 0)) {
    e = cudaErrorUnknown;
  }
  if (e == cudaSuccess && device < 64) configured[device].store(true);
  return e;
}

template <typename T>
cudaError_t ConfigureGemvAll() {
  const cudaError_t e[] = {ConfigureGemv<T, 1>(), ConfigureGemv<T, 2>(), ConfigureGemv<T, 3>(),
                           ConfigureGemv<T, 4>(), ConfigureGemv<T, 5>(), ConfigureGemv<T, 6>(),
                           ConfigureGemv<T, 7>(), ConfigureGemv<T, 8>()};
  for (cudaError_t x : e) {
    if (x != cudaSuccess) return x;
  }
  return cudaSuccess;
}

size_t GemvSmem(const GemvParams& p) {
  return p.norm_h != nullptr ? static_cast<size_t>(p.m) * p.k * ElemSize(p.type) : 0;
}

// The split-K factor ks (warps of a block on one row pair): the largest power of two that
// keeps the launch in one wave of resident blocks, as long as every warp keeps at least one
// 16-byte load per lane and row. So a small matrix (o, down, q/k/v at batch 1) still
// spreads over every SM with all its weight loads issued at once, while a large one (gate/
// up, the LM head) keeps ks = 1. SHARDVEC_GEMV_WAVES (waves allowed, default 1) and
// SHARDVEC_GEMV_KSPLIT (1, 2, 4 or 8: forced) change the choice, for tuning runs.
int GemvKSplit(int n, int nvec, int resident) {
  static const int forced = [] {
    const char* v = std::getenv("SHARDVEC_GEMV_KSPLIT");
    const int f = v != nullptr ? std::atoi(v) : 0;
    return f == 1 || f == 2 || f == 4 || f == 8 ? f : 0;
  }();
  static const int waves = [] {
    const char* v = std::getenv("SHARDVEC_GEMV_WAVES");
    const int w = v != nullptr ? std::atoi(v) : 0;
    return w > 0 ? w : 1;
  }();
  if (forced > 0) return forced;
  const int pairs = (n + 1) / 2;
  int ks = 1;
  while (ks < kGemvWarps) {
    const int next = 2 * ks;
    const int groups = (pairs + kGemvWarps / next - 1) / (kGemvWarps / next);
    if (groups > waves * std::max(resident, 1) || nvec / next < 32) break;
    ks = next;
  }
  return ks;
}

template <typename T, int M>
cudaError_t LaunchGemvM(const GemvParams& p, cudaStream_t stream) {
  cudaError_t e = ConfigureGemv<T, M>();
  if (e != cudaSuccess) return e;
  const size_t smem = GemvSmem(p);
  const int nvec = p.k * static_cast<int>(sizeof(T)) / 16;
  const bool norm = p.norm_h != nullptr;
  const int resident = norm ? ResidentBlocks<GemvKernel<T, M, true>, kGemvThreads>(smem)
                            : ResidentBlocks<GemvKernel<T, M, false>, kGemvThreads>(0);
  const int ks = GemvKSplit(p.n, nvec, resident);
  const int pb = kGemvWarps / ks;
  const int needed = (p.n + 2 * pb - 1) / (2 * pb);
  const dim3 grid(resident > 0 ? std::min(needed, resident) : needed);
  // SHARDVEC_GEMV_STAGGER (ns, default 1000; 0: off) sets the first loads' stagger, for
  // tuning runs.
  static const unsigned stagger = [] {
    const char* v = std::getenv("SHARDVEC_GEMV_STAGGER");
    return v != nullptr ? static_cast<unsigned>(std::max(0, std::atoi(v))) : 1000u;
  }();
  GemvParams q = p;
  if (static_cast<int>(grid.x) >= needed) q.sched = nullptr;  // one group a block
  const unsigned stagger_ns = q.sched != nullptr ? stagger : 0;
  if (norm) {
    return Launch(GemvKernel<T, M, true>, grid, dim3(kGemvThreads), smem, stream, q, ks,
                  stagger_ns);
  }
  return Launch(GemvKernel<T, M, false>, grid, dim3(kGemvThreads), 0, stream, q, ks, stagger_ns);
}

template <typename T>
cudaError_t LaunchGemv(const GemvParams& p, cudaStream_t stream) {
  switch (p.m) {
    case 1: return LaunchGemvM<T, 1>(p, stream);
    case 2: return LaunchGemvM<T, 2>(p, stream);
    case 3: return LaunchGemvM<T, 3>(p, stream);
    case 4: return LaunchGemvM<T, 4>(p, stream);
    case 5: return LaunchGemvM<T, 5>(p, stream);
    case 6: return LaunchGemvM<T, 6>(p, stream);
    case 7: return LaunchGemvM<T, 7>(p, stream);
    case 8: return LaunchGemvM<T, 8>(p, stream);
  }
  return cudaErrorNotSupported;
}

// ---------------------------------------------------------------- logits, sampling

__global__ void UnshardLogitsKernel(const float* __restrict__ gathered, int rows, int vpr,
                                    int vocab, float* __restrict__ out) {
  AllowNext();
  WaitPrior();
  const int64_t total = static_cast<int64_t>(rows) * vocab;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = i / vocab, v = i % vocab;
    const int64_t r = v / vpr;
    out[i] = gathered[(r * rows + s) * vpr + (v - r * vpr)];
  }
}

// (value, id) a beats b: a number beats NaN; a larger number wins; ties go to the lower id.
__device__ __forceinline__ bool Beats(float av, int ai, float bv, int bi) {
  const bool an = isnan(av), bn = isnan(bv);
  if (an != bn) return bn;
  if (!an && av != bv) return av > bv;
  return ai < bi;
}

// Block-wide best (value, id) of this thread's candidate; every thread gets the result.
__device__ void BlockBest(float* bv, int* bi, float* sv /* [32] */, int* si /* [32] */) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, *bv, off);
    const int oi = __shfl_xor_sync(kFullMask, *bi, off);
    if (Beats(ov, oi, *bv, *bi)) {
      *bv = ov;
      *bi = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    sv[warp] = *bv;
    si[warp] = *bi;
  }
  __syncthreads();
  const int warps = blockDim.x >> 5;
  *bv = lane < warps ? sv[lane] : NAN;
  *bi = lane < warps ? si[lane] : 0x7fffffff;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, *bv, off);
    const int oi = __shfl_xor_sync(kFullMask, *bi, off);
    if (Beats(ov, oi, *bv, *bi)) {
      *bv = ov;
      *bi = oi;
    }
  }
  __syncthreads();
}

constexpr int kArgMaxThreads = 256;
constexpr int kArgMaxChunks = 64;  // blocks per row at most

// Block (row, c) finds the best of its chunk of the row; the last block of a row to
// finish reduces the chunks' results (read from L2) and resets the row's counter.
__global__ void __launch_bounds__(kArgMaxThreads)
    ArgMaxKernel(const float* __restrict__ logits, int vocab, int64_t ld, int chunk,
                 float* __restrict__ part_v, int* __restrict__ part_i, int* __restrict__ counters,
                 int32_t* __restrict__ out) {
  __shared__ float sv[32];
  __shared__ int si[32];
  __shared__ int ticket;
  AllowNext();
  WaitPrior();
  const int row = blockIdx.x, c = blockIdx.y, chunks = gridDim.y;
  const float* lr = logits + row * ld;
  float bv = NAN;
  int bi = 0x7fffffff;
  const int end = min(vocab, (c + 1) * chunk);
  for (int i = c * chunk + threadIdx.x; i < end; i += blockDim.x) {
    const float v = lr[i];
    if (Beats(v, i, bv, bi)) {
      bv = v;
      bi = i;
    }
  }
  BlockBest(&bv, &bi, sv, si);
  if (chunks == 1) {
    // Every value NaN: SampleToken's scan keeps id 0.
    if (threadIdx.x == 0) out[row] = bi >= vocab ? 0 : bi;
    return;
  }
  if (threadIdx.x == 0) {
    part_v[row * chunks + c] = bv;
    part_i[row * chunks + c] = bi;
    __threadfence();
    ticket = atomicAdd(counters + row, 1);
  }
  __syncthreads();
  if (ticket != chunks - 1) return;
  __threadfence();
  bv = NAN;
  bi = 0x7fffffff;
  for (int j = threadIdx.x; j < chunks; j += blockDim.x) {
    const float v = __ldcg(part_v + row * chunks + j);
    const int i = __ldcg(part_i + row * chunks + j);
    // Left zeroed like the counters: the fused LM-head argmax (GemvKernel) keeps its keys
    // and counter in the same scratch, and a stale partial there read as a key and a
    // counter that never reaches the grid size (so its ids were never written).
    part_v[row * chunks + j] = 0.f;
    part_i[row * chunks + j] = 0;
    if (Beats(v, i, bv, bi)) {
      bv = v;
      bi = i;
    }
  }
  BlockBest(&bv, &bi, sv, si);
  if (threadIdx.x == 0) {
    out[row] = bi >= vocab ? 0 : bi;
    counters[row] = 0;  // ready for the next launch
  }
}

// ---------------------------------------------------------------- conversions, random

template <typename T>
__global__ void F32ToElemKernel(const float* __restrict__ in, int64_t n, T* __restrict__ out) {
  AllowNext();
  WaitPrior();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = FromF<T>(in[i]);
  }
}

template <typename T>
__global__ void ElemToF32Kernel(const T* __restrict__ in, int64_t n, float* __restrict__ out) {
  AllowNext();
  WaitPrior();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = ToF(in[i]);
  }
}

__device__ __forceinline__ uint64_t Mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename T>
__global__ void FillRandomKernel(T* __restrict__ out, int64_t n, uint64_t seed, float scale,
                                 float offset) {
  AllowNext();
  WaitPrior();
  const uint64_t key = Mix64(seed);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = Mix64(key ^ static_cast<uint64_t>(i));
    const float u = static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f;
    out[i] = FromF<T>(offset + scale * u);
  }
}

dim3 GridFor(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks > 65535 * 4) blocks = 65535 * 4;
  if (blocks < 1) blocks = 1;
  return dim3(static_cast<unsigned>(blocks));
}

int NormThreads(int hidden) {
  int t = 32;
  while (t < hidden && t < 1024) t *= 2;
  return t > 512 ? 512 : t;
}

bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename T, int E>
cudaError_t ConfigureAttention() {
  // Raising the shared-memory limit is per device and idempotent; done once each.
  static std::atomic<bool> configured[64];
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  if (device < 64 && configured[device].load()) return cudaSuccess;
  e = cudaFuncSetAttribute(AttentionKernel<T, E>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(AttnSmemBytes(32 * E)));
  if (e == cudaSuccess && device < 64) configured[device].store(true);
  return e;
}

template <typename T>
cudaError_t ConfigureAttentionAll() {
  cudaError_t e = ConfigureAttention<T, 1>();
  if (e == cudaSuccess) e = ConfigureAttention<T, 2>();
  if (e == cudaSuccess) e = ConfigureAttention<T, 4>();
  if (e == cudaSuccess) e = ConfigureAttention<T, 8>();
  return e;
}

template <typename T, int E>
cudaError_t LaunchAttention(const float* q, const AttnTile* tiles, int n_tiles,
                            const AttnShape& shape, const void* k_cache, const void* v_cache,
                            int split_len, int max_splits, float* partial, int32_t* counters,
                            void* out, cudaStream_t stream, bool older_ready) {
  const size_t smem = AttnSmemBytes(shape.head_dim);
  const cudaError_t e = ConfigureAttention<T, E>();
  if (e != cudaSuccess) return e;
  const float scale = 1.0f / sqrtf(static_cast<float>(shape.head_dim));
  return Launch(AttentionKernel<T, E>, dim3(n_tiles, shape.kv_heads, max_splits),
                dim3(kAttnThreads), smem, stream, q, tiles, shape,
                static_cast<const T*>(k_cache), static_cast<const T*>(v_cache), split_len,
                max_splits, scale, partial, counters, static_cast<T*>(out), older_ready);
}

template <typename T>
cudaError_t AttentionT(const float* q, const AttnTile* tiles, int n_tiles, const AttnShape& shape,
                       const void* k_cache, const void* v_cache, int split_len, int max_splits,
                       float* partial, int32_t* counters, void* out, cudaStream_t stream,
                       bool older_ready) {
  const int D = shape.head_dim;
  if (D <= 32) {
    return LaunchAttention<T, 1>(q, tiles, n_tiles, shape, k_cache, v_cache, split_len, max_splits,
                                 partial, counters, out, stream, older_ready);
  }
  if (D <= 64) {
    return LaunchAttention<T, 2>(q, tiles, n_tiles, shape, k_cache, v_cache, split_len, max_splits,
                                 partial, counters, out, stream, older_ready);
  }
  if (D <= 128) {
    return LaunchAttention<T, 4>(q, tiles, n_tiles, shape, k_cache, v_cache, split_len, max_splits,
                                 partial, counters, out, stream, older_ready);
  }
  return LaunchAttention<T, 8>(q, tiles, n_tiles, shape, k_cache, v_cache, split_len, max_splits,
                               partial, counters, out, stream, older_ready);
}

}  // namespace

cudaError_t PrepareKernels() {
  cudaError_t e = ConfigureAttentionAll<float>();
  if (e == cudaSuccess) e = ConfigureAttentionAll<__nv_bfloat16>();
  if (e == cudaSuccess) e = ConfigureGemvAll<float>();
  if (e == cudaSuccess) e = ConfigureGemvAll<__nv_bfloat16>();
  return e;
}

void SetProgrammaticLaunch(bool enabled) { g_programmatic_launch.store(enabled); }
bool ProgrammaticLaunch() { return g_programmatic_launch.load(); }

cudaError_t EmbedGather(const void* table, ElemType t, const int32_t* tokens, int rows, int hidden,
                        float* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  const dim3 grid(rows), block(NormThreads(hidden));
  if (t == ElemType::kBF16) {
    return Launch(EmbedGatherKernel<__nv_bfloat16>, grid, block, 0, stream,
                  static_cast<const __nv_bfloat16*>(table), tokens, hidden, out);
  }
  return Launch(EmbedGatherKernel<float>, grid, block, 0, stream, static_cast<const float*>(table),
                tokens, hidden, out);
}

cudaError_t AddRmsNorm(float* h, const float* delta, const int32_t* row_map, int rows, int hidden,
                       const void* weight, ElemType t, float eps, void* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  const dim3 grid(rows), block(NormThreads(hidden));
  if (t == ElemType::kBF16) {
    return Launch(AddRmsNormKernel<__nv_bfloat16>, grid, block, 0, stream, h, delta, row_map,
                  hidden, static_cast<const __nv_bfloat16*>(weight), eps,
                  static_cast<__nv_bfloat16*>(out));
  }
  return Launch(AddRmsNormKernel<float>, grid, block, 0, stream, h, delta, row_map, hidden,
                static_cast<const float*>(weight), eps, static_cast<float*>(out));
}

cudaError_t RopeKvWrite(const float* qkv, int rows, int q_heads, int kv_heads, int head_dim,
                        const int32_t* positions, const int32_t* slots, const float* inv_freq,
                        float* q_out, void* k_cache, void* v_cache, ElemType cache_type,
                        int max_seq_len, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (head_dim % 2 != 0) return cudaErrorInvalidValue;
  const dim3 grid(rows), block(128);
  if (cache_type == ElemType::kBF16) {
    return Launch(RopeKvWriteKernel<__nv_bfloat16>, grid, block, 0, stream, qkv, q_heads, kv_heads,
                  head_dim, positions, slots, inv_freq, q_out,
                  static_cast<__nv_bfloat16*>(k_cache), static_cast<__nv_bfloat16*>(v_cache),
                  max_seq_len);
  }
  return Launch(RopeKvWriteKernel<float>, grid, block, 0, stream, qkv, q_heads, kv_heads, head_dim,
                positions, slots, inv_freq, q_out, static_cast<float*>(k_cache),
                static_cast<float*>(v_cache), max_seq_len);
}

bool AttentionSupported(const AttnShape& s) {
  return s.head_dim > 0 && s.head_dim <= kMaxHeadDim && s.kv_heads > 0 && s.q_heads > 0 &&
         s.q_heads % s.kv_heads == 0 && s.q_heads / s.kv_heads <= kAttnTileVectors;
}

cudaError_t Attention(const float* q, const AttnTile* tiles, int n_tiles, const AttnShape& shape,
                      const void* k_cache, const void* v_cache, ElemType cache_type, int split_len,
                      int max_splits, float* partial, int32_t* counters, void* out,
                      cudaStream_t stream, bool older_ready) {
  if (n_tiles <= 0) return cudaSuccess;
  if (!AttentionSupported(shape) || split_len <= 0 || max_splits <= 0 ||
      (max_splits > 1 && (partial == nullptr || counters == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (cache_type == ElemType::kBF16) {
    return AttentionT<__nv_bfloat16>(q, tiles, n_tiles, shape, k_cache, v_cache, split_len,
                                     max_splits, partial, counters, out, stream, older_ready);
  }
  return AttentionT<float>(q, tiles, n_tiles, shape, k_cache, v_cache, split_len, max_splits,
                           partial, counters, out, stream, older_ready);
}

int DecodeAttentionKeys(const AttnShape& s, ElemType t) {
  if (s.head_dim <= 0 || s.head_dim > kMaxDecodeHeadDim || s.kv_heads <= 0 || s.q_heads <= 0 ||
      s.q_heads % s.kv_heads != 0 || (s.head_dim * ElemSize(t)) % 16 != 0) {
    return 0;
  }
  return t == ElemType::kBF16 ? DecKeys<__nv_bfloat16>(s) : DecKeys<float>(s);
}

cudaError_t DecodeAttention(const float* q, const AttnTile* tiles, int n_tiles,
                            const AttnShape& shape, const void* k_cache, const void* v_cache,
                            ElemType cache_type, void* out, cudaStream_t stream,
                            int heads_per_block) {
  if (n_tiles <= 0) return cudaSuccess;
  if (DecodeAttentionKeys(shape, cache_type) == 0) return cudaErrorInvalidValue;
  if (cache_type == ElemType::kBF16) {
    return LaunchDecodeAttention<__nv_bfloat16>(q, tiles, n_tiles, shape, k_cache, v_cache, out,
                                                stream, heads_per_block);
  }
  return LaunchDecodeAttention<float>(q, tiles, n_tiles, shape, k_cache, v_cache, out, stream,
                                      heads_per_block);
}

cudaError_t SwiGlu(const float* gu, int rows, int inter, void* out, ElemType t,
                   cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(rows) * inter;
  if (total <= 0) return cudaSuccess;
  if (t == ElemType::kBF16) {
    return Launch(SwiGluKernel<__nv_bfloat16>, GridFor(total, 256), dim3(256), 0, stream, gu,
                  total, inter, static_cast<__nv_bfloat16*>(out));
  }
  return Launch(SwiGluKernel<float>, GridFor(total, 256), dim3(256), 0, stream, gu, total, inter,
                static_cast<float*>(out));
}

bool GemvSupported(const GemvParams& p) {
  const bool pairs = p.epilogue == GemvEpilogue::kSwiGlu || p.epilogue == GemvEpilogue::kQkvRope;
  if (p.m < 1 || p.m > kGemvMaxRows || p.n < 1 || p.k < 1 || (p.k * ElemSize(p.type)) % 16 != 0 ||
      !Aligned16(p.w) || (pairs && p.n % 2 != 0) ||
      (p.y == nullptr && p.epilogue != GemvEpilogue::kQkvRope)) {
    return false;
  }
  if (p.argmax_out != nullptr &&
      (p.epilogue != GemvEpilogue::kStoreF32 || p.argmax_scratch == nullptr)) {
    return false;
  }
  if (p.norm_h != nullptr) {
    if (p.norm_w == nullptr || !Aligned16(p.norm_h) || !Aligned16(p.norm_w) ||
        GemvSmem(p) > kGemvMaxSmem) {
      return false;
    }
  } else if (p.x == nullptr || !Aligned16(p.x)) {
    return false;
  }
  return true;
}

cudaError_t GemvEx(const GemvParams& p, cudaStream_t stream) {
  if (!GemvSupported(p)) return cudaErrorNotSupported;
  if (p.type == ElemType::kBF16) return LaunchGemv<__nv_bfloat16>(p, stream);
  return LaunchGemv<float>(p, stream);
}

cudaError_t Gemv(const void* w, ElemType t, int n, int k, const void* x, int m, void* y,
                 GemvEpilogue epilogue, cudaStream_t stream) {
  GemvParams p;
  p.w = w;
  p.type = t;
  p.n = n;
  p.k = k;
  p.m = m;
  p.x = x;
  p.y = y;
  p.epilogue = epilogue;
  return GemvEx(p, stream);
}

cudaError_t UnshardLogits(const float* gathered, int ranks, int rows, int vocab_per_rank,
                          int vocab, float* out, cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(rows) * vocab;
  if (total <= 0) return cudaSuccess;
  if (static_cast<int64_t>(ranks) * vocab_per_rank < vocab) return cudaErrorInvalidValue;
  return Launch(UnshardLogitsKernel, GridFor(total, 256), dim3(256), 0, stream, gathered, rows,
                vocab_per_rank, vocab, out);
}

size_t ArgMaxScratchBytes(int rows) {
  return static_cast<size_t>(rows) * (1 + 2 * kArgMaxChunks) * 4;
}

cudaError_t ArgMax(const float* logits, int rows, int vocab, int64_t ld, void* scratch,
                   int32_t* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (vocab < 1 || scratch == nullptr) return cudaErrorInvalidValue;
  // About 2048 values a block, at most kArgMaxChunks blocks a row.
  int chunks = std::min(kArgMaxChunks, (vocab + 2047) / 2048);
  const int chunk = (vocab + chunks - 1) / chunks;
  chunks = (vocab + chunk - 1) / chunk;
  int* counters = static_cast<int*>(scratch);
  float* part_v = reinterpret_cast<float*>(counters + rows);
  int* part_i = reinterpret_cast<int*>(part_v + static_cast<size_t>(rows) * kArgMaxChunks);
  return Launch(ArgMaxKernel, dim3(rows, chunks), dim3(kArgMaxThreads), 0, stream, logits, vocab,
                ld, chunk, part_v, part_i, counters, out);
}

cudaError_t F32ToElem(const float* in, int64_t n, void* out, ElemType t, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (t == ElemType::kBF16) {
    return Launch(F32ToElemKernel<__nv_bfloat16>, GridFor(n, 256), dim3(256), 0, stream, in, n,
                  static_cast<__nv_bfloat16*>(out));
  }
  return Launch(F32ToElemKernel<float>, GridFor(n, 256), dim3(256), 0, stream, in, n,
                static_cast<float*>(out));
}

cudaError_t ElemToF32(const void* in, ElemType t, int64_t n, float* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (t == ElemType::kBF16) {
    return Launch(ElemToF32Kernel<__nv_bfloat16>, GridFor(n, 256), dim3(256), 0, stream,
                  static_cast<const __nv_bfloat16*>(in), n, out);
  }
  return Launch(ElemToF32Kernel<float>, GridFor(n, 256), dim3(256), 0, stream,
                static_cast<const float*>(in), n, out);
}

cudaError_t FillRandom(void* out, ElemType t, int64_t n, uint64_t seed, float scale, float offset,
                       cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (t == ElemType::kBF16) {
    return Launch(FillRandomKernel<__nv_bfloat16>, GridFor(n, 256), dim3(256), 0, stream,
                  static_cast<__nv_bfloat16*>(out), n, seed, scale, offset);
  }
  return Launch(FillRandomKernel<float>, GridFor(n, 256), dim3(256), 0, stream,
                static_cast<float*>(out), n, seed, scale, offset);
}

}  // namespace shardvec::kernels::llm
