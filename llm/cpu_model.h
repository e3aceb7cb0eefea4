// The float32 CPU reference of the Llama forward pass (model.h), with tensor parallelism
// over an in-process or any other host Communicator.
//
//   llm::InProcessGroup group(2);  // TP = 2, one thread per rank
//   auto m0 = llm::CpuModel::Load(dir, {.max_slots = 4, .max_seq_len = 256}, group.Get(0));
//   auto m1 = llm::CpuModel::Load(dir, {...}, group.Get(1));
//   std::thread follower([&] { (*m1)->FollowerLoop(); });
//   (*m0)->Forward(batch, &next, &logits);  ... (*m0)->StopFollowers(); follower.join();
//
// Rank r of T holds attention heads [r*H/T, (r+1)*H/T) and key/value heads likewise (q, k,
// v projections split by output rows: column-parallel), the matching columns of o_proj
// (row-parallel), rows [r*I/T, ...) of gate/up and columns of down_proj; an all-reduce
// follows o_proj and down_proj (summed in rank order, so results do not depend on thread
// timing). The LM head is split by vocabulary rows in blocks of ceil(V/T) rows (the last
// block zero-padded) and the logits all-gathered. T must divide the number of key/value
// heads and the intermediate size. Each rank's embedding table is complete.
//
// A Model is driven by one thread at a time (the Engine's). The KV cache holds
// max_slots x layers x max_seq_len x local kv heads x head_dim floats, keys after rotary.
#ifndef SHARDVEC_LLM_CPU_MODEL_H_
#define SHARDVEC_LLM_CPU_MODEL_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "llm/comm.h"
#include "llm/model.h"

namespace shardvec::llm {

struct ModelOptions {
  int max_slots = 8;      // sequences with a KV cache at once
  int max_seq_len = 1024; // positions per slot (capped at max_position_embeddings)
};

class CpuModel {
 public:
  // comm == nullptr means T = 1. INVALID_ARGUMENT for a checkpoint missing a tensor or
  // with a tensor of the wrong shape (naming it), or a T that does not divide the heads.
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& model_dir,
                                                     const ModelOptions& options,
                                                     Communicator* comm = nullptr);
};

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_CPU_MODEL_H_
