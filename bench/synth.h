// Deterministic synthetic embedding-like vectors for benchmarks at sizes the real
// development set (wordnet-lsa-128, 115,659 rows) does not reach.
//
//   SynthSpec spec;
//   spec.n = 1000000;
//   SynthGenerator gen(spec);           // builds the cluster model once
//   gen.BaseRows(first, count, out);    // any chunk, from any thread
//   gen.QueryRows(0, 1000, queries);    // same distribution, never rows of the base
//
// Model: clusters with Zipf-skewed sizes around random unit centres; each cluster spreads
// in its own random low-dimensional subspace with a log-normal radius, rows come in small
// groups (near-duplicates) inside it, and a little isotropic noise proportional to the
// radius fills the other dimensions; every row is then normalised. Row i is a pure
// function of (spec, i), so chunks and threads give identical bytes; the model depends on
// spec.n, so every chunk of one data set must use the same spec.
//
// Tuning, at dim 128. The defaults below were chosen so that FAISS IVF-Flat (k = 10, 1000 queries,
// nlist = power of two nearest 1024 * sqrt(n / 115659)) gives the real set's recall:
//
//   bazel build -c opt //bench:synth_check
//   bazel-bin/bench/synth_check --synthetic 115659,1000000   # --seed 2, 3 for the others
//
//   data            n      nlist  R@10 np1  np4    np16   np64   d1/d10  lists' imbalance
//   wordnet (real)  115659  1024  0.785    0.945  0.987  0.997  0.685   2.39
//   synth seed 1    115659  1024  0.743    0.943  0.986  0.997  0.679   1.30
//   synth seed 2    115659  1024  0.750    0.953  0.990  0.997  0.684   1.28
//   synth seed 3    115659  1024  0.750    0.956  0.989  0.996  0.674   1.33
//   synth seed 1   1000000  4096  0.704    0.938  0.987  0.997  0.754   1.30
//
// (d1/d10: mean over queries of the distance to the 1st over the 10th neighbour.) Not
// matched: neighbours are closer than in the real set (median 10th-neighbour distance
// 0.26 against 0.44), the local intrinsic dimension is lower (8 against 16), and the IVF
// lists are more even (imbalance 1.3 against 2.4: the real set's largest lists are tight
// cores inside loose regions), so an IVF probe scans fewer rows than on real data.
// Generation, one thread on the 2-core dev machine: 1M x 128 in about 2 s, 10M in 17-23 s.
#ifndef SHARDVEC_BENCH_SYNTH_H_
#define SHARDVEC_BENCH_SYNTH_H_

#include <cstdint>
#include <vector>

namespace shardvec::bench {

// What to generate. The knobs' defaults were tuned against wordnet-lsa-128 (see above);
// change them only to study sensitivity.
struct SynthSpec {
  int64_t n = 0;  // base rows
  int dim = 128;
  uint64_t seed = 1;

  // Number of clusters; 0 = round(clusters_per_sqrt_n * sqrt(n)), which grows like the
  // usual IVF nlist rule, so each list sees a similar number of clusters at any n.
  int64_t clusters = 0;
  double clusters_per_sqrt_n = 3.0;
  double zipf = 1.0;          // cluster weights proportional to 1 / rank^zipf
  int intrinsic_dim = 6;      // dimension of each cluster's subspace
  double spread = 0.5;        // median cluster radius (the centre has length 1)
  double spread_sigma = 1.3;  // log-normal sigma of the radius across clusters
  double noise = 0.3;         // length of the isotropic noise relative to the radius
  double group_size = 4;      // mean rows per group; 0 = no groups
  double group_spread = 0.3;  // a group's radius relative to its cluster's
};

// The number of clusters a spec gets.
int64_t ClustersFor(const SynthSpec& spec);

// The cluster model (centres, subspaces, radii) of one spec. Immutable after
// construction: the Rows methods are const and safe to call from many threads at once.
class SynthGenerator {
 public:
  explicit SynthGenerator(const SynthSpec& spec);

  // Writes base rows [first_row, first_row + count), row-major and unit length, into
  // out[0 .. count * dim).
  void BaseRows(int64_t first_row, int64_t count, float* out) const;
  // Query rows: the same distribution from a separate random stream.
  void QueryRows(int64_t first_row, int64_t count, float* out) const;

  // The spec with clusters and intrinsic_dim resolved.
  const SynthSpec& spec() const { return spec_; }

 private:
  void Rows(uint64_t stream, int64_t first_row, int64_t count, float* out) const;

  SynthSpec spec_;
  std::vector<double> cumulative_weight_;  // per cluster, last = 1
  std::vector<float> centres_;             // clusters x dim, unit length
  std::vector<float> bases_;               // clusters x dim x intrinsic_dim: scaled axes
  std::vector<float> noise_sd_;            // per cluster: per-coordinate noise sd
  std::vector<int64_t> groups_;            // per cluster: number of groups
};

// Convenience wrappers; each builds the model anew (cheap next to the rows themselves).
void GenerateBase(const SynthSpec& spec, std::vector<float>* out);
void GenerateQueries(const SynthSpec& spec, int64_t nq, std::vector<float>* out);
void GenerateRows(const SynthSpec& spec, int64_t first_row, int64_t count, float* out);

}  // namespace shardvec::bench

#endif  // SHARDVEC_BENCH_SYNTH_H_
