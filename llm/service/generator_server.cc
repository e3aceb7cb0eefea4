#include "llm/service/generator_server.h"

#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/log.h"
#include "common/server_util.h"
#include "llm/comm.h"
#include "llm/cpu_model.h"
#include "llm/engine.h"
#include "llm/service/cuda_launch.h"
#include "llm/service/generator_service.h"
#include "llm/tokenizer.h"

namespace shardvec::llm {
namespace {

uint64_t CountParameters(const LlamaConfig& c) {
  const uint64_t h = c.hidden_size, i = c.intermediate_size;
  const uint64_t q = uint64_t(c.num_attention_heads) * c.head_dim;
  const uint64_t kv = uint64_t(c.num_key_value_heads) * c.head_dim;
  const uint64_t per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
  return uint64_t(c.vocab_size) * h * (c.tie_word_embeddings ? 1 : 2) +
         per_layer * c.num_hidden_layers + h;
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

// Rank 0: engine + gRPC service over `model` until a signal.
int Serve(const GeneratorServerOptions& o, Model* model, const std::string& device) {
  std::unique_ptr<Tokenizer> tokenizer;
  const std::string tok_path = o.model_dir + "/tokenizer.json";
  if (FILE* probe = std::fopen(tok_path.c_str(), "rb")) {
    std::fclose(probe);
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = Tokenizer::Load(tok_path);
    if (!t.ok()) return Fail(t.status());
    tokenizer = *std::move(t);
  }
  const LlamaConfig& cfg = model->config();
  v1::ModelInfo info;
  info.set_model_dir(o.model_dir);
  info.set_device(device);
  info.set_tensor_parallel(o.tp);
  info.set_vocab_size(cfg.vocab_size);
  info.set_hidden_size(cfg.hidden_size);
  info.set_num_layers(cfg.num_hidden_layers);
  info.set_max_seq_len(model->max_seq_len());
  info.set_max_batch(o.max_batch);
  info.set_has_tokenizer(tokenizer != nullptr);
  info.set_parameters(CountParameters(cfg));

  EngineOptions eo;
  eo.max_batch = o.max_batch;
  eo.max_step_tokens = o.max_step_tokens;
  Engine engine(model, eo);
  engine.Start();
  GeneratorService service(&engine, tokenizer.get(), info);
  const int rc = ServeUntilSignal("generator", o.host, o.port, &service);
  engine.Stop();
  return rc;
}

int RunCpu(const GeneratorServerOptions& o) {
  ModelOptions mo;
  mo.max_slots = o.max_batch;
  mo.max_seq_len = o.max_seq_len;
  if (o.tp == 1) {
    absl::StatusOr<std::unique_ptr<Model>> model = CpuModel::Load(o.model_dir, mo);
    if (!model.ok()) return Fail(model.status());
    return Serve(o, model->get(), "cpu");
  }
  InProcessGroup group(o.tp);
  std::vector<std::unique_ptr<Model>> models(o.tp);
  std::vector<absl::Status> load_status(o.tp);
  {
    // Ranks load their shards side by side (each slices its part of the checkpoint).
    std::vector<std::thread> loaders;
    for (int r = 0; r < o.tp; ++r) {
      loaders.emplace_back([&, r] {
        absl::StatusOr<std::unique_ptr<Model>> m = CpuModel::Load(o.model_dir, mo, group.Get(r));
        if (m.ok()) {
          models[r] = *std::move(m);
        } else {
          load_status[r] = m.status();
        }
      });
    }
    for (std::thread& t : loaders) t.join();
  }
  for (const absl::Status& s : load_status) {
    if (!s.ok()) return Fail(s);
  }
  std::vector<std::thread> followers;
  for (int r = 1; r < o.tp; ++r) {
    followers.emplace_back([&, r] {
      absl::Status s = models[r]->FollowerLoop();
      if (!s.ok()) LogInfo("tp rank %d: %s", r, s.ToString());
    });
  }
  const int rc = Serve(o, models[0].get(), "cpu");
  if (absl::Status s = models[0]->StopFollowers(); !s.ok()) LogInfo("stop followers: %s", s.ToString());
  for (std::thread& t : followers) t.join();
  return rc;
}

}  // namespace

void AddGeneratorFlags(CLI::App* app, GeneratorServerOptions* o) {
  app->add_option("--model", o->model_dir,
                  "Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json)")
      ->required();
  app->add_option("--device", o->device, "cpu (float32 reference) or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app->add_option("--dtype", o->dtype, "cuda weights: bf16 or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  app->add_option("--tp", o->tp, "Tensor-parallel ranks (cuda: one GPU and process each)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app->add_option("--gpus", o->gpus, "cuda: the device of each rank (default 0..tp-1)")
      ->delimiter(',');
  app->add_option("--host", o->host, "Listen address")->capture_default_str();
  app->add_option("--port", o->port, "Listen port (0: any free port)")->capture_default_str();
  app->add_option("--max-batch", o->max_batch, "Sequences decoded together")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app->add_option("--max-seq-len", o->max_seq_len, "Context length per sequence")
      ->check(CLI::Range(2, 1 << 20))
      ->capture_default_str();
  app->add_option("--max-step-tokens", o->max_step_tokens,
                  "Tokens per forward step (prefill chunks included)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app->add_option("--rank", o->rank, "(internal) follower rank")->group("");
  app->add_option("--nccl-id", o->nccl_id, "(internal) NCCL unique id, hex")->group("");
}

int RunGeneratorServer(const GeneratorServerOptions& o, const std::string& argv0,
                       const std::vector<std::string>& follower_prefix_args) {
  if (o.device == "cpu") return RunCpu(o);
  CudaLaunch launch;
  launch.model_dir = o.model_dir;
  launch.dtype = o.dtype;
  launch.tp = o.tp;
  launch.gpus = o.gpus;
  launch.max_slots = o.max_batch;
  launch.max_seq_len = o.max_seq_len;
  launch.rank = o.rank;
  launch.nccl_id = o.nccl_id;
  launch.argv0 = argv0;
  launch.follower_prefix_args = follower_prefix_args;
  launch.serve = [&o](Model* model) { return Serve(o, model, "cuda"); };
  return RunCuda(launch);
}

}  // namespace shardvec::llm
