// The forward pass of a Llama-family decoder, as one step of continuous batching.
//
// A step carries the new tokens of several sequences at once: a prompt's tokens
// (prefill) and single tokens (decode) may be mixed. Token t belongs to the sequence in
// KV-cache slot slots[t] at position positions[t]; its keys and values are written into
// that slot, and it attends to positions 0..positions[t] of the slot (causal). Tokens of
// one sequence appear in increasing position order within a step.
//
//   llm::ForwardBatch b;
//   b.tokens = {1, 15, 27, 9}; b.positions = {0, 1, 2, 7}; b.slots = {0, 0, 0, 3};
//   b.sample_rows = {2, 3};  // last prompt token of slot 0, the decode token of slot 3
//   b.sampling = {greedy, greedy};
//   std::vector<int32_t> next;
//   model->Forward(b, &next, /*logits=*/nullptr);
//
// With tensor parallelism each rank holds a Model over its shard of the weights; rank 0
// is driven by the Engine and the other ranks run FollowerLoop.
#ifndef SHARDVEC_LLM_MODEL_H_
#define SHARDVEC_LLM_MODEL_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "llm/config.h"

namespace shardvec::llm {

// How the next token of one sequence is chosen. temperature 0 is greedy (argmax, lowest
// id on ties). Otherwise softmax(logits / temperature) restricted to the smallest set of
// highest-probability tokens whose mass reaches top_p, and a uniform draw
// u = SampleUniform(seed, step) picks from it, so that the CPU and CUDA paths choose the
// same token from the same logits.
struct SamplingParams {
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint64_t seed = 0;
  uint64_t step = 0;  // index of the token being generated in its sequence
};

// Deterministic uniform value in [0, 1) from (seed, step):
// h = splitmix64(splitmix64(seed) ^ step), u = (h >> 40) * 2^-24 (24 random bits).
float SampleUniform(uint64_t seed, uint64_t step);
// The CPU sampler every path agrees with; logits has vocab entries. For temperature > 0:
// p[i] = expf((logits[i] - max) / temperature) in float32, total = their double sum in id
// order. With top_p < 1: ids ordered by p descending (id ascending on ties), the kept
// prefix is the shortest whose running double sum reaches top_p * total, kept = that sum,
// and the token is the first id in that order whose running sum exceeds u * kept (the last
// kept id if rounding leaves none). With top_p = 1 every id is kept and no order is built:
// the token is the first id, in id order, whose running sum (the sums of total) exceeds
// u * total. NaN logits count as probability 0 and never win argmax.
int32_t SampleToken(const float* logits, int vocab, const SamplingParams& p);
// out[i] = SampleToken(rows[i], vocab, params[i]) for every i with rows[i] != nullptr (out[i]
// is left as it is for a null row), the rows with temperature > 0
// spread over up to `threads` threads (0: one per hardware thread, at most 16). Each such
// row costs a pass over the vocabulary (about 1-2 ms for 128k ids on one core), so a batch
// of sampled rows would otherwise serialise on the host.
void SampleTokens(const std::vector<const float*>& rows, int vocab,
                  const std::vector<SamplingParams>& params, int32_t* out, int threads = 0);

struct ForwardBatch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> positions;
  std::vector<int32_t> slots;
  std::vector<int32_t> sample_rows;      // token rows whose next token is wanted
  std::vector<SamplingParams> sampling;  // one per sample row
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const LlamaConfig& config() const = 0;
  virtual int max_slots() const = 0;
  virtual int max_seq_len() const = 0;
  // INVALID_ARGUMENT for a token outside the vocabulary, a slot or position out of range,
  // or sizes that disagree. next_tokens gets one token per sample row; logits, when not
  // null, gets sample_rows.size() x vocab_size float32 values (full vocabulary on every
  // rank). On rank 0 of a TP group, Forward first broadcasts the batch to the followers.
  virtual absl::Status Forward(const ForwardBatch& batch, std::vector<int32_t>* next_tokens,
                               std::vector<float>* logits) = 0;
  // Tells the followers to return from FollowerLoop (rank 0 only; no-op for T = 1).
  virtual absl::Status StopFollowers() = 0;
  // Ranks 1..T-1: receive each batch rank 0 broadcasts (BroadcastBatch) and run this
  // rank's part of the forward pass, until rank 0 calls StopFollowers.
  virtual absl::Status FollowerLoop() = 0;
};

// The checks every Model::Forward makes before touching its cache: sizes agree, tokens
// in the vocabulary, slots and positions in range, a slot's positions increasing within
// the step, sampling parameters valid. INVALID_ARGUMENT naming the field.
absl::Status ValidateBatch(const ForwardBatch& batch, int vocab_size, int max_slots,
                           int max_seq_len);

class Communicator;
// The step protocol between rank 0 and the followers, over comm->BroadcastHost: a fixed
// header (int64 op, token count, sample count), then one payload with the arrays. On
// rank 0 `batch` is sent and *stop is sent; on the others both are received. Rank 0
// must pass a batch whose array sizes agree (validate before calling: an error on rank 0
// alone would leave the followers waiting).
absl::Status BroadcastBatch(Communicator* comm, ForwardBatch* batch, bool* stop);

// The same protocol as each side of a Model uses it. Rank 0: SendBatch before running a
// step (no copy of the batch), SendStop for StopFollowers. Ranks 1..T-1: FollowSteps
// receives each batch and runs `step` on it until rank 0 sends stop (or an error).
absl::Status SendBatch(Communicator* comm, const ForwardBatch& batch);
absl::Status SendStop(Communicator* comm);
absl::Status FollowSteps(Communicator* comm,
                         const std::function<absl::Status(const ForwardBatch&)>& step);

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_MODEL_H_
