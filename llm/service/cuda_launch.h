// Starting the CUDA generator: rank 0 makes the NCCL id, starts one follower process
// per further GPU, loads its shard and serves; followers load theirs and follow.
#ifndef SHARDVEC_LLM_SERVICE_CUDA_LAUNCH_H_
#define SHARDVEC_LLM_SERVICE_CUDA_LAUNCH_H_

#include <functional>
#include <string>
#include <vector>

#include "llm/model.h"

namespace shardvec::llm {

struct CudaLaunch {
  std::string model_dir;
  std::string dtype = "bf16";
  int tp = 1;
  std::vector<int> gpus;  // device of each rank; default 0..tp-1
  int max_slots = 32;
  int max_seq_len = 2048;
  int rank = 0;
  std::string nccl_id;  // set on followers
  std::string argv0;    // this binary, re-executed for the followers
  std::vector<std::string> follower_prefix_args;  // subcommand words before the flags
  std::function<int(Model*)> serve;  // rank 0: serves until a signal; returns the exit code
};

// Returns the process exit code.
int RunCuda(const CudaLaunch& launch);

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_SERVICE_CUDA_LAUNCH_H_
