// Input checks and preparation shared by the index backends (FAISS CPU, GPU).
#ifndef SHARDVEC_INDEX_INPUT_CHECKS_H_
#define SHARDVEC_INDEX_INPUT_CHECKS_H_

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "index/index.h"

namespace shardvec::index::internal {

inline constexpr int kMaxDim = 65536;

// The fields every backend checks the same way: dim, metric, train_threshold.
absl::Status CheckSpec(const IndexSpec& spec);

// INVALID_ARGUMENT naming `n` when n is negative, or positive with a null array.
absl::Status CheckArrays(int64_t n, std::initializer_list<const void*> arrays);

// What every backend's Search checks first: k in [1, max_k] (`limit` says whose limit
// max_k is, for the message; may be empty), non-negative params, the arrays, finite
// queries.
absl::Status CheckSearch(int64_t n, const float* queries, int k, int max_k,
                         absl::string_view limit, const SearchParams& params, int dim,
                         const float* distances, const uint64_t* labels);

// NaN or inf would poison distances (and k-means) without any error from the library.
absl::Status CheckFinite(absl::string_view what, int64_t n, int dim, const float* x);

// kNoId is reserved for empty result slots.
absl::Status CheckIds(int64_t n, const uint64_t* ids);

// Scales rows to unit length (norm in double for accuracy); zero rows stay zero.
void NormalizeRows(int dim, int64_t n, float* x);

// x itself, or for kCosine a normalised copy held in *buffer.
const float* ForMetric(Metric metric, int dim, int64_t n, const float* x,
                       std::vector<float>* buffer);

}  // namespace shardvec::index::internal

#endif  // SHARDVEC_INDEX_INPUT_CHECKS_H_
