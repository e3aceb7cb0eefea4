// Exact and IVF-Flat k-nearest-neighbour search on one CUDA device.
//
//   auto ctx = kernels::Context::Create(/*device=*/0);
//   kernels::RowBias(**ctx, d_vectors, Storage::kFloat32, n, dim, Metric::kL2, nullptr, d_bias);
//   kernels::FlatData db{d_vectors, Storage::kFloat32, d_bias, d_ids, n, dim};
//   kernels::FlatSearch(**ctx, db, d_queries, nq, k, Metric::kL2, d_dist, d_ids_out);
//
// Every pointer except the Context's is device memory; every call is enqueued on the
// Context's stream (the call returns once the work is enqueued and checked, results are
// ready after ctx.Synchronize()). Results are nearest first: ascending squared L2,
// descending inner product. Deleted rows are never returned; missing
// results are (-1, +inf for L2 / -inf for inner product). Flat rows are deleted through
// FlatData::row_bias (+inf), IVF rows through an id of -1.
//
// How it works: distances come from cuBLAS GEMM (||x||^2 - 2<x,q> + ||q||^2 with stored
// norms), from a TF32 tensor-core GEMM that filters candidates in its epilogue (large L2
// batches, see FlatSearch) or, for batches of at most 8 queries, from a kernel that reads
// each row once;
// a block-wide radix select keeps the k best of each segment of a row, and further
// rounds reduce the segments until k are left, which are sorted. k has no limit below
// kMaxK: a larger k only means more rounds. The database is processed in tiles whose
// size follows the Context's scratch budget, so memory stays bounded for any n.
#ifndef SHARDVEC_KERNELS_KNN_H_
#define SHARDVEC_KERNELS_KNN_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shardvec::kernels {

enum class Metric { kL2, kInnerProduct };  // cosine: normalise, then kInnerProduct
enum class Storage { kFloat32, kFloat16 };  // float16 rows, float32 arithmetic

inline constexpr int kMaxK = 4096;

// Usable CUDA devices; 0 when there is no driver or no device (never an error).
int DeviceCount();
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)", or the error text.
std::string DeviceDescription(int device);

// A device, a stream, a cuBLAS handle and scratch memory for searches. Owned by one
// thread at a time (not thread-safe); the index backend keeps one per device.
class Context {
 public:
  // scratch_budget bounds the temporary memory of one search (distance tiles and
  // candidate lists, taken from the device's stream-ordered pool); FAILED_PRECONDITION
  // if the device does not exist.
  static absl::StatusOr<std::unique_ptr<Context>> Create(int device,
                                                         size_t scratch_budget = size_t{1} << 30);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device() const { return device_; }
  void* stream() const { return stream_; }  // cudaStream_t
  size_t scratch_budget() const { return scratch_budget_; }

  // Waits for the stream; returns the first asynchronous error, if any.
  absl::Status Synchronize();

  void* cublas() const { return cublas_; }  // cublasHandle_t

  // Whether FlatSearch may use TF32 tensor cores (results stay exact; see FlatSearch).
  bool allow_tf32() const { return allow_tf32_; }
  void set_allow_tf32(bool allow) { allow_tf32_ = allow; }

  // Databases of at least this many rows take the TF32 path's candidate filter: the GEMM
  // keeps only rows that can still be among a query's k best, and no distance tile is
  // written (see FlatSearch); with 320 dimensions or more, only for batches of 1024 or
  // more. 0: always (where the rows allow it); INT64_MAX: never.
  int64_t filter_min_rows() const { return filter_min_rows_; }
  void set_filter_min_rows(int64_t rows) { filter_min_rows_ = rows; }

  // What the last FlatSearch's candidate filter did; all zero when it did not run.
  struct FilterStats {
    int64_t queries = 0;
    int64_t sample_rows = 0;  // rows whose distances set the thresholds
    int64_t cap = 0;          // candidates a query may keep
    int64_t candidates = 0;   // kept, summed over the queries within the cap
    int64_t over_cap = 0;     // queries filtered again with 8 times the room
    int64_t tiled = 0;        // of those, still over: searched through a distance tile
  };
  const FilterStats& filter_stats() const { return filter_stats_; }
  void set_filter_stats(const FilterStats& stats) { filter_stats_ = stats; }

