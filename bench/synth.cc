#include "bench/synth.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace shardvec::bench {
namespace {

// Stream tags keep the model, the base rows, the query rows and the groups independent.
constexpr uint64_t kModelStream = 0x6d6f64656c000001ULL;
constexpr uint64_t kBaseStream = 0x6261736500000002ULL;
constexpr uint64_t kQueryStream = 0x7175657279000003ULL;
constexpr uint64_t kGroupStream = 0x67726f7570000004ULL;

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// SplitMix64: one word of state, so a fresh one can start at every (seed, stream, index)
// and rows need not be generated in order.
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream, uint64_t index) : state_(Mix(Mix(seed ^ stream) + index * kGolden)) {}

  uint64_t Next() { return Mix(state_ += kGolden); }

  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

  // Standard normals by Box-Muller, two per 64-bit draw (24-bit uniforms; tails end at
  // 5.8 sigma, which is plenty for data).
  void Normals(float* out, int count) {
    constexpr float kTwoPi = 6.28318530717958647692f;
    for (int i = 0; i < count; i += 2) {
      const uint64_t bits = Next();
      const float u1 = static_cast<float>((bits >> 40) + 1) * 0x1.0p-24f;  // (0, 1]
      const float u2 = static_cast<float>(bits & 0xffffff) * 0x1.0p-24f;   // [0, 1)
      const float radius = std::sqrt(-2.0f * std::log(u1));
      out[i] = radius * std::cos(kTwoPi * u2);
      if (i + 1 < count) out[i + 1] = radius * std::sin(kTwoPi * u2);
    }
  }

  float Normal() {
    float z;
    Normals(&z, 1);
    return z;
  }

  // Approximately normal (Irwin-Hall: the sum of four 16-bit uniforms, mean 0, sd 1),
  // one 64-bit draw each, several times cheaper than Box-Muller. Used for the isotropic
  // noise, which is summed over many coordinates anyway.
  void RoughNormals(float* out, int count) {
    constexpr float kScale = 1.7320508f / 65536.0f;  // sqrt(12 / 4) per unit of 2^16
    for (int i = 0; i < count; ++i) {
      const uint64_t bits = Next();
      const int64_t sum = static_cast<int64_t>((bits & 0xffff) + ((bits >> 16) & 0xffff) +
                                               ((bits >> 32) & 0xffff) + (bits >> 48));
      out[i] = static_cast<float>(sum - 2 * 65535) * kScale;
    }
  }

 private:
  uint64_t state_;
};

void Normalize(float* x, int dim) {
  double norm2 = 0;
  for (int j = 0; j < dim; ++j) norm2 += static_cast<double>(x[j]) * x[j];
  const float inv = norm2 > 0 ? static_cast<float>(1.0 / std::sqrt(norm2)) : 0.0f;
  for (int j = 0; j < dim; ++j) x[j] *= inv;
}

// Removes from x its components along the unit vectors u[0 .. count).
void Orthogonalize(float* x, const float* u, int count, int dim) {
  for (int b = 0; b < count; ++b) {
    const float* ub = u + static_cast<size_t>(b) * dim;
    double dot = 0;
    for (int j = 0; j < dim; ++j) dot += static_cast<double>(x[j]) * ub[j];
    for (int j = 0; j < dim; ++j) x[j] -= static_cast<float>(dot) * ub[j];
  }
}

}  // namespace

int64_t ClustersFor(const SynthSpec& spec) {
  if (spec.clusters > 0) return spec.clusters;
  const double n = static_cast<double>(std::max<int64_t>(spec.n, 1));
  return std::max<int64_t>(1, std::llround(spec.clusters_per_sqrt_n * std::sqrt(n)));
}

