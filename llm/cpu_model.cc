#include "llm/cpu_model.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "llm/config.h"
#include "llm/safetensors.h"

namespace shardvec::llm {
namespace {

// y[n x out] = x[n x k] * w[out x k]^T: the nn.Linear product (OpenBLAS, multi-threaded).
void Linear(const float* x, int n, int k, const float* w, int out, float* y) {
  if (n == 0 || out == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, k, 1.0f, x, k, w, k, 0.0f, y, out);
}

// transformers' LlamaRMSNorm in float32: x * rsqrt(mean(x^2) + eps) * weight.
void RmsNorm(const float* x, const float* weight, int n, int dim, float eps, float* y) {
  for (int t = 0; t < n; ++t) {
    const float* xr = x + static_cast<size_t>(t) * dim;
    float* yr = y + static_cast<size_t>(t) * dim;
    float ss = 0.0f;
    for (int i = 0; i < dim; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
    for (int i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv);
  }
}

struct LayerWeights {
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> post_norm;   // [hidden]
  std::vector<float> qkv;         // [(local_q + 2 * local_kv) * head_dim, hidden]
  std::vector<float> o;           // [hidden, local_q * head_dim]
  std::vector<float> gate_up;     // [2 * local_inter, hidden]
  std::vector<float> down;        // [hidden, local_inter]
};

class CpuModelImpl : public Model {
 public:
  const LlamaConfig& config() const override { return cfg_; }
  int max_slots() const override { return max_slots_; }
  int max_seq_len() const override { return max_seq_len_; }

  absl::Status Forward(const ForwardBatch& batch, std::vector<int32_t>* next_tokens,
                       std::vector<float>* logits) override;
  absl::Status StopFollowers() override;
  absl::Status FollowerLoop() override;

  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir,
                                                     const ModelOptions& options,
                                                     Communicator* comm);

 private:
  absl::Status Validate(const ForwardBatch& b) const;
  // This rank's part of the forward pass; every rank of the group runs it on the same
  // batch. Fills `logits` (sample rows x vocab) on every rank.
  absl::Status RunLocal(const ForwardBatch& b, std::vector<float>* logits);
  void Attention(const ForwardBatch& b, int layer, const float* qkv, float* out);
  absl::Status AllReduce(std::vector<float>* v) {
    if (tp_ == 1) return absl::OkStatus();
    return comm_->AllReduceSum(v->data(), v->size(), CommType::kFloat32);
  }
  float* CacheRow(std::vector<float>& cache, int slot, int layer, int pos) {
    const size_t row = local_kv_ * static_cast<size_t>(cfg_.head_dim);
    return cache.data() +
           ((static_cast<size_t>(slot) * cfg_.num_hidden_layers + layer) * max_seq_len_ + pos) *
               row;
  }

  LlamaConfig cfg_;
  Communicator* comm_ = nullptr;
  int tp_ = 1;
  int rank_ = 0;
  int max_slots_ = 0;
  int max_seq_len_ = 0;
  int local_q_ = 0;         // attention heads on this rank
  int local_kv_ = 0;        // key/value heads on this rank
  int local_inter_ = 0;     // MLP columns on this rank
  int vocab_per_rank_ = 0;  // LM head rows per rank (the last rank's are zero-padded)

  std::vector<float> embed_;  // [vocab, hidden], full on every rank
  std::vector<LayerWeights> layers_;
  std::vector<float> final_norm_;
  std::vector<float> lm_head_;            // [vocab_per_rank, hidden]
  std::vector<float> cos_, sin_;          // [max_seq_len, head_dim / 2]
  std::vector<float> k_cache_, v_cache_;  // [slot][layer][pos][local kv head][head_dim]
};

absl::StatusOr<std::unique_ptr<Model>> CpuModelImpl::Load(const std::string& dir,
                                                          const ModelOptions& options,
                                                          Communicator* comm) {
  auto cfg = LoadLlamaConfig(dir);
  if (!cfg.ok()) return cfg.status();
  if (options.max_slots < 1) {
    return absl::InvalidArgumentError("ModelOptions.max_slots must be >= 1");
  }
  if (options.max_seq_len < 1) {
    return absl::InvalidArgumentError("ModelOptions.max_seq_len must be >= 1");
  }
  auto ckpt = Checkpoint::Open(dir);
  if (!ckpt.ok()) return ckpt.status();

  std::unique_ptr<CpuModelImpl> m(new CpuModelImpl());
  m->cfg_ = *cfg;
  const LlamaConfig& c = m->cfg_;
  m->comm_ = comm;
  m->tp_ = comm == nullptr ? 1 : comm->size();
  m->rank_ = comm == nullptr ? 0 : comm->rank();
  const int T = m->tp_, r = m->rank_;
  if (c.num_key_value_heads % T != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor parallel size ", T,
                                                   " does not divide num_key_value_heads ",
                                                   c.num_key_value_heads));
  }
  if (c.intermediate_size % T != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor parallel size ", T, " does not divide intermediate_size ", c.intermediate_size));
  }
  m->max_slots_ = options.max_slots;
  m->max_seq_len_ = std::min(options.max_seq_len, c.max_position_embeddings);
  m->local_q_ = c.num_attention_heads / T;
  m->local_kv_ = c.num_key_value_heads / T;
  m->local_inter_ = c.intermediate_size / T;
  m->vocab_per_rank_ = (c.vocab_size + T - 1) / T;

