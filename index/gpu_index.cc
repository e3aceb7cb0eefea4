#include "index/gpu_index.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <limits>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/memory/memory.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "faiss/IndexIVF.h"
#include "faiss/impl/io.h"
#include "faiss/index_factory.h"
#include "faiss/index_io.h"
#include "index/faiss_store.h"
#include "index/input_checks.h"
#include "kernels/knn.h"

namespace shardvec::index {
namespace {

using internal::CheckArrays;
using internal::CheckFinite;
using internal::CheckIds;
using internal::CheckSpec;
using internal::ForMetric;
using internal::NormalizeRows;

using internal::CatchFaiss;
using internal::ToFaissMetric;

constexpr int kMaxNlist = 1 << 20;
// FAISS's k-means warns below this many training points per centroid (as FaissIndex).
constexpr int64_t kPointsPerCentroid = 39;
constexpr uint32_t kSaveMagic = 0x49475653;  // "SVGI"
constexpr uint32_t kSaveVersion = 1;
// Snapshot layouts (gpu_index.h); append-only.
constexpr uint8_t kLayoutExact = 0;
constexpr uint8_t kLayoutStaged = 1;
constexpr uint8_t kLayoutIvf = 2;
// Rows a new list starts with: IVF lists are many and small, a Flat list is one.
constexpr int64_t kMinIvfCapacity = 32;
constexpr int64_t kMinFlatCapacity = 1024;
// Device memory for one partition's search results and queries; larger batches are cut.
constexpr int64_t kSearchChunkBytes = int64_t{64} << 20;

absl::Status Cuda(cudaError_t e, absl::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clear a sticky error so the next call starts clean
  if (e == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": GPU out of memory"));
  }
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

cudaStream_t StreamOf(const kernels::Context& ctx) {
  return static_cast<cudaStream_t>(ctx.stream());
}

absl::Status UseDevice(const kernels::Context& ctx) {
  return Cuda(cudaSetDevice(ctx.device()), "cudaSetDevice");
}

kernels::Metric KernelMetric(Metric metric) {
  // kCosine is inner product on vectors normalised on the host.
  return metric == Metric::kL2 ? kernels::Metric::kL2 : kernels::Metric::kInnerProduct;
}

// Device memory of one device, freed on destruction. Callers synchronize the stream
// before dropping memory that queued work still uses.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  ~DeviceMemory() { Reset(); }
  DeviceMemory(DeviceMemory&& other) noexcept
      : device_(other.device_), ptr_(std::exchange(other.ptr_, nullptr)) {}
  DeviceMemory& operator=(DeviceMemory&& other) noexcept {
    if (this != &other) {
      Reset();
      device_ = other.device_;
      ptr_ = std::exchange(other.ptr_, nullptr);
    }
    return *this;
  }

  absl::Status Allocate(int device, size_t bytes) {
    Reset();
    device_ = device;
    if (absl::Status s = Cuda(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
    void* p = nullptr;
    if (absl::Status s = Cuda(cudaMalloc(&p, std::max<size_t>(bytes, 1)), "cudaMalloc"); !s.ok()) {
      return s;
    }
    ptr_ = p;
    return absl::OkStatus();
  }

  void Reset() {
    if (ptr_ == nullptr) return;
    cudaSetDevice(device_);
    cudaFree(ptr_);
    ptr_ = nullptr;
  }

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  int device_ = 0;
  void* ptr_ = nullptr;
};

// Per-call device buffers from the stream-ordered pool, freed in stream order at scope
// exit.
class StreamTemp {
 public:
  explicit StreamTemp(const kernels::Context& ctx) : stream_(StreamOf(ctx)) {}
  ~StreamTemp() {
    for (void* p : blocks_) cudaFreeAsync(p, stream_);
  }
  StreamTemp(const StreamTemp&) = delete;
  StreamTemp& operator=(const StreamTemp&) = delete;

  template <typename T>
  absl::Status Alloc(int64_t count, T** out) {
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(1, sizeof(T) * static_cast<size_t>(count));
    if (absl::Status s = Cuda(cudaMallocAsync(&p, bytes, stream_), "cudaMallocAsync"); !s.ok()) {
      return s;
    }
    blocks_.push_back(p);
    *out = static_cast<T*>(p);
    return absl::OkStatus();
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> blocks_;
};

// What a factory string means on the GPU.
struct GpuFactory {
  int nlist = 0;  // 0: exact
  bool half = false;
};

absl::Status Unsupported(absl::string_view factory) {
  return absl::InvalidArgumentError(absl::StrCat(
      "index_spec: '", factory,
      "' does not run on the GPU; the GPU backend supports Flat, SQfp16, IVF<n>,Flat and "
      "IVF<n>,SQfp16 (n in [1, ",
      kMaxNlist, "])"));
}

absl::StatusOr<GpuFactory> ParseFactory(absl::string_view factory) {
  GpuFactory parsed;
  absl::string_view rest = factory;
  if (absl::ConsumePrefix(&rest, "IVF")) {
    const size_t comma = rest.find(',');
    const absl::string_view digits = rest.substr(0, comma);
    if (comma == absl::string_view::npos || digits.empty() || digits.size() > 7 ||
        !std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit) ||
        !absl::SimpleAtoi(digits, &parsed.nlist) || parsed.nlist < 1 || parsed.nlist > kMaxNlist) {
      return Unsupported(factory);
    }
    rest.remove_prefix(comma + 1);
  }
  if (rest == "SQfp16") {
    parsed.half = true;
  } else if (rest != "Flat") {
    return Unsupported(factory);
  }
  return parsed;
}

// An Upsert's rows with repeated ids resolved (the last occurrence wins) and vectors
// prepared for the metric.
struct PreparedRows {
  std::vector<uint64_t> ids;
  std::vector<float> x;
};

PreparedRows Prepare(Metric metric, int dim, int64_t n, const uint64_t* ids, const float* x) {
  PreparedRows rows;
  absl::flat_hash_map<uint64_t, int64_t> last;
  last.reserve(n);
  for (int64_t i = 0; i < n; ++i) last[ids[i]] = i;
  rows.ids.reserve(last.size());
  rows.x.reserve(last.size() * dim);
  for (int64_t i = 0; i < n; ++i) {
    if (last[ids[i]] != i) continue;
    rows.ids.push_back(ids[i]);
    rows.x.insert(rows.x.end(), x + i * dim, x + (i + 1) * dim);
  }
  if (metric == Metric::kCosine) {
    NormalizeRows(dim, static_cast<int64_t>(rows.ids.size()), rows.x.data());
  }
  return rows;
}

absl::StatusOr<std::string> Serialize(const faiss::Index& index) {
  faiss::VectorIOWriter writer;
  absl::Status status = CatchFaiss("serialize", [&] { faiss::write_index(&index, &writer); });
  if (!status.ok()) return status;
  return std::string(writer.data.begin(), writer.data.end());
}

// The nlist x dim coarse centroids of a TrainedTemplate(), after the checks
// FaissIndex::InstallTrained makes plus the ones the GPU needs (an IVF of nlist lists).
absl::StatusOr<std::vector<float>> CentroidsOf(const std::string& bytes, const IndexSpec& spec,
                                               int nlist) {
  faiss::VectorIOReader reader;
  reader.data.assign(bytes.begin(), bytes.end());
  std::unique_ptr<faiss::Index> index;
  absl::Status status = CatchFaiss("deserialize", [&] { index.reset(faiss::read_index(&reader)); });
  if (!status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("trained template: ", status.message()));
  }
  if (index->d != spec.dim || index->metric_type != ToFaissMetric(spec.metric) ||
      !index->is_trained || index->ntotal != 0) {
    return absl::InvalidArgumentError(
        "trained template: not an empty trained index of this collection's spec");
  }
  const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(index.get());
  if (ivf == nullptr || static_cast<int64_t>(ivf->nlist) != nlist || ivf->quantizer == nullptr ||
      ivf->quantizer->ntotal != nlist) {
    return absl::InvalidArgumentError(
        absl::StrCat("trained template: not an IVF index of ", nlist, " lists"));
  }
  std::vector<float> centroids(static_cast<size_t>(nlist) * spec.dim);
  status =
      CatchFaiss("centroids", [&] { ivf->quantizer->reconstruct_n(0, nlist, centroids.data()); });
  if (!status.ok()) return status;
  return centroids;
}

int64_t Handle(int list, int64_t row) { return (static_cast<int64_t>(list) << 32) | row; }

}  // namespace

