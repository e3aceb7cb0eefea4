#include "index/input_checks.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace shardvec::index::internal {

absl::Status CheckSpec(const IndexSpec& spec) {
  if (spec.dim < 1 || spec.dim > kMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("dim: ", spec.dim, " is outside [1, ", kMaxDim, "]"));
  }
  if (spec.metric != Metric::kL2 && spec.metric != Metric::kInnerProduct &&
      spec.metric != Metric::kCosine) {
    return absl::InvalidArgumentError("metric: unknown value");
  }
  if (spec.train_threshold < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train_threshold: ", spec.train_threshold, " is negative"));
  }
  return absl::OkStatus();
}

absl::Status CheckArrays(int64_t n, std::initializer_list<const void*> arrays) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("n: ", n, " is negative"));
  if (n == 0) return absl::OkStatus();
  for (const void* array : arrays) {
    if (array == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("n: ", n, " with a null array"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSearch(int64_t n, const float* queries, int k, int max_k,
                         absl::string_view limit, const SearchParams& params, int dim,
                         const float* distances, const uint64_t* labels) {
  if (k < 1 || k > max_k) {
    return absl::InvalidArgumentError(absl::StrCat("k: ", k, " is outside [1, ", max_k, "]",
                                                   limit.empty() ? "" : " (", limit,
                                                   limit.empty() ? "" : ")"));
  }
  if (params.nprobe < 0) return absl::InvalidArgumentError("nprobe: negative");
  if (params.ef_search < 0) return absl::InvalidArgumentError("ef_search: negative");
  absl::Status status = CheckArrays(n, {queries, distances, labels});
  if (status.ok()) status = CheckFinite("queries", n, dim, queries);
  return status;
}

absl::Status CheckFinite(absl::string_view what, int64_t n, int dim, const float* x) {
  for (int64_t i = 0; i < n * dim; ++i) {
    if (!std::isfinite(x[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": vector ", i / dim, " has a non-finite component"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckIds(int64_t n, const uint64_t* ids) {
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] == kNoId) {
      return absl::InvalidArgumentError(
          absl::StrCat("ids: ids[", i, "] is kNoId, which is reserved"));
    }
  }
  return absl::OkStatus();
}

void NormalizeRows(int dim, int64_t n, float* x) {
  for (int64_t i = 0; i < n; ++i) {
    float* row = x + i * dim;
    double norm2 = 0;
    for (int j = 0; j < dim; ++j) norm2 += static_cast<double>(row[j]) * row[j];
    if (norm2 == 0) continue;
    const double scale = 1 / std::sqrt(norm2);
    for (int j = 0; j < dim; ++j) row[j] = static_cast<float>(row[j] * scale);
  }
}

const float* ForMetric(Metric metric, int dim, int64_t n, const float* x,
                       std::vector<float>* buffer) {
  if (metric != Metric::kCosine) return x;
  buffer->assign(x, x + n * dim);
  NormalizeRows(dim, n, buffer->data());
  return buffer->data();
}

}  // namespace shardvec::index::internal