  const int64_t H = c.hidden_size, D = c.head_dim, I = c.intermediate_size, V = c.vocab_size;
  const int64_t Hq = c.num_attention_heads, Hkv = c.num_key_value_heads;
  const Checkpoint& ck = **ckpt;
  const auto get = [&](const std::string& name,
                       std::vector<int64_t> shape) -> absl::StatusOr<const TensorView*> {
    const TensorView* t = ck.Find(name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint ", dir, " has no tensor ", name));
    }
    if (t->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has shape [",
                                                     absl::StrJoin(t->shape, ", "), "], expected [",
                                                     absl::StrJoin(shape, ", "), "]"));
    }
    if (t->dtype != DType::kF32 && t->dtype != DType::kBF16 && t->dtype != DType::kF16 &&
        t->dtype != DType::kF64) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, " has dtype ", DTypeName(t->dtype), ", not a float"));
    }
    return t;
  };
  // Appends rows [b, e) (all columns) of a 2-D tensor as float32.
  const auto rows = [](const TensorView* t, int64_t b, int64_t e, std::vector<float>* out) {
    std::vector<float> s = SliceToFloat32(*t, b, e, 0, t->shape[1]);
    out->insert(out->end(), s.begin(), s.end());
  };

  auto embed = get("model.embed_tokens.weight", {V, H});
  if (!embed.ok()) return embed.status();
  m->embed_ = ToFloat32(**embed);
  auto norm = get("model.norm.weight", {H});
  if (!norm.ok()) return norm.status();
  m->final_norm_ = ToFloat32(**norm);

  const TensorView* head = *embed;
  if (!c.tie_word_embeddings) {
    auto lm = get("lm_head.weight", {V, H});
    if (!lm.ok()) return lm.status();
    head = *lm;
  }
  const int64_t vb = std::min<int64_t>(V, int64_t{r} * m->vocab_per_rank_);
  const int64_t ve = std::min<int64_t>(V, vb + m->vocab_per_rank_);
  rows(head, vb, ve, &m->lm_head_);
  m->lm_head_.resize(static_cast<size_t>(m->vocab_per_rank_) * H, 0.0f);

  const int64_t qb = r * m->local_q_ * D, qe = qb + m->local_q_ * D;
  const int64_t kb = r * m->local_kv_ * D, ke = kb + m->local_kv_ * D;
  const int64_t ib = r * m->local_inter_, ie = ib + m->local_inter_;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    auto in_norm = get(p + "input_layernorm.weight", {H});
    auto post_norm = get(p + "post_attention_layernorm.weight", {H});
    auto q = get(p + "self_attn.q_proj.weight", {Hq * D, H});
    auto k = get(p + "self_attn.k_proj.weight", {Hkv * D, H});
    auto v = get(p + "self_attn.v_proj.weight", {Hkv * D, H});
    auto o = get(p + "self_attn.o_proj.weight", {H, Hq * D});
    auto gate = get(p + "mlp.gate_proj.weight", {I, H});
    auto up = get(p + "mlp.up_proj.weight", {I, H});
    auto down = get(p + "mlp.down_proj.weight", {H, I});
    for (const auto* s : {&in_norm, &post_norm, &q, &k, &v, &o, &gate, &up, &down}) {
      if (!s->ok()) return s->status();
    }
    LayerWeights w;
    w.input_norm = ToFloat32(**in_norm);
    w.post_norm = ToFloat32(**post_norm);
    rows(*q, qb, qe, &w.qkv);
    rows(*k, kb, ke, &w.qkv);
    rows(*v, kb, ke, &w.qkv);
    w.o = SliceToFloat32(**o, 0, H, qb, qe);
    rows(*gate, ib, ie, &w.gate_up);
    rows(*up, ib, ie, &w.gate_up);
    w.down = SliceToFloat32(**down, 0, H, ib, ie);
    m->layers_.push_back(std::move(w));
  }

  // cos/sin as transformers forms them: the angle is the float32 product
  // inv_freq * position, then cos and sin in float32.
  const std::vector<float> inv = c.RopeInverseFrequencies();
  const int half = c.head_dim / 2;
  m->cos_.resize(static_cast<size_t>(m->max_seq_len_) * half);
  m->sin_.resize(m->cos_.size());
  for (int pos = 0; pos < m->max_seq_len_; ++pos) {
    for (int i = 0; i < half; ++i) {
      const float angle = inv[i] * static_cast<float>(pos);
      m->cos_[static_cast<size_t>(pos) * half + i] = std::cos(angle);
      m->sin_[static_cast<size_t>(pos) * half + i] = std::sin(angle);
    }
  }
  const size_t cache = static_cast<size_t>(m->max_slots_) * c.num_hidden_layers * m->max_seq_len_ *
                       m->local_kv_ * c.head_dim;
  m->k_cache_.assign(cache, 0.0f);
  m->v_cache_.assign(cache, 0.0f);
  return std::unique_ptr<Model>(std::move(m));
}

