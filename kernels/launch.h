// Kernel launchers behind knn.h (internal): plain CUDA types and cudaError_t, so that
// knn.cc (host code with absl) and knn_kernels.cu (device code) meet without either
// including the other's world.
//
// Keys: a distance becomes a uint32 key whose unsigned order is the ranking order
// (OrderKey in knn_kernels.cu); kMissingKey sorts after every real key.
#ifndef SHARDVEC_KERNELS_LAUNCH_H_
#define SHARDVEC_KERNELS_LAUNCH_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace shardvec::kernels::internal {

inline constexpr uint32_t kMissingKey = 0xffffffffu;

// Smallest power of two >= k.
inline int SortWidth(int k) {
  int p = 1;
  while (p < k) p <<= 1;
  return p;
}

// Elements one select block reduces to k: at least twice k, at least 4096.
inline int SegmentLength(int k) {
  int s = 2 * SortWidth(k);
  return s < 4096 ? 4096 : s;
}

// Columns of a dot-product tile that one block of round one reduces to k.
inline constexpr int kTileSegment = 8192;

// dots[q * ld + i] = <x[row0 + i], queries[q]> for i < rows, q < nq <= 8.
cudaError_t SmallBatchDots(const void* x, bool half, int dim, int64_t row0, int64_t rows,
                           const float* queries, int nq, float* dots, int64_t ld,
                           cudaStream_t stream);

// Round one from a tile of dot products (nq x rows, leading dimension ld, rows of the
// database starting at row0): key = bias[row0 + i] + scale * tile[q][i]. Each segment
// of seg_len columns yields k (key, row) pairs at out_keys/out_vals[q * out_stride +
// out_offset + seg * k], padded with kMissingKey / -1.
cudaError_t SelectFromTile(const float* tile, int64_t nq, int64_t rows, int64_t ld,
                           const float* bias, int64_t row0, float scale, int k,
                           uint32_t* out_keys, int64_t* out_vals, int64_t out_stride,
                           int64_t out_offset, cudaStream_t stream);

// Further rounds: row q has len pairs at keys/vals[q * stride]; each segment of
// SegmentLength(k) yields k pairs at out[q * out_stride + seg * k]. Returns the number
// of segments through *segments.
cudaError_t SelectRound(const uint32_t* keys, const int64_t* vals, int64_t nq, int64_t len,
                        int64_t stride, int k, uint32_t* out_keys, int64_t* out_vals,
                        int64_t out_stride, int64_t* segments, cudaStream_t stream);

// The last step: row q's len <= SegmentLength(k) pairs -> its k best, sorted, as
// distances and ids. dist = key value (+ ||queries[q]||^2 when queries is set (L2; the
// norm is computed here, dim floats per query), clamped at 0) or its
// negation (inner product); id = id_map[val] (id_map null: val itself); a missing or
// +inf key gives (-1, +inf / -inf).
cudaError_t Finalize(const uint32_t* keys, const int64_t* vals, int64_t nq, int64_t len,
                     int64_t stride, int k, bool inner_product, const float* queries, int dim,
                     const int64_t* id_map, float* out_dist, int64_t* out_ids,
                     cudaStream_t stream);

// Distances (or negated inner products) to keys: keys[i] = OrderKey(sign * dist[i]).
cudaError_t DistancesToKeys(const float* dist, int64_t n, bool inner_product, uint32_t* keys,
                            cudaStream_t stream);

// Copies k pairs per row: dst[q * dst_stride + j] = src[q * src_stride + j].
cudaError_t CopyPairs(const uint32_t* src_keys, const int64_t* src_vals, int64_t src_stride,
                      uint32_t* dst_keys, int64_t* dst_vals, int64_t dst_stride, int64_t nq,
                      int k, cudaStream_t stream);

// *out = the largest finite value of x[0..n) (0 if none); values are >= 0 or +inf.
cudaError_t MaxFinite(const float* x, int64_t n, float* out, cudaStream_t stream);

// Exact float32 re-ranking of kc TF32 candidates per query (keys: approximate
// row_bias - 2<x,q>, vals: rows): out = (OrderKey(exact squared distance), row), and
// ok[q] = 1 when the k-th exact distance is provably below every non-candidate's
// (see FlatSearch in knn.h), given eps and *max_sq_norm = max ||x||^2.
cudaError_t RerankL2(const float* x, int dim, const float* queries, int64_t nq,
                     const uint32_t* approx_keys, const int64_t* rows, int kc, int k, float eps,
                     const float* max_sq_norm, uint32_t* out_keys, int64_t* out_vals, uint8_t* ok,
                     cudaStream_t stream);

