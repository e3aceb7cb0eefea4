// The CUDA Llama forward pass against transformers' outputs for the tiny fixtures
// (llm/testdata), against the CPU reference, with tensor parallelism on one GPU, under
// continuous batching, and its kernels against plain CPU references on fresh random data.
// Every case that needs a GPU skips, saying so, where there is none.
//
// bf16 references: $LLM_BF16_REFS/<model>/expected_bfloat16.json (made by
// make_tiny_llama.py --reference-only --dtype bfloat16 --out DIR), or the same file in
// the fixture folder; the bf16 comparison with transformers skips without one.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/llm_kernels.h"
#include "llm/comm.h"
#include "llm/config.h"
#include "llm/cpu_model.h"
#include "llm/cuda/cuda_model.h"
#include "llm/cuda/nccl_comm.h"
#include "llm/model.h"
#include "llm/safetensors.h"
#include "llm/test_fixtures.h"

namespace shardvec::llm {
namespace {

namespace kl = ::shardvec::kernels::llm;
using testing::Expected;
using testing::Greedy;
using testing::Ids;
using testing::ModelDir;
using testing::RelativeError;
using testing::SequenceBatch;

int Devices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

#define SKIP_WITHOUT_GPU()                                                \
  do {                                                                    \
    if (Devices() == 0) GTEST_SKIP() << "no CUDA device: GPU test skipped"; \
  } while (0)

uint64_t FreshSeed() { return (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}(); }

// ---------------------------------------------------------------- host helpers

uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even (inputs are finite)
  return static_cast<uint16_t>(u >> 16);
}
float FromBf16(uint16_t h) {
  const uint32_t u = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float RoundBf16(float f) { return FromBf16(ToBf16(f)); }

// Device buffer of raw bytes with typed upload/download.
class Buf {
 public:
  explicit Buf(size_t bytes) { cudaMalloc(&p_, std::max<size_t>(bytes, 16)); }
  ~Buf() { cudaFree(p_); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  template <typename T>
  static std::unique_ptr<Buf> Of(const std::vector<T>& v) {
    auto b = std::make_unique<Buf>(v.size() * sizeof(T));
    cudaMemcpy(b->p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
    return b;
  }
  template <typename T>
  std::vector<T> Get(size_t n) const {
    std::vector<T> v(n);
    cudaMemcpy(v.data(), p_, n * sizeof(T), cudaMemcpyDeviceToHost);
    return v;
  }
  void Poison(size_t bytes) { cudaMemset(p_, 0x7f, bytes); }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
};

// Elements (bf16 or f32) of float values, as the kernels store them; `rounded` gets the
// values the device sees.
std::unique_ptr<Buf> Elems(const std::vector<float>& v, kl::ElemType t, std::vector<float>* rounded) {
  *rounded = v;
  if (t == kl::ElemType::kF32) return Buf::Of(v);
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    h[i] = ToBf16(v[i]);
    (*rounded)[i] = FromBf16(h[i]);
  }
  return Buf::Of(h);
}

std::vector<float> ElemsBack(const Buf& b, kl::ElemType t, size_t n) {
  if (t == kl::ElemType::kF32) return b.Get<float>(n);
  std::vector<uint16_t> h = b.Get<uint16_t>(n);
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = FromBf16(h[i]);
  return f;
}

std::vector<float> Random(size_t n, std::mt19937_64& rng, float scale = 1.0f) {
  std::normal_distribution<float> g(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = g(rng);
  return v;
}

void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double rel,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << " [" << i << "] unwritten or not finite";
    ASSERT_NEAR(got[i], want[i], rel * scale + 1e-30) << what << " [" << i << "]";
  }
}

const kl::ElemType kTypes[] = {kl::ElemType::kF32, kl::ElemType::kBF16};

// y[i][j] = sum over kk of x[i][kk] * w[j][kk] in float64 (x: m x k, w: n x k).
std::vector<double> GemvReference(const std::vector<float>& x, const std::vector<float>& w, int m,
                                  int n, int k) {
  std::vector<double> y(size_t(m) * n);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double acc = 0;
      for (int kk = 0; kk < k; ++kk) acc += double(x[size_t(i) * k + kk]) * w[size_t(j) * k + kk];
      y[size_t(i) * n + j] = acc;
    }
  }
  return y;
}

// float64 reference of the skinny GEMM with the fused (deferred) norm, as the kernel
// defines it: x = elem(h[map[i]] * g), y[i][j] = rsqrt(mean(h[map[i]]^2) + eps) * (x . w[j]).
std::vector<double> NormGemvReference(const std::vector<float>& h, const std::vector<int32_t>& map,
                                      const std::vector<float>& g, const std::vector<float>& w,
                                      int n, int k, kl::ElemType t, double eps) {
  const int m = static_cast<int>(map.size());
  std::vector<float> x(size_t(m) * k);
  std::vector<double> r(m);
  for (int i = 0; i < m; ++i) {
    const float* hr = h.data() + size_t(map[i]) * k;
    double ss = 0;
    for (int kk = 0; kk < k; ++kk) ss += double(hr[kk]) * hr[kk];
    r[i] = 1 / std::sqrt(ss / k + eps);
    for (int kk = 0; kk < k; ++kk) {
      const float v = hr[kk] * g[kk];
      x[size_t(i) * k + kk] = t == kl::ElemType::kF32 ? v : RoundBf16(v);
    }
  }
  std::vector<double> y = GemvReference(x, w, m, n, k);
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) y[size_t(i) * n + j] *= r[i];
  }
  return y;
}

const char* Name(kl::ElemType t) { return t == kl::ElemType::kF32 ? "f32" : "bf16"; }

// ---------------------------------------------------------------- kernels

