// Continuous batching over a Model: requests join and leave between forward steps.
//
//   llm::Engine engine(model.get(), {.max_batch = 64});
//   engine.Start();
//   engine.Submit({prompt_ids, {.max_tokens = 64}}, [](const llm::TokenEvent& e) {...});
//   ...
//   engine.Stop();
//
// Each step takes every running sequence's next decode token plus, while the step's token
// budget allows, prompt chunks of waiting requests (prefill), runs one Model::Forward, and
// delivers each sampled token to its request's callback (on the engine's thread). A
// sequence ends on an EOS token (config's eos_token_ids, unless ignore_eos), at
// max_tokens, when its slot's max_seq_len is reached, or when cancelled.
//
// Details: decode tokens always go into a step (max_step_tokens limits the prefill part);
// prompts are admitted first come, first served, as KV slots free up, and a prompt
// longer than the budget is prefilled over several steps. The k-th generated token of a
// request is sampled with SamplingParams{temperature, top_p, seed, step = k}, so a
// request gets the same tokens whatever else is in the batch. kLength: prompt plus
// generated tokens reached max_seq_len. The final event carries the last token (kEos,
// kMaxTokens, kLength) or -1 (kCancelled, kError). Callbacks may call Submit and Cancel
// but not Stop or StepOnce. Submit and Cancel are thread-safe.
#ifndef SHARDVEC_LLM_ENGINE_H_
#define SHARDVEC_LLM_ENGINE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "llm/model.h"

namespace shardvec::llm {

enum class FinishReason { kNone, kEos, kMaxTokens, kLength, kCancelled, kError };

struct GenerateParams {
  int max_tokens = 128;
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool ignore_eos = false;
};

struct GenerateRequest {
  std::vector<int32_t> prompt;
  GenerateParams params;
};

struct TokenEvent {
  int32_t token = -1;  // -1 on the final event when no token comes with it
  bool done = false;
  FinishReason reason = FinishReason::kNone;
  absl::Status status;  // set when reason == kError
};

struct EngineOptions {
  int max_batch = 64;             // sequences decoding at once (<= model->max_slots())
  int max_step_tokens = 2048;     // tokens per forward step, prefill chunks included
};

class Engine {
 public:
  Engine(Model* model, EngineOptions options);
  ~Engine();  // Stop()s
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  void Start();  // starts the step thread
  void Stop();   // finishes with kCancelled whatever is running or waiting

  // INVALID_ARGUMENT (naming the field) for an empty prompt, a token outside the
  // vocabulary, max_tokens < 1, temperature < 0, top_p outside (0, 1], or a prompt that
  // leaves no room under max_seq_len. Returns the request id.
  absl::StatusOr<uint64_t> Submit(GenerateRequest request,
                                  std::function<void(const TokenEvent&)> on_event);
  void Cancel(uint64_t id);

  // Runs one step on the caller's thread (for tests and benchmarks that don't Start()).
  // Returns false when there was nothing to do.
  bool StepOnce();

  struct Stats {
    uint64_t steps = 0;
    uint64_t prefill_tokens = 0;
    uint64_t decode_tokens = 0;
    int max_batch_seen = 0;
  };
  Stats stats() const;

 private:
  // Implementation-defined members (request queue, slots, step thread).
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_ENGINE_H_
