// The Llama forward pass (model.h) on one CUDA device, with tensor parallelism over a
// device Communicator (NcclCommunicator: one process per GPU; HostStagedCommunicator for
// tests). Weights are bf16 (or float32 for exactness tests), arithmetic float32.
//
//   llm::CudaModelOptions opt;  // device 0, bf16, 8 slots x 1024 positions, CUDA graphs
//   auto model = llm::CudaModel::Load("/models/llama-3.2-1b", opt, /*comm=*/nullptr);
//   (*model)->Forward(batch, &next, nullptr);
//
// Sharding is CpuModel's (cpu_model.h): q/k/v and gate/up split by output rows, o_proj and
// down_proj by input columns with an all-reduce (float32) after each, the KV cache by kv
// heads, the LM head by vocabulary rows (the last rank zero-padded) with an all-gather of
// the logits. On each rank q/k/v are one fused matrix and gate/up one matrix with the rows
// interleaved (gate_j, up_j), so that one skinny-GEMM kernel also applies SwiGLU.
//
// Steps where every row is its own sequence's decode token and every row is sampled run
// as a CUDA graph per batch-size bucket (1..8, then powers of two up to max_slots; the
// rest padded with rows on a scratch slot); other steps (prefill, mixed) launch kernels
// directly. Greedy rows are chosen on the device; rows with temperature > 0 copy their
// logits to the host and use llm::SampleToken. A model is used by one thread at a time.
#ifndef SHARDVEC_LLM_CUDA_CUDA_MODEL_H_
#define SHARDVEC_LLM_CUDA_CUDA_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "llm/comm.h"
#include "llm/config.h"
#include "llm/model.h"

namespace shardvec::llm {

enum class CudaDType { kBF16, kF32 };

// "bf16" / "f32" (also "bfloat16" / "float32"); INVALID_ARGUMENT naming dtype otherwise.
absl::StatusOr<CudaDType> ParseCudaDType(const std::string& name);

struct CudaModelOptions {
  int device = 0;
  CudaDType dtype = CudaDType::kBF16;
  int max_slots = 8;       // sequences with a KV cache at once
  int max_seq_len = 1024;  // positions per slot (capped at max_position_embeddings)
  // Decode steps as CUDA graphs; only with no communicator or an NcclCommunicator (other
  // communicators synchronize inside collectives, which a graph cannot hold).
  bool use_cuda_graphs = true;
  // Hopper's programmatic dependent launch (process-wide setting of the kernels): each
  // kernel starts while its predecessor drains, and skinny GEMMs prefetch weights meanwhile.
  bool programmatic_launch = true;
  // Keys per flash-decoding split of the attention; 0 picks max(32, max_seq_len / 64).
  int attention_split_len = 0;
  // Steps of at most this many rows (0..8) use the skinny-GEMM kernel, which reads each
  // weight once (and at T = 1 a layer of five fused kernels); larger steps use cuBLAS.
  // On an H100 (1B shape) batch 8 ran 2.14 ms a step on the kernel and 1.59 on cuBLAS.
  int gemv_max_rows = 4;
  // Steps whose tiles are single decode rows of distinct sequences, all within 4 rounds of
  // the keys a block loads into registers, run attention as one kernel of blocks of query
  // heads (kernels/llm_kernels.h, DecodeAttention) instead of flash-decoding splits.
  bool decode_attention = true;
};

class CudaModel {
 public:
  // comm == nullptr means T = 1; otherwise a device communicator whose rank owns
  // options.device. INVALID_ARGUMENT for bad options, a checkpoint missing a tensor or
  // with a wrong shape (naming it), or a T that does not divide the kv heads or the
  // intermediate size; FAILED_PRECONDITION when the device does not exist;
  // RESOURCE_EXHAUSTED when the weights and cache do not fit.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& model_dir,
                                                     const CudaModelOptions& options,
                                                     Communicator* comm = nullptr);

  // The same model with pseudo-random weights generated on the device (no checkpoint),
  // for benchmarks: uniform with standard deviation 0.02, norm gains near 1.
  static absl::StatusOr<std::unique_ptr<Model>> CreateRandom(const LlamaConfig& config,
                                                             const CudaModelOptions& options,
                                                             uint64_t seed,
                                                             Communicator* comm = nullptr);
};

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_CUDA_CUDA_MODEL_H_