TEST(LlmKernels, AddRmsNormMatchesReference) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 rng(seed);
  for (kl::ElemType t : kTypes) {
    for (int hidden : {48, 64, 2048, 1000}) {
      const int rows = 5;
      const float eps = 1e-5f;
      std::vector<float> h = Random(rows * hidden, rng), d = Random(rows * hidden, rng);
      std::vector<float> w_raw = Random(hidden, rng), w;
      auto dh = Buf::Of(h), dd = Buf::Of(d);
      auto dw = Elems(w_raw, t, &w);
      Buf out(rows * hidden * 4);
      out.Poison(rows * hidden * 4);
      const std::vector<int32_t> map = {3, 0};
      auto dmap = Buf::Of(map);
      // With a row map: the final norm of two sampled rows, h left alone.
      ASSERT_EQ(kl::AddRmsNorm(dh->get<float>(), dd->get<float>(), dmap->get<int32_t>(), 2,
                               hidden, dw->get(), t, eps, out.get(), nullptr),
                cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      std::vector<double> want;
      for (int i : map) {
        double ss = 0;
        for (int j = 0; j < hidden; ++j) {
          const double v = double(h[i * hidden + j]) + d[i * hidden + j];
          ss += v * v;
        }
        const double r = 1.0 / std::sqrt(ss / hidden + eps);
        for (int j = 0; j < hidden; ++j) {
          want.push_back((double(h[i * hidden + j]) + d[i * hidden + j]) * r * w[j]);
        }
      }
      const double tol = t == kl::ElemType::kF32 ? 1e-5 : 8e-3;
      ExpectClose(ElemsBack(out, t, 2 * hidden), want, tol, absl::StrCat(Name(t), " mapped"));
      EXPECT_EQ(dh->Get<float>(h.size()), h) << "a mapped norm must not write the residual";
      // Without: every row, and the residual add written back.
      ASSERT_EQ(kl::AddRmsNorm(dh->get<float>(), dd->get<float>(), nullptr, rows, hidden,
                               dw->get(), t, eps, out.get(), nullptr),
                cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      std::vector<float> hsum = dh->Get<float>(h.size());
      for (size_t i = 0; i < h.size(); ++i) ASSERT_EQ(hsum[i], h[i] + d[i]) << i;
    }
  }
}

TEST(LlmKernels, RopeKvWriteMatchesReference) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 rng(seed);
  LlamaConfig cfg;
  cfg.head_dim = 64;
  cfg.rope_theta = 500000.0;
  cfg.rope_scaling.type = RopeScaling::Type::kLlama3;
  cfg.rope_scaling.factor = 32.0;
  cfg.rope_scaling.original_max_position_embeddings = 8192;
  const std::vector<float> inv = cfg.RopeInverseFrequencies();
  const int D = 64, qh = 4, kvh = 2, rows = 6, slots = 3, max_seq = 4096;
  const std::vector<int32_t> pos = {0, 1, 2, 4095, 17, 1000}, slot = {0, 0, 0, 1, 2, 1};
  for (kl::ElemType t : kTypes) {
    const int width = (qh + 2 * kvh) * D;
    // qkv in Hugging Face order; the kernel reads the rope-paired order.
    std::vector<float> qkv = Random(rows * width, rng), paired(qkv.size());
    for (int r = 0; r < rows; ++r) {
      for (int j = 0; j < width; ++j) {
        paired[r * width + j] = qkv[r * width + kl::QkvPairedRow(j, qh, kvh, D)];
      }
    }
    auto dqkv = Buf::Of(paired), dpos = Buf::Of(pos), dslot = Buf::Of(slot), dinv = Buf::Of(inv);
    Buf q(rows * qh * D * 4);
    q.Poison(rows * qh * D * 4);
    const size_t cache = size_t(slots) * kvh * max_seq * D;
    Buf kc(cache * 4), vc(cache * 4);
    ASSERT_EQ(kl::RopeKvWrite(dqkv->get<float>(), rows, qh, kvh, D, dpos->get<int32_t>(),
                              dslot->get<int32_t>(), dinv->get<float>(), q.get<float>(), kc.get(),
                              vc.get(), t, max_seq, nullptr),
              cudaSuccess);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> gq = q.Get<float>(rows * qh * D);
    const std::vector<float> gk = ElemsBack(kc, t, cache), gv = ElemsBack(vc, t, cache);
    const double tol = t == kl::ElemType::kF32 ? 2e-5 : 8e-3;
    for (int r = 0; r < rows; ++r) {
      for (int head = 0; head < qh + kvh; ++head) {
        for (int i = 0; i < D / 2; ++i) {
          const float angle = static_cast<float>(pos[r]) * inv[i];
          const double c = std::cos(double(angle)), s = std::sin(double(angle));
          const double x1 = qkv[r * width + head * D + i], x2 = qkv[r * width + head * D + i + D / 2];
          const double y1 = x1 * c - x2 * s, y2 = x2 * c + x1 * s;
          float g1, g2;
          if (head < qh) {
            g1 = gq[(r * qh + head) * D + i];
            g2 = gq[(r * qh + head) * D + i + D / 2];
          } else {
            const size_t at = ((size_t(slot[r]) * kvh + head - qh) * max_seq + pos[r]) * D;
            g1 = gk[at + i];
            g2 = gk[at + i + D / 2];
          }
          const double tl = head < qh ? 2e-5 : tol;
          ASSERT_NEAR(g1, y1, tl * (std::fabs(y1) + 1)) << r << " " << head << " " << i;
          ASSERT_NEAR(g2, y2, tl * (std::fabs(y2) + 1)) << r << " " << head << " " << i;
        }
      }
      for (int hh = 0; hh < kvh; ++hh) {
        for (int d = 0; d < D; ++d) {
          const size_t at = ((size_t(slot[r]) * kvh + hh) * max_seq + pos[r]) * D + d;
          const float want = qkv[r * width + (qh + kvh + hh) * D + d];
          ASSERT_EQ(gv[at], t == kl::ElemType::kF32 ? want : RoundBf16(want));
        }
      }
    }
  }
}

// Rows of the batch: (slot, position); tiles as the model builds them.
struct AttnCase {
  std::vector<int32_t> slot, pos;
  std::vector<kl::AttnTile> tiles;
};

// float64 causal attention of rows (slot[r], pos[r]) over caches [slot][kv head][max_seq][D].
std::vector<double> AttentionReference(const std::vector<float>& q, const std::vector<float>& kr,
                                       const std::vector<float>& vr, const std::vector<int>& slot,
                                       const std::vector<int>& pos, const kl::AttnShape& shape) {
  const int qh = shape.q_heads, kvh = shape.kv_heads, D = shape.head_dim;
  const int group = qh / kvh, max_seq = shape.max_seq_len;
  std::vector<double> want;
  for (size_t r = 0; r < slot.size(); ++r) {
    for (int h = 0; h < qh; ++h) {
      const size_t base = (size_t(slot[r]) * kvh + h / group) * max_seq;
      std::vector<double> sc(pos[r] + 1);
      double mx = -1e300;
      for (int j = 0; j <= pos[r]; ++j) {
        double s = 0;
        for (int d = 0; d < D; ++d) s += double(q[(r * qh + h) * D + d]) * kr[(base + j) * D + d];
        sc[j] = s / std::sqrt(double(D));
        mx = std::max(mx, sc[j]);
      }
      double tot = 0;
      for (double& s : sc) tot += (s = std::exp(s - mx));
      for (int d = 0; d < D; ++d) {
        double o = 0;
        for (int j = 0; j <= pos[r]; ++j) o += sc[j] * vr[(base + j) * D + d];
        want.push_back(o / tot);
      }
    }
  }
  return want;
}

TEST(LlmKernels, AttentionMatchesReference) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 rng(seed);
  const int slots = 3, max_seq = 200;
  // A prefill tile of 5 rows at positions 40..44 of slot 0 (plus a second tile 45..46),
  // decode rows of slots 1 and 2 (one at position 0, one at the last position).
  AttnCase c;
  for (int p = 40; p < 47; ++p) {
    c.slot.push_back(0);
    c.pos.push_back(p);
  }
  c.slot.insert(c.slot.end(), {1, 2});
  c.pos.insert(c.pos.end(), {0, max_seq - 1});
  c.tiles = {{0, 5, 0, 40}, {5, 2, 0, 45}, {7, 1, 1, 0}, {8, 1, 2, max_seq - 1}};
  const int rows = static_cast<int>(c.slot.size());
  for (kl::ElemType t : kTypes) {
    for (int D : {16, 64, 128}) {
      for (int group : {1, 4}) {
        const int kvh = 2, qh = kvh * group;
        const kl::AttnShape shape{qh, kvh, D, max_seq};
        const size_t cache = size_t(slots) * kvh * max_seq * D;
        std::vector<float> kr, vr;
        auto kc = Elems(Random(cache, rng), t, &kr);
        auto vc = Elems(Random(cache, rng), t, &vr);
        const std::vector<float> q = Random(size_t(rows) * qh * D, rng);
        auto dq = Buf::Of(q), dt = Buf::Of(c.tiles);
        const std::vector<double> want = AttentionReference(q, kr, vr, c.slot, c.pos, shape);
        for (int split : {max_seq, 32, 64}) {
          const int max_splits = (max_seq + split - 1) / split;
          Buf partial(size_t(rows) * qh * max_splits * (D + 2) * 4);
          Buf out(size_t(rows) * qh * D * 4);
          out.Poison(size_t(rows) * qh * D * 4);
          const std::vector<int32_t> zeros(c.tiles.size() * kvh, 0);
          auto counters = Buf::Of(zeros);
          ASSERT_EQ(kl::Attention(dq->get<float>(), dt->get<kl::AttnTile>(),
                                  static_cast<int>(c.tiles.size()), shape, kc->get(), vc->get(), t,
                                  split, max_splits, partial.get<float>(),
                                  counters->get<int32_t>(), out.get(), nullptr),
                    cudaSuccess);
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          ExpectClose(ElemsBack(out, t, want.size()), want, t == kl::ElemType::kF32 ? 1e-5 : 8e-3,
                      absl::StrCat(Name(t), " D=", D, " group=", group, " split=", split));
          EXPECT_EQ(counters->Get<int32_t>(zeros.size()), zeros) << "counters left zeroed";
        }
      }
    }
  }
}

