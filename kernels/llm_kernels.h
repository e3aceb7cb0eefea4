// CUDA kernels of the Llama forward pass (llm/cuda/cuda_model.cc is the caller): plain
// CUDA types and cudaError_t, so that host code with absl and device code meet only here.
//
//   using namespace shardvec::kernels::llm;
//   EmbedGather(table, ElemType::kBF16, d_tokens, rows, hidden, d_h, stream);
//   AddRmsNorm(d_h, nullptr, nullptr, rows, hidden, norm_w, ElemType::kBF16, eps, d_x, stream);
//   Gemv(w, ElemType::kBF16, n, k, d_x, rows, d_y, GemvEpilogue::kStoreF32, stream);
//
// Conventions. Weights and the matrices fed to GEMMs are "elements" (ElemType: bf16 or
// f32); the residual stream, GEMM outputs, queries and all reductions are float32. A
// weight matrix is row-major [n][k] (a Hugging Face Linear: out x in), so y = x W^T.
// The KV cache of one layer is [slot][kv_head][position][head_dim] elements, keys and
// values in separate arrays. Every launcher only enqueues work on `stream`; with
// SetProgrammaticLaunch(true) the kernels are launched with programmatic dependent launch
// (each waits for its predecessor's results before touching activations, but may start,
// and prefetch weights, while the predecessor finishes).
#ifndef SHARDVEC_KERNELS_LLM_KERNELS_H_
#define SHARDVEC_KERNELS_LLM_KERNELS_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace shardvec::kernels::llm {

enum class ElemType { kF32, kBF16 };
inline int ElemSize(ElemType t) { return t == ElemType::kBF16 ? 2 : 4; }

// Process-wide: whether the launchers below use programmatic dependent launch (Hopper).
void SetProgrammaticLaunch(bool enabled);
bool ProgrammaticLaunch();

// Per-device kernel attributes (shared-memory limits) for the current device; call once
// before capturing launches into a CUDA graph (the launchers otherwise set them lazily).
cudaError_t PrepareKernels();

// out[r] = float(table[tokens[r]]) for r < rows (hidden values each).
cudaError_t EmbedGather(const void* table, ElemType t, const int32_t* tokens, int rows, int hidden,
                        float* out, cudaStream_t stream);

// Row i of the output reads residual row src = row_map ? row_map[i] : i:
//   v = h[src] (+ delta[src] when delta is set); out[i] = elem(v * rsqrt(mean(v^2) + eps) * w).
// Without row_map, v is also written back to h[src] (the fused residual add).
cudaError_t AddRmsNorm(float* h, const float* delta, const int32_t* row_map, int rows, int hidden,
                       const void* weight, ElemType t, float eps, void* out, cudaStream_t stream);

// The fused q/k/v projection's rows (one rank's heads), "rope-paired": for each query head
// and then each key head, rows (i, i + head_dim/2) of the head are adjacent (rows 2i and
// 2i + 1 of the head's block), so that one warp holds both halves of every rotated pair;
// the value rows follow in their natural order. QkvPairedRow(r) is the row of the
// Hugging Face [q | k | v] stacking that paired row r holds.
inline int QkvPairedRow(int r, int q_heads, int kv_heads, int head_dim) {
  const int rotated = (q_heads + kv_heads) * head_dim;
  if (r >= rotated) return r;
  const int head = r / head_dim, j = r % head_dim, half = head_dim / 2;
  return head * head_dim + (j % 2 == 0 ? j / 2 : half + j / 2);
}

// Rotary embedding (Hugging Face rotate_half: pairs (i, i + head_dim/2), angle
// position * inv_freq[i] in float32) fused with the KV-cache write. qkv rows hold the
// paired projection output (QkvPairedRow) in float32; q_out rows get the rotated queries
// [q_heads][head_dim] (float32, natural order), the caches the rotated keys and the
// values at (slots[r], head, positions[r]).
cudaError_t RopeKvWrite(const float* qkv, int rows, int q_heads, int kv_heads, int head_dim,
                        const int32_t* positions, const int32_t* slots, const float* inv_freq,
                        float* q_out, void* k_cache, void* v_cache, ElemType cache_type,
                        int max_seq_len, cudaStream_t stream);

