// Exact k-NN in double precision, the reference that index, shard and end-to-end
// tests compare against. No FAISS involved.
//
//   std::vector<double> want_d;
//   std::vector<uint64_t> want_ids;
//   BruteForceSearch(Metric::kL2, dim, nb, base, base_ids, nq, queries, k, &want_d, &want_ids);
//   EXPECT_TRUE(CheckKnnResult(Metric::kL2, k, want_d, want_ids, got_d, got_ids, 1e-5).ok());
//   EXPECT_GE(RecallAtK(k, want_ids, got_ids), 0.9);  // For approximate indexes.
#ifndef SHARDVEC_INDEX_BRUTE_FORCE_H_
#define SHARDVEC_INDEX_BRUTE_FORCE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "index/index.h"

namespace shardvec::index {

// The k nearest of the nb base vectors (ids base_ids, distinct) to each of the nq
// queries, with the distances the index reports: squared L2, inner product, or cosine
// similarity (vectors normalised; a zero vector scores 0). Fills distances and ids
// with nq rows of k, nearest first, ties broken by smaller id, padded with
// (kNoId, +inf for kL2 / -inf otherwise) when nb < k.
void BruteForceSearch(Metric metric, int dim, int64_t nb, const float* base,
                      const uint64_t* base_ids, int64_t nq, const float* queries, int k,
                      std::vector<double>* distances, std::vector<uint64_t>* ids);

// Whether `got` (rows of k, as Index::Search returns) is an exact k-NN result given
// the BruteForceSearch reference `want`. Per position, the got distance must match
// the reference distance, and the got id must be the reference id unless it is
// interchangeable with it: another reference neighbour whose reference distance ties
// with this position's, or (when the reference row is full) a vector outside the
// reference list at a position that ties with the k-th distance. Rows must hold no
// duplicate ids and pad exactly where the reference pads. Two values tie when they
// differ by at most rel_tol x max(|a|, |b|, largest |distance| in the reference row),
// which absorbs float32 rounding even for distances near zero. Returns
// INVALID_ARGUMENT naming the first offending query and position.
absl::Status CheckKnnResult(Metric metric, int k, absl::Span<const double> want_distances,
                            absl::Span<const uint64_t> want_ids,
                            absl::Span<const float> got_distances,
                            absl::Span<const uint64_t> got_ids, double rel_tol);

// Fraction of the reference's neighbours (kNoId excluded) found in the same query's
// row of got_ids, over all rows of k: recall@k. 1 when the reference has none, 0 when
// the sizes do not fit together.
double RecallAtK(int k, absl::Span<const uint64_t> want_ids, absl::Span<const uint64_t> got_ids);

}  // namespace shardvec::index

#endif  // SHARDVEC_INDEX_BRUTE_FORCE_H_