// DecodeAttention against the float64 reference: one-row tiles of distinct slots at
// positions around the keys a block loads before the wait (`cap`; from there on keys are
// read after it, `cap` at a time), group sizes that fill the kernel's heads or not.
TEST(LlmKernels, DecodeAttentionMatchesReference) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 rng(seed);
  for (kl::ElemType t : kTypes) {
    for (int D : {16, 64, 128}) {
      for (int group : {1, 3, 4, 8, 16}) {
        const int kvh = 2, qh = kvh * group;
        const int cap = kl::DecodeAttentionKeys({qh, kvh, D, 1 << 20}, t);
        ASSERT_GT(cap, 0) << Name(t) << " D=" << D << " group=" << group;
        const int max_seq = 2 * cap + 40;
        const kl::AttnShape shape{qh, kvh, D, max_seq};
        std::vector<int> pos = {0, 1, 31, 32, 33, 77, cap - 1, cap, cap + 1, 2 * cap, max_seq - 1};
        std::vector<int> slot(pos.size());
        std::vector<kl::AttnTile> tiles;
        for (size_t r = 0; r < pos.size(); ++r) {
          slot[r] = static_cast<int>(pos.size() - 1 - r);  // distinct, not in row order
          tiles.push_back({static_cast<int32_t>(r), 1, slot[r], pos[r]});
        }
        const int slots = static_cast<int>(pos.size()), rows = slots;
        const size_t cache = size_t(slots) * kvh * max_seq * D;
        std::vector<float> kr, vr;
        auto kc = Elems(Random(cache, rng), t, &kr);
        auto vc = Elems(Random(cache, rng), t, &vr);
        const std::vector<float> q = Random(size_t(rows) * qh * D, rng);
        auto dq = Buf::Of(q), dt = Buf::Of(tiles);
        const std::vector<double> want = AttentionReference(q, kr, vr, slot, pos, shape);
        // Every split of the group into blocks (0: the automatic choice).
        for (int hpb = 0; hpb <= std::min(group, kl::kMaxDecodeGroup); ++hpb) {
          if (hpb > 0 && group % hpb != 0) continue;
          Buf out(size_t(rows) * qh * D * 4);
          out.Poison(size_t(rows) * qh * D * 4);
          ASSERT_EQ(kl::DecodeAttention(dq->get<float>(), dt->get<kl::AttnTile>(), rows, shape,
                                        kc->get(), vc->get(), t, out.get(), nullptr, hpb),
                    cudaSuccess);
          ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          ExpectClose(ElemsBack(out, t, want.size()), want, t == kl::ElemType::kF32 ? 1e-5 : 8e-3,
                      absl::StrCat(Name(t), " D=", D, " group=", group, " heads/block=", hpb,
                                   " cap=", cap));
        }
      }
    }
  }
  // Shapes it does not take: head_dim over 128, rows not a multiple of 16 bytes, q heads
  // not a multiple of kv heads; a split of the group that does not divide it or is over 8.
  EXPECT_EQ(kl::DecodeAttentionKeys({4, 2, 256, 256}, kl::ElemType::kBF16), 0);
  EXPECT_EQ(kl::DecodeAttentionKeys({4, 2, 12, 256}, kl::ElemType::kBF16), 0);
  EXPECT_EQ(kl::DecodeAttentionKeys({5, 2, 64, 256}, kl::ElemType::kBF16), 0);
  EXPECT_EQ(kl::DecodeAttention(nullptr, nullptr, 1, {5, 2, 64, 256}, nullptr, nullptr,
                                kl::ElemType::kBF16, nullptr, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(kl::DecodeAttention(nullptr, nullptr, 1, {8, 2, 64, 256}, nullptr, nullptr,
                                kl::ElemType::kBF16, nullptr, nullptr, 3),
            cudaErrorInvalidValue);
  EXPECT_EQ(kl::DecodeAttention(nullptr, nullptr, 1, {32, 2, 64, 256}, nullptr, nullptr,
                                kl::ElemType::kBF16, nullptr, nullptr, 16),
            cudaErrorInvalidValue);
}

// Blocks taking their groups of rows from a shared counter (GemvParams::sched): every row
// computed once and right, with and without the fused argmax, and the counters left
// zeroed, so that the next launch (here the same one again) starts from 0.
TEST(LlmKernels, GemvDynamicScheduleMatchesReference) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 rng(seed);
  for (kl::ElemType t : kTypes) {
    // Many more row groups than resident blocks (n = 150001: odd, not a multiple of any
    // group size).
    const int n = 150001, k = 64;
    for (int m : {1, 3}) {
      std::vector<float> w, x;
      auto dw = Elems(Random(size_t(n) * k, rng, 0.05f), t, &w);
      auto dx = Elems(Random(size_t(m) * k, rng), t, &x);
      const std::vector<double> y = GemvReference(x, w, m, n, k);
      auto sched = Buf::Of(std::vector<int32_t>{0, 0});
      auto scratch = Buf::Of(std::vector<uint8_t>(kl::ArgMaxScratchBytes(m), 0));
      Buf ids(size_t(m) * 4);
      for (int rep = 0; rep < 2; ++rep) {
        Buf out(size_t(m) * n * 4);
        out.Poison(size_t(m) * n * 4);
        kl::GemvParams p;
        p.w = dw->get();
        p.type = t;
        p.n = n;
        p.k = k;
        p.m = m;
        p.x = dx->get();
        p.y = out.get();
        p.sched = sched->get<int>();
        if (rep == 1) {
          p.argmax_out = ids.get<int32_t>();
          p.argmax_scratch = scratch->get();
        }
        ASSERT_EQ(kl::GemvEx(p, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const std::string what = absl::StrCat(Name(t), " m=", m, " rep=", rep);
        ExpectClose(out.Get<float>(size_t(m) * n), y, 1e-5, what);
        EXPECT_EQ(sched->Get<int32_t>(2), (std::vector<int32_t>{0, 0})) << what;
        if (rep == 1) {
          const std::vector<float> got = out.Get<float>(size_t(m) * n);
          const std::vector<int32_t> id = ids.Get<int32_t>(m);
          for (int i = 0; i < m; ++i) {
            EXPECT_EQ(id[i], SampleToken(got.data() + size_t(i) * n, n, SamplingParams{}))
                << what << " row " << i;
          }
        }
      }
    }
  }
}

TEST(LlmKernels, GemvMatchesReference) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 rng(seed);
  for (kl::ElemType t : kTypes) {
    for (auto [n, k] : {std::pair<int, int>{34, 64}, {1026, 2048}, {16, 8192}, {7, 48}}) {
      for (int m = 1; m <= kl::kGemvMaxRows; ++m) {
        std::vector<float> w, x;
        auto dw = Elems(Random(size_t(n) * k, rng, 0.05f), t, &w);
        auto dx = Elems(Random(size_t(m) * k, rng), t, &x);
        const std::vector<double> y = GemvReference(x, w, m, n, k);
        Buf out(size_t(m) * n * 4);
        out.Poison(size_t(m) * n * 4);
        ASSERT_EQ(kl::Gemv(dw->get(), t, n, k, dx->get(), m, out.get(), kl::GemvEpilogue::kStoreF32,
                           nullptr),
                  cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const std::string what = absl::StrCat(Name(t), " n=", n, " k=", k, " m=", m);
        ExpectClose(out.Get<float>(size_t(m) * n), y, 1e-5, what);
        if (n % 2 != 0) continue;
        std::vector<double> act;
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n / 2; ++j) {
            const double g = y[size_t(i) * n + 2 * j], u = y[size_t(i) * n + 2 * j + 1];
            act.push_back(g / (1 + std::exp(-g)) * u);
          }
        }
        out.Poison(size_t(m) * n * 4);
        ASSERT_EQ(kl::Gemv(dw->get(), t, n, k, dx->get(), m, out.get(), kl::GemvEpilogue::kSwiGlu,
                           nullptr),
                  cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        ExpectClose(ElemsBack(out, t, act.size()), act, t == kl::ElemType::kF32 ? 1e-5 : 8e-3,
                    what + " swiglu");
      }
    }
  }
  // Shapes it does not take are refused, so the caller falls back to cuBLAS.
  Buf w(64 * 64 * 4), x(9 * 64 * 4), y(9 * 64 * 4);
  kl::GemvParams bad;
  bad.w = w.get();
  bad.type = kl::ElemType::kF32;
  bad.n = bad.k = 64;
  bad.m = 1;
  bad.x = x.get();
  bad.y = y.get();
  bad.epilogue = kl::GemvEpilogue::kAddF32;
  bad.argmax_out = x.get<int32_t>();
  bad.argmax_scratch = y.get();
  EXPECT_FALSE(kl::GemvSupported(bad)) << "argmax needs kStoreF32";
  EXPECT_EQ(kl::Gemv(w.get(), kl::ElemType::kF32, 64, 64, x.get(), 9, y.get(),
                     kl::GemvEpilogue::kStoreF32, nullptr),
            cudaErrorNotSupported);
  EXPECT_EQ(kl::Gemv(w.get(), kl::ElemType::kBF16, 64, 12, x.get(), 1, y.get(),
                     kl::GemvEpilogue::kStoreF32, nullptr),
            cudaErrorNotSupported);
}

// The fused modes: the norm computed in the kernel (with a row map), the residual add,
// and the q/k/v epilogue that applies rope and writes the caches (against the unfused
// GEMV + RopeKvWrite composition).
TEST(LlmKernels, FusedGemvModesMatchTheUnfusedKernels) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 rng(seed);
  for (kl::ElemType t : kTypes) {
    // k = 256 .. 64 as in the tiny fixtures (f32 32 and 48: fewer 16-byte loads than a
    // warp has lanes), 2048 as in a 1B model; references in float64 (NormGemvReference).
    for (int k : {256, 32, 48, 64, 2048})
    for (int m : {1, 3, 8}) {
      const int n = 96, hrows = 10;
      std::vector<float> w, g;
      auto dw = Elems(Random(size_t(n) * k, rng, 0.05f), t, &w);
      auto dg = Elems(Random(k, rng), t, &g);
      const std::vector<float> h = Random(size_t(hrows) * k, rng);
      std::vector<int32_t> map(m);
      for (int i = 0; i < m; ++i) map[i] = (7 * i + 3) % hrows;
      auto dh = Buf::Of(h), dmap = Buf::Of(map);
      const std::vector<double> want = NormGemvReference(h, map, g, w, n, k, t, 1e-5);
      const std::vector<float> y0 = Random(size_t(m) * n, rng);
      std::vector<double> added(want.size());
      for (size_t i = 0; i < want.size(); ++i) added[i] = want[i] + y0[i];
      auto dy = Buf::Of(y0);
      kl::GemvParams p;
      p.w = dw->get();
      p.type = t;
      p.n = n;
      p.k = k;
      p.m = m;
      p.norm_h = dh->get<float>();
      p.row_map = dmap->get<int32_t>();
      p.norm_w = dg->get();
      p.eps = 1e-5f;
      p.epilogue = kl::GemvEpilogue::kAddF32;
      p.y = dy->get();
      ASSERT_TRUE(kl::GemvSupported(p));
      ASSERT_EQ(kl::GemvEx(p, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      ExpectClose(dy->Get<float>(want.size()), added, 1e-5,
                  absl::StrCat(Name(t), " k=", k, " m=", m, " norm+add"));
    }
    // q/k/v with rope: 4 query heads, 2 kv heads of 32 (k = 128), or of 8 (k = 32, the
    // shape of tiny_chat: rotary pairs (i, i + 4)).
    for (const auto& [D, k] : {std::pair<int, int>{32, 128}, std::pair<int, int>{8, 32}})
    for (int m : {1, 5}) {
      const int qh = 4, kvh = 2, n = (qh + 2 * kvh) * D, slots = 3, max_seq = 64;
      SCOPED_TRACE(absl::StrCat(Name(t), " head_dim ", D, " k ", k, " m ", m));
      std::vector<float> w, x;
      auto dw = Elems(Random(size_t(n) * k, rng, 0.1f), t, &w);
      auto dx = Elems(Random(size_t(m) * k, rng), t, &x);
      std::vector<int32_t> pos(m), slot(m);
      for (int i = 0; i < m; ++i) {
        pos[i] = (13 * i + 5) % max_seq;
        slot[i] = i % slots;
      }
      LlamaConfig cfg;
      cfg.head_dim = D;
      const std::vector<float> inv = cfg.RopeInverseFrequencies();
      auto dpos = Buf::Of(pos), dslot = Buf::Of(slot), dinv = Buf::Of(inv);
      const size_t cache = size_t(slots) * kvh * max_seq * D;
      const size_t es = t == kl::ElemType::kF32 ? 4 : 2;
      Buf q1(size_t(m) * qh * D * 4), q2(size_t(m) * qh * D * 4), k1(cache * es), k2(cache * es),
          v1(cache * es), v2(cache * es), qkv(size_t(m) * n * 4);
      for (Buf* b : {&k1, &k2, &v1, &v2}) cudaMemset(b->get(), 0, cache * es);
      ASSERT_EQ(kl::Gemv(dw->get(), t, n, k, dx->get(), m, qkv.get(), kl::GemvEpilogue::kStoreF32,
                         nullptr),
                cudaSuccess);
      ASSERT_EQ(kl::RopeKvWrite(qkv.get<float>(), m, qh, kvh, D, dpos->get<int32_t>(),
                                dslot->get<int32_t>(), dinv->get<float>(), q1.get<float>(),
                                k1.get(), v1.get(), t, max_seq, nullptr),
                cudaSuccess);
      q2.Poison(size_t(m) * qh * D * 4);
      kl::GemvParams p;
      p.w = dw->get();
      p.type = t;
      p.n = n;
      p.k = k;
      p.m = m;
      p.x = dx->get();
      p.epilogue = kl::GemvEpilogue::kQkvRope;
      p.positions = dpos->get<int32_t>();
      p.slots = dslot->get<int32_t>();
      p.inv_freq = dinv->get<float>();
      p.q_heads = qh;
      p.kv_heads = kvh;
      p.head_dim = D;
      p.max_seq_len = max_seq;
      p.q_out = q2.get<float>();
      p.k_cache = k2.get();
      p.v_cache = v2.get();
      ASSERT_TRUE(kl::GemvSupported(p));
      ASSERT_EQ(kl::GemvEx(p, nullptr), cudaSuccess);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const std::vector<float> a = q1.Get<float>(size_t(m) * qh * D);
      std::vector<double> b(a.begin(), a.end());
      ExpectClose(q2.Get<float>(a.size()), b, 1e-6, "rope q");
      const std::vector<float> ka = ElemsBack(k1, t, cache), va = ElemsBack(v1, t, cache);
      const double ctol = t == kl::ElemType::kF32 ? 1e-6 : 8e-3;  // one bf16 rounding apart
      ExpectClose(ElemsBack(k2, t, cache), std::vector<double>(ka.begin(), ka.end()), ctol, "rope k");
      ExpectClose(ElemsBack(v2, t, cache), std::vector<double>(va.begin(), va.end()), ctol, "v");
    }
    // The LM head of tiny_chat: n = 3509 (odd, more than ArgMax's 2048 a block), k = 32,
    // the final norm fused in and the greedy ids in the epilogue, on a scratch that ArgMax
    // (the prefill step's argmax over 2 chunks) used just before, as in the model.
    for (int m : {1, 3}) {
      const int n = 3509, k = 32, hrows = 4;
      SCOPED_TRACE(absl::StrCat(Name(t), " LM head m ", m));
      std::vector<float> w, g;
      auto dw = Elems(Random(size_t(n) * k, rng, 0.3f), t, &w);
      auto dg = Elems(Random(k, rng), t, &g);
      const std::vector<float> h = Random(size_t(hrows) * k, rng);
      auto dh = Buf::Of(h);
      std::vector<int32_t> rows(m);
      for (int i = 0; i < m; ++i) rows[i] = i;
      const std::vector<double> want = NormGemvReference(h, rows, g, w, n, k, t, 1e-5);
      Buf y(size_t(m) * n * 4), ids(m * 4), x(size_t(m) * k * 4), ref_ids(m * 4);
      const size_t scratch_bytes = kl::ArgMaxScratchBytes(m);
      Buf scratch(scratch_bytes);
      cudaMemset(scratch.get(), 0, scratch_bytes);
      // Unfused: norm, GEMM, ArgMax (on the shared scratch).
      ASSERT_EQ(kl::AddRmsNorm(dh->get<float>(), nullptr, nullptr, m, k, dg->get(), t, 1e-5f,
                               x.get(), nullptr),
                cudaSuccess);
      Buf y_ref(size_t(m) * n * 4);
      ASSERT_EQ(kl::Gemv(dw->get(), t, n, k, x.get(), m, y_ref.get(), kl::GemvEpilogue::kStoreF32,
                         nullptr),
                cudaSuccess);
      ASSERT_EQ(kl::ArgMax(y_ref.get<float>(), m, n, n, scratch.get(), ref_ids.get<int32_t>(),
                           nullptr),
                cudaSuccess);
      kl::GemvParams p;
      p.w = dw->get();
      p.type = t;
      p.n = n;
      p.k = k;
      p.m = m;
      p.norm_h = dh->get<float>();
      p.norm_w = dg->get();
      p.eps = 1e-5f;
      p.epilogue = kl::GemvEpilogue::kStoreF32;
      p.y = y.get();
      p.argmax_out = ids.get<int32_t>();
      p.argmax_scratch = scratch.get();
      ASSERT_TRUE(kl::GemvSupported(p));
      for (int rep = 0; rep < 2; ++rep) {
        ids.Poison(m * 4);
        y.Poison(size_t(m) * n * 4);
        ASSERT_EQ(kl::GemvEx(p, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const std::vector<float> logits = y.Get<float>(size_t(m) * n);
        ExpectClose(logits, want, 1e-5, "LM head logits");
        const std::vector<int32_t> got = ids.Get<int32_t>(m);
        for (int i = 0; i < m; ++i) {
          EXPECT_EQ(got[i], SampleToken(logits.data() + size_t(i) * n, n, SamplingParams{}))
              << "row " << i << " rep " << rep;
        }
        EXPECT_EQ(scratch.Get<int32_t>(scratch_bytes / 4),
                  std::vector<int32_t>(scratch_bytes / 4, 0))
            << "scratch left zeroed, rep " << rep;
      }
    }
  }
}

TEST(LlmKernels, ArgMaxIsSampleTokensGreedyChoice) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 rng(seed);
  const int vocab = 5000, rows = 6;
  std::vector<float> l = Random(size_t(rows) * vocab, rng);
  for (float& v : l) v = std::round(v * 4) / 4;  // many ties
  l[0 * vocab + 4000] = 9.0f;
  l[0 * vocab + 17] = 9.0f;  // tie: the lower id wins
  for (int i = 0; i < vocab; ++i) l[1 * vocab + i] = NAN;
  l[1 * vocab + 3000] = -1.0f;  // the only number among NaNs
  for (int i = 0; i < vocab; ++i) l[2 * vocab + i] = NAN;
  for (int i = 0; i < vocab; ++i) l[3 * vocab + i] = -INFINITY;
  l[4 * vocab + 0] = NAN;
  auto dl = Buf::Of(l);
  Buf out(rows * 4);
  const size_t scratch_bytes = kl::ArgMaxScratchBytes(rows);
  Buf scratch(scratch_bytes);
  cudaMemset(scratch.get(), 0, scratch_bytes);
  ASSERT_EQ(kl::ArgMax(dl->get<float>(), rows, vocab, vocab, scratch.get(), out.get<int32_t>(),
                       nullptr),
            cudaSuccess);
  // The whole scratch, not only the counters: the LM head's fused argmax shares it.
  EXPECT_EQ(scratch.Get<int32_t>(scratch_bytes / 4), std::vector<int32_t>(scratch_bytes / 4, 0))
      << "scratch left zeroed";
  const std::vector<int32_t> got = out.Get<int32_t>(rows);
  for (int r = 0; r < rows; ++r) {
    EXPECT_EQ(got[r], SampleToken(l.data() + size_t(r) * vocab, vocab, SamplingParams{})) << r;
  }
  EXPECT_EQ(got[0], 17);
  EXPECT_EQ(got[1], 3000);
}

// The LM head's fused argmax: the ids ArgMax (SampleToken) picks from the logits the same
// kernel wrote, over many blocks; ties between rows, NaN rows and an all-NaN input row.
TEST(LlmKernels, GemvArgMaxIsSampleTokensGreedyChoice) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = FreshSeed();
  SCOPED_TRACE(absl::StrCat("seed ", seed));
  std::mt19937_64 rng(seed);
  for (kl::ElemType t : kTypes) {
    for (int m : {1, 2, 5}) {
      const int n = 20001, k = 64;
      // Small integer weights and inputs: exact sums, so many rows tie.
      std::vector<float> wf(size_t(n) * k), xf(size_t(m) * k);
      std::uniform_int_distribution<int> d(-2, 2);
      for (float& v : wf) v = static_cast<float>(d(rng));
      for (float& v : xf) v = static_cast<float>(d(rng));
      for (int kk = 0; kk < k; ++kk) {
        wf[size_t(15000) * k + kk] = wf[size_t(700) * k + kk] = 2.0f * (kk % 2 == 0 ? 1 : -1);
      }
      wf[size_t(9000) * k + 3] = NAN;  // a NaN logit in every row
      if (m > 1) {
        for (int kk = 0; kk < k; ++kk) xf[size_t(1) * k + kk] = NAN;  // every logit NaN
      }
      std::vector<float> w, x;
      auto dw = Elems(wf, t, &w);
      auto dx = Elems(xf, t, &x);
      Buf y(size_t(m) * n * 4), ids(m * 4);
      const size_t scratch_bytes = kl::ArgMaxScratchBytes(m);
      Buf scratch(scratch_bytes);
      cudaMemset(scratch.get(), 0, scratch_bytes);
      kl::GemvParams p;
      p.w = dw->get();
      p.type = t;
      p.n = n;
      p.k = k;
      p.m = m;
      p.x = dx->get();
      p.y = y.get();
      p.argmax_out = ids.get<int32_t>();
      p.argmax_scratch = scratch.get();
      ASSERT_TRUE(kl::GemvSupported(p));
      for (int rep = 0; rep < 2; ++rep) {  // the second call sees the scratch it left
        ids.Poison(m * 4);
        ASSERT_EQ(kl::GemvEx(p, nullptr), cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const std::vector<float> logits = y.Get<float>(size_t(m) * n);
        const std::vector<int32_t> got = ids.Get<int32_t>(m);
        for (int i = 0; i < m; ++i) {
          EXPECT_EQ(got[i], SampleToken(logits.data() + size_t(i) * n, n, SamplingParams{}))
              << Name(t) << " m=" << m << " row " << i << " rep " << rep;
        }
        if (m > 1) {
          EXPECT_EQ(got[1], 0) << "all NaN";
        }
        EXPECT_EQ(scratch.Get<int32_t>(scratch_bytes / 4),
                  std::vector<int32_t>(scratch_bytes / 4, 0))
            << "scratch left zeroed";
      }
    }
  }
}

// ---------------------------------------------------------------- the model

std::unique_ptr<Model> LoadCuda(const std::string& name, CudaDType dtype, bool graphs = true,
                                Communicator* comm = nullptr, int split_len = 0,
                                bool decode_attention = true) {
  CudaModelOptions o;
  o.decode_attention = decode_attention;
  o.dtype = dtype;
  o.max_slots = 6;
  o.max_seq_len = 256;
  o.use_cuda_graphs = graphs;
  o.attention_split_len = split_len;
  auto m = CudaModel::Load(ModelDir(name), o, comm);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

std::vector<float> LastLogits(Model* m, const std::vector<int32_t>& prompt, int slot = 0) {
  std::vector<int32_t> next;
  std::vector<float> logits;
  absl::Status s = m->Forward(SequenceBatch(prompt, 0, slot), &next, &logits);
  EXPECT_TRUE(s.ok()) << s;
  return logits;
}

class FixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { SKIP_WITHOUT_GPU(); }
};

TEST_P(FixtureTest, F32LogitsMatchTransformers) {
  const nlohmann::json ref = Expected(GetParam());
  for (int split : {0, 32}) {
    auto m = LoadCuda(GetParam(), CudaDType::kF32, true, nullptr, split);
    ASSERT_NE(m, nullptr);
    for (const auto& c : ref["last_logits"]) {
      const std::vector<float> want = c["logits"].get<std::vector<float>>();
      const std::vector<float> got = LastLogits(m.get(), Ids(c["prompt"]));
      ASSERT_EQ(got.size(), want.size());
      EXPECT_LT(RelativeError(got.data(), want), 1e-4) << "prompt of " << c["prompt"].size();
    }
    // Every position of one prompt.
    const std::vector<int32_t> prompt = Ids(ref["full_logits"]["prompt"]);
    std::vector<int32_t> next;
    std::vector<float> logits;
    ASSERT_TRUE(m->Forward(SequenceBatch(prompt, 0, 1, /*all_rows=*/true), &next, &logits).ok());
    const int V = m->config().vocab_size;
    for (size_t i = 0; i < prompt.size(); ++i) {
      const std::vector<float> want = ref["full_logits"]["logits"][i].get<std::vector<float>>();
      EXPECT_LT(RelativeError(logits.data() + i * V, want), 1e-4) << "position " << i;
    }
  }
}

TEST_P(FixtureTest, F32GreedyMatchesTransformers) {
  const nlohmann::json ref = Expected(GetParam());
  // Decode steps on DecodeAttention (the default) and on the flash-decoding splits.
  for (bool decode_attention : {true, false})
  for (bool graphs : {true, false}) {
    auto m = LoadCuda(GetParam(), CudaDType::kF32, graphs, nullptr, graphs ? 32 : 0,
                      decode_attention);
    ASSERT_NE(m, nullptr);
    int slot = 0;
    for (const auto& g : ref["greedy"]) {
      EXPECT_EQ(Greedy(m.get(), Ids(g["prompt"]), 64, slot++), Ids(g["tokens"]))
          << "graphs " << graphs << " decode_attention " << decode_attention;
    }
  }
}

// bf16 references of transformers, when present (see the top of this file).
nlohmann::json Bf16Reference(const std::string& name) {
  const char* dir = std::getenv("LLM_BF16_REFS");
  const std::string path = dir != nullptr ? absl::StrCat(dir, "/", name, "/expected_bfloat16.json")
                                          : ModelDir(name) + "/expected_bfloat16.json";
  return nlohmann::json::parse(testing::ReadFile(path), nullptr, /*allow_exceptions=*/false);
}

TEST_P(FixtureTest, Bf16LogitsMatchTransformersBf16) {
  const nlohmann::json ref = Bf16Reference(GetParam());
  if (ref.is_discarded() || !ref.contains("last_logits")) {
    GTEST_SKIP() << "no bf16 reference (set LLM_BF16_REFS)";
  }
  const nlohmann::json f32 = Expected(GetParam());
  auto m = LoadCuda(GetParam(), CudaDType::kBF16);
  ASSERT_NE(m, nullptr);
  for (size_t i = 0; i < ref["last_logits"].size(); ++i) {
    const auto& c = ref["last_logits"][i];
    const std::vector<float> want = c["logits"].get<std::vector<float>>();
    const std::vector<float> exact = f32["last_logits"][i]["logits"].get<std::vector<float>>();
    ASSERT_EQ(Ids(c["prompt"]), Ids(f32["last_logits"][i]["prompt"]));
    const std::vector<float> got = LastLogits(m.get(), Ids(c["prompt"]));
    // transformers rounds every activation to bf16 (the residual stream too); this model
    // keeps float32 activations. Where the two differ by more than 2e-2, ours must be
    // the one nearer to the float32 result.
    const float vs_bf16 = RelativeError(got.data(), want);
    const float vs_f32 = RelativeError(got.data(), exact);
    const float hf_vs_f32 = RelativeError(want.data(), exact);
    EXPECT_TRUE(vs_bf16 < 2e-2 || vs_f32 < hf_vs_f32)
        << "prompt of " << c["prompt"].size() << ": " << vs_bf16 << " from transformers bf16, "
        << vs_f32 << " from float32 (transformers bf16: " << hf_vs_f32 << ")";
    std::printf("bf16 %s prompt %zu: %.4f from transformers bf16, %.4f from float32 "
                "(transformers bf16 %.4f from float32)\n",
                GetParam().c_str(), c["prompt"].size(), vs_bf16, vs_f32, hf_vs_f32);
  }
}

TEST_P(FixtureTest, Bf16CloseToF32AndGraphsChangeNothing) {
  const nlohmann::json ref = Expected(GetParam());
  auto graphs = LoadCuda(GetParam(), CudaDType::kBF16, true);
  auto eager = LoadCuda(GetParam(), CudaDType::kBF16, false);
  ASSERT_NE(graphs, nullptr);
  ASSERT_NE(eager, nullptr);
  for (const auto& c : ref["last_logits"]) {
    const std::vector<float> want = c["logits"].get<std::vector<float>>();
    const std::vector<float> got = LastLogits(graphs.get(), Ids(c["prompt"]));
    EXPECT_LT(RelativeError(got.data(), want), 5e-2) << "prompt of " << c["prompt"].size();
  }
  const std::vector<int32_t> prompt = Ids(ref["greedy"][0]["prompt"]);
  EXPECT_EQ(Greedy(graphs.get(), prompt, 32, 2), Greedy(eager.get(), prompt, 32, 2));
}

INSTANTIATE_TEST_SUITE_P(Tiny, FixtureTest, ::testing::Values("tiny_llama", "tiny_llama_tied"));

// tiny_chat (hidden 32, head_dim 8, vocab 3509, bf16 weights loaded as f32): its greedy
// decode runs the skinny GEMMs at k = 32 and the LM head's fused argmax after the prefill's
// ArgMax over two chunks (which once left the shared scratch dirty: every decode step
// repeated the prefill's token).
TEST(CudaModel, TinyChatGreedyMatchesTransformers) {
  SKIP_WITHOUT_GPU();
  const nlohmann::json ref = nlohmann::json::parse(
      testing::ReadFile(ModelDir("tiny_chat") + "/expected.json"), nullptr, false);
  ASSERT_FALSE(ref.is_discarded());
  ASSERT_EQ(ref["greedy"].size(), 2u);
  for (bool graphs : {true, false}) {
    auto m = LoadCuda("tiny_chat", CudaDType::kF32, graphs);
    ASSERT_NE(m, nullptr);
    int slot = 0;
    for (const auto& g : ref["greedy"]) {
      const std::vector<int32_t> want = Ids(g["tokens"]);
      EXPECT_EQ(Greedy(m.get(), Ids(g["prompt_ids"]), static_cast<int>(want.size()), slot++),
                want)
          << "graphs " << graphs;
    }
  }
}

TEST(CudaModel, AgreesWithCpuModelOnAMixedBatch) {
  SKIP_WITHOUT_GPU();
  auto gpu = LoadCuda("tiny_llama_tied", CudaDType::kF32);
  ASSERT_NE(gpu, nullptr);
  auto cpu = CpuModel::Load(ModelDir("tiny_llama_tied"), {6, 256});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  // Slot 0 prefills 7 tokens, slot 3 prefills 3; then both decode, with slot 5 joining.
  ForwardBatch a;
  for (int i = 0; i < 7; ++i) {
    a.tokens.push_back(10 + i * 7);
    a.positions.push_back(i);
    a.slots.push_back(0);
  }
  for (int i = 0; i < 3; ++i) {
    a.tokens.push_back(200 + i);
    a.positions.push_back(i);
    a.slots.push_back(3);
  }
  a.sample_rows = {9, 2, 6};
  a.sampling.resize(3);
  ForwardBatch b;
  b.tokens = {5, 77, 140, 141};
  b.positions = {7, 3, 0, 1};
  b.slots = {0, 3, 5, 5};
  b.sample_rows = {0, 1, 3};
  b.sampling.resize(3);
  for (const ForwardBatch* batch : {&a, &b}) {
    std::vector<int32_t> gn, cn;
    std::vector<float> gl, cl;
    ASSERT_TRUE(gpu->Forward(*batch, &gn, &gl).ok());
    ASSERT_TRUE((*cpu)->Forward(*batch, &cn, &cl).ok());
    EXPECT_EQ(gn, cn);
    const int V = gpu->config().vocab_size;
    for (size_t i = 0; i < batch->sample_rows.size(); ++i) {
      EXPECT_LT(RelativeError(gl.data() + i * V, std::vector<float>(cl.begin() + i * V,
                                                                    cl.begin() + (i + 1) * V)),
                1e-5)
          << "row " << i;
    }
  }
}

TEST(CudaModel, TensorParallelTwoRanksOnOneGpuMatchesOneRank) {
  SKIP_WITHOUT_GPU();
  const nlohmann::json ref = Expected("tiny_llama");
  const std::vector<int32_t> prompt = Ids(ref["greedy"][1]["prompt"]);
  for (CudaDType dtype : {CudaDType::kF32, CudaDType::kBF16}) {
    auto single = LoadCuda("tiny_llama", dtype);
    ASSERT_NE(single, nullptr);
    const std::vector<int32_t> want = Greedy(single.get(), prompt, 32);
    const std::vector<float> want_logits = LastLogits(single.get(), prompt, 1);

    InProcessGroup group(2);
    HostStagedCommunicator c0(group.Get(0)), c1(group.Get(1));
    auto r0 = LoadCuda("tiny_llama", dtype, true, &c0);
    auto r1 = LoadCuda("tiny_llama", dtype, true, &c1);
    ASSERT_NE(r0, nullptr);
    ASSERT_NE(r1, nullptr);
    absl::Status follower;
    std::thread t([&] { follower = r1->FollowerLoop(); });
    const std::vector<int32_t> got = Greedy(r0.get(), prompt, 32);
    const std::vector<float> got_logits = LastLogits(r0.get(), prompt, 1);
    EXPECT_TRUE(r0->StopFollowers().ok());
    t.join();
    EXPECT_TRUE(follower.ok()) << follower;
    if (dtype == CudaDType::kF32) {
      EXPECT_EQ(got, want);
    }
    EXPECT_LT(RelativeError(got_logits.data(), want_logits),
              dtype == CudaDType::kF32 ? 1e-5 : 2e-2);
  }
}

// NCCL refuses two ranks on one GPU, so on a one-GPU machine the NCCL path runs with
// T = 1: the collectives through NCCL proper, and a model driven through them.
TEST(CudaModel, NcclCommunicatorWithOneRank) {
  SKIP_WITHOUT_GPU();
  absl::StatusOr<std::string> id = NewNcclId();
  ASSERT_TRUE(id.ok()) << id.status();
  auto comm = NcclCommunicator::Create(0, 1, *id, 0);
  ASSERT_TRUE(comm.ok()) << comm.status();
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 1e-3f};
  auto buf = Buf::Of(values);
  ASSERT_TRUE((*comm)->AllReduceSum(buf->get(), values.size(), CommType::kFloat32, nullptr).ok());
  EXPECT_EQ(buf->Get<float>(values.size()), values);
  Buf gathered(values.size() * sizeof(float));
  ASSERT_TRUE(
      (*comm)->AllGather(buf->get(), gathered.get(), values.size(), CommType::kFloat32, nullptr).ok());
  EXPECT_EQ(gathered.Get<float>(values.size()), values);
  std::vector<int32_t> header = {7, 8, 9};
  ASSERT_TRUE((*comm)->BroadcastHost(header.data(), header.size() * sizeof(int32_t), 0).ok());
  EXPECT_EQ(header, (std::vector<int32_t>{7, 8, 9}));

  const nlohmann::json ref = Expected("tiny_llama");
  auto m = LoadCuda("tiny_llama", CudaDType::kF32, true, comm->get());
  ASSERT_NE(m, nullptr);
  const auto& g = ref["greedy"][0];
  EXPECT_EQ(Greedy(m.get(), Ids(g["prompt"]), 64), Ids(g["tokens"]));
}

// Sequences fed in one model as an engine would (chunked prefill mixed with decodes of
// others) each get the tokens they get alone.
TEST(CudaModel, ContinuousBatchingGivesEachSequenceItsTokensAlone) {
  SKIP_WITHOUT_GPU();
  const nlohmann::json ref = Expected("tiny_llama");
  const std::vector<std::vector<int32_t>> prompts = {
      Ids(ref["greedy"][1]["prompt"]), Ids(ref["greedy"][0]["prompt"]),
      Ids(ref["last_logits"][2]["prompt"])};
  const int kTokens = 12;
  auto m = LoadCuda("tiny_llama", CudaDType::kF32);
  ASSERT_NE(m, nullptr);
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) alone.push_back(Greedy(m.get(), p, kTokens, 0));

  struct Seq {
    std::vector<int32_t> prompt, out;
    int fed = 0;  // prompt tokens already in the cache
    int slot;
  };
  std::vector<Seq> seqs;
  for (size_t i = 0; i < prompts.size(); ++i) seqs.push_back({prompts[i], {}, 0, int(i) + 2});
  // Prompt tokens each sequence may feed per step: chunked prefill, staggered starts.
  const std::vector<std::vector<int>> chunks = {{9}, {0, 2, 2}, {0, 0, 10, 13}};
  for (int step = 0; step < 40; ++step) {
    ForwardBatch b;
    std::vector<Seq*> sampled;
    for (size_t i = 0; i < seqs.size(); ++i) {
      Seq& s = seqs[i];
      if (static_cast<int>(s.out.size()) == kTokens) continue;
      const int plen = static_cast<int>(s.prompt.size());
      if (s.fed < plen) {
        const int chunk = step < static_cast<int>(chunks[i].size()) ? chunks[i][step] : plen;
        const int n = std::min(chunk, plen - s.fed);
        for (int j = 0; j < n; ++j) {
          b.tokens.push_back(s.prompt[s.fed + j]);
          b.positions.push_back(s.fed + j);
          b.slots.push_back(s.slot);
        }
        s.fed += n;
        if (n > 0 && s.fed == plen) {
          b.sample_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
          sampled.push_back(&s);
        }
      } else {
        b.tokens.push_back(s.out.back());
        b.positions.push_back(plen + static_cast<int>(s.out.size()) - 1);
        b.slots.push_back(s.slot);
        b.sample_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
        sampled.push_back(&s);
      }
    }
    if (b.tokens.empty()) break;
    b.sampling.resize(b.sample_rows.size());
    std::vector<int32_t> next;
    ASSERT_TRUE(m->Forward(b, &next, nullptr).ok());
    for (size_t i = 0; i < sampled.size(); ++i) sampled[i]->out.push_back(next[i]);
  }
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(seqs[i].out, alone[i]) << "sequence " << i;
}

TEST(CudaModel, SampledRowsChooseWhatSampleTokenChooses) {
  SKIP_WITHOUT_GPU();
  auto m = LoadCuda("tiny_llama", CudaDType::kBF16);
  ASSERT_NE(m, nullptr);
  ForwardBatch b = SequenceBatch({40, 41, 42, 43, 44}, 0, 1, /*all_rows=*/true);
  for (size_t i = 0; i < b.sampling.size(); ++i) {
    b.sampling[i] = {i % 2 == 0 ? 0.8f : 0.0f, i == 2 ? 0.5f : 1.0f, 1234 + i, 7 * i};
  }
  std::vector<int32_t> with_logits, without;
  std::vector<float> logits;
  ASSERT_TRUE(m->Forward(b, &with_logits, &logits).ok());
  ASSERT_TRUE(m->Forward(b, &without, nullptr).ok());
  const int V = m->config().vocab_size;
  for (size_t i = 0; i < b.sampling.size(); ++i) {
    EXPECT_EQ(with_logits[i], SampleToken(logits.data() + i * V, V, b.sampling[i])) << i;
  }
  EXPECT_EQ(with_logits, without);
}

TEST(CudaModel, BadBatchesAreRefusedNamingTheFieldAndChangeNothing) {
  SKIP_WITHOUT_GPU();
  auto m = LoadCuda("tiny_llama", CudaDType::kF32);
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> prompt = {9, 8, 7, 6};
  const std::vector<int32_t> before = Greedy(m.get(), prompt, 8, 1);
  struct Bad {
    ForwardBatch b;
    std::string field;
  };
  std::vector<Bad> bad;
  auto base = [] { return SequenceBatch({5, 6}, 3, 1); };
  bad.push_back({base(), "tokens[1]"});
  bad.back().b.tokens[1] = 256;
  bad.push_back({base(), "slots[0]"});
  bad.back().b.slots[0] = 6;
  bad.push_back({base(), "positions[1]"});
  bad.back().b.positions[1] = 256;
  bad.push_back({base(), "positions"});
  bad.back().b.positions.pop_back();
  bad.push_back({base(), "sample_rows[0]"});
  bad.back().b.sample_rows[0] = 2;
  bad.push_back({base(), "top_p"});
  bad.back().b.sampling[0].top_p = 0.0f;
  bad.push_back({base(), "positions[1]"});
  bad.back().b.positions[1] = 3;  // not after position 3 of the same slot
  bad.push_back({ForwardBatch{}, "tokens"});
  for (const Bad& x : bad) {
    std::vector<int32_t> next;
    const absl::Status s = m->Forward(x.b, &next, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << x.field << ": " << s;
    EXPECT_NE(s.message().find(x.field), std::string::npos) << s;
  }
  EXPECT_EQ(Greedy(m.get(), prompt, 8, 1), before);
}

TEST(CudaModel, MissingTensorIsNamed) {
  SKIP_WITHOUT_GPU();
  const std::string dir = testing::TempDir() + "/cuda_missing_tensor";
  ASSERT_EQ(std::system(("mkdir -p " + dir).c_str()), 0);
  {
    std::ofstream(dir + "/config.json") << testing::ReadFile(ModelDir("tiny_llama") + "/config.json");
  }
  std::vector<float> embed(256 * 64, 0.5f);
  TensorToWrite t{"model.embed_tokens.weight", DType::kF32, {256, 64}, {}};
  t.bytes.resize(embed.size() * 4);
  std::memcpy(t.bytes.data(), embed.data(), t.bytes.size());
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", {t}).ok());
  auto m = CudaModel::Load(dir, CudaModelOptions{});
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("model.norm.weight"), std::string::npos) << m.status();
}

// Runs everywhere: option errors come before any device work.
TEST(CudaModel, BadOptionsAreRefusedWithOrWithoutAGpu) {
  CudaModelOptions o;
  o.max_slots = 0;
  auto m = CudaModel::Load(ModelDir("tiny_llama"), o);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("max_slots"), std::string::npos) << m.status();
  o = CudaModelOptions{};
  o.device = Devices() + 3;
  m = CudaModel::Load(ModelDir("tiny_llama"), o);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition) << m.status();
  EXPECT_NE(m.status().message().find("device"), std::string::npos) << m.status();
  auto d = ParseCudaDType("fp8");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find("dtype"), std::string::npos);
  EXPECT_EQ(*ParseCudaDType("bf16"), CudaDType::kBF16);
  EXPECT_EQ(*ParseCudaDType("f32"), CudaDType::kF32);
  InProcessGroup group(3);
  HostStagedCommunicator c(group.Get(0));
  m = CudaModel::Load(ModelDir("tiny_llama"), CudaModelOptions{}, &c);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("num_key_value_heads"), std::string::npos) << m.status();
}

}  // namespace
}  // namespace shardvec::llm
