#include "router/gpu_merge.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/knn.h"
#include "router/merge.h"

namespace shardvec::router {
namespace {

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::InternalError(absl::StrCat("GPU merge: ", what, ": ", cudaGetErrorString(e)));
}

// Whether distance a ranks strictly before b.
bool Better(float a, float b, bool larger_is_better) { return larger_is_better ? a > b : a < b; }

float Padding(bool larger_is_better) {
  return larger_is_better ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity();
}

// Device (cudaMalloc) or pinned host (cudaMallocHost) memory that only grows, so that
// merges of similar batches reuse it.
template <typename T, bool kPinned>
class CudaArray {
 public:
  CudaArray() = default;
  ~CudaArray() { Free(); }
  CudaArray(const CudaArray&) = delete;
  CudaArray& operator=(const CudaArray&) = delete;

  // Room for n elements; the contents are lost when it grows.
  absl::Status Reserve(size_t n) {
    if (n <= capacity_) return absl::OkStatus();
    Free();
    size_t grown = std::max<size_t>(n, capacity_ * 2);
    void* p = nullptr;
    cudaError_t e = kPinned ? cudaMallocHost(&p, grown * sizeof(T)) : cudaMalloc(&p, grown * sizeof(T));
    if (e != cudaSuccess) return CudaStatus(e, kPinned ? "cudaMallocHost" : "cudaMalloc");
    ptr_ = static_cast<T*>(p);
    capacity_ = grown;
    return absl::OkStatus();
  }
  T* get() const { return ptr_; }

 private:
  void Free() {
    if (ptr_ == nullptr) return;
    if (kPinned) {
      cudaFreeHost(ptr_);
    } else {
      cudaFree(ptr_);
    }
    ptr_ = nullptr;
    capacity_ = 0;
  }

  T* ptr_ = nullptr;
  size_t capacity_ = 0;
};

// Copies query `lists` into `row` (m x k_in, padded). Returns false where
// router::MergeTopK's answer is not the one of a distance sort (a list out of order or
// with a NaN, distances and ids of different lengths): the query is merged on the CPU.
bool FlattenQuery(const std::vector<const v1::QueryResult*>& lists, int m, int k_in, bool larger_is_better,
                  float* row) {
  const float pad = Padding(larger_is_better);
  bool ok = true;
  for (int l = 0; l < m; ++l) {
    float* out = row + static_cast<int64_t>(l) * k_in;
    int n = 0;
    if (l < static_cast<int>(lists.size())) {
      const v1::QueryResult& r = *lists[l];
      n = std::min(r.ids_size(), r.distances_size());
      if (r.distances_size() != r.ids_size()) ok = false;
      const float* d = r.distances().data();
      for (int i = 0; i < n; ++i) {
        if (std::isnan(d[i]) || (i > 0 && Better(d[i], d[i - 1], larger_is_better))) ok = false;
        out[i] = d[i];
      }
    }
    std::fill(out + n, out + k_in, pad);
  }
  return ok;
}

}  // namespace