namespace internal {

// One inverted list (or the single list of an exact partition) on one device.
struct RowList {
  DeviceMemory vectors;  // capacity x dim, float or __half
  // Exact: float row_bias[capacity] (+inf for a tombstone). IVF: int64 handles
  // (Handle(list, row), -1 for a tombstone), which the kernels return for hits.
  DeviceMemory aux;
  std::vector<uint64_t> ids;  // user id of each row, kNoId for a tombstone
  int64_t capacity = 0;
  int64_t dead = 0;
  // Tombstoned rows [dirty_lo, dirty_hi) whose aux entries are not yet rewritten.
  int64_t dirty_lo = std::numeric_limits<int64_t>::max();
  int64_t dirty_hi = 0;

  int64_t size() const { return static_cast<int64_t>(ids.size()); }
};

// The rows of one partition: one exact list, or nlist inverted lists and the coarse
// centroids. Every call runs on the partition's Context and synchronizes before it
// returns; callers hold the device's lock (GpuPartition::mu()).
class RowSet {
 public:
  static absl::StatusOr<std::unique_ptr<RowSet>> Create(kernels::Context& ctx, int dim,
                                                        Metric metric, bool half, int nlist,
                                                        const float* centroids);

  ~RowSet() {
    // Nothing queued may still use the memory about to be freed.
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream_);
  }

  int64_t live() const { return live_; }
  int64_t dead() const { return dead_; }
  int nlist() const { return nlist_; }

  // Appends n rows given as host floats (prepared for the metric); IVF assigns each to
  // its nearest centroid on the GPU. lists/rows (n each) receive where they went.
  absl::Status AppendFloat(kernels::Context& ctx, int64_t n, const uint64_t* ids, const float* x,
                           int32_t* lists, int32_t* rows);
  // Appends n rows in the storage format (float or float16) to one list.
  absl::Status AppendRaw(kernels::Context& ctx, int list, int64_t n, const uint64_t* ids,
                         const void* raw, int32_t* rows);
  // Tombstones a row on the host; Flush() makes the device see it.
  void Kill(int list, int32_t row);
  // Uploads tombstones and (IVF) the list tables.
  absl::Status Flush(kernels::Context& ctx);
  // Rewrites the lists that hold tombstones without them; `moved` is called with the
  // new (list, row) of every row of those lists.
  template <typename Moved>
  absl::Status Compact(kernels::Context& ctx, Moved moved);

  // k nearest per query (device queries and outputs): distances and handles.
  absl::Status Search(kernels::Context& ctx, const float* queries, int64_t nq, int k, int nprobe,
                      float* distances, int64_t* handles) const;
  // The user id a search handle stands for; kNoId for none.
  uint64_t IdOf(int64_t handle) const;

  // Calls fn(list, n, ids, raw rows in the storage format) for every list's live rows.
  template <typename Fn>
  absl::Status ForEachLiveBlock(kernels::Context& ctx, Fn fn) const;
  // Lists holding live rows.
  int64_t LiveBlocks() const;
  size_t row_bytes() const { return static_cast<size_t>(dim_) * (half_ ? 2 : 4); }

 private:
  RowSet(int device, cudaStream_t stream, int dim, Metric metric, bool half, int nlist)
      : device_(device),
        stream_(stream),
        dim_(dim),
        metric_(metric),
        half_(half),
        nlist_(nlist),
        lists_(std::max(nlist, 1)) {}

  struct Group {
    int list;
    int64_t begin;
    int64_t count;
  };
  // Appends rows already grouped by list: group g is rows [begin, begin + count) of
  // ids and of d_rows (device; float when `is_float`, else the storage format).
  absl::Status AppendGroups(kernels::Context& ctx, const std::vector<Group>& groups,
                            const uint64_t* ids, const void* d_rows, bool is_float, int32_t* rows);
  absl::Status Reserve(kernels::Context& ctx, RowList& list, int64_t need);
  // Device row_bias or handles of rows [lo, hi) of a list, from its host ids.
  absl::Status WriteAux(kernels::Context& ctx, int list, int64_t lo, int64_t hi, StreamTemp* temp,
                        std::vector<std::vector<int64_t>>* keep);
  absl::Status UploadTables(kernels::Context& ctx);
  kernels::Storage storage() const {
    return half_ ? kernels::Storage::kFloat16 : kernels::Storage::kFloat32;
  }
  kernels::IvfData IvfView() const;

  const int device_;
  const cudaStream_t stream_;
  const int dim_;
  const Metric metric_;
  const bool half_;
  const int nlist_;  // 0: exact
  std::vector<RowList> lists_;
  int64_t live_ = 0;
  int64_t dead_ = 0;
  // IVF only: centroids and their bias, and the device tables IvfData points to.
  DeviceMemory centroids_;
  DeviceMemory centroid_bias_;
  DeviceMemory table_vectors_;  // nlist const void*
  DeviceMemory table_ids_;      // nlist const int64_t*
  DeviceMemory table_sizes_;    // nlist int32
  int32_t max_list_size_ = 0;
  bool tables_dirty_ = false;
};