// Fills nq x k pairs with (kMissingKey, -1).
cudaError_t FillMissing(uint32_t* keys, int64_t* vals, int64_t nq, int64_t stride, int k,
                        cudaStream_t stream);

// IVF list scan: for query q and probe p, list l = lists[q * nprobe + p] (< 0: none);
// the k best of that list (direct squared L2, or negated inner product; rows with id -1
// skipped) as (key, id) at out[(q * nprobe + p) * k].
cudaError_t IvfScan(const void* const* list_vectors, const int64_t* const* list_ids,
                    const int32_t* list_sizes, bool half, int dim, const float* queries,
                    int64_t nq, const int64_t* lists, int nprobe, int k, bool inner_product,
                    uint32_t* out_keys, int64_t* out_vals, cudaStream_t stream);

// out[i] = ||x_i||^2 (L2) or 0, +inf where deleted && deleted[i].
cudaError_t RowBias(const void* x, bool half, int64_t n, int dim, bool inner_product,
                    const uint8_t* deleted, float* out, cudaStream_t stream);

cudaError_t ToHalf(const float* in, int64_t n, void* out, cudaStream_t stream);

// out[i] = i for i < n.
cudaError_t Iota(int64_t* out, int64_t n, cudaStream_t stream);

// Copies n rows of row_words 32-bit words: dst row dst_rows[i] (or i when dst_rows is
// null) = src row src_rows[i] (or i when null). One launch instead of a copy per row.
cudaError_t CopyRows(const void* src, const int64_t* src_rows, void* dst, const int64_t* dst_rows,
                     int64_t n, int64_t row_words, cudaStream_t stream);

// The candidate filter of FlatSearch's TF32 path (knn.cc, FlatSearchFiltered).
// FilterPrep: per query, the TF32-rounded query, its norm, its threshold (from the k
// smallest TF32 sample keys, sample_keys with the sample's rows sample_rows, nq x k in any
// order, and the sample's RowBias sample_bias) and count[q] = 0. A query whose sample has
// fewer than k live rows gets count[q] = kNoThreshold and no candidates.
inline constexpr int32_t kNoThreshold = int32_t{1} << 30;
cudaError_t FilterPrep(const float* queries, int64_t nq, int dim, const uint32_t* sample_keys,
                       const int64_t* sample_rows, const float* sample_bias, int k, float c1,
                       float c2, float* q_tf32, float* q_norm, float* thr, int32_t* count,
                       cudaStream_t stream);

// Whether FilterGemm can read these rows: dim a multiple of 4, rows 16-byte aligned.
bool FilterGemmSupports(const void* x, int dim);

// Appends to cand[q * cap ...] every row with key = bias - 2 <x, q> <= thr[q] + margin, and
// its key to cand_key, counting them in count[q] (which may pass cap: the list
// overflowed).
cudaError_t FilterGemm(const float* x, const float* bias, int64_t n, int dim, const float* q_tf32,
                       int64_t nq, const float* thr, const float* q_norm, float c1, float c2,
                       int32_t* cand, float* cand_key, int cap, int32_t* count,
                       cudaStream_t stream);

// FilterGemm's test over a TF32 dot-product tile (nq x rows at leading dimension ld, of
// rows row0...) written by cuBLAS; nq <= 65535.
cudaError_t FilterTile(const float* tile, int64_t nq, int64_t rows, int64_t ld, int64_t row0,
                       const float* bias, const float* thr, const float* q_norm, float c1,
                       float c2, int32_t* cand, float* cand_key, int cap, int32_t* count,
                       cudaStream_t stream);

// Exact float32 distances of the candidates (the first cap of an overflowed list) that can
// still be among the k best, given their keys (cand_key; null: of all of them), as nq x cap
// (key, row) pairs, the others missing.
cudaError_t RerankCandidates(const float* x, const float* bias, int dim, const float* queries,
                             int64_t nq, const int32_t* cand, const float* cand_key, int cap,
                             const int32_t* count, int k, float c1, float c2, uint32_t* out_keys,
                             int64_t* out_vals, cudaStream_t stream);

// Rows i * stride (i < s) and their biases, packed into out_x / out_bias.
cudaError_t GatherStrided(const float* x, const float* bias, int dim, int64_t stride, int64_t s,
                          float* out_x, float* out_bias, cudaStream_t stream);

}  // namespace shardvec::kernels::internal

#endif  // SHARDVEC_KERNELS_LAUNCH_H_
