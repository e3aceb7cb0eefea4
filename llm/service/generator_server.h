// Running the generator server: load a checkpoint on the CPU or on CUDA devices, with
// tensor parallelism, and serve proto/generator.proto until SIGINT/SIGTERM. Both
// `shardvec-generator` and `shardvec generator serve` (which `local up
// --generator-model` starts) come here.
//
//   llm::GeneratorServerOptions o;
//   o.model_dir = "/models/llama-3.2-1b"; o.device = "cuda"; o.tp = 2;
//   return llm::RunGeneratorServer(o, argv[0]);
#ifndef SHARDVEC_LLM_SERVICE_GENERATOR_SERVER_H_
#define SHARDVEC_LLM_SERVICE_GENERATOR_SERVER_H_

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace shardvec::llm {

struct GeneratorServerOptions {
  std::string model_dir;
  std::string device = "cpu";  // "cpu" (float32 reference) or "cuda"
  std::string dtype = "bf16";  // cuda weights: "bf16" or "f32"
  int tp = 1;                  // tensor-parallel ranks (cuda: one GPU, one process each)
  std::vector<int> gpus;       // cuda: device of each rank; default 0..tp-1
  std::string host = "127.0.0.1";
  int port = 0;                // 0: any free port (printed in the ready line)
  int max_batch = 32;          // sequences decoded together (KV-cache slots)
  int max_seq_len = 2048;      // context per sequence (capped by the model's)
  int max_step_tokens = 2048;  // tokens per forward step, prefill chunks included
  // Internal: set on the follower processes that rank 0 starts.
  int rank = 0;
  std::string nccl_id;
};

// Adds the options above as flags of `app` (--model, --device, --tp, ...).
void AddGeneratorFlags(CLI::App* app, GeneratorServerOptions* options);

// Serves until a termination signal; prints "generator ready on HOST:PORT" once it
// listens. argv0 is this binary, re-executed for CUDA follower ranks with
// `follower_prefix_args` (e.g. {"generator", "serve"}) before the flags. Returns the process exit code.
int RunGeneratorServer(const GeneratorServerOptions& options, const std::string& argv0,
                       const std::vector<std::string>& follower_prefix_args = {});

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_SERVICE_GENERATOR_SERVER_H_