absl::StatusOr<std::unique_ptr<RowSet>> RowSet::Create(kernels::Context& ctx, int dim,
                                                       Metric metric, bool half, int nlist,
                                                       const float* centroids) {
  if (absl::Status s = UseDevice(ctx); !s.ok()) return s;
  std::unique_ptr<RowSet> set(new RowSet(ctx.device(), StreamOf(ctx), dim, metric, half, nlist));
  if (nlist == 0) return set;
  const int device = ctx.device();
  const size_t n = static_cast<size_t>(nlist);
  for (auto [memory, bytes] : {std::pair{&set->centroids_, n * dim * sizeof(float)},
                               std::pair{&set->centroid_bias_, n * sizeof(float)},
                               std::pair{&set->table_vectors_, n * sizeof(void*)},
                               std::pair{&set->table_ids_, n * sizeof(int64_t*)},
                               std::pair{&set->table_sizes_, n * sizeof(int32_t)}}) {
    if (absl::Status s = memory->Allocate(device, bytes); !s.ok()) return s;
  }
  if (absl::Status s = Cuda(cudaMemcpy(set->centroids_.get(), centroids, n * dim * sizeof(float),
                                       cudaMemcpyHostToDevice),
                            "upload centroids");
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          kernels::RowBias(ctx, set->centroids_.get(), kernels::Storage::kFloat32, nlist, dim,
                           KernelMetric(metric), nullptr, set->centroid_bias_.as<float>());
      !s.ok()) {
    return s;
  }
  set->tables_dirty_ = true;
  if (absl::Status s = set->Flush(ctx); !s.ok()) return s;
  return set;
}

kernels::IvfData RowSet::IvfView() const {
  kernels::IvfData ivf;
  ivf.centroids = centroids_.as<const float>();
  ivf.centroid_bias = centroid_bias_.as<const float>();
  ivf.nlist = nlist_;
  ivf.dim = dim_;
  ivf.storage = storage();
  ivf.vectors = table_vectors_.as<const void* const>();
  ivf.ids = table_ids_.as<const int64_t* const>();
  ivf.sizes = table_sizes_.as<const int32_t>();
  ivf.max_list_size = max_list_size_;
  return ivf;
}

absl::Status RowSet::Reserve(kernels::Context& ctx, RowList& list, int64_t need) {
  if (need <= list.capacity) return absl::OkStatus();
  const int64_t capacity =
      std::max({need, 2 * list.capacity, nlist_ > 0 ? kMinIvfCapacity : kMinFlatCapacity});
  const size_t aux_bytes = nlist_ > 0 ? sizeof(int64_t) : sizeof(float);
  DeviceMemory vectors, aux;
  if (absl::Status s = vectors.Allocate(device_, capacity * row_bytes()); !s.ok()) return s;
  if (absl::Status s = aux.Allocate(device_, capacity * aux_bytes); !s.ok()) return s;
  if (list.size() > 0) {
    if (absl::Status s =
            Cuda(cudaMemcpyAsync(vectors.get(), list.vectors.get(), list.size() * row_bytes(),
                                 cudaMemcpyDeviceToDevice, stream_),
                 "copy list");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = Cuda(cudaMemcpyAsync(aux.get(), list.aux.get(), list.size() * aux_bytes,
                                              cudaMemcpyDeviceToDevice, stream_),
                              "copy list");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ctx.Synchronize(); !s.ok()) return s;
  }
  list.vectors = std::move(vectors);
  list.aux = std::move(aux);
  list.capacity = capacity;
  tables_dirty_ = true;
  return absl::OkStatus();
}

absl::Status RowSet::AppendGroups(kernels::Context& ctx, const std::vector<Group>& groups,
                                  const uint64_t* ids, const void* d_rows, bool is_float,
                                  int32_t* rows) {
  // Room first, so that a failed allocation leaves every list as it was.
  for (const Group& g : groups) {
    RowList& list = lists_[g.list];
    if (list.size() + g.count > std::numeric_limits<int32_t>::max()) {
      return absl::ResourceExhaustedError("index: a GPU list would pass 2^31 rows");
    }
    if (absl::Status s = Reserve(ctx, list, list.size() + g.count); !s.ok()) return s;
  }
  const size_t in_row_bytes = is_float ? dim_ * sizeof(float) : row_bytes();
  std::vector<int64_t> handles;
  if (nlist_ > 0) {
    int64_t total = 0;
    for (const Group& g : groups) total += g.count;
    handles.resize(total);
  }
  int64_t h = 0;
  for (const Group& g : groups) {
    RowList& list = lists_[g.list];
    const int64_t first = list.size();
    char* dst = list.vectors.as<char>() + first * row_bytes();
    const char* src = static_cast<const char*>(d_rows) + g.begin * in_row_bytes;
    absl::Status s;
    if (is_float && half_) {
      s = kernels::ToHalf(ctx, reinterpret_cast<const float*>(src), g.count * dim_, dst);
    } else {
      s = Cuda(cudaMemcpyAsync(dst, src, g.count * row_bytes(), cudaMemcpyDeviceToDevice, stream_),
               "copy rows");
    }
    if (!s.ok()) return s;
    if (nlist_ == 0) {
      s = kernels::RowBias(ctx, dst, storage(), g.count, dim_, KernelMetric(metric_), nullptr,
                           list.aux.as<float>() + first);
    } else {
      for (int64_t j = 0; j < g.count; ++j) handles[h + j] = Handle(g.list, first + j);
      s = Cuda(cudaMemcpyAsync(list.aux.as<int64_t>() + first, handles.data() + h,
                               g.count * sizeof(int64_t), cudaMemcpyHostToDevice, stream_),
               "upload handles");
      h += g.count;
    }
    if (!s.ok()) return s;
  }
  if (absl::Status s = ctx.Synchronize(); !s.ok()) return s;
  // Only now do the rows count: until here they sat past every list's size, unseen.
  for (const Group& g : groups) {
    RowList& list = lists_[g.list];
    for (int64_t j = 0; j < g.count; ++j) {
      rows[g.begin + j] = static_cast<int32_t>(list.size());
      list.ids.push_back(ids[g.begin + j]);
    }
    live_ += g.count;
  }
  tables_dirty_ = true;
  return absl::OkStatus();
}