namespace gpu_merge_internal {

absl::StatusOr<bool> MergeFromCandidates(const std::vector<const v1::QueryResult*>& lists, int m, int k_in,
                                         const int64_t* best, int k2, int k, bool larger_is_better,
                                         v1::QueryResult* out, absl::flat_hash_set<uint64_t>* seen) {
  const int num_lists = static_cast<int>(lists.size());
  const int64_t len = static_cast<int64_t>(m) * k_in;
  const float pad = Padding(larger_is_better);
  // The list that holds the hit at position p (its index in *i), or null for padding.
  auto hit = [&](int64_t p, int* i) -> const v1::QueryResult* {
    if (p < 0) return nullptr;
    const int l = static_cast<int>(p / k_in);
    *i = static_cast<int>(p % k_in);
    return l < num_lists && *i < lists[l]->ids_size() ? lists[l] : nullptr;
  };
  auto distance = [&](int64_t p) {
    int i = 0;
    const v1::QueryResult* r = hit(p, &i);
    return r != nullptr ? r->distances(i) : pad;
  };
  auto id = [&](int64_t p) {
    int i = 0;
    return hit(p, &i)->ids(i);
  };
  int64_t hits_in_best = 0;
  for (int j = 0; j < k2; ++j) {
    if (best[j] < -1 || best[j] >= len) {
      return absl::InternalError(absl::StrCat("GPU merge: candidate position ", best[j], " is out of range"));
    }
    if (j > 0 && Better(distance(best[j]), distance(best[j - 1]), larger_is_better)) {
      return absl::InternalError("GPU merge: candidates are not sorted");
    }
    int i = 0;
    hits_in_best += hit(best[j], &i) != nullptr;
  }
  int64_t hits = 0;
  bool with_payloads = num_lists > 0;
  for (const v1::QueryResult* r : lists) {
    hits += r->ids_size();
    with_payloads = with_payloads && r->payloads_size() == r->ids_size();
  }

  // Every entry strictly better than the worst candidate is a candidate; entries equal
  // to it may have been left out, unless the candidates hold every hit.
  const bool all = hits_in_best == hits;
  const float worst = k2 > 0 ? distance(best[k2 - 1]) : pad;
  auto emit = [&](int64_t p) {
    int i = 0;
    const v1::QueryResult& r = *hit(p, &i);
    if (!seen->insert(r.ids(i)).second) return;
    out->add_ids(r.ids(i));
    out->add_distances(r.distances(i));
    if (with_payloads) *out->add_payloads() = r.payloads(i);
  };
  seen->clear();
  std::vector<int64_t> run;
  std::vector<std::pair<int, int>> groups;  // [begin, end) in run, one per list
  int j = 0;
  while (j < k2 && out->ids_size() < k) {
    const float d = distance(best[j]);
    if (!all && !Better(d, worst, larger_is_better)) break;
    int end = j + 1;
    while (end < k2 && distance(best[end]) == d) ++end;
    run.clear();
    for (int t = j; t < end; ++t) {
      int i = 0;
      if (hit(best[t], &i) != nullptr) run.push_back(best[t]);
    }
    j = end;
    if (run.size() == 1) {
      emit(run[0]);
      continue;
    }
    // A run of equal distances in the order of MergeTopK's heap: each list's hits in
    // list order, the lists' next hits by smaller id, then by earlier list.
    std::sort(run.begin(), run.end());
    groups.clear();
    for (size_t t = 0; t < run.size(); ++t) {
      if (t == 0 || run[t] / k_in != run[t - 1] / k_in) groups.push_back({static_cast<int>(t), static_cast<int>(t)});
      groups.back().second = static_cast<int>(t) + 1;
    }
    while (out->ids_size() < k) {
      int pick = -1;
      for (int g = 0; g < static_cast<int>(groups.size()); ++g) {
        if (groups[g].first == groups[g].second) continue;
        if (pick < 0 || id(run[groups[g].first]) < id(run[groups[pick].first])) pick = g;
      }
      if (pick < 0) break;
      emit(run[groups[pick].first++]);
    }
  }
  if (out->ids_size() < k && !all) {
    out->Clear();
    return false;
  }
  return true;
}

}  // namespace gpu_merge_internal

struct GpuMerger::Buffers {
  CudaArray<float, true> host_dist;
  CudaArray<int64_t, true> host_best;
  CudaArray<float, false> dist;
  // 0, 1, 2, ...: the "ids" the kernel selects, an entry's place in the chunk, which
  // serves every layout.
  CudaArray<int64_t, false> positions;
  int64_t positions_size = 0;
  CudaArray<float, false> best_dist;
  CudaArray<int64_t, false> best;
};

GpuMerger::GpuMerger(GpuMergeOptions options) : options_(options), buffers_(std::make_unique<Buffers>()) {}

GpuMerger::~GpuMerger() {
  absl::MutexLock lock(&mu_);
  if (ctx_ != nullptr) {
    cudaSetDevice(ctx_->device());
    buffers_.reset();
  }
}

