#include "llm/cuda/cuda_model.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cuda_status.h"
#include "kernels/llm_kernels.h"
#include "llm/cuda/nccl_comm.h"
#include "llm/safetensors.h"

namespace shardvec::llm {
namespace {

namespace kl = ::shardvec::kernels::llm;

using ::shardvec::kernels::CublasStatus;
using ::shardvec::kernels::CudaStatus;

#define SV_RETURN_IF_ERROR(expr)           \
  do {                                     \
    absl::Status sv_status_ = (expr);      \
    if (!sv_status_.ok()) return sv_status_; \
  } while (0)
#define SV_CUDA(expr, what) SV_RETURN_IF_ERROR(CudaStatus((expr), (what)))

// A device allocation, freed with the owner.
class DeviceMem {
 public:
  DeviceMem() = default;
  ~DeviceMem() { Free(); }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  DeviceMem(DeviceMem&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceMem& operator=(DeviceMem&& o) noexcept {
    if (this != &o) {
      Free();
      std::swap(ptr_, o.ptr_);
      std::swap(bytes_, o.bytes_);
    }
    return *this;
  }
  absl::Status Alloc(size_t bytes, const char* what) {
    Free();
    SV_CUDA(cudaMalloc(&ptr_, std::max<size_t>(bytes, 16)), what);
    bytes_ = bytes;
    return absl::OkStatus();
  }
  void Free() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Pinned host memory for the per-step inputs and outputs.
class PinnedMem {
 public:
  ~PinnedMem() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
  }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    SV_CUDA(cudaHostAlloc(&ptr_, bytes, cudaHostAllocDefault), "cudaHostAlloc");
    bytes_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

uint64_t Mix(uint64_t a, uint64_t b) {
  uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

struct Layer {
  DeviceMem attn_norm, wqkv, wo, mlp_norm, wgu, wdown, k_cache, v_cache;
};

// What one step's kernels see; for a graph bucket B it is {B, B, B, ...} at every replay.
struct StepShape {
  int rows = 0;
  int tiles = 0;
  int samples = 0;
  int split_len = 0;
  int max_splits = 1;
  // Every tile's slot appears in no other tile: attention loads the older keys before
  // waiting on the q/k/v projection (SHARDVEC_ATTN_PREFETCH=0 turns that off).
  bool older_ready = false;
  // Every tile is one row, older_ready, tiles x kv heads fit one block per SM, and every
  // position is within a few times the keys a DecodeAttention block loads early (and
  // CudaModelOptions.decode_attention): attention runs as kl::DecodeAttention.
  bool decode_attention = false;
};

constexpr int kSplitRowsMax = 256;      // rows above which attention never splits the keys
constexpr int kGraphRowsMax = 256;      // largest decode batch captured as a graph
constexpr int64_t kStageFloats = 1 << 24;  // weight upload chunk (64 MB of float32)

class CudaLlama : public Model {
 public:
  ~CudaLlama() override;

  static absl::StatusOr<std::unique_ptr<CudaLlama>> Create(const LlamaConfig& config,
                                                           const CudaModelOptions& options,
                                                           Communicator* comm);
  absl::Status LoadWeights(const Checkpoint& ckpt, const std::string& dir);
  absl::Status RandomWeights(uint64_t seed);

  const LlamaConfig& config() const override { return cfg_; }
  int max_slots() const override { return max_slots_; }
  int max_seq_len() const override { return max_seq_len_; }
  absl::Status Forward(const ForwardBatch& batch, std::vector<int32_t>* next_tokens,
                       std::vector<float>* logits) override;
  absl::Status StopFollowers() override;
  absl::Status FollowerLoop() override;

 private:
  CudaLlama() = default;
  absl::Status Validate(const ForwardBatch& b) const;
  absl::Status RunStep(const ForwardBatch& b, std::vector<int32_t>* next_tokens,
                       std::vector<float>* logits);
  absl::Status Enqueue(const StepShape& s);
  absl::Status FinishStep(const StepShape& s, const int32_t* samples, bool residual_done);
  kl::GemvParams Gemv(const void* w, int n, int k, int m) const;
  absl::Status EnsureCapacity(int rows, int samples);
  void DropGraphs();
  absl::Status Linear(const void* x, const void* w, int m, int n, int k, float* y);
  absl::Status LinearSwiGlu(const void* x, const void* w, int m, int inter, int k, void* out);
  absl::Status AllReduce(float* data, size_t count);
  StepShape ShapeFor(int rows, int tiles, int samples) const;

  // Weight upload: float32 rows on the host -> elements at dst + offset (elements).
  absl::Status UploadHost(const float* src, int64_t count, void* dst, int64_t offset);
  absl::Status UploadSlice(const TensorView& t, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                           void* dst, int64_t offset);

  LlamaConfig cfg_;
  CudaModelOptions opt_;
  Communicator* comm_ = nullptr;
  int tp_ = 1, rank_ = 0;
  int device_ = 0;
  int sm_count_ = 0;
  int max_slots_ = 0, max_seq_len_ = 0;
  bool use_graphs_ = false;
  bool decode_attention_ = true;
  kl::ElemType et_ = kl::ElemType::kBF16;
  int es_ = 2;  // element bytes

  // Per-rank dimensions.
  int H_ = 0, D_ = 0, qh_ = 0, kvh_ = 0, inter_ = 0, V_ = 0, vpr_ = 0, nqkv_ = 0;
  int split_len_ = 0, max_splits_ = 1;
  int gemv_max_rows_ = 4;

  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  DeviceMem cublas_ws_;

  std::vector<Layer> layers_;
  DeviceMem embed_;       // [vocab_per_rank * T][H]: full table, zero-padded rows at the end
  DeviceMem lm_own_;      // untied LM head shard [vpr][H]
  const void* lm_ = nullptr;
  DeviceMem final_norm_;
  DeviceMem inv_freq_;
  DeviceMem stage_;       // float32 upload buffer

  // Activations, sized for rows_cap_ rows / samples_cap_ sample rows.
  int rows_cap_ = 0, samples_cap_ = 0;
  DeviceMem in_;  // int32: tokens | positions | slots | tiles (4 each) | sample rows
  DeviceMem h_, xn_, qkv_, q_, attn_, delta_, gu_, act_, partial_, counters_;
  DeviceMem xs_, logits_local_, gathered_, logits_, next_, argmax_scratch_, gemv_sched_;
  PinnedMem h_in_, h_next_;

  std::map<std::pair<int, bool>, cudaGraphExec_t> graphs_;  // (bucket, decode_attention)
  std::vector<int> slot_stamp_;  // scratch for the graph check: last step a slot was seen
  int stamp_ = 0;
};

CudaLlama::~CudaLlama() {
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  DropGraphs();
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

void CudaLlama::DropGraphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

absl::StatusOr<std::unique_ptr<CudaLlama>> CudaLlama::Create(const LlamaConfig& c,
                                                             const CudaModelOptions& o,
                                                             Communicator* comm) {
  if (o.max_slots < 1) {
    return absl::InvalidArgumentError("CudaModelOptions.max_slots must be >= 1");
  }
  if (o.max_seq_len < 1) {
    return absl::InvalidArgumentError("CudaModelOptions.max_seq_len must be >= 1");
  }
  if (c.hidden_size < 1 || c.head_dim < 2 || c.head_dim % 2 != 0 || c.num_attention_heads < 1 ||
      c.num_key_value_heads < 1 || c.vocab_size < 1 || c.intermediate_size < 1 ||
      c.num_hidden_layers < 1 || c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError("config: inconsistent model shape");
  }
  std::unique_ptr<CudaLlama> m(new CudaLlama());
  m->cfg_ = c;
  m->opt_ = o;
  m->comm_ = comm;
  m->tp_ = comm == nullptr ? 1 : comm->size();
  m->rank_ = comm == nullptr ? 0 : comm->rank();
  const int T = m->tp_;
  if (c.num_key_value_heads % T != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor parallel size ", T,
                                                   " does not divide num_key_value_heads ",
                                                   c.num_key_value_heads));
  }
  if (c.intermediate_size % T != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor parallel size ", T, " does not divide intermediate_size ", c.intermediate_size));
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    cudaGetLastError();
    devices = 0;
  }
  if (o.device < 0 || o.device >= devices) {
    return absl::FailedPreconditionError(
        absl::StrCat("CudaModelOptions.device ", o.device, ": ", devices, " CUDA devices"));
  }
  m->device_ = o.device;
  m->max_slots_ = o.max_slots;
  m->max_seq_len_ = std::min(o.max_seq_len, c.max_position_embeddings);
  m->et_ = o.dtype == CudaDType::kBF16 ? kl::ElemType::kBF16 : kl::ElemType::kF32;
  m->es_ = kl::ElemSize(m->et_);
  m->H_ = c.hidden_size;
  m->D_ = c.head_dim;
  m->qh_ = c.num_attention_heads / T;
  m->kvh_ = c.num_key_value_heads / T;
  m->inter_ = c.intermediate_size / T;
  m->V_ = c.vocab_size;
  m->vpr_ = (c.vocab_size + T - 1) / T;
  m->nqkv_ = (m->qh_ + 2 * m->kvh_) * m->D_;
  const kl::AttnShape shape{m->qh_, m->kvh_, m->D_, m->max_seq_len_};
  if (!kl::AttentionSupported(shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config: head_dim ", c.head_dim, " (at most ", kl::kMaxHeadDim, ") or ",
        c.num_attention_heads / c.num_key_value_heads, " query heads per kv head (at most ",
        kl::kAttnTileVectors, ") not supported by the CUDA attention"));
  }
  if (o.attention_split_len < 0) {
    return absl::InvalidArgumentError("CudaModelOptions.attention_split_len must be >= 0");
  }
  // Flash-decoding splits: one 32-key chunk each for short caches, at most 64 splits.
  m->split_len_ = o.attention_split_len > 0
                      ? o.attention_split_len
                      : (std::max(32, (m->max_seq_len_ + 63) / 64) + 31) / 32 * 32;
  if (o.gemv_max_rows < 0 || o.gemv_max_rows > kl::kGemvMaxRows) {
    return absl::InvalidArgumentError(absl::StrCat("CudaModelOptions.gemv_max_rows must be in [0, ",
                                                   kl::kGemvMaxRows, "]"));
  }
  m->gemv_max_rows_ = o.gemv_max_rows;
  m->decode_attention_ = o.decode_attention;
  m->max_splits_ = (m->max_seq_len_ + m->split_len_ - 1) / m->split_len_;
  m->use_graphs_ = o.use_cuda_graphs &&
                   (comm == nullptr || T == 1 || dynamic_cast<NcclCommunicator*>(comm) != nullptr);
  kl::SetProgrammaticLaunch(o.programmatic_launch);

  SV_CUDA(cudaSetDevice(o.device), "cudaSetDevice");
  SV_CUDA(kl::PrepareKernels(), "PrepareKernels");
  SV_CUDA(cudaDeviceGetAttribute(&m->sm_count_, cudaDevAttrMultiProcessorCount, o.device),
          "cudaDeviceGetAttribute");
  SV_CUDA(cudaStreamCreateWithFlags(&m->stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  SV_RETURN_IF_ERROR(CublasStatus(cublasCreate(&m->cublas_), "cublasCreate"));
  SV_RETURN_IF_ERROR(CublasStatus(cublasSetStream(m->cublas_, m->stream_), "cublasSetStream"));
  // A fixed workspace, so that cuBLAS allocates nothing while a graph is captured.
  const size_t ws = size_t{32} << 20;
  SV_RETURN_IF_ERROR(m->cublas_ws_.Alloc(ws, "cuBLAS workspace"));
  SV_RETURN_IF_ERROR(
      CublasStatus(cublasSetWorkspace(m->cublas_, m->cublas_ws_.get(), ws), "cublasSetWorkspace"));

  // Weights and caches (contents come from LoadWeights / RandomWeights).
  const int64_t H = m->H_, es = m->es_;
  const int64_t cache_elems =
      int64_t{m->max_slots_ + 1} * m->kvh_ * m->max_seq_len_ * m->D_;  // +1: scratch slot
  m->layers_.resize(c.num_hidden_layers);
  for (Layer& l : m->layers_) {
    SV_RETURN_IF_ERROR(l.attn_norm.Alloc(H * es, "weights"));
    SV_RETURN_IF_ERROR(l.mlp_norm.Alloc(H * es, "weights"));
    SV_RETURN_IF_ERROR(l.wqkv.Alloc(int64_t{m->nqkv_} * H * es, "weights"));
    SV_RETURN_IF_ERROR(l.wo.Alloc(H * m->qh_ * m->D_ * es, "weights"));
    SV_RETURN_IF_ERROR(l.wgu.Alloc(int64_t{2} * m->inter_ * H * es, "weights"));
    SV_RETURN_IF_ERROR(l.wdown.Alloc(H * m->inter_ * es, "weights"));
    SV_RETURN_IF_ERROR(l.k_cache.Alloc(cache_elems * es, "KV cache"));
    SV_RETURN_IF_ERROR(l.v_cache.Alloc(cache_elems * es, "KV cache"));
    // Slots that were never written still hold finite values (the scratch slot is read).
    SV_CUDA(cudaMemsetAsync(l.k_cache.get(), 0, cache_elems * es, m->stream_), "cudaMemset");
    SV_CUDA(cudaMemsetAsync(l.v_cache.get(), 0, cache_elems * es, m->stream_), "cudaMemset");
  }
  const int64_t padded_vocab = int64_t{m->vpr_} * T;
  SV_RETURN_IF_ERROR(m->embed_.Alloc(padded_vocab * H * es, "weights"));
  SV_CUDA(cudaMemsetAsync(m->embed_.get(), 0, padded_vocab * H * es, m->stream_), "cudaMemset");
  if (c.tie_word_embeddings) {
    m->lm_ = static_cast<const uint8_t*>(m->embed_.get()) + int64_t{m->rank_} * m->vpr_ * H * es;
  } else {
    SV_RETURN_IF_ERROR(m->lm_own_.Alloc(int64_t{m->vpr_} * H * es, "weights"));
    SV_CUDA(cudaMemsetAsync(m->lm_own_.get(), 0, int64_t{m->vpr_} * H * es, m->stream_),
            "cudaMemset");
    m->lm_ = m->lm_own_.get();
  }
  SV_RETURN_IF_ERROR(m->final_norm_.Alloc(H * es, "weights"));
  const std::vector<float> inv = c.RopeInverseFrequencies();
  SV_RETURN_IF_ERROR(m->inv_freq_.Alloc(inv.size() * sizeof(float), "rope"));
  SV_CUDA(cudaMemcpy(m->inv_freq_.get(), inv.data(), inv.size() * sizeof(float),
                     cudaMemcpyHostToDevice),
          "cudaMemcpy");
  m->slot_stamp_.assign(m->max_slots_, -1);
  SV_RETURN_IF_ERROR(m->EnsureCapacity(std::max(64, std::min(m->max_slots_, kGraphRowsMax)),
                                       std::max(8, std::min(m->max_slots_, kGraphRowsMax))));
  SV_CUDA(cudaStreamSynchronize(m->stream_), "cudaStreamSynchronize");
  return m;
}

absl::Status CudaLlama::EnsureCapacity(int rows, int samples) {
  if (rows <= rows_cap_ && samples <= samples_cap_) return absl::OkStatus();
  SV_CUDA(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  DropGraphs();  // they hold the old buffers' addresses
  const int64_t R = std::max(rows, rows_cap_), S = std::max(samples, samples_cap_);
  const int64_t H = H_, es = es_, qd = int64_t{qh_} * D_;
  const int64_t ints = 7 * R + S;
  SV_RETURN_IF_ERROR(in_.Alloc(ints * 4, "activations"));
  SV_RETURN_IF_ERROR(h_in_.Reserve(ints * 4));
  SV_RETURN_IF_ERROR(h_.Alloc(R * H * 4, "activations"));
  SV_RETURN_IF_ERROR(xn_.Alloc(R * H * es, "activations"));
  SV_RETURN_IF_ERROR(qkv_.Alloc(R * nqkv_ * 4, "activations"));
  SV_RETURN_IF_ERROR(q_.Alloc(R * qd * 4, "activations"));
  SV_RETURN_IF_ERROR(attn_.Alloc(R * qd * es, "activations"));
  SV_RETURN_IF_ERROR(delta_.Alloc(R * H * 4, "activations"));
  SV_RETURN_IF_ERROR(gu_.Alloc(R * 2 * inter_ * 4, "activations"));
  SV_RETURN_IF_ERROR(act_.Alloc(R * inter_ * es, "activations"));
  if (max_splits_ > 1) {
    const int64_t split_rows = std::min<int64_t>(R, kSplitRowsMax);
    SV_RETURN_IF_ERROR(
        partial_.Alloc(split_rows * qh_ * max_splits_ * (D_ + 2) * 4, "attention partials"));
    SV_RETURN_IF_ERROR(counters_.Alloc(split_rows * kvh_ * 4, "attention counters"));
    SV_CUDA(cudaMemsetAsync(counters_.get(), 0, split_rows * kvh_ * 4, stream_), "cudaMemset");
  }
  SV_RETURN_IF_ERROR(xs_.Alloc(S * H * es, "activations"));
  SV_RETURN_IF_ERROR(logits_local_.Alloc(S * vpr_ * 4, "logits"));
  if (tp_ > 1) {
    SV_RETURN_IF_ERROR(gathered_.Alloc(int64_t{tp_} * S * vpr_ * 4, "logits"));
    SV_RETURN_IF_ERROR(logits_.Alloc(S * V_ * 4, "logits"));
  }
  SV_RETURN_IF_ERROR(next_.Alloc(S * 4, "tokens"));
  const size_t scratch = kl::ArgMaxScratchBytes(static_cast<int>(S));
  SV_RETURN_IF_ERROR(argmax_scratch_.Alloc(scratch, "argmax scratch"));
  SV_CUDA(cudaMemsetAsync(argmax_scratch_.get(), 0, scratch, stream_), "cudaMemset");
  if (gemv_sched_.get() == nullptr) {
    SV_RETURN_IF_ERROR(gemv_sched_.Alloc(8, "GEMV counters"));
    SV_CUDA(cudaMemsetAsync(gemv_sched_.get(), 0, 8, stream_), "cudaMemset");
  }
  SV_RETURN_IF_ERROR(h_next_.Reserve(S * 4));
  rows_cap_ = static_cast<int>(R);
  samples_cap_ = static_cast<int>(S);
  return absl::OkStatus();
}

absl::Status CudaLlama::UploadHost(const float* src, int64_t count, void* dst, int64_t offset) {
  if (stage_.get() == nullptr) SV_RETURN_IF_ERROR(stage_.Alloc(kStageFloats * 4, "upload buffer"));
  for (int64_t done = 0; done < count; done += kStageFloats) {
    const int64_t n = std::min(kStageFloats, count - done);
    SV_CUDA(cudaMemcpy(stage_.get(), src + done, n * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    SV_CUDA(kl::F32ToElem(stage_.as<float>(), n,
                          static_cast<uint8_t*>(dst) + (offset + done) * es_, et_, stream_),
            "F32ToElem");
    SV_CUDA(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }
  return absl::OkStatus();
}

absl::Status CudaLlama::UploadSlice(const TensorView& t, int64_t r0, int64_t r1, int64_t c0,
                                    int64_t c1, void* dst, int64_t offset) {
  const int64_t cols = c1 - c0;
  const int64_t chunk = std::max<int64_t>(1, kStageFloats / std::max<int64_t>(cols, 1));
  for (int64_t r = r0; r < r1; r += chunk) {
    const int64_t re = std::min(r1, r + chunk);
    const std::vector<float> rows = SliceToFloat32(t, r, re, c0, c1);
    if (static_cast<int64_t>(rows.size()) != (re - r) * cols) {
      return absl::InternalError("SliceToFloat32 returned a short slice");
    }
    SV_RETURN_IF_ERROR(UploadHost(rows.data(), rows.size(), dst, offset + (r - r0) * cols));
  }
  return absl::OkStatus();
}

absl::Status CudaLlama::LoadWeights(const Checkpoint& ckpt, const std::string& dir) {
  const int64_t H = H_, D = D_, I = cfg_.intermediate_size, V = V_;
  const int64_t Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads;
  const int r = rank_;
  auto get = [&](const std::string& name,
                 std::vector<int64_t> shape) -> absl::StatusOr<const TensorView*> {
    const TensorView* t = ckpt.Find(name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint ", dir, " has no tensor ", name));
    }
    if (t->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has shape [",
                                                     absl::StrJoin(t->shape, ", "),
                                                     "], expected [", absl::StrJoin(shape, ", "),
                                                     "]"));
    }
    if (t->dtype != DType::kF32 && t->dtype != DType::kBF16 && t->dtype != DType::kF16 &&
        t->dtype != DType::kF64) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, " has dtype ", DTypeName(t->dtype), "; expected floats"));
    }
    return t;
  };
#define SV_GET(var, name, ...)                        \
  const TensorView* var = nullptr;                    \
  {                                                   \
    auto sv_t_ = get(name, __VA_ARGS__);              \
    if (!sv_t_.ok()) return sv_t_.status();           \
    var = *sv_t_;                                     \
  }

  SV_GET(embed, "model.embed_tokens.weight", {V, H});
  SV_RETURN_IF_ERROR(UploadSlice(*embed, 0, V, 0, H, embed_.get(), 0));
  SV_GET(norm, "model.norm.weight", {H});
  SV_RETURN_IF_ERROR(UploadHost(ToFloat32(*norm).data(), H, final_norm_.get(), 0));
  if (!cfg_.tie_word_embeddings) {
    SV_GET(head, "lm_head.weight", {V, H});
    const int64_t vb = std::min<int64_t>(V, int64_t{r} * vpr_);
    const int64_t ve = std::min<int64_t>(V, vb + vpr_);
    SV_RETURN_IF_ERROR(UploadSlice(*head, vb, ve, 0, H, lm_own_.get(), 0));
  }
  const int64_t q0 = int64_t{r} * qh_ * D, q1 = q0 + int64_t{qh_} * D;
  const int64_t k0 = int64_t{r} * kvh_ * D, k1 = k0 + int64_t{kvh_} * D;
  const int64_t i0 = int64_t{r} * inter_, i1 = i0 + inter_;
  for (int li = 0; li < cfg_.num_hidden_layers; ++li) {
    Layer& l = layers_[li];
    const std::string p = absl::StrCat("model.layers.", li, ".");
    SV_GET(in_norm, p + "input_layernorm.weight", {H});
    SV_GET(post_norm, p + "post_attention_layernorm.weight", {H});
    SV_GET(wq, p + "self_attn.q_proj.weight", {Hq * D, H});
    SV_GET(wk, p + "self_attn.k_proj.weight", {Hkv * D, H});
    SV_GET(wv, p + "self_attn.v_proj.weight", {Hkv * D, H});
    SV_GET(wo, p + "self_attn.o_proj.weight", {H, Hq * D});
    SV_GET(wg, p + "mlp.gate_proj.weight", {I, H});
    SV_GET(wu, p + "mlp.up_proj.weight", {I, H});
    SV_GET(wd, p + "mlp.down_proj.weight", {H, I});
    SV_RETURN_IF_ERROR(UploadHost(ToFloat32(*in_norm).data(), H, l.attn_norm.get(), 0));
    SV_RETURN_IF_ERROR(UploadHost(ToFloat32(*post_norm).data(), H, l.mlp_norm.get(), 0));
    // Fused [q | k | v] rows of this rank's heads, q and k heads rope-paired (see
    // kernels::llm::QkvPairedRow).
    for (int hd = 0; hd < qh_ + kvh_; ++hd) {
      const TensorView* src = hd < qh_ ? wq : wk;
      const int64_t r0 = hd < qh_ ? q0 + hd * D : k0 + (hd - qh_) * D;
      const std::vector<float> rows = SliceToFloat32(*src, r0, r0 + D, 0, H);
      std::vector<float> paired(rows.size());
      for (int64_t j = 0; j < D; ++j) {
        const int64_t from = kl::QkvPairedRow(static_cast<int>(j), 1, 0, static_cast<int>(D));
        std::memcpy(&paired[j * H], &rows[from * H], H * 4);
      }
      SV_RETURN_IF_ERROR(UploadHost(paired.data(), paired.size(), l.wqkv.get(), hd * D * H));
    }
    SV_RETURN_IF_ERROR(UploadSlice(*wv, k0, k1, 0, H, l.wqkv.get(), (q1 - q0 + k1 - k0) * H));
    SV_RETURN_IF_ERROR(UploadSlice(*wo, 0, H, q0, q1, l.wo.get(), 0));
    SV_RETURN_IF_ERROR(UploadSlice(*wd, 0, H, i0, i1, l.wdown.get(), 0));
    // gate/up interleaved by row: (gate_j, up_j) pairs.
    const int64_t chunk = std::max<int64_t>(1, kStageFloats / (2 * H));
    for (int64_t j = i0; j < i1; j += chunk) {
      const int64_t je = std::min(i1, j + chunk);
      const std::vector<float> g = SliceToFloat32(*wg, j, je, 0, H);
      const std::vector<float> u = SliceToFloat32(*wu, j, je, 0, H);
      std::vector<float> both(static_cast<size_t>(2 * (je - j) * H));
      for (int64_t jj = 0; jj < je - j; ++jj) {
        std::memcpy(&both[(2 * jj) * H], &g[jj * H], H * 4);
        std::memcpy(&both[(2 * jj + 1) * H], &u[jj * H], H * 4);
      }
      SV_RETURN_IF_ERROR(UploadHost(both.data(), both.size(), l.wgu.get(), 2 * (j - i0) * H));
    }
  }
#undef SV_GET
  stage_.Free();
  return absl::OkStatus();
}

absl::Status CudaLlama::RandomWeights(uint64_t seed) {
  // Matrices uniform with standard deviation 0.02 (as transformers' init); norm gains
  // 1 +- 0.1. Each rank draws its own shard.
  const float mat = 0.02f * std::sqrt(3.0f);
  uint64_t tensor = 0;
  auto fill = [&](const DeviceMem& m, int64_t n, float scale, float offset) {
    const uint64_t s = Mix(Mix(seed, ++tensor), static_cast<uint64_t>(rank_));
    return CudaStatus(kl::FillRandom(m.get(), et_, n, s, scale, offset, stream_), "FillRandom");
  };
  const int64_t H = H_;
  SV_RETURN_IF_ERROR(fill(embed_, int64_t{V_} * H, mat, 0.f));
  SV_RETURN_IF_ERROR(fill(final_norm_, H, 0.1f, 1.f));
  if (!cfg_.tie_word_embeddings) SV_RETURN_IF_ERROR(fill(lm_own_, int64_t{vpr_} * H, mat, 0.f));
  for (Layer& l : layers_) {
    SV_RETURN_IF_ERROR(fill(l.attn_norm, H, 0.1f, 1.f));
    SV_RETURN_IF_ERROR(fill(l.mlp_norm, H, 0.1f, 1.f));
    SV_RETURN_IF_ERROR(fill(l.wqkv, int64_t{nqkv_} * H, mat, 0.f));
    SV_RETURN_IF_ERROR(fill(l.wo, H * qh_ * D_, mat, 0.f));
    SV_RETURN_IF_ERROR(fill(l.wgu, int64_t{2} * inter_ * H, mat, 0.f));
    SV_RETURN_IF_ERROR(fill(l.wdown, H * inter_, mat, 0.f));
  }
  SV_CUDA(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  return absl::OkStatus();
}

absl::Status CudaLlama::Validate(const ForwardBatch& b) const {
  return ValidateBatch(b, cfg_.vocab_size, max_slots_, max_seq_len_);
}

absl::Status CudaLlama::Forward(const ForwardBatch& batch, std::vector<int32_t>* next_tokens,
                                std::vector<float>* logits) {
  if (rank_ != 0) {
    return absl::FailedPreconditionError("Forward is called on rank 0; other ranks run FollowerLoop");
  }
  SV_RETURN_IF_ERROR(Validate(batch));
  if (tp_ > 1) SV_RETURN_IF_ERROR(SendBatch(comm_, batch));
  return RunStep(batch, next_tokens, logits);
}

absl::Status CudaLlama::StopFollowers() {
  if (rank_ != 0) return absl::FailedPreconditionError("StopFollowers is called on rank 0");
  if (tp_ == 1) return absl::OkStatus();
  return SendStop(comm_);
}

absl::Status CudaLlama::FollowerLoop() {
  if (rank_ == 0) return absl::FailedPreconditionError("FollowerLoop runs on ranks 1..T-1");
  return FollowSteps(comm_, [this](const ForwardBatch& b) { return RunStep(b, nullptr, nullptr); });
}

StepShape CudaLlama::ShapeFor(int rows, int tiles, int samples) const {
  StepShape s;
  s.rows = rows;
  s.tiles = tiles;
  s.samples = samples;
  // Split the keys (flash-decoding) only when there are too few (tile, kv head) blocks
  // to fill the device; then each split is one more block.
  if (max_splits_ > 1 && rows <= kSplitRowsMax && int64_t{tiles} * kvh_ < 2 * sm_count_) {
    s.split_len = split_len_;
    s.max_splits = max_splits_;
  } else {
    s.split_len = max_seq_len_;
    s.max_splits = 1;
  }
  return s;
}

absl::Status CudaLlama::RunStep(const ForwardBatch& b, std::vector<int32_t>* next_tokens,
                                std::vector<float>* logits) {
  SV_CUDA(cudaSetDevice(device_), "cudaSetDevice");
  const int n = static_cast<int>(b.tokens.size());
  const int ns = static_cast<int>(b.sample_rows.size());
  // A graph step: decode rows of distinct sequences, every row sampled in order.
  bool graph = use_graphs_ && n <= std::min(kGraphRowsMax, max_slots_) && ns == n;
  if (graph) {
    ++stamp_;
    for (int i = 0; i < n && graph; ++i) {
      if (b.sample_rows[i] != i || slot_stamp_[b.slots[i]] == stamp_) graph = false;
      slot_stamp_[b.slots[i]] = stamp_;
    }
  }
  int rows = n, bucket = 0;
  std::vector<kl::AttnTile> tiles;
  if (graph) {
    bucket = n;
    if (n > 8) {
      bucket = 16;
      while (bucket < n) bucket *= 2;
    }
    rows = bucket;
    tiles.resize(bucket);
    for (int i = 0; i < bucket; ++i) {
      tiles[i] = i < n ? kl::AttnTile{i, 1, b.slots[i], b.positions[i]}
                       : kl::AttnTile{i, 1, max_slots_, 0};  // padding: the scratch slot
    }
  } else {
    const int tile_rows = kl::AttnTileRows({qh_, kvh_, D_, max_seq_len_});
    for (int i = 0; i < n; ++i) {
      if (!tiles.empty()) {
        kl::AttnTile& t = tiles.back();
        if (b.slots[i] == t.slot && b.positions[i] == t.pos_begin + t.n_rows &&
            t.n_rows < tile_rows) {
          ++t.n_rows;
          continue;
        }
      }
      tiles.push_back(kl::AttnTile{i, 1, b.slots[i], b.positions[i]});
    }
  }
  const int samples = graph ? bucket : ns;
  SV_RETURN_IF_ERROR(EnsureCapacity(rows, std::max(samples, 1)));
  StepShape shape = ShapeFor(rows, static_cast<int>(tiles.size()), samples);
  static const bool attn_prefetch = [] {
    const char* v = std::getenv("SHARDVEC_ATTN_PREFETCH");
    return v == nullptr || std::atoi(v) != 0;
  }();
  if (attn_prefetch) {
    // Graph steps have distinct slots (their padding tiles all start at position 0).
    shape.older_ready = true;
    if (!graph) {
      std::vector<int32_t> seen;
      for (const kl::AttnTile& t : tiles) seen.push_back(t.slot);
      std::sort(seen.begin(), seen.end());
      shape.older_ready = std::adjacent_find(seen.begin(), seen.end()) == seen.end();
    }
  }
  // Only while one block per (tile, kv head) makes one wave (the kernel spreads a kv head's
  // query heads over more blocks where the SMs allow). Measured on an H100, 1B shape, batch
  // 8: 1.46-1.49 ms a step against 1.52-1.54 on the splits (context 128), 1.52-1.56 against
  // 1.67 (context 384); batch 64 was faster on the splits (2.03 against 2.12 ms, one block
  // per kv head).
  if (decode_attention_ && shape.older_ready &&
      static_cast<int64_t>(tiles.size()) * kvh_ <= sm_count_) {
    // Positions up to `rounds` times the keys loaded before the wait (the rest are read
    // after it, that many at a time): at batch 1, context 900 (4 rounds) took 1.11 ms a step
    // against 1.16-1.18 on the splits. SHARDVEC_DECODE_ROUNDS changes it, for tuning runs.
    static const int rounds = [] {
      const char* v = std::getenv("SHARDVEC_DECODE_ROUNDS");
      const int r = v != nullptr ? std::atoi(v) : 0;
      return r > 0 ? r : 4;
    }();
    const int keys = rounds * kl::DecodeAttentionKeys({qh_, kvh_, D_, max_seq_len_}, et_);
    shape.decode_attention = keys > 0;
    for (const kl::AttnTile& t : tiles) {
      shape.decode_attention = shape.decode_attention && t.n_rows == 1 && t.pos_begin < keys;
    }
  }

  // Inputs: tokens | positions | slots | tiles | sample rows, one copy.
  int32_t* in = h_in_.as<int32_t>();
  for (int i = 0; i < rows; ++i) {
    const bool real = i < n;
    in[i] = real ? b.tokens[i] : 0;
    in[rows + i] = real ? b.positions[i] : 0;
    in[2 * rows + i] = real ? b.slots[i] : max_slots_;
  }
  std::memcpy(in + 3 * rows, tiles.data(), tiles.size() * sizeof(kl::AttnTile));
  int32_t* sr = in + 3 * rows + 4 * tiles.size();
  for (int i = 0; i < samples; ++i) sr[i] = graph ? i : b.sample_rows[i];
  const size_t in_count = 3 * rows + 4 * tiles.size() + samples;
  SV_CUDA(cudaMemcpyAsync(in_.get(), in, in_count * 4, cudaMemcpyHostToDevice, stream_),
          "cudaMemcpyAsync");

  if (graph) {
    const std::pair<int, bool> key{bucket, shape.decode_attention};
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      cudaGraph_t g = nullptr;
      SV_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture");
      const absl::Status st = Enqueue(shape);
      const cudaError_t end = cudaStreamEndCapture(stream_, &g);
      if (!st.ok()) {
        if (g != nullptr) cudaGraphDestroy(g);
        return st;
      }
      SV_CUDA(end, "cudaStreamEndCapture");
      cudaGraphExec_t exec = nullptr;
      const cudaError_t inst = cudaGraphInstantiate(&exec, g, 0);
      cudaGraphDestroy(g);
      SV_CUDA(inst, "cudaGraphInstantiate");
      it = graphs_.emplace(key, exec).first;
    }
    SV_CUDA(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch");
  } else {
    SV_RETURN_IF_ERROR(Enqueue(shape));
  }

  const bool want = rank_ == 0 && (next_tokens != nullptr || logits != nullptr);
  const float* d_logits = tp_ > 1 ? logits_.as<float>() : logits_local_.as<float>();
  const int64_t V = V_;
  std::vector<std::vector<float>> sampled_rows(ns);
  if (want && ns > 0) {
    SV_CUDA(cudaMemcpyAsync(h_next_.as<int32_t>(), next_.get(), ns * 4, cudaMemcpyDeviceToHost,
                            stream_),
            "cudaMemcpyAsync");
    if (logits != nullptr) {
      logits->resize(static_cast<size_t>(ns) * V);
      SV_CUDA(cudaMemcpyAsync(logits->data(), d_logits, ns * V * 4, cudaMemcpyDeviceToHost,
                              stream_),
              "cudaMemcpyAsync");
    } else if (next_tokens != nullptr) {
      for (int i = 0; i < ns; ++i) {
        if (!(b.sampling[i].temperature > 0.0f)) continue;
        sampled_rows[i].resize(V);
        SV_CUDA(cudaMemcpyAsync(sampled_rows[i].data(), d_logits + i * V, V * 4,
                                cudaMemcpyDeviceToHost, stream_),
                "cudaMemcpyAsync");
      }
    }
  } else if (want && logits != nullptr) {
    logits->clear();
  }
  SV_CUDA(cudaStreamSynchronize(stream_), "forward step");
  if (want && next_tokens != nullptr) {
    next_tokens->resize(ns);
    // Greedy rows: the device's argmax. The others: SampleToken on the host, in parallel.
    std::vector<const float*> rows(ns, nullptr);  // null: a greedy row, already chosen
    for (int i = 0; i < ns; ++i) {
      if (!(b.sampling[i].temperature > 0.0f)) {
        (*next_tokens)[i] = h_next_.as<int32_t>()[i];
      } else {
        rows[i] = logits != nullptr ? logits->data() + i * V : sampled_rows[i].data();
      }
    }
    SampleTokens(rows, V_, b.sampling, next_tokens->data());
  }
  return absl::OkStatus();
}

absl::Status CudaLlama::AllReduce(float* data, size_t count) {
  if (tp_ == 1) return absl::OkStatus();
  return comm_->AllReduceSum(data, count, CommType::kFloat32, stream_);
}

absl::Status CudaLlama::Linear(const void* x, const void* w, int m, int n, int k, float* y) {
  if (m <= 0) return absl::OkStatus();
  if (m <= gemv_max_rows_) {
    const cudaError_t e = kl::Gemv(w, et_, n, k, x, m, y, kl::GemvEpilogue::kStoreF32, stream_);
    if (e != cudaErrorNotSupported) return CudaStatus(e, "Gemv");
  }
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType_t t = et_ == kl::ElemType::kBF16 ? CUDA_R_16BF : CUDA_R_32F;
  // Row-major y[m][n] = x[m][k] W[n][k]^T is column-major y^T = W^T(op T) x^T.
  return CublasStatus(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, w, t, k, x,
                                   t, k, &zero, y, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT),
                      "cublasGemmEx");
}

absl::Status CudaLlama::LinearSwiGlu(const void* x, const void* w, int m, int inter, int k,
                                     void* out) {
  if (m <= 0) return absl::OkStatus();
  if (m <= gemv_max_rows_) {
    const cudaError_t e =
        kl::Gemv(w, et_, 2 * inter, k, x, m, out, kl::GemvEpilogue::kSwiGlu, stream_);
    if (e != cudaErrorNotSupported) return CudaStatus(e, "Gemv");
  }
  SV_RETURN_IF_ERROR(Linear(x, w, m, 2 * inter, k, gu_.as<float>()));
  return CudaStatus(kl::SwiGlu(gu_.as<float>(), m, inter, out, et_, stream_), "SwiGlu");
}

kl::GemvParams CudaLlama::Gemv(const void* w, int n, int k, int m) const {
  kl::GemvParams p;
  p.w = w;
  p.type = et_;
  p.n = n;
  p.k = k;
  p.m = m;
  p.eps = static_cast<float>(cfg_.rms_norm_eps);
  // Blocks of multi-group launches take their groups from a shared counter, staggered
  // (GemvParams::sched); SHARDVEC_GEMV_DYNAMIC=0: grid-stride order, for tuning runs.
  static const bool dynamic = [] {
    const char* v = std::getenv("SHARDVEC_GEMV_DYNAMIC");
    return v == nullptr || std::string(v) != "0";
  }();
  if (dynamic) p.sched = gemv_sched_.as<int>();
  return p;
}

absl::Status CudaLlama::Enqueue(const StepShape& s) {
  const int M = s.rows, H = H_;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const int32_t* in = in_.as<int32_t>();
  const int32_t* tokens = in;
  const int32_t* positions = in + M;
  const int32_t* slots = in + 2 * M;
  const auto* tiles = reinterpret_cast<const kl::AttnTile*>(in + 3 * M);
  const int32_t* samples = in + 3 * M + 4 * s.tiles;
  const kl::AttnShape ashape{qh_, kvh_, D_, max_seq_len_};
  float* h = h_.as<float>();
  float* delta = delta_.as<float>();
  auto attention = [&](const Layer& l) {
    if (s.decode_attention) {
      return CudaStatus(kl::DecodeAttention(q_.as<float>(), tiles, s.tiles, ashape,
                                            l.k_cache.get(), l.v_cache.get(), et_, attn_.get(),
                                            stream_),
                        "DecodeAttention");
    }
    return CudaStatus(kl::Attention(q_.as<float>(), tiles, s.tiles, ashape, l.k_cache.get(),
                                    l.v_cache.get(), et_, s.split_len, s.max_splits,
                                    partial_.as<float>(), counters_.as<int32_t>(), attn_.get(),
                                    stream_, s.older_ready),
                      "Attention");
  };

  SV_CUDA(kl::EmbedGather(embed_.get(), et_, tokens, M, H, h, stream_), "EmbedGather");

  // Few rows on one rank: five kernels a layer. Each norm is computed inside the
  // projection that reads it, rope and the KV write in the q/k/v projection's epilogue,
  // the residual adds in the o/down projections' epilogues.
  if (tp_ == 1 && M <= gemv_max_rows_) {
    std::vector<kl::GemvParams> qkv(layers_.size()), o(layers_.size()), gu(layers_.size()),
        down(layers_.size());
    bool fused = true;
    for (size_t li = 0; li < layers_.size() && fused; ++li) {
      const Layer& l = layers_[li];
      qkv[li] = Gemv(l.wqkv.get(), nqkv_, H, M);
      qkv[li].norm_h = h;
      qkv[li].norm_w = l.attn_norm.get();
      qkv[li].epilogue = kl::GemvEpilogue::kQkvRope;
      qkv[li].positions = positions;
      qkv[li].slots = slots;
      qkv[li].inv_freq = inv_freq_.as<float>();
      qkv[li].q_heads = qh_;
      qkv[li].kv_heads = kvh_;
      qkv[li].head_dim = D_;
      qkv[li].max_seq_len = max_seq_len_;
      qkv[li].q_out = q_.as<float>();
      qkv[li].k_cache = l.k_cache.get();
      qkv[li].v_cache = l.v_cache.get();
      o[li] = Gemv(l.wo.get(), H, qh_ * D_, M);
      o[li].x = attn_.get();
      o[li].y = h;
      o[li].epilogue = kl::GemvEpilogue::kAddF32;
      gu[li] = Gemv(l.wgu.get(), 2 * inter_, H, M);
      gu[li].norm_h = h;
      gu[li].norm_w = l.mlp_norm.get();
      gu[li].epilogue = kl::GemvEpilogue::kSwiGlu;
      gu[li].y = act_.get();
      down[li] = Gemv(l.wdown.get(), H, inter_, M);
      down[li].x = act_.get();
      down[li].y = h;
      down[li].epilogue = kl::GemvEpilogue::kAddF32;
      fused = kl::GemvSupported(qkv[li]) && kl::GemvSupported(o[li]) &&
              kl::GemvSupported(gu[li]) && kl::GemvSupported(down[li]);
    }
    if (fused) {
      for (size_t li = 0; li < layers_.size(); ++li) {
        SV_CUDA(kl::GemvEx(qkv[li], stream_), "Gemv qkv");
        SV_RETURN_IF_ERROR(attention(layers_[li]));
        SV_CUDA(kl::GemvEx(o[li], stream_), "Gemv o");
        SV_CUDA(kl::GemvEx(gu[li], stream_), "Gemv gate/up");
        SV_CUDA(kl::GemvEx(down[li], stream_), "Gemv down");
      }
      return FinishStep(s, samples, /*residual_done=*/true);
    }
  }

  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& l = layers_[li];
    SV_CUDA(kl::AddRmsNorm(h, li == 0 ? nullptr : delta, nullptr, M, H, l.attn_norm.get(), et_,
                           eps, xn_.get(), stream_),
            "AddRmsNorm");
    SV_RETURN_IF_ERROR(Linear(xn_.get(), l.wqkv.get(), M, nqkv_, H, qkv_.as<float>()));
    SV_CUDA(kl::RopeKvWrite(qkv_.as<float>(), M, qh_, kvh_, D_, positions, slots,
                            inv_freq_.as<float>(), q_.as<float>(), l.k_cache.get(),
                            l.v_cache.get(), et_, max_seq_len_, stream_),
            "RopeKvWrite");
    SV_RETURN_IF_ERROR(attention(l));
    SV_RETURN_IF_ERROR(Linear(attn_.get(), l.wo.get(), M, H, qh_ * D_, delta));
    SV_RETURN_IF_ERROR(AllReduce(delta, static_cast<size_t>(M) * H));
    SV_CUDA(kl::AddRmsNorm(h, delta, nullptr, M, H, l.mlp_norm.get(), et_, eps, xn_.get(),
                           stream_),
            "AddRmsNorm");
    SV_RETURN_IF_ERROR(LinearSwiGlu(xn_.get(), l.wgu.get(), M, inter_, H, act_.get()));
    SV_RETURN_IF_ERROR(Linear(act_.get(), l.wdown.get(), M, H, inter_, delta));
    SV_RETURN_IF_ERROR(AllReduce(delta, static_cast<size_t>(M) * H));
  }
  return FinishStep(s, samples, /*residual_done=*/false);
}

absl::Status CudaLlama::FinishStep(const StepShape& s, const int32_t* samples, bool residual_done) {
  if (s.samples == 0) return absl::OkStatus();
  const int H = H_;
  float* h = h_.as<float>();
  // The final norm (after the last residual add, unless done) and the LM head, for the
  // sampled rows only.
  kl::GemvParams lm = Gemv(lm_, vpr_, H, s.samples);
  lm.norm_h = h;
  lm.row_map = samples;
  lm.norm_w = final_norm_.get();
  lm.y = logits_local_.get();
  if (residual_done && s.samples <= gemv_max_rows_ && kl::GemvSupported(lm)) {
    if (tp_ == 1) {
      // The greedy tokens in the LM head's epilogue: no separate argmax pass.
      lm.argmax_out = next_.as<int32_t>();
      lm.argmax_scratch = argmax_scratch_.get();
      if (kl::GemvSupported(lm)) {
        SV_CUDA(kl::GemvEx(lm, stream_), "Gemv lm_head");
        return absl::OkStatus();
      }
      lm.argmax_out = nullptr;
      lm.argmax_scratch = nullptr;
    }
    SV_CUDA(kl::GemvEx(lm, stream_), "Gemv lm_head");
  } else {
    SV_CUDA(kl::AddRmsNorm(h, residual_done ? nullptr : delta_.as<float>(), samples, s.samples, H,
                           final_norm_.get(), et_, static_cast<float>(cfg_.rms_norm_eps),
                           xs_.get(), stream_),
            "AddRmsNorm");
    SV_RETURN_IF_ERROR(Linear(xs_.get(), lm_, s.samples, vpr_, H, logits_local_.as<float>()));
  }
  const float* logits = logits_local_.as<float>();
  if (tp_ > 1) {
    SV_RETURN_IF_ERROR(comm_->AllGather(logits_local_.get(), gathered_.get(),
                                        static_cast<size_t>(s.samples) * vpr_, CommType::kFloat32,
                                        stream_));
    SV_CUDA(kl::UnshardLogits(gathered_.as<float>(), tp_, s.samples, vpr_, V_, logits_.as<float>(),
                              stream_),
            "UnshardLogits");
    logits = logits_.as<float>();
  }
  SV_CUDA(kl::ArgMax(logits, s.samples, V_, V_, argmax_scratch_.get(), next_.as<int32_t>(), stream_),
          "ArgMax");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CudaDType> ParseCudaDType(const std::string& name) {
  if (name == "bf16" || name == "bfloat16") return CudaDType::kBF16;
  if (name == "f32" || name == "float32") return CudaDType::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype: expected bf16 or f32, got \"", name, "\""));
}

absl::StatusOr<std::unique_ptr<Model>> CudaModel::Load(const std::string& model_dir,
                                                       const CudaModelOptions& options,
                                                       Communicator* comm) {
  absl::StatusOr<LlamaConfig> cfg = LoadLlamaConfig(model_dir);
  if (!cfg.ok()) return cfg.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(model_dir);
  if (!ckpt.ok()) return ckpt.status();
  absl::StatusOr<std::unique_ptr<CudaLlama>> m = CudaLlama::Create(*cfg, options, comm);
  if (!m.ok()) return m.status();
  SV_RETURN_IF_ERROR((*m)->LoadWeights(**ckpt, model_dir));
  return std::unique_ptr<Model>(std::move(*m));
}

absl::StatusOr<std::unique_ptr<Model>> CudaModel::CreateRandom(const LlamaConfig& config,
                                                               const CudaModelOptions& options,
                                                               uint64_t seed, Communicator* comm) {
  absl::StatusOr<std::unique_ptr<CudaLlama>> m = CudaLlama::Create(config, options, comm);
  if (!m.ok()) return m.status();
  SV_RETURN_IF_ERROR((*m)->RandomWeights(seed));
  return std::unique_ptr<Model>(std::move(*m));
}

}  // namespace shardvec::llm