absl::Status RowSet::AppendFloat(kernels::Context& ctx, int64_t n, const uint64_t* ids,
                                 const float* x, int32_t* lists, int32_t* rows) {
  if (n == 0) return absl::OkStatus();
  if (absl::Status s = UseDevice(ctx); !s.ok()) return s;
  StreamTemp temp(ctx);
  float* d_x = nullptr;
  if (absl::Status s = temp.Alloc(n * dim_, &d_x); !s.ok()) return s;
  if (absl::Status s =
          Cuda(cudaMemcpyAsync(d_x, x, n * dim_ * sizeof(float), cudaMemcpyHostToDevice, stream_),
               "upload rows");
      !s.ok()) {
    return s;
  }
  if (nlist_ == 0) {
    std::fill(lists, lists + n, 0);
    return AppendGroups(ctx, {Group{0, 0, n}}, ids, d_x, /*is_float=*/true, rows);
  }
  int64_t* d_lists = nullptr;
  if (absl::Status s = temp.Alloc(n, &d_lists); !s.ok()) return s;
  std::vector<int64_t> assigned(n);
  if (absl::Status s =
          kernels::IvfAssign(ctx, IvfView(), d_x, n, 1, KernelMetric(metric_), d_lists);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Cuda(cudaMemcpyAsync(assigned.data(), d_lists, n * sizeof(int64_t),
                                            cudaMemcpyDeviceToHost, stream_),
                            "download lists");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ctx.Synchronize(); !s.ok()) return s;
  // Group the rows by list (a counting sort), upload them in that order, append.
  std::vector<int64_t> start(nlist_ + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    if (assigned[i] < 0 || assigned[i] >= nlist_) {
      return absl::InternalError(
          absl::StrCat("list assignment: row ", i, " got list ", assigned[i]));
    }
    ++start[assigned[i] + 1];
  }
  for (int l = 0; l < nlist_; ++l) start[l + 1] += start[l];
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[next[assigned[i]]++] = i;
  std::vector<uint64_t> sorted_ids(n);
  std::vector<float> sorted_x(n * dim_);
  for (int64_t j = 0; j < n; ++j) {
    sorted_ids[j] = ids[order[j]];
    std::copy(x + order[j] * dim_, x + (order[j] + 1) * dim_, sorted_x.begin() + j * dim_);
  }
  if (absl::Status s = Cuda(cudaMemcpyAsync(d_x, sorted_x.data(), n * dim_ * sizeof(float),
                                            cudaMemcpyHostToDevice, stream_),
                            "upload rows");
      !s.ok()) {
    return s;
  }
  std::vector<Group> groups;
  for (int l = 0; l < nlist_; ++l) {
    if (start[l + 1] > start[l]) groups.push_back({l, start[l], start[l + 1] - start[l]});
  }
  std::vector<int32_t> sorted_rows(n);
  if (absl::Status s = AppendGroups(ctx, groups, sorted_ids.data(), d_x, true, sorted_rows.data());
      !s.ok()) {
    return s;
  }
  for (int64_t j = 0; j < n; ++j) {
    lists[order[j]] = static_cast<int32_t>(assigned[order[j]]);
    rows[order[j]] = sorted_rows[j];
  }
  return absl::OkStatus();
}

absl::Status RowSet::AppendRaw(kernels::Context& ctx, int list, int64_t n, const uint64_t* ids,
                               const void* raw, int32_t* rows) {
  if (n == 0) return absl::OkStatus();
  if (absl::Status s = UseDevice(ctx); !s.ok()) return s;
  StreamTemp temp(ctx);
  char* d_raw = nullptr;
  if (absl::Status s = temp.Alloc(n * row_bytes(), &d_raw); !s.ok()) return s;
  if (absl::Status s =
          Cuda(cudaMemcpyAsync(d_raw, raw, n * row_bytes(), cudaMemcpyHostToDevice, stream_),
               "upload rows");
      !s.ok()) {
    return s;
  }
  return AppendGroups(ctx, {Group{list, 0, n}}, ids, d_raw, /*is_float=*/false, rows);
}

void RowSet::Kill(int list_number, int32_t row) {
  RowList& list = lists_[list_number];
  if (list.ids[row] == kNoId) return;
  list.ids[row] = kNoId;
  ++list.dead;
  ++dead_;
  --live_;
  list.dirty_lo = std::min<int64_t>(list.dirty_lo, row);
  list.dirty_hi = std::max<int64_t>(list.dirty_hi, row + 1);
}

absl::Status RowSet::WriteAux(kernels::Context& ctx, int list_number, int64_t lo, int64_t hi,
                              StreamTemp* temp, std::vector<std::vector<int64_t>>* keep) {
  RowList& list = lists_[list_number];
  const int64_t n = hi - lo;
  if (n <= 0) return absl::OkStatus();
  if (nlist_ > 0) {
    std::vector<int64_t>& handles = keep->emplace_back(n);
    for (int64_t j = 0; j < n; ++j) {
      handles[j] = list.ids[lo + j] == kNoId ? -1 : Handle(list_number, lo + j);
    }
    return Cuda(cudaMemcpyAsync(list.aux.as<int64_t>() + lo, handles.data(), n * sizeof(int64_t),
                                cudaMemcpyHostToDevice, stream_),
                "upload handles");
  }
  // The bias of a live row is its norm again, +inf for a tombstone.
  std::vector<int64_t>& packed = keep->emplace_back((n + 7) / 8);
  uint8_t* mask = reinterpret_cast<uint8_t*>(packed.data());
  for (int64_t j = 0; j < n; ++j) mask[j] = list.ids[lo + j] == kNoId ? 1 : 0;
  uint8_t* d_mask = nullptr;
  if (absl::Status s = temp->Alloc(n, &d_mask); !s.ok()) return s;
  if (absl::Status s =
          Cuda(cudaMemcpyAsync(d_mask, mask, n, cudaMemcpyHostToDevice, stream_), "upload mask");
      !s.ok()) {
    return s;
  }
  return kernels::RowBias(ctx, list.vectors.as<char>() + lo * row_bytes(), storage(), n, dim_,
                          KernelMetric(metric_), d_mask, list.aux.as<float>() + lo);
}

absl::Status RowSet::UploadTables(kernels::Context& ctx) {
  std::vector<const void*> vectors(nlist_);
  std::vector<const int64_t*> ids(nlist_);
  std::vector<int32_t> sizes(nlist_);
  max_list_size_ = 0;
  for (int l = 0; l < nlist_; ++l) {
    vectors[l] = lists_[l].vectors.get();
    ids[l] = lists_[l].aux.as<const int64_t>();
    sizes[l] = static_cast<int32_t>(lists_[l].size());
    max_list_size_ = std::max(max_list_size_, sizes[l]);
  }
  for (auto [dst, src, bytes] :
       {std::tuple{table_vectors_.get(), static_cast<const void*>(vectors.data()),
                   nlist_ * sizeof(void*)},
        std::tuple{table_ids_.get(), static_cast<const void*>(ids.data()),
                   nlist_ * sizeof(int64_t*)},
        std::tuple{table_sizes_.get(), static_cast<const void*>(sizes.data()),
                   nlist_ * sizeof(int32_t)}}) {
    if (absl::Status s = Cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_),
                              "upload list tables");
        !s.ok()) {
      return s;
    }
  }
  // The host arrays must outlive the copies.
  return ctx.Synchronize();
}

absl::Status RowSet::Flush(kernels::Context& ctx) {
  if (absl::Status s = UseDevice(ctx); !s.ok()) return s;
  StreamTemp temp(ctx);
  std::vector<std::vector<int64_t>> keep;  // host sources of the queued copies
  for (int l = 0; l < static_cast<int>(lists_.size()); ++l) {
    RowList& list = lists_[l];
    if (list.dirty_hi <= list.dirty_lo) continue;
    if (absl::Status s = WriteAux(ctx, l, list.dirty_lo, list.dirty_hi, &temp, &keep); !s.ok()) {
      return s;
    }
    list.dirty_lo = std::numeric_limits<int64_t>::max();
    list.dirty_hi = 0;
  }
  if (nlist_ > 0 && tables_dirty_) {
    if (absl::Status s = UploadTables(ctx); !s.ok()) return s;
    tables_dirty_ = false;
  }
  return ctx.Synchronize();
}