 private:
  Context() = default;
  int device_ = 0;
  void* stream_ = nullptr;
  void* cublas_ = nullptr;
  size_t scratch_budget_ = 0;
  bool allow_tf32_ = true;
  int64_t filter_min_rows_ = int64_t{1} << 16;
  FilterStats filter_stats_;
};

// A database of n rows on the device. The ranking key of row i for query q is
// row_bias[i] - 2<x_i,q> for L2 and row_bias[i] - <x_i,q> for inner product, so
// row_bias holds ||x_i||^2 (L2) or 0 (inner product), and +inf for a deleted row;
// RowBias() fills it.
struct FlatData {
  const void* vectors = nullptr;      // n x dim, float or __half per `storage`
  Storage storage = Storage::kFloat32;
  const float* row_bias = nullptr;    // n floats, see above
  const int64_t* ids = nullptr;       // n ids, or null for ids 0..n-1
  int64_t n = 0;
  int dim = 0;
};

// Exact k-NN of nq queries (device float, nq x dim): out_dist / out_ids are nq x k.
// Where UsesTensorCores() says so (and ctx.allow_tf32()), distances run in TF32 on the
// tensor cores and candidates are re-ranked in float32, so results stay exact:
//  - with at least ctx.filter_min_rows() rows (dim a multiple of 4), a sample of the rows
//    gives each query a bound on its k-th distance, and the GEMM itself keeps only the
//    rows within that bound plus the TF32 error, every row of the exact top k among them;
//  - otherwise 2k + 32 candidates come from a TF32 distance tile, with a per-query proof
//    that no other row can enter the top k.
// A query whose filtered list passes its cap takes the distance tile instead; one whose
// proof fails is searched again in float32 (*fallbacks counts those). Both paths
// synchronize the stream.
absl::Status FlatSearch(Context& ctx, const FlatData& db, const float* queries, int64_t nq, int k,
                        Metric metric, float* out_dist, int64_t* out_ids,
                        int64_t* fallbacks = nullptr);

// Whether FlatSearch takes the TF32 tensor-core path: float32 rows, L2, batches of 64
// or more, k <= 256.
bool UsesTensorCores(const FlatData& db, int64_t nq, int k, Metric metric);

// Inverted lists on the device: list l holds sizes[l] rows at vectors[l] with ids[l]
// (-1 marks a deleted row). The arrays of pointers are themselves device arrays.
// Distances within lists are computed directly (sum of squared differences), as
// FAISS's CPU IVF-Flat does.
struct IvfData {
  const float* centroids = nullptr;   // nlist x dim
  const float* centroid_bias = nullptr;  // RowBias() of the centroids under the metric
  int nlist = 0;
  int dim = 0;
  Storage storage = Storage::kFloat32;
  const void* const* vectors = nullptr;
  const int64_t* const* ids = nullptr;
  const int32_t* sizes = nullptr;
  int32_t max_list_size = 0;          // host-side upper bound on sizes[l]
};

// IVF-Flat k-NN: the nprobe nearest centroids by L2 (what FAISS's IVF quantizer does
// for L2; for inner product the quantizer ranks by inner product), then exact distances
// within those lists.
absl::Status IvfSearch(Context& ctx, const IvfData& ivf, const float* queries, int64_t nq, int k,
                       int nprobe, Metric metric, float* out_dist, int64_t* out_ids);

// The nprobe nearest centroids of each query (nq x nprobe list numbers), as IvfSearch
// picks them; used to assign vectors to lists on add.
absl::Status IvfAssign(Context& ctx, const IvfData& ivf, const float* queries, int64_t nq,
                       int nprobe, Metric metric, int64_t* out_lists);

// Merges m result lists per query (nq x m x k_in, each list in any order) into the k
// best (nq x k, sorted); duplicates of an id are not removed (shards own disjoint ids).
absl::Status MergeTopK(Context& ctx, const float* dist, const int64_t* ids, int64_t nq, int m,
                       int k_in, int k, Metric metric, float* out_dist, int64_t* out_ids);

// FlatData::row_bias for n rows: ||x||^2 (L2) or 0 (inner product), +inf where
// deleted[i] != 0 (deleted may be null).
absl::Status RowBias(Context& ctx, const void* vectors, Storage storage, int64_t n, int dim,
                     Metric metric, const uint8_t* deleted, float* out);

// float -> __half conversion on the device (n values).
absl::Status ToHalf(Context& ctx, const float* in, int64_t n, void* out);

}  // namespace shardvec::kernels

#endif  // SHARDVEC_KERNELS_KNN_H_