SynthGenerator::SynthGenerator(const SynthSpec& spec) : spec_(spec) {
  spec_.clusters = ClustersFor(spec);
  spec_.intrinsic_dim = std::max(1, std::min(spec_.intrinsic_dim, spec_.dim - 1));
  const int dim = spec_.dim;
  const int r = spec_.intrinsic_dim;
  const int64_t clusters = spec_.clusters;
  Rng rng(spec_.seed, kModelStream, 0);

  std::vector<double> weight(clusters);
  double total = 0;
  for (int64_t c = 0; c < clusters; ++c)
    total += weight[c] = std::pow(static_cast<double>(c + 1), -spec_.zipf);
  cumulative_weight_.resize(clusters);
  double sum = 0;
  for (int64_t c = 0; c < clusters; ++c) {
    weight[c] /= total;
    cumulative_weight_[c] = sum += weight[c];
  }
  cumulative_weight_.back() = 1.0;

  centres_.resize(static_cast<size_t>(clusters) * dim);
  bases_.resize(static_cast<size_t>(clusters) * r * dim);
  noise_sd_.resize(clusters);
  groups_.resize(clusters);
  std::vector<float> frame(static_cast<size_t>(r + 1) * dim);  // centre, then the axes
  for (int64_t c = 0; c < clusters; ++c) {
    // A random orthonormal frame: the centre's direction and r axes perpendicular to it,
    // so that a cluster's width does not change its centre's length.
    for (int b = 0; b <= r; ++b) {
      float* v = frame.data() + static_cast<size_t>(b) * dim;
      rng.Normals(v, dim);
      Orthogonalize(v, frame.data(), b, dim);
      Normalize(v, dim);
    }
    std::memcpy(centres_.data() + static_cast<size_t>(c) * dim, frame.data(), dim * sizeof(float));
    const double radius = spec_.spread * std::exp(spec_.spread_sigma * rng.Normal());
    // Each latent coordinate has sd radius / sqrt(r), so the offset's expected length is
    // the radius whatever the intrinsic dimension; likewise for the noise over dim.
    const float axis_sd = static_cast<float>(radius / std::sqrt(static_cast<double>(r)));
    noise_sd_[c] = static_cast<float>(spec_.noise * radius / std::sqrt(static_cast<double>(dim)));
    float* basis = bases_.data() + static_cast<size_t>(c) * dim * r;
    for (int b = 0; b < r; ++b) {
      const float* axis = frame.data() + static_cast<size_t>(b + 1) * dim;
      for (int j = 0; j < dim; ++j) basis[static_cast<size_t>(j) * r + b] = axis_sd * axis[j];
    }
    const double rows = static_cast<double>(spec_.n) * weight[c];
    groups_[c] = spec_.group_size > 0 ? std::max<int64_t>(1, std::llround(rows / spec_.group_size)) : 0;
  }
}

void SynthGenerator::BaseRows(int64_t first_row, int64_t count, float* out) const {
  Rows(kBaseStream, first_row, count, out);
}

void SynthGenerator::QueryRows(int64_t first_row, int64_t count, float* out) const {
  Rows(kQueryStream, first_row, count, out);
}

void SynthGenerator::Rows(uint64_t stream, int64_t first_row, int64_t count, float* out) const {
  const int dim = spec_.dim;
  const int r = spec_.intrinsic_dim;
  const float group_sd = static_cast<float>(spec_.group_spread);
  const float shared_sd = std::sqrt(std::max(0.0f, 1.0f - group_sd * group_sd));
  std::vector<float> latent(r), group_centre(r), buffer(dim);
  float* x = buffer.data();
  for (int64_t i = 0; i < count; ++i) {
    Rng rng(spec_.seed, stream, static_cast<uint64_t>(first_row + i));
    const int64_t c = std::min<int64_t>(
        spec_.clusters - 1,
        std::upper_bound(cumulative_weight_.begin(), cumulative_weight_.end(), rng.Uniform()) -
            cumulative_weight_.begin());
    rng.Normals(latent.data(), r);
    if (groups_[c] > 0) {
      // The group's point in the cluster's subspace is a function of (cluster, group), so
      // its rows (and queries drawn into it) land close together: near-duplicates.
      const uint64_t g = rng.Next() % static_cast<uint64_t>(groups_[c]);
      Rng group_rng(spec_.seed, kGroupStream ^ static_cast<uint64_t>(c), g);
      group_rng.Normals(group_centre.data(), r);
      for (int b = 0; b < r; ++b) latent[b] = shared_sd * group_centre[b] + group_sd * latent[b];
    }

    // Built in a small buffer that stays in cache, then written to out once.
    rng.RoughNormals(x, dim);
    const float* centre = centres_.data() + static_cast<size_t>(c) * dim;
    const float* basis = bases_.data() + static_cast<size_t>(c) * dim * r;
    const float noise_sd = noise_sd_[c];
    for (int j = 0; j < dim; ++j) {
      float v = centre[j] + noise_sd * x[j];
      const float* axes = basis + static_cast<size_t>(j) * r;
      for (int b = 0; b < r; ++b) v += latent[b] * axes[b];
      x[j] = v;
    }
    float norm2 = 0;
    for (int j = 0; j < dim; ++j) norm2 += x[j] * x[j];
    const float inv = norm2 > 0 ? 1.0f / std::sqrt(norm2) : 0.0f;
    float* row = out + static_cast<size_t>(i) * dim;
    for (int j = 0; j < dim; ++j) row[j] = x[j] * inv;
  }
}

void GenerateBase(const SynthSpec& spec, std::vector<float>* out) {
  SynthGenerator gen(spec);
  out->resize(static_cast<size_t>(spec.n) * spec.dim);
  gen.BaseRows(0, spec.n, out->data());
}

void GenerateQueries(const SynthSpec& spec, int64_t nq, std::vector<float>* out) {
  SynthGenerator gen(spec);
  out->resize(static_cast<size_t>(nq) * spec.dim);
  gen.QueryRows(0, nq, out->data());
}

void GenerateRows(const SynthSpec& spec, int64_t first_row, int64_t count, float* out) {
  SynthGenerator(spec).BaseRows(first_row, count, out);
}

}  // namespace shardvec::bench