template <typename Moved>
absl::Status RowSet::Compact(kernels::Context& ctx, Moved moved) {
  if (absl::Status s = UseDevice(ctx); !s.ok()) return s;
  for (int l = 0; l < static_cast<int>(lists_.size()); ++l) {
    RowList& list = lists_[l];
    if (list.dead == 0) continue;
    std::vector<char> raw(list.size() * row_bytes());
    if (absl::Status s = Cuda(cudaMemcpyAsync(raw.data(), list.vectors.get(), raw.size(),
                                              cudaMemcpyDeviceToHost, stream_),
                              "download list");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ctx.Synchronize(); !s.ok()) return s;
    RowList fresh;
    std::vector<char> packed;
    packed.reserve((list.size() - list.dead) * row_bytes());
    for (int64_t r = 0; r < list.size(); ++r) {
      if (list.ids[r] == kNoId) continue;
      fresh.ids.push_back(list.ids[r]);
      packed.insert(packed.end(), raw.begin() + r * row_bytes(),
                    raw.begin() + (r + 1) * row_bytes());
    }
    const int64_t n = fresh.size();
    if (n > 0) {
      // Reserve() copies nothing from an empty list; fill the new arrays here.
      std::vector<uint64_t> ids = std::move(fresh.ids);
      fresh.ids.clear();
      if (absl::Status s = Reserve(ctx, fresh, n); !s.ok()) return s;
      if (absl::Status s = Cuda(cudaMemcpyAsync(fresh.vectors.get(), packed.data(), packed.size(),
                                                cudaMemcpyHostToDevice, stream_),
                                "upload list");
          !s.ok()) {
        return s;
      }
      fresh.ids = std::move(ids);
    }
    RowList old = std::move(list);
    list = std::move(fresh);
    StreamTemp temp(ctx);
    std::vector<std::vector<int64_t>> keep;
    absl::Status s = WriteAux(ctx, l, 0, n, &temp, &keep);
    if (s.ok()) s = ctx.Synchronize();
    if (!s.ok()) {
      list = std::move(old);  // the old arrays are intact
      return s;
    }
    dead_ -= old.dead;
    for (int64_t r = 0; r < n; ++r) moved(list.ids[r], l, static_cast<int32_t>(r));
  }
  tables_dirty_ = true;
  return Flush(ctx);
}

absl::Status RowSet::Search(kernels::Context& ctx, const float* queries, int64_t nq, int k,
                            int nprobe, float* distances, int64_t* handles) const {
  if (nlist_ > 0) {
    return kernels::IvfSearch(ctx, IvfView(), queries, nq, k, nprobe, KernelMetric(metric_),
                              distances, handles);
  }
  const RowList& list = lists_[0];
  kernels::FlatData db;
  db.vectors = list.vectors.get();
  db.storage = storage();
  db.row_bias = list.aux.as<const float>();
  db.ids = nullptr;  // hits come back as row numbers
  db.n = list.size();
  db.dim = dim_;
  return kernels::FlatSearch(ctx, db, queries, nq, k, KernelMetric(metric_), distances, handles);
}

uint64_t RowSet::IdOf(int64_t handle) const {
  if (handle < 0) return kNoId;
  const int64_t l = nlist_ > 0 ? handle >> 32 : 0;
  const int64_t row = nlist_ > 0 ? handle & 0xffffffff : handle;
  if (l >= static_cast<int64_t>(lists_.size()) || row >= lists_[l].size()) return kNoId;
  return lists_[l].ids[row];
}

int64_t RowSet::LiveBlocks() const {
  int64_t blocks = 0;
  for (const RowList& list : lists_) blocks += list.size() > list.dead ? 1 : 0;
  return blocks;
}

