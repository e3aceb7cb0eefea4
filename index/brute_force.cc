#include "index/brute_force.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace shardvec::index {
namespace {

double MissingDistance(Metric metric) {
  return metric == Metric::kL2 ? std::numeric_limits<double>::infinity()
                               : -std::numeric_limits<double>::infinity();
}

// Rows widened to double, normalised for kCosine (zero rows stay zero).
std::vector<double> Prepare(Metric metric, int dim, int64_t n, const float* x) {
  std::vector<double> out(x, x + n * dim);
  if (metric != Metric::kCosine) return out;
  for (int64_t i = 0; i < n; ++i) {
    double* row = out.data() + i * dim;
    double norm2 = 0;
    for (int j = 0; j < dim; ++j) norm2 += row[j] * row[j];
    if (norm2 == 0) continue;
    const double norm = std::sqrt(norm2);
    for (int j = 0; j < dim; ++j) row[j] /= norm;
  }
  return out;
}

double Distance(Metric metric, int dim, const double* a, const double* b) {
  double sum = 0;
  for (int j = 0; j < dim; ++j) {
    sum += metric == Metric::kL2 ? (a[j] - b[j]) * (a[j] - b[j]) : a[j] * b[j];
  }
  return sum;
}

absl::Status CheckRow(Metric metric, int64_t q, absl::Span<const double> want_d,
                      absl::Span<const uint64_t> want_ids, absl::Span<const float> got_d,
                      absl::Span<const uint64_t> got_ids, double rel_tol) {
  const int k = static_cast<int>(want_ids.size());
  int real = 0;  // Reference neighbours; the rest of the row is padding.
  double scale = 0;
  while (real < k && want_ids[real] != kNoId) scale = std::max(scale, std::abs(want_d[real++]));
  const auto ties = [&](double a, double b) {
    return std::abs(a - b) <= rel_tol * std::max({std::abs(a), std::abs(b), scale});
  };
  const auto fail = [&](int j, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("query ", q, ", position ", j, ": got id ",
                                                   got_ids[j], " at ", got_d[j], ", want id ",
                                                   want_ids[j], " at ", want_d[j], ": ", why));
  };
  absl::flat_hash_set<uint64_t> seen;
  for (int j = 0; j < k; ++j) {
    if (j >= real) {
      if (got_ids[j] != kNoId || got_d[j] != MissingDistance(metric)) {
        return fail(j, "want padding, the reference has no more vectors");
      }
      continue;
    }
    if (got_ids[j] == kNoId) return fail(j, "result missing");
    if (!seen.insert(got_ids[j]).second) return fail(j, "duplicate id in the row");
    if (!ties(got_d[j], want_d[j])) return fail(j, "distance differs");
    if (got_ids[j] == want_ids[j]) continue;
    const auto end = want_ids.begin() + real;
    const auto it = std::find(want_ids.begin(), end, got_ids[j]);
    if (it != end) {
      const int p = static_cast<int>(it - want_ids.begin());
      if (ties(want_d[p], want_d[j])) continue;
      return fail(j, absl::StrCat("the reference ranks it at position ", p, " (distance ",
                                  want_d[p], "), not tied"));
    }
    if (real < k) return fail(j, "id not in the reference, which lists every vector");
    // An outsider can only tie with the k-th neighbour; its reported distance is trusted.
    if (!ties(want_d[j], want_d[k - 1])) {
      return fail(j,
                  "id not among the reference neighbours, and this position does not tie "
                  "with the k-th distance");
    }
  }
  return absl::OkStatus();
}

}  // namespace

void BruteForceSearch(Metric metric, int dim, int64_t nb, const float* base,
                      const uint64_t* base_ids, int64_t nq, const float* queries, int k,
                      std::vector<double>* distances, std::vector<uint64_t>* ids) {
  const std::vector<double> b = Prepare(metric, dim, nb, base);
  const std::vector<double> q = Prepare(metric, dim, nq, queries);
  distances->assign(nq * k, MissingDistance(metric));
  ids->assign(nq * k, kNoId);
  const auto before = [metric](const std::pair<double, uint64_t>& x,
                               const std::pair<double, uint64_t>& y) {
    if (x.first != y.first) return metric == Metric::kL2 ? x.first < y.first : x.first > y.first;
    return x.second < y.second;
  };
  const int64_t kept = std::min<int64_t>(k, nb);
  std::vector<std::pair<double, uint64_t>> scored(nb);
  for (int64_t i = 0; i < nq; ++i) {
    for (int64_t j = 0; j < nb; ++j) {
      scored[j] = {Distance(metric, dim, q.data() + i * dim, b.data() + j * dim), base_ids[j]};
    }
    std::partial_sort(scored.begin(), scored.begin() + kept, scored.end(), before);
    for (int64_t j = 0; j < kept; ++j) {
      (*distances)[i * k + j] = scored[j].first;
      (*ids)[i * k + j] = scored[j].second;
    }
  }
}

absl::Status CheckKnnResult(Metric metric, int k, absl::Span<const double> want_distances,
                            absl::Span<const uint64_t> want_ids,
                            absl::Span<const float> got_distances,
                            absl::Span<const uint64_t> got_ids, double rel_tol) {
  const size_t size = want_ids.size();
  if (k < 1 || size % k != 0 || want_distances.size() != size || got_distances.size() != size ||
      got_ids.size() != size) {
    return absl::InvalidArgumentError(absl::StrCat("sizes: k=", k, ", want ", want_distances.size(),
                                                   "/", size, ", got ", got_distances.size(), "/",
                                                   got_ids.size(), " (distances/ids)"));
  }
  for (size_t row = 0; row < size; row += k) {
    absl::Status status =
        CheckRow(metric, row / k, want_distances.subspan(row, k), want_ids.subspan(row, k),
                 got_distances.subspan(row, k), got_ids.subspan(row, k), rel_tol);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

double RecallAtK(int k, absl::Span<const uint64_t> want_ids, absl::Span<const uint64_t> got_ids) {
  if (k < 1 || want_ids.size() % k != 0 || want_ids.size() != got_ids.size()) return 0;
  int64_t wanted = 0;
  int64_t found = 0;
  for (size_t row = 0; row < want_ids.size(); row += k) {
    const absl::flat_hash_set<uint64_t> got(got_ids.begin() + row, got_ids.begin() + row + k);
    for (size_t j = row; j < row + k; ++j) {
      if (want_ids[j] == kNoId) continue;
      ++wanted;
      found += got.contains(want_ids[j]);
    }
  }
  return wanted == 0 ? 1.0 : static_cast<double>(found) / wanted;
}

}  // namespace shardvec::index