absl::Status GpuMerger::Merge(const std::vector<std::vector<const v1::QueryResult*>>& queries, int k,
                              bool larger_is_better, google::protobuf::RepeatedPtrField<v1::QueryResult>* out) {
  const int64_t nq = static_cast<int64_t>(queries.size());
  int m = 0;
  int k_in = 0;
  for (const auto& lists : queries) {
    m = std::max(m, static_cast<int>(lists.size()));
    for (const v1::QueryResult* r : lists) k_in = std::max(k_in, r->ids_size());
  }
  const int64_t len = static_cast<int64_t>(m) * k_in;
  const int k2 = static_cast<int>(std::min<int64_t>(len, int64_t{2} * std::max(k, 0)));
  const int start = out->size();
  out->Reserve(static_cast<int>(start + nq));
  if (nq == 0) return absl::OkStatus();
  if (k2 < 1 || k2 > kernels::kMaxK) {
    // Nothing to select, or more than the kernels select.
    for (const auto& lists : queries) MergeTopK(lists, k, larger_is_better, out->Add());
    return absl::OkStatus();
  }

  absl::MutexLock lock(&mu_);
  if (ctx_ == nullptr) {
    if (!context_status_.ok()) return context_status_;
    absl::StatusOr<std::unique_ptr<kernels::Context>> ctx = kernels::Context::Create(options_.device);
    if (!ctx.ok()) {
      context_status_ = ctx.status();
      return context_status_;
    }
    ctx_ = *std::move(ctx);
  }
  if (absl::Status s = CudaStatus(cudaSetDevice(ctx_->device()), "cudaSetDevice"); !s.ok()) return s;
  const int64_t chunk = std::clamp<int64_t>(options_.chunk_entries / len, 1, nq);
  Buffers& b = *buffers_;
  for (absl::Status s : {b.host_dist.Reserve(chunk * len), b.dist.Reserve(chunk * len),
                         b.host_best.Reserve(chunk * k2), b.best.Reserve(chunk * k2),
                         b.best_dist.Reserve(chunk * k2)}) {
    if (!s.ok()) return s;
  }
  if (b.positions_size < chunk * len) {
    b.positions_size = 0;
    if (absl::Status s = b.positions.Reserve(chunk * len); !s.ok()) return s;
    std::vector<int64_t> iota(chunk * len);
    std::iota(iota.begin(), iota.end(), int64_t{0});
    if (absl::Status s = CudaStatus(
            cudaMemcpy(b.positions.get(), iota.data(), iota.size() * sizeof(int64_t), cudaMemcpyHostToDevice),
            "upload positions");
        !s.ok()) {
      return s;
    }
    b.positions_size = chunk * len;
  }

  std::vector<uint8_t> on_device(chunk);
  absl::flat_hash_set<uint64_t> seen;
  for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
    const int64_t nb = std::min(chunk, nq - q0);
    for (int64_t i = 0; i < nb; ++i) {
      on_device[i] = FlattenQuery(queries[q0 + i], m, k_in, larger_is_better, b.host_dist.get() + i * len);
    }
    absl::Status s = SelectOnDevice(nb, m, k_in, k2, larger_is_better);
    for (int64_t i = 0; i < nb && s.ok(); ++i) {
      const auto& lists = queries[q0 + i];
      v1::QueryResult* result = out->Add();
      if (on_device[i]) {
        int64_t* best = b.host_best.get() + i * k2;
        for (int j = 0; j < k2; ++j) {
          if (best[j] >= 0) best[j] -= i * len;
        }
        absl::StatusOr<bool> decided = gpu_merge_internal::MergeFromCandidates(lists, m, k_in, best, k2, k,
                                                                               larger_is_better, result, &seen);
        if (!decided.ok()) s = decided.status();
        if (!decided.ok() || *decided) continue;
      }
      MergeTopK(lists, k, larger_is_better, result);
    }
    if (!s.ok()) {
      out->DeleteSubrange(start, out->size() - start);
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status GpuMerger::SelectOnDevice(int64_t nq, int m, int k_in, int k2, bool larger_is_better) {
  Buffers& b = *buffers_;
  auto stream = static_cast<cudaStream_t>(ctx_->stream());
  const int64_t len = static_cast<int64_t>(m) * k_in;
  if (absl::Status s = CudaStatus(cudaMemcpyAsync(b.dist.get(), b.host_dist.get(), nq * len * sizeof(float),
                                                  cudaMemcpyHostToDevice, stream),
                                  "upload distances");
      !s.ok()) {
    return s;
  }
  const kernels::Metric metric = larger_is_better ? kernels::Metric::kInnerProduct : kernels::Metric::kL2;
  if (absl::Status s = kernels::MergeTopK(*ctx_, b.dist.get(), b.positions.get(), nq, m, k_in, k2, metric,
                                          b.best_dist.get(), b.best.get());
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CudaStatus(cudaMemcpyAsync(b.host_best.get(), b.best.get(), nq * k2 * sizeof(int64_t),
                                                  cudaMemcpyDeviceToHost, stream),
                                  "download candidates");
      !s.ok()) {
    return s;
  }
  return ctx_->Synchronize();
}

}  // namespace shardvec::router