template <typename Fn>
absl::Status RowSet::ForEachLiveBlock(kernels::Context& ctx, Fn fn) const {
  if (absl::Status s = UseDevice(ctx); !s.ok()) return s;
  for (int l = 0; l < static_cast<int>(lists_.size()); ++l) {
    const RowList& list = lists_[l];
    if (list.size() == list.dead) continue;
    std::vector<char> raw(list.size() * row_bytes());
    if (absl::Status s = Cuda(cudaMemcpyAsync(raw.data(), list.vectors.get(), raw.size(),
                                              cudaMemcpyDeviceToHost, stream_),
                              "download list");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ctx.Synchronize(); !s.ok()) return s;
    std::vector<uint64_t> ids;
    size_t out = 0;
    for (int64_t r = 0; r < list.size(); ++r) {
      if (list.ids[r] == kNoId) continue;
      ids.push_back(list.ids[r]);
      if (out != static_cast<size_t>(r) * row_bytes()) {
        std::memmove(raw.data() + out, raw.data() + r * row_bytes(), row_bytes());
      }
      out += row_bytes();
    }
    if (absl::Status s = fn(l, static_cast<int64_t>(ids.size()), ids.data(), raw.data()); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

// One entry of spec.gpus: a Context on that device and the rows kept there. Search
// and Save hold mu() while they use the Context (one stream: one user at a time);
// mutations have the index's exclusive access and take it only around device work.
// Partitions on the same device run concurrently on their own streams.
class GpuPartition {
 public:
  static absl::StatusOr<std::unique_ptr<GpuPartition>> Create(int device) {
    absl::StatusOr<std::unique_ptr<kernels::Context>> ctx = kernels::Context::Create(device);
    if (!ctx.ok()) return ctx.status();
    return absl::WrapUnique(new GpuPartition(*std::move(ctx)));
  }

  kernels::Context& ctx() const { return *ctx_; }
  absl::Mutex& mu() const { return mu_; }
  RowSet& rows() { return *rows_; }
  const RowSet& rows() const { return *rows_; }
  void set_rows(std::unique_ptr<RowSet> rows) {
    absl::MutexLock lock(&mu());
    rows_ = std::move(rows);
  }

  // k nearest per host query, as user ids (kNoId, +-inf where missing).
  absl::Status Search(int64_t nq, int dim, const float* queries, int k, int nprobe,
                      float* distances, uint64_t* labels) const;

 private:
  explicit GpuPartition(std::unique_ptr<kernels::Context> ctx) : ctx_(std::move(ctx)) {}

  mutable absl::Mutex mu_;
  std::unique_ptr<kernels::Context> ctx_;
  std::unique_ptr<RowSet> rows_;  // declared after ctx_: freed before its stream goes
};

absl::Status GpuPartition::Search(int64_t nq, int dim, const float* queries, int k, int nprobe,
                                  float* distances, uint64_t* labels) const {
  absl::MutexLock lock(&mu());
  if (absl::Status s = UseDevice(*ctx_); !s.ok()) return s;
  const cudaStream_t stream = StreamOf(*ctx_);
  const int64_t per_query = static_cast<int64_t>(k) * 12 + static_cast<int64_t>(dim) * 4;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(nq, kSearchChunkBytes / per_query));
  StreamTemp temp(*ctx_);
  float* d_queries = nullptr;
  float* d_dist = nullptr;
  int64_t* d_handles = nullptr;
  if (absl::Status s = temp.Alloc(chunk * dim, &d_queries); !s.ok()) return s;
  if (absl::Status s = temp.Alloc(chunk * k, &d_dist); !s.ok()) return s;
  if (absl::Status s = temp.Alloc(chunk * k, &d_handles); !s.ok()) return s;
  std::vector<int64_t> handles(chunk * k);
  for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
    const int64_t m = std::min(chunk, nq - q0);
    if (absl::Status s =
            Cuda(cudaMemcpyAsync(d_queries, queries + q0 * dim, m * dim * sizeof(float),
                                 cudaMemcpyHostToDevice, stream),
                 "upload queries");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = rows_->Search(*ctx_, d_queries, m, k, nprobe, d_dist, d_handles);
        !s.ok()) {
      return s;
    }
    float* dist_out = distances + q0 * k;
    if (absl::Status s = Cuda(cudaMemcpyAsync(dist_out, d_dist, m * k * sizeof(float),
                                              cudaMemcpyDeviceToHost, stream),
                              "download results");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = Cuda(cudaMemcpyAsync(handles.data(), d_handles, m * k * sizeof(int64_t),
                                              cudaMemcpyDeviceToHost, stream),
                              "download results");
        !s.ok()) {
      return s;
    }
    if (absl::Status s = ctx_->Synchronize(); !s.ok()) return s;
    for (int64_t q = 0; q < m; ++q) {
      for (int j = 0; j < k; ++j) {
        labels[(q0 + q) * k + j] = rows_->IdOf(handles[q * k + j]);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace internal

using internal::GpuPartition;
using internal::RowSet;

absl::StatusOr<std::unique_ptr<GpuIndex>> GpuIndex::Create(const IndexSpec& spec_in) {
  IndexSpec spec = spec_in;
  spec.device = Device::kGpu;
  if (spec.factory.empty()) spec.factory = "Flat";
  if (absl::Status s = CheckSpec(spec); !s.ok()) return s;
  absl::StatusOr<GpuFactory> factory = ParseFactory(spec.factory);
  if (!factory.ok()) return factory.status();
  if (factory->nlist == 0) {
    spec.train_threshold = 0;
  } else if (spec.train_threshold == 0) {
    spec.train_threshold = kPointsPerCentroid * factory->nlist;
  } else if (spec.train_threshold < factory->nlist) {
    return absl::InvalidArgumentError(absl::StrCat("train_threshold: ", spec.train_threshold,
                                                   " is below nlist (", factory->nlist, ")"));
  }
  const int count = kernels::DeviceCount();
  if (count == 0) {
    return absl::FailedPreconditionError(
        "device: collection asks for a GPU but this machine has none");
  }
  if (spec.gpus.empty()) {
    for (int g = 0; g < count; ++g) spec.gpus.push_back(g);
  }
  for (int g : spec.gpus) {
    if (g < 0 || g >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("device: GPU ", g, " requested, this machine has ", count));
    }
  }
  std::unique_ptr<GpuIndex> index(new GpuIndex(spec, factory->nlist, factory->half));
  for (int g : spec.gpus) {
    absl::StatusOr<std::unique_ptr<GpuPartition>> partition = GpuPartition::Create(g);
    if (!partition.ok()) return partition.status();
    // Exact rows in the spec's storage; an IVF stages float32 rows until trained.
    absl::StatusOr<std::unique_ptr<RowSet>> rows =
        RowSet::Create((*partition)->ctx(), spec.dim, spec.metric,
                       index->nlist_ == 0 && index->half_, /*nlist=*/0, nullptr);
    if (!rows.ok()) return rows.status();
    (*partition)->set_rows(*std::move(rows));
    index->partitions_.push_back(*std::move(partition));
  }
  return index;
}

GpuIndex::GpuIndex(const IndexSpec& spec, int nlist, bool half)
    : spec_(spec), nlist_(nlist), half_(half), staged_(nlist > 0) {}

GpuIndex::~GpuIndex() = default;

int64_t GpuIndex::tombstones() const {
  int64_t dead = 0;
  for (const auto& p : partitions_) dead += p->rows().dead();
  return dead;
}

std::vector<int64_t> GpuIndex::partition_sizes() const {
  std::vector<int64_t> sizes;
  for (const auto& p : partitions_) sizes.push_back(p->rows().live());
  return sizes;
}

int GpuIndex::ListOf(uint64_t id) const {
  if (staged_ || nlist_ == 0) return -1;
  auto it = where_.find(id);
  return it == where_.end() ? -1 : it->second.list;
}

absl::Status GpuIndex::FlushAll() {
  for (const auto& p : partitions_) {
    absl::MutexLock lock(&p->mu());
    if (absl::Status s = p->rows().Flush(p->ctx()); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status GpuIndex::Add(int64_t n, const uint64_t* ids, const float* x) {
  // Contiguous runs of the batch to the partitions, filling the emptiest first.
  const int parts = static_cast<int>(partitions_.size());
  std::vector<int64_t> load = partition_sizes();
  std::vector<int64_t> count(parts, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int p = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    ++load[p];
    ++count[p];
  }
  int64_t begin = 0;
  for (int p = 0; p < parts; ++p) {
    const int64_t m = count[p];
    if (m == 0) continue;
    std::vector<int32_t> lists(m), rows(m);
    absl::Status s;
    {
      absl::MutexLock lock(&partitions_[p]->mu());
      s = partitions_[p]->rows().AppendFloat(partitions_[p]->ctx(), m, ids + begin,
                                             x + begin * spec_.dim, lists.data(), rows.data());
    }
    if (!s.ok()) {
      FlushAll().IgnoreError();  // what earlier partitions took stays consistent
      return s;
    }
    for (int64_t j = 0; j < m; ++j) {
      const Location loc{p, lists[j], rows[j]};
      auto [it, inserted] = where_.try_emplace(ids[begin + j], loc);
      if (!inserted) {
        const Location old = it->second;
        partitions_[old.partition]->rows().Kill(old.list, old.row);
        it->second = loc;
      }
    }
    begin += m;
  }
  return FlushAll();
}

absl::Status GpuIndex::CompactIfNeeded() {
  for (int p = 0; p < static_cast<int>(partitions_.size()); ++p) {
    RowSet& rows = partitions_[p]->rows();
    const int64_t dead = rows.dead();
    if (dead == 0) continue;
    const bool many = dead >= kMinTombstonesToCompact && 4 * dead >= rows.live() + dead;
    if (!many && dead <= rows.live()) continue;
    absl::MutexLock lock(&partitions_[p]->mu());
    absl::Status s = rows.Compact(partitions_[p]->ctx(), [&](uint64_t id, int list, int32_t row) {
      where_[id] = Location{p, list, row};
    });
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status GpuIndex::Upsert(int64_t n, const uint64_t* ids, const float* x) {
  absl::Status status = CheckArrays(n, {ids, x});
  if (status.ok()) status = CheckIds(n, ids);
  if (status.ok()) status = CheckFinite("x", n, spec_.dim, x);
  if (!status.ok() || n == 0) return status;
  const PreparedRows rows = Prepare(spec_.metric, spec_.dim, n, ids, x);
  status = Add(static_cast<int64_t>(rows.ids.size()), rows.ids.data(), rows.x.data());
  if (status.ok()) status = CompactIfNeeded();
  if (!status.ok()) return status;
  return TrainIfStagingFull();
}

absl::Status GpuIndex::Remove(int64_t n, const uint64_t* ids, int64_t* removed) {
  absl::Status status = CheckArrays(n, {ids});
  if (!status.ok()) return status;
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto it = where_.find(ids[i]);
    if (it == where_.end()) continue;
    partitions_[it->second.partition]->rows().Kill(it->second.list, it->second.row);
    where_.erase(it);
    ++count;
  }
  if (removed != nullptr) *removed = count;
  if (count == 0) return absl::OkStatus();
  status = FlushAll();
  if (!status.ok()) return status;
  return CompactIfNeeded();
}

absl::Status GpuIndex::Search(int64_t n, const float* queries, int k, const SearchParams& params,
                              float* distances, uint64_t* labels) const {
  const absl::Status status = internal::CheckSearch(n, queries, k, kMaxK, "", params, spec_.dim,
                                                    distances, labels);
  if (!status.ok() || n == 0) return status;
  std::vector<float> buffer;
  const float* prepared = ForMetric(spec_.metric, spec_.dim, n, queries, &buffer);
  const int nprobe = params.nprobe > 0 ? params.nprobe : kDefaultNprobe;
  const int parts = static_cast<int>(partitions_.size());
  if (parts == 1) {
    return partitions_[0]->Search(n, spec_.dim, prepared, k, nprobe, distances, labels);
  }
  // Every partition at once (each on its own Context), then a merge of sorted lists.
  std::vector<std::vector<float>> part_dist(parts, std::vector<float>(n * k));
  std::vector<std::vector<uint64_t>> part_ids(parts, std::vector<uint64_t>(n * k));
  std::vector<absl::Status> part_status(parts);
  auto run = [&](int p) {
    part_status[p] = partitions_[p]->Search(n, spec_.dim, prepared, k, nprobe, part_dist[p].data(),
                                            part_ids[p].data());
  };
  std::vector<std::thread> threads;
  for (int p = 1; p < parts; ++p) threads.emplace_back(run, p);
  run(0);
  for (std::thread& t : threads) t.join();
  for (const absl::Status& s : part_status) {
    if (!s.ok()) return s;
  }
  std::vector<int> next(parts);
  for (int64_t q = 0; q < n; ++q) {
    std::fill(next.begin(), next.end(), 0);
    for (int j = 0; j < k; ++j) {
      int best = 0;
      for (int p = 1; p < parts; ++p) {
        if (Better(spec_.metric, part_dist[p][q * k + next[p]],
                   part_dist[best][q * k + next[best]])) {
          best = p;
        }
      }
      distances[q * k + j] = part_dist[best][q * k + next[best]];
      labels[q * k + j] = part_ids[best][q * k + next[best]];
      ++next[best];
    }
  }
  return absl::OkStatus();
}

absl::Status GpuIndex::Train(int64_t n, const float* x) {
  if (is_trained()) return absl::FailedPreconditionError("train: index is already trained");
  absl::Status status = CheckArrays(n, {x});
  if (!status.ok()) return status;
  if (n < nlist_) {
    return absl::InvalidArgumentError(
        absl::StrCat("n: ", n, " training vectors, need at least ", nlist_));
  }
  status = CheckFinite("x", n, spec_.dim, x);
  if (!status.ok()) return status;
  std::vector<float> buffer;
  return TrainAndDrain(n, ForMetric(spec_.metric, spec_.dim, n, x, &buffer), "");
}

absl::Status GpuIndex::TrainIfStagingFull() {
  if (!staged_ || size() < spec_.train_threshold) return absl::OkStatus();
  return TrainAndDrain(0, nullptr, "");
}

absl::Status GpuIndex::TrainAndDrain(int64_t n, const float* x, std::string trained_template) {
  const int parts = static_cast<int>(partitions_.size());
  std::vector<std::vector<uint64_t>> staged_ids(parts);
  std::vector<std::vector<float>> staged_x(parts);
  for (int p = 0; p < parts; ++p) {
    absl::MutexLock lock(&partitions_[p]->mu());
    absl::Status s = partitions_[p]->rows().ForEachLiveBlock(
        partitions_[p]->ctx(), [&](int, int64_t m, const uint64_t* ids, const char* raw) {
          staged_ids[p].insert(staged_ids[p].end(), ids, ids + m);
          const float* rows = reinterpret_cast<const float*>(raw);
          staged_x[p].insert(staged_x[p].end(), rows, rows + m * spec_.dim);
          return absl::OkStatus();
        });
    if (!s.ok()) return s;
  }
  if (trained_template.empty()) {
    // The CPU backend's training exactly: FAISS's index for the same factory string,
    // trained on the same vectors, serialized before any vector is added.
    std::vector<float> all;
    if (n == 0) {
      for (const auto& rows : staged_x) all.insert(all.end(), rows.begin(), rows.end());
      n = static_cast<int64_t>(all.size()) / spec_.dim;
      x = all.data();
    }
    std::unique_ptr<faiss::Index> index;
    absl::Status s = CatchFaiss("train", [&] {
      index.reset(
          faiss::index_factory(spec_.dim, spec_.factory.c_str(), ToFaissMetric(spec_.metric)));
      index->train(n, x);
    });
    if (!s.ok()) return s;
    absl::StatusOr<std::string> bytes = Serialize(*index);
    if (!bytes.ok()) return bytes.status();
    trained_template = *std::move(bytes);
  }
  absl::StatusOr<std::vector<float>> centroids = CentroidsOf(trained_template, spec_, nlist_);
  if (!centroids.ok()) return centroids.status();
  // New inverted lists beside the staged rows; swapped in only once all are filled.
  std::vector<std::unique_ptr<RowSet>> fresh(parts);
  std::vector<std::vector<int32_t>> lists(parts), rows(parts);
  for (int p = 0; p < parts; ++p) {
    absl::MutexLock lock(&partitions_[p]->mu());
    kernels::Context& ctx = partitions_[p]->ctx();
    absl::StatusOr<std::unique_ptr<RowSet>> set =
        RowSet::Create(ctx, spec_.dim, spec_.metric, half_, nlist_, centroids->data());
    if (!set.ok()) return set.status();
    fresh[p] = *std::move(set);
    const int64_t m = static_cast<int64_t>(staged_ids[p].size());
    lists[p].resize(m);
    rows[p].resize(m);
    absl::Status s = fresh[p]->AppendFloat(ctx, m, staged_ids[p].data(), staged_x[p].data(),
                                           lists[p].data(), rows[p].data());
    if (s.ok()) s = fresh[p]->Flush(ctx);
    if (!s.ok()) return s;
  }
  for (int p = 0; p < parts; ++p) {
    partitions_[p]->set_rows(std::move(fresh[p]));
    for (size_t j = 0; j < staged_ids[p].size(); ++j) {
      where_[staged_ids[p][j]] = Location{p, lists[p][j], rows[p][j]};
    }
  }
  trained_template_ = std::move(trained_template);
  staged_ = false;
  return absl::OkStatus();
}

absl::StatusOr<std::string> GpuIndex::TrainedTemplate() const {
  if (!is_trained()) {
    return absl::FailedPreconditionError("trained template: index is not trained yet");
  }
  return trained_template_;
}

absl::Status GpuIndex::InstallTrained(const std::string& trained_template) {
  if (is_trained()) {
    return absl::FailedPreconditionError("install trained: index is already trained");
  }
  absl::StatusOr<std::vector<float>> centroids = CentroidsOf(trained_template, spec_, nlist_);
  if (!centroids.ok()) return centroids.status();
  return TrainAndDrain(0, nullptr, trained_template);
}

absl::Status GpuIndex::Save(ByteSink* sink) const {
  const uint8_t layout = nlist_ == 0 ? kLayoutExact : staged_ ? kLayoutStaged : kLayoutIvf;
  const uint8_t storage = (half_ && !staged_) ? 1 : 0;
  const uint32_t header[2] = {kSaveMagic, kSaveVersion};
  const uint32_t dim = static_cast<uint32_t>(spec_.dim);
  const uint64_t template_size = trained_template_.size();
  uint64_t blocks = 0;
  for (const auto& p : partitions_) {
    absl::MutexLock lock(&p->mu());
    blocks += p->rows().LiveBlocks();
  }
  absl::Status s = sink->Write(header, sizeof(header));
  if (s.ok()) s = sink->Write(&layout, 1);
  if (s.ok()) s = sink->Write(&storage, 1);
  if (s.ok()) s = sink->Write(&dim, sizeof(dim));
  if (s.ok()) s = sink->Write(&template_size, sizeof(template_size));
  if (s.ok() && template_size > 0) s = sink->Write(trained_template_.data(), template_size);
  if (s.ok()) s = sink->Write(&blocks, sizeof(blocks));
  for (const auto& p : partitions_) {
    if (!s.ok()) break;
    absl::MutexLock lock(&p->mu());
    s = p->rows().ForEachLiveBlock(p->ctx(),
                                   [&](int list, int64_t m, const uint64_t* ids, const char* raw) {
                                     const uint32_t list32 = static_cast<uint32_t>(list);
                                     const uint64_t rows = static_cast<uint64_t>(m);
                                     absl::Status w = sink->Write(&list32, sizeof(list32));
                                     if (w.ok()) w = sink->Write(&rows, sizeof(rows));
                                     if (w.ok()) w = sink->Write(ids, m * sizeof(uint64_t));
                                     if (w.ok()) w = sink->Write(raw, m * p->rows().row_bytes());
                                     return w;
                                   });
  }
  return s;
}

absl::StatusOr<std::unique_ptr<GpuIndex>> GpuIndex::Load(const IndexSpec& spec,
                                                         ByteSource* source) {
  absl::StatusOr<std::unique_ptr<GpuIndex>> created = Create(spec);
  if (!created.ok()) return created.status();
  GpuIndex& index = **created;
  auto corrupt = [](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("index snapshot: ", why));
  };
  uint32_t header[2] = {0, 0};
  uint8_t layout = 0, storage = 0;
  uint32_t dim = 0;
  uint64_t template_size = 0;
  absl::Status s = source->Read(header, sizeof(header));
  if (!s.ok()) return s;
  if (header[0] != kSaveMagic || header[1] != kSaveVersion) {
    return corrupt("not a GPU index saved by this version");
  }
  if (s.ok()) s = source->Read(&layout, 1);
  if (s.ok()) s = source->Read(&storage, 1);
  if (s.ok()) s = source->Read(&dim, sizeof(dim));
  if (s.ok()) s = source->Read(&template_size, sizeof(template_size));
  if (!s.ok()) return s;
  const uint8_t want_storage = (index.half_ && layout != kLayoutStaged) ? 1 : 0;
  const bool layout_ok = index.nlist_ == 0 ? layout == kLayoutExact
                                           : (layout == kLayoutStaged || layout == kLayoutIvf);
  if (!layout_ok || storage != want_storage || dim != static_cast<uint32_t>(spec.dim)) {
    return corrupt("layout, storage or dimension differ from the collection's spec");
  }
  if ((layout == kLayoutIvf) != (template_size > 0) || template_size > (uint64_t{1} << 34)) {
    return corrupt("bad trained template size");
  }
  std::string trained_template(template_size, '\0');
  if (template_size > 0) {
    if (s = source->Read(trained_template.data(), template_size); !s.ok()) return s;
    if (s = index.TrainAndDrain(0, nullptr, trained_template); !s.ok()) {
      if (absl::IsInvalidArgument(s)) return corrupt(s.message());
      return s;
    }
  }
  uint64_t blocks = 0;
  if (s = source->Read(&blocks, sizeof(blocks)); !s.ok()) return s;
  const int parts = static_cast<int>(index.partitions_.size());
  const size_t row_bytes = static_cast<size_t>(spec.dim) * (storage == 1 ? 2 : 4);
  const uint32_t lists = layout == kLayoutIvf ? static_cast<uint32_t>(index.nlist_) : 1;
  for (uint64_t b = 0; b < blocks; ++b) {
    uint32_t list = 0;
    uint64_t rows = 0;
    if (s = source->Read(&list, sizeof(list)); !s.ok()) return s;
    if (s = source->Read(&rows, sizeof(rows)); !s.ok()) return s;
    if (list >= lists || rows == 0 || rows > (uint64_t{1} << 40) / row_bytes) {
      return corrupt("bad block header");
    }
    std::vector<uint64_t> ids(rows);
    std::vector<char> raw(rows * row_bytes);
    if (s = source->Read(ids.data(), rows * sizeof(uint64_t)); !s.ok()) return s;
    if (s = source->Read(raw.data(), raw.size()); !s.ok()) return s;
    for (uint64_t id : ids) {
      if (id == kNoId || index.where_.contains(id)) return corrupt("reserved or repeated id");
    }
    // Spread each block evenly over this index's partitions.
    for (int p = 0; p < parts; ++p) {
      const int64_t begin = static_cast<int64_t>(rows * p / parts);
      const int64_t end = static_cast<int64_t>(rows * (p + 1) / parts);
      if (end == begin) continue;
      std::vector<int32_t> placed(end - begin);
      GpuPartition& partition = *index.partitions_[p];
      {
        absl::MutexLock lock(&partition.mu());
        s = partition.rows().AppendRaw(partition.ctx(), static_cast<int>(list), end - begin,
                                       ids.data() + begin, raw.data() + begin * row_bytes,
                                       placed.data());
      }
      if (!s.ok()) return s;
      for (int64_t j = begin; j < end; ++j) {
        index.where_[ids[j]] = Location{p, static_cast<int32_t>(list), placed[j - begin]};
      }
    }
  }
  if (s = index.FlushAll(); !s.ok()) return s;
  return created;
}

}  // namespace shardvec::index