absl::Status CpuModelImpl::Validate(const ForwardBatch& b) const {
  return ValidateBatch(b, cfg_.vocab_size, max_slots_, max_seq_len_);
}

absl::Status CpuModelImpl::Forward(const ForwardBatch& batch, std::vector<int32_t>* next_tokens,
                                   std::vector<float>* logits) {
  if (rank_ != 0) {
    return absl::FailedPreconditionError(
        "Forward is called on rank 0; other ranks run FollowerLoop");
  }
  if (absl::Status s = Validate(batch); !s.ok()) return s;
  if (tp_ > 1) {
    if (absl::Status s = SendBatch(comm_, batch); !s.ok()) return s;
  }
  std::vector<float> all_logits;
  if (absl::Status s = RunLocal(batch, &all_logits); !s.ok()) return s;
  const int V = cfg_.vocab_size;
  if (next_tokens != nullptr) {
    next_tokens->resize(batch.sample_rows.size());
    std::vector<const float*> rows(batch.sample_rows.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = all_logits.data() + i * V;
    SampleTokens(rows, V, batch.sampling, next_tokens->data());
  }
  if (logits != nullptr) *logits = std::move(all_logits);
  return absl::OkStatus();
}

absl::Status CpuModelImpl::StopFollowers() {
  if (rank_ != 0) return absl::FailedPreconditionError("StopFollowers is called on rank 0");
  if (tp_ == 1) return absl::OkStatus();
  return SendStop(comm_);
}

absl::Status CpuModelImpl::FollowerLoop() {
  if (rank_ == 0) return absl::FailedPreconditionError("FollowerLoop runs on ranks 1..T-1");
  return FollowSteps(comm_, [this](const ForwardBatch& b) {
    std::vector<float> unused;
    return RunLocal(b, &unused);
  });
}

void CpuModelImpl::Attention(const ForwardBatch& b, int layer, const float* qkv, float* out) {
  const int n = static_cast<int>(b.tokens.size());
  const int D = cfg_.head_dim, half = D / 2;
  const int qw = local_q_ * D, kvw = local_kv_ * D;
  const int row = qw + 2 * kvw;  // one token's q | k | v
  const int group = local_q_ / local_kv_;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  // HF's rotate_half convention: dims i and i + D/2 form a pair.
  const auto rope = [&](const float* x, int pos, float* y) {
    const float* c = cos_.data() + static_cast<size_t>(pos) * half;
    const float* s = sin_.data() + static_cast<size_t>(pos) * half;
    for (int i = 0; i < half; ++i) {
      const float x1 = x[i], x2 = x[i + half];
      y[i] = x1 * c[i] - x2 * s[i];
      y[i + half] = x2 * c[i] + x1 * s[i];
    }
  };

  // Every token's key and value go into the cache first, so that a token attends to
  // the earlier tokens of its own sequence in the same step.
  for (int t = 0; t < n; ++t) {
    const float* src = qkv + static_cast<size_t>(t) * row;
    float* kd = CacheRow(k_cache_, b.slots[t], layer, b.positions[t]);
    float* vd = CacheRow(v_cache_, b.slots[t], layer, b.positions[t]);
    for (int h = 0; h < local_kv_; ++h) rope(src + qw + h * D, b.positions[t], kd + h * D);
    std::memcpy(vd, src + qw + kvw, sizeof(float) * kvw);
  }

  std::vector<float> q(D), scores(max_seq_len_);
  for (int t = 0; t < n; ++t) {
    const int pos = b.positions[t];
    const float* src = qkv + static_cast<size_t>(t) * row;
    for (int h = 0; h < local_q_; ++h) {
      rope(src + h * D, pos, q.data());
      const int kvh = h / group;
      float max_score = -INFINITY;
      for (int p = 0; p <= pos; ++p) {
        const float* k = CacheRow(k_cache_, b.slots[t], layer, p) + kvh * D;
        float dot = 0.0f;
        for (int i = 0; i < D; ++i) dot += q[i] * k[i];
        scores[p] = dot * scale;
        max_score = std::max(max_score, scores[p]);
      }
      float sum = 0.0f;
      for (int p = 0; p <= pos; ++p) {
        scores[p] = std::exp(scores[p] - max_score);
        sum += scores[p];
      }
      const float inv = 1.0f / sum;
      float* o = out + static_cast<size_t>(t) * qw + h * D;
      std::fill(o, o + D, 0.0f);
      for (int p = 0; p <= pos; ++p) {
        const float w = scores[p] * inv;
        const float* v = CacheRow(v_cache_, b.slots[t], layer, p) + kvh * D;
        for (int i = 0; i < D; ++i) o[i] += w * v[i];
      }
    }
  }
}

absl::Status CpuModelImpl::RunLocal(const ForwardBatch& b, std::vector<float>* logits) {
  const int n = static_cast<int>(b.tokens.size());
  const int H = cfg_.hidden_size, D = cfg_.head_dim;
  const int qw = local_q_ * D, kvw = local_kv_ * D;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const size_t nh = static_cast<size_t>(n) * H;

  std::vector<float> x(nh), normed(nh), proj(nh);
  for (int t = 0; t < n; ++t) {
    std::memcpy(x.data() + static_cast<size_t>(t) * H,
                embed_.data() + static_cast<size_t>(b.tokens[t]) * H, sizeof(float) * H);
  }
  std::vector<float> qkv(static_cast<size_t>(n) * (qw + 2 * kvw));
  std::vector<float> attn(static_cast<size_t>(n) * qw);
  std::vector<float> gu(static_cast<size_t>(n) * 2 * local_inter_);
  std::vector<float> act(static_cast<size_t>(n) * local_inter_);
  for (int l = 0; l < cfg_.num_hidden_layers; ++l) {
    const LayerWeights& w = layers_[l];
    RmsNorm(x.data(), w.input_norm.data(), n, H, eps, normed.data());
    Linear(normed.data(), n, H, w.qkv.data(), qw + 2 * kvw, qkv.data());
    Attention(b, l, qkv.data(), attn.data());
    Linear(attn.data(), n, qw, w.o.data(), H, proj.data());
    if (absl::Status s = AllReduce(&proj); !s.ok()) return s;
    for (size_t i = 0; i < nh; ++i) x[i] += proj[i];

    RmsNorm(x.data(), w.post_norm.data(), n, H, eps, normed.data());
    Linear(normed.data(), n, H, w.gate_up.data(), 2 * local_inter_, gu.data());
    for (int t = 0; t < n; ++t) {
      const float* g = gu.data() + static_cast<size_t>(t) * 2 * local_inter_;
      const float* u = g + local_inter_;
      float* a = act.data() + static_cast<size_t>(t) * local_inter_;
      for (int i = 0; i < local_inter_; ++i) a[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
    Linear(act.data(), n, local_inter_, w.down.data(), H, proj.data());
    if (absl::Status s = AllReduce(&proj); !s.ok()) return s;
    for (size_t i = 0; i < nh; ++i) x[i] += proj[i];
  }

  // Only the sampled rows go through the final norm and the LM head.
  const int S = static_cast<int>(b.sample_rows.size());
  const int V = cfg_.vocab_size, Vp = vocab_per_rank_;
  logits->assign(static_cast<size_t>(S) * V, 0.0f);
  if (S == 0) return absl::OkStatus();
  std::vector<float> rows(static_cast<size_t>(S) * H);
  for (int i = 0; i < S; ++i) {
    RmsNorm(x.data() + static_cast<size_t>(b.sample_rows[i]) * H, final_norm_.data(), 1, H, eps,
            rows.data() + static_cast<size_t>(i) * H);
  }
  std::vector<float> local(static_cast<size_t>(S) * Vp);
  Linear(rows.data(), S, H, lm_head_.data(), Vp, local.data());
  if (tp_ == 1) {
    for (int i = 0; i < S; ++i) {
      std::memcpy(logits->data() + static_cast<size_t>(i) * V,
                  local.data() + static_cast<size_t>(i) * Vp, sizeof(float) * V);
    }
    return absl::OkStatus();
  }
  std::vector<float> gathered(static_cast<size_t>(tp_) * S * Vp);
  if (absl::Status s =
          comm_->AllGather(local.data(), gathered.data(), local.size(), CommType::kFloat32);
      !s.ok()) {
    return s;
  }
  for (int r = 0; r < tp_; ++r) {
    const int vb = std::min(V, r * Vp), ve = std::min(V, vb + Vp);
    for (int i = 0; i < S; ++i) {
      std::memcpy(logits->data() + static_cast<size_t>(i) * V + vb,
                  gathered.data() + (static_cast<size_t>(r) * S + i) * Vp,
                  sizeof(float) * (ve - vb));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> CpuModel::Load(const std::string& model_dir,
                                                      const ModelOptions& options,
                                                      Communicator* comm) {
  return CpuModelImpl::Load(model_dir, options, comm);
}

}  // namespace shardvec::llm