// A run of consecutive batch rows of one slot at consecutive positions: rows
// [row_begin, row_begin + n_rows) at positions pos_begin, pos_begin + 1, ...
struct AttnTile {
  int32_t row_begin;
  int32_t n_rows;
  int32_t slot;
  int32_t pos_begin;
};

struct AttnShape {
  int q_heads = 0;      // on this rank
  int kv_heads = 0;     // on this rank; q_heads % kv_heads == 0
  int head_dim = 0;     // <= kMaxHeadDim
  int max_seq_len = 0;  // positions per slot in the cache
};
inline constexpr int kMaxHeadDim = 256;
// Query vectors (rows x heads of one kv group) one attention block handles: a tile has at
// most kAttnTileVectors / (q_heads / kv_heads) rows.
inline constexpr int kAttnTileVectors = 32;
inline int AttnTileRows(const AttnShape& s) {
  const int g = s.q_heads / s.kv_heads;
  return g >= kAttnTileVectors ? 1 : kAttnTileVectors / g;
}

// Causal attention over the KV cache: batch row r (position p, slot s) attends to
// positions 0..p of slot s; out[r][h*head_dim + d] (elements). Keys are split into
// chunks of split_len positions processed by separate blocks (flash-decoding); the last
// block of a (tile, kv head) to finish combines the splits, so no second pass runs.
// Positions beyond max_splits * split_len are an error of the caller. With
// max_splits > 1, partial must hold rows * q_heads * max_splits * (head_dim + 2) floats
// and counters n_tiles * kv_heads zeroed ints (they are left zeroed). older_ready: every
// tile's slot has no other tile in this call, so its keys before pos_begin were written by
// earlier launches and are loaded before waiting on the kernel that writes q (PDL).
cudaError_t Attention(const float* q, const AttnTile* tiles, int n_tiles, const AttnShape& shape,
                      const void* k_cache, const void* v_cache, ElemType cache_type, int split_len,
                      int max_splits, float* partial, int32_t* counters, void* out,
                      cudaStream_t stream, bool older_ready = false);
// Whether Attention supports this shape (head_dim, group size).
bool AttentionSupported(const AttnShape& shape);

// Decode attention: the same result as Attention for tiles of one row each (n_rows == 1)
// whose slots appear in no other tile, in one kernel with no partial results in global
// memory: one block per (tile, heads_per_block query heads of one kv head) whose warps
// split the keys, each key scored against the block's heads at once, and combine in
// shared memory. heads_per_block divides the group and is at most kMaxDecodeGroup; 0
// picks the fewest that keep the grid within one block per SM. The keys before each
// tile's position, up to DecodeAttentionKeys of them, are loaded into registers before
// waiting on the kernel that writes q (PDL); keys from there on are read after the wait
// (right at any position, but slower). DecodeAttentionKeys is 0 where the shape is not
// supported: head_dim > kMaxDecodeHeadDim, rows not a multiple of 16 bytes, or q heads not
// a multiple of kv heads.
inline constexpr int kMaxDecodeHeadDim = 128;
inline constexpr int kMaxDecodeGroup = 8;
int DecodeAttentionKeys(const AttnShape& shape, ElemType cache_type);
cudaError_t DecodeAttention(const float* q, const AttnTile* tiles, int n_tiles,
                            const AttnShape& shape, const void* k_cache, const void* v_cache,
                            ElemType cache_type, void* out, cudaStream_t stream,
                            int heads_per_block = 0);

// out[r][j] = elem(silu(gu[r][2j]) * gu[r][2j+1]) for j < inter (gate and up interleaved).
cudaError_t SwiGlu(const float* gu, int rows, int inter, void* out, ElemType t,
                   cudaStream_t stream);

enum class GemvEpilogue {
  kStoreF32,  // y[m][n] = float32 result
  kAddF32,    // y[m][n] += result (the residual add of a row-parallel projection at T = 1)
  kSwiGlu,    // rows 2j, 2j+1 are gate_j, up_j: y[m][j] = elem(silu(gate) * up)
  kQkvRope,   // rope-paired q/k/v rows (QkvPairedRow): rotate, write q_out and the caches
};

