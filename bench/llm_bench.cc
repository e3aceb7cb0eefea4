// The CUDA generator timed on a Llama-3.2-1B-shaped model with random weights: decode
// steps at several batch sizes (ms per step, tokens/s), the weight-reading floor of a
// batch-1 step (bytes of weights read per step over the device-to-device copy bandwidth
// measured here) and the fraction of it reached, and prefill tokens/s. bench/hf_peer.py
// prints the same columns for transformers.
//
//   llm_bench                                  # T = 1 on device 0
//   llm_bench --tp 2                           # one process per GPU (forks), NCCL
//   llm_bench --batches 1,8 --context 128 --steps 64 --prefill 1x512,8x512 --ablation
//
// A decode step is one Model::Forward with one token for each of `batch` sequences that
// were prefilled with `context` tokens; its time is the wall time of the call (kernels,
// the input copy, the sampled tokens' copy back), as an engine sees it.
#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/cuda_util.h"
#include "llm/config.h"
#include "llm/cuda/cuda_model.h"
#include "llm/cuda/nccl_comm.h"
#include "llm/model.h"

namespace shardvec::bench {
namespace {

using llm::CudaModel;
using llm::CudaModelOptions;
using llm::ForwardBatch;
using llm::LlamaConfig;
using llm::Model;

struct Flags {
  int tp = 1;
  std::string batches = "1,8,64";
  int context = 128;
  int steps = 64;
  std::string prefill = "1x512,8x512";
  std::string dtype = "bf16";
  bool graphs = true;
  bool pdl = true;
  bool ablation = false;
  int max_seq_len = 1024;
  int attention_split_len = 0;
  bool decode_attention = true;
  float temperature = 0.0f;  // decode sampling (0: greedy)
  float top_p = 1.0f;
  std::string config;  // a config.json; default: Llama-3.2-1B's shape
};

LlamaConfig Llama32OneB() {
  LlamaConfig c;
  c.vocab_size = 128256;
  c.hidden_size = 2048;
  c.intermediate_size = 8192;
  c.num_hidden_layers = 16;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 64;
  c.max_position_embeddings = 131072;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = llm::RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = 32.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  c.tie_word_embeddings = true;
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001};
  return c;
}

std::vector<int> ParseInts(const std::string& s) {
  std::vector<int> v;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    v.push_back(std::atoi(std::string(p).c_str()));
  }
  return v;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Bytes of weights one rank reads in a batch-1 decode step: every matrix once (the LM
// head included; the embedding gather reads one row) and the norm gains.
double WeightBytes(const LlamaConfig& c, int tp, int elem) {
  const double H = c.hidden_size, D = c.head_dim, I = c.intermediate_size / tp;
  const double qh = c.num_attention_heads / tp, kvh = c.num_key_value_heads / tp;
  const double vpr = (c.vocab_size + tp - 1) / tp;
  const double layer = (qh + 2 * kvh) * D * H + H * qh * D + 3 * I * H + 2 * H;
  return elem * (c.num_hidden_layers * layer + vpr * H + H);
}

ForwardBatch Prompts(int batch, int len, int vocab, int seed) {
  ForwardBatch b;
  uint32_t x = 2463534242u + seed;
  for (int s = 0; s < batch; ++s) {
    for (int p = 0; p < len; ++p) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      b.tokens.push_back(static_cast<int32_t>(x % vocab));
      b.positions.push_back(p);
      b.slots.push_back(s);
    }
    b.sample_rows.push_back((s + 1) * len - 1);
    b.sampling.emplace_back();
  }
  return b;
}

struct Row {
  std::string phase, batch;
  int tokens_per_step = 0;
  double ms = 0;
  double floor_ms = 0;  // decode at batch 1 only
};

void PrintRow(const std::string& impl, const Row& r) {
  const double tps = r.tokens_per_step / (r.ms * 1e-3);
  std::printf("| %-12s | %-8s | %-6s | %11d | %9.3f | %10.1f | %s |\n", impl.c_str(),
              r.phase.c_str(), r.batch.c_str(), r.tokens_per_step, r.ms, tps,
              r.floor_ms > 0 ? absl::StrFormat("%.1f%%", 100.0 * r.floor_ms / r.ms).c_str() : "");
  std::fflush(stdout);
}

// Decode `steps` steps of `batch` sequences after a prefill of `context` tokens each.
double DecodeMs(Model* m, int batch, int context, int steps, float temperature = 0.0f,
                float top_p = 1.0f) {
  const int vocab = m->config().vocab_size;
  std::vector<int32_t> next;
  CHECK_OK(m->Forward(Prompts(batch, context, vocab, batch), &next, nullptr));
  ForwardBatch b;
  b.slots.resize(batch);
  b.positions.resize(batch);
  b.sample_rows.resize(batch);
  b.sampling.resize(batch);
  for (int s = 0; s < batch; ++s) b.slots[s] = b.sample_rows[s] = s;
  const int warmup = 4;
  double t0 = 0;
  for (int i = 0; i < warmup + steps; ++i) {
    if (i == warmup) t0 = Now();
    b.tokens = next;
    for (int s = 0; s < batch; ++s) {
      b.positions[s] = context + i;
      b.sampling[s] = {temperature, top_p, static_cast<uint64_t>(s), static_cast<uint64_t>(i)};
    }
    CHECK_OK(m->Forward(b, &next, nullptr));
  }
  return (Now() - t0) * 1e3 / steps;
}

double PrefillMs(Model* m, int batch, int len) {
  const ForwardBatch b = Prompts(batch, len, m->config().vocab_size, 7 * batch + len);
  std::vector<int32_t> next;
  CHECK_OK(m->Forward(b, &next, nullptr));  // warm-up (and buffer growth)
  std::vector<double> ms;
  for (int i = 0; i < 5; ++i) {
    const double t0 = Now();
    CHECK_OK(m->Forward(b, &next, nullptr));
    ms.push_back((Now() - t0) * 1e3);
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

std::unique_ptr<Model> Create(const Flags& f, const LlamaConfig& cfg, int max_batch,
                              llm::Communicator* comm, int device, bool graphs, bool pdl,
                              int gemv_max_rows = CudaModelOptions{}.gemv_max_rows) {
  CudaModelOptions o;
  o.device = device;
  auto dt = llm::ParseCudaDType(f.dtype);
  CHECK_OK(dt.status());
  o.dtype = *dt;
  o.max_slots = max_batch;
  o.max_seq_len = f.max_seq_len;
  o.attention_split_len = f.attention_split_len;
  o.decode_attention = f.decode_attention;
  o.use_cuda_graphs = graphs;
  o.programmatic_launch = pdl;
  o.gemv_max_rows = gemv_max_rows;
  auto m = CudaModel::CreateRandom(cfg, o, 42, comm);
  CHECK_OK(m.status());
  return std::move(*m);
}

int RunRank0(const Flags& f, const LlamaConfig& cfg, llm::Communicator* comm) {
  const std::vector<int> batches = ParseInts(f.batches);
  std::vector<std::pair<int, int>> prefills;
  for (absl::string_view p : absl::StrSplit(f.prefill, ',', absl::SkipEmpty())) {
    std::vector<std::string> bx = absl::StrSplit(p, 'x');
    if (bx.size() == 2) prefills.emplace_back(std::atoi(bx[0].c_str()), std::atoi(bx[1].c_str()));
  }
  int max_batch = 1;
  for (int b : batches) max_batch = std::max(max_batch, b);
  for (auto [b, len] : prefills) max_batch = std::max(max_batch, b);

  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const double bw = CopyBandwidth() / 1e9;  // GB/s
  const int elem = f.dtype == "f32" ? 4 : 2;
  const double wbytes = WeightBytes(cfg, f.tp, elem);
  const double floor_ms = wbytes / (bw * 1e9) * 1e3;
  std::printf("device: %s, %d SMs; device-to-device copy %.0f GB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, bw);
  std::printf("model: hidden %d, intermediate %d, %d layers, %d/%d heads, head_dim %d, vocab %d, "
              "%s weights (random), TP=%d\n",
              cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
              cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size,
              f.dtype.c_str(), f.tp);
  std::printf("batch-1 floor: %.3f GB of weights per step per rank / %.0f GB/s = %.3f ms "
              "(%.0f tokens/s)\n",
              wbytes / 1e9, bw, floor_ms, 1e3 / floor_ms);

  auto m = Create(f, cfg, max_batch, comm, 0, f.graphs, f.pdl);
  std::vector<Row> rows;
  for (int b : batches) {
    const double ms = DecodeMs(m.get(), b, f.context, f.steps, f.temperature, f.top_p);
    rows.push_back({"decode", std::to_string(b), b, ms, b == 1 ? floor_ms : 0});
  }
  for (auto [b, len] : prefills) {
    rows.push_back({"prefill", absl::StrFormat("%dx%d", b, len), b * len, PrefillMs(m.get(), b, len), 0});
  }
  if (comm != nullptr) CHECK_OK(m->StopFollowers());
  m.reset();
  std::printf("\ncontext %d tokens before decoding; decode ms/step = mean of %d steps; %s\n",
              f.context, f.steps,
              f.temperature > 0 ? absl::StrFormat("sampling: temperature %.2f, top-p %.2f",
                                                  f.temperature, f.top_p).c_str()
                                : "greedy");
  std::printf("| %-12s | %-8s | %-6s | %11s | %9s | %10s | %s |\n", "impl", "phase", "batch",
              "tokens/step", "ms/step", "tokens/s", "of floor");
  std::printf("|--------------|----------|--------|-------------|-----------|------------|----------|\n");
  const std::string impl = f.tp > 1 ? absl::StrFormat("shardvec-tp%d", f.tp) : "shardvec";
  for (const Row& r : rows) PrintRow(impl, r);

  if (f.ablation && comm == nullptr) {
    std::printf("\nbatch-1 decode by launch mode\n");
    for (auto [graphs, pdl] : {std::pair<bool, bool>{true, true}, {true, false}, {false, true},
                               {false, false}}) {
      auto a = Create(f, cfg, 1, nullptr, 0, graphs, pdl);
      const double ms = DecodeMs(a.get(), 1, f.context, f.steps);
      PrintRow(absl::StrFormat("g%d-pdl%d", graphs, pdl), {"decode", "1", 1, ms, floor_ms});
    }
    std::printf("\nbatch-8 decode by the largest step on the skinny-GEMM kernel (else cuBLAS)\n");
    for (int rows : {8, 4, 0}) {
      auto a = Create(f, cfg, 8, nullptr, 0, f.graphs, f.pdl, rows);
      const double ms = DecodeMs(a.get(), 8, f.context, f.steps);
      PrintRow(absl::StrFormat("gemv<=%d", rows), {"decode", "8", 8, ms, 0});
    }
  }
  return 0;
}

int Main(int argc, char** argv) {
  Flags f;
  CLI::App app{"shardvec CUDA generator benchmark (Llama-3.2-1B shape, random weights)"};
  app.add_option("--tp", f.tp, "tensor-parallel ranks, one process and GPU each");
  app.add_option("--batches", f.batches, "decode batch sizes");
  app.add_option("--context", f.context, "prompt tokens per sequence before decoding");
  app.add_option("--steps", f.steps, "timed decode steps");
  app.add_option("--prefill", f.prefill, "prefill shapes BATCHxTOKENS");
  app.add_option("--dtype", f.dtype, "bf16 or f32")->check(CLI::IsMember({"bf16", "f32"}));
  app.add_option("--graphs", f.graphs, "CUDA graphs for decode steps");
  app.add_option("--pdl", f.pdl, "programmatic dependent launch");
  app.add_flag("--ablation", f.ablation, "also batch-1 decode with graphs / PDL off");
  app.add_option("--max-seq-len", f.max_seq_len, "positions per sequence");
  app.add_option("--attention-split-len", f.attention_split_len,
                 "keys per flash-decoding split (0: the model's default)");
  app.add_option("--temperature", f.temperature, "decode sampling temperature (0: greedy)");
  app.add_option("--top-p", f.top_p, "decode sampling top-p");
  app.add_option("--decode-attention", f.decode_attention,
                 "single-row decode steps on the one-kernel decode attention");
  app.add_option("--config", f.config, "a config.json (default: Llama-3.2-1B's shape)");
  CLI11_PARSE(app, argc, argv);
  setenv("NCCL_NVLS_ENABLE", "0", 1);

  LlamaConfig cfg = Llama32OneB();
  if (!f.config.empty()) {
    auto c = llm::LoadLlamaConfig(f.config);
    CHECK_OK(c.status());
    cfg = *c;
  }
  if (f.tp == 1) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      std::printf("no CUDA device: skipped\n");
      return 0;
    }
    return RunRank0(f, cfg, nullptr);
  }
  // One process per GPU: fork before any CUDA call; rank 0 makes the NCCL id and hands it
  // to the others through a pipe.
  std::vector<int> pipes;
  std::vector<pid_t> children;
  int rank = 0;
  int read_fd = -1;
  for (int r = 1; r < f.tp; ++r) {
    int fds[2];
    if (pipe(fds) != 0) return 1;
    const pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
      rank = r;
      close(fds[1]);
      read_fd = fds[0];
      break;
    }
    close(fds[0]);
    pipes.push_back(fds[1]);
    children.push_back(pid);
  }
  std::string id;
  if (rank == 0) {
    auto made = llm::NewNcclId();
    CHECK_OK(made.status());
    id = *made;
    for (int fd : pipes) {
      if (write(fd, id.data(), id.size()) != static_cast<ssize_t>(id.size())) return 1;
      close(fd);
    }
  } else {
    id.resize(256);
    size_t got = 0;
    while (got < id.size()) {
      const ssize_t n = read(read_fd, &id[got], id.size() - got);
      if (n <= 0) return 1;
      got += static_cast<size_t>(n);
    }
    close(read_fd);
  }
  CHECK_CUDA(cudaSetDevice(rank));
  auto comm = llm::NcclCommunicator::Create(rank, f.tp, id, rank);
  CHECK_OK(comm.status());
  int rc = 0;
  if (rank == 0) {
    rc = RunRank0(f, cfg, comm->get());
    for (pid_t pid : children) {
      int status = 0;
      waitpid(pid, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) rc = 1;
    }
  } else {
    int max_batch = 1;
    for (int b : ParseInts(f.batches)) max_batch = std::max(max_batch, b);
    for (absl::string_view p : absl::StrSplit(f.prefill, ',', absl::SkipEmpty())) {
      max_batch = std::max(max_batch, std::atoi(std::string(p).c_str()));
    }
    auto m = Create(f, cfg, max_batch, comm->get(), rank, f.graphs, f.pdl);
    CHECK_OK(m->FollowerLoop());
  }
  return rc;
}

}  // namespace
}  // namespace shardvec::bench

int main(int argc, char** argv) { return shardvec::bench::Main(argc, argv); }
