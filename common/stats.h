// Summary statistics for benchmark output.
#ifndef SHARDVEC_COMMON_STATS_H_
#define SHARDVEC_COMMON_STATS_H_

#include <algorithm>
#include <cmath>
#include <vector>

namespace shardvec {

// The p-th percentile (0..100, nearest rank) of `values`; 0 for none.
inline double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * values.size()));
  return values[std::min(values.size() - 1, rank == 0 ? 0 : rank - 1)];
}

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_STATS_H_