// Skinny GEMM y = x W^T for m <= kGemvMaxRows rows that reads each weight once with
// 16-byte loads, on a grid of resident blocks; a small matrix's rows are split along k over
// several warps of a block (a fixed-order reduction: the result does not depend on timing).
//
// Input: x (elements [m][k]), or, when norm_h is set, the RMS norm computed in the kernel:
// x[i] = elem(h[src] * rsqrt(mean(h[src]^2) + eps) * norm_w) with src = row_map ? row_map[i]
// : i (the norm of the next layer fused into the projection that reads it).
struct GemvParams {
  const void* w = nullptr;
  ElemType type = ElemType::kBF16;
  int n = 0, k = 0, m = 0;
  const void* x = nullptr;
  const float* norm_h = nullptr;
  const int32_t* row_map = nullptr;
  const void* norm_w = nullptr;
  float eps = 0.f;
  GemvEpilogue epilogue = GemvEpilogue::kStoreF32;
  void* y = nullptr;  // kStoreF32 / kAddF32: float [m][n]; kSwiGlu: elements [m][n/2]
  // kQkvRope: row m is at positions[m] of slots[m]; q_out float [m][q_heads][head_dim].
  const int32_t* positions = nullptr;
  const int32_t* slots = nullptr;
  const float* inv_freq = nullptr;
  int q_heads = 0, kv_heads = 0, head_dim = 0, max_seq_len = 0;
  float* q_out = nullptr;
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  // kStoreF32 only, optional: argmax_out[i] = ArgMax of y's row i (the same choice as
  // ArgMax below), computed in the kernel instead of a separate pass. argmax_scratch
  // holds ArgMaxScratchBytes(m) bytes, zeroed before the first call (calls leave it so; the
  // same buffer may serve ArgMax).
  int32_t* argmax_out = nullptr;
  void* argmax_scratch = nullptr;
  // Optional: 2 ints, zeroed before the first call (calls leave them so). Where blocks
  // take more than one group of rows, they take the groups after their first from this
  // counter instead of in a fixed order, and start their first loads in four phases about
  // 1 us apart, so that co-resident blocks do not all wait on DRAM and then all compute
  // (on an H100, batch-1 decode 1.000-1.008 ms a step against 1.032-1.070 without).
  int* sched = nullptr;
};
inline constexpr int kGemvMaxRows = 8;
// Whether GemvEx takes these parameters (m, alignment, k a multiple of 16 bytes of
// elements, the fused norm's input fitting in shared memory); otherwise the caller uses
// cuBLAS and separate kernels.
bool GemvSupported(const GemvParams& p);
// cudaErrorNotSupported when !GemvSupported(p).
cudaError_t GemvEx(const GemvParams& p, cudaStream_t stream);
// Shorthand for a plain x input.
cudaError_t Gemv(const void* w, ElemType t, int n, int k, const void* x, int m, void* y,
                 GemvEpilogue epilogue, cudaStream_t stream);

// out[s][v] = gathered[r][s][v - r*vocab_per_rank] for v < vocab, where r = v / vocab_per_rank:
// the all-gathered LM-head shards ([ranks][rows][vocab_per_rank]) as full rows.
cudaError_t UnshardLogits(const float* gathered, int ranks, int rows, int vocab_per_rank,
                          int vocab, float* out, cudaStream_t stream);

// out[r] = argmax of logits[r][0..vocab) (row stride ld), lowest id on ties, a NaN never
// beating a number (llm::SampleToken's greedy choice). Several blocks share a row; scratch
// holds ArgMaxScratchBytes(rows) bytes, zeroed before the first call (calls leave it so).
size_t ArgMaxScratchBytes(int rows);
cudaError_t ArgMax(const float* logits, int rows, int vocab, int64_t ld, void* scratch,
                   int32_t* out, cudaStream_t stream);

cudaError_t F32ToElem(const float* in, int64_t n, void* out, ElemType t, cudaStream_t stream);
cudaError_t ElemToF32(const void* in, ElemType t, int64_t n, float* out, cudaStream_t stream);

// Deterministic pseudo-random weights: out[i] = offset + scale * u, u uniform in [-1, 1)
// from a hash of (seed, i).
cudaError_t FillRandom(void* out, ElemType t, int64_t n, uint64_t seed, float scale, float offset,
                       cudaStream_t stream);

}  // namespace shardvec::kernels::llm

#endif  // SHARDVEC_KERNELS_LLM_KERNELS_H_
