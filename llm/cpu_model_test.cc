#include "llm/cpu_model.h"

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "llm/comm.h"
#include "llm/safetensors.h"
#include "llm/test_fixtures.h"

namespace shardvec::llm {
namespace {

using testing::Expected;
using testing::Greedy;
using ::testing::HasSubstr;
using testing::Ids;
using testing::ModelDir;
using testing::RelativeError;
using testing::SequenceBatch;

constexpr float kRefTolerance = 1e-4f;  // vs transformers (max |diff| / max |ref|)
constexpr float kTpTolerance = 1e-5f;   // TP = T vs TP = 1, chunked vs one-shot prefill

std::unique_ptr<Model> MustLoad(const std::string& name, Communicator* comm = nullptr,
                                ModelOptions options = {4, 128}) {
  auto m = CpuModel::Load(ModelDir(name), options, comm);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

std::vector<float> Logits(Model* m, const ForwardBatch& b) {
  std::vector<int32_t> next;
  std::vector<float> logits;
  absl::Status s = m->Forward(b, &next, &logits);
  EXPECT_TRUE(s.ok()) << s;
  return logits;
}

class FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, LastLogitsMatchTransformers) {
  auto m = MustLoad(GetParam());
  ASSERT_NE(m, nullptr);
  const nlohmann::json ref = Expected(GetParam());
  int slot = 0;
  for (const auto& c : ref["last_logits"]) {
    const std::vector<float> want = c["logits"].get<std::vector<float>>();
    const std::vector<float> got = Logits(m.get(), SequenceBatch(Ids(c["prompt"]), 0, slot++));
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LT(RelativeError(got.data(), want), kRefTolerance);
  }
}

TEST_P(FixtureTest, FullSequenceLogitsMatchTransformers) {
  auto m = MustLoad(GetParam());
  ASSERT_NE(m, nullptr);
  const nlohmann::json ref = Expected(GetParam())["full_logits"];
  const std::vector<int32_t> prompt = Ids(ref["prompt"]);
  const std::vector<float> got = Logits(m.get(), SequenceBatch(prompt, 0, 1, /*all_rows=*/true));
  const int V = m->config().vocab_size;
  ASSERT_EQ(got.size(), prompt.size() * V);
  for (size_t t = 0; t < prompt.size(); ++t) {
    EXPECT_LT(RelativeError(got.data() + t * V, ref["logits"][t].get<std::vector<float>>()),
              kRefTolerance)
        << "position " << t;
  }
}

TEST_P(FixtureTest, Greedy64TokensMatchTransformers) {
  auto m = MustLoad(GetParam());
  ASSERT_NE(m, nullptr);
  const nlohmann::json ref = Expected(GetParam());
  for (const auto& g : ref["greedy"]) {
    EXPECT_EQ(Greedy(m.get(), Ids(g["prompt"]), 64, /*slot=*/2), Ids(g["tokens"]));
  }
}

TEST_P(FixtureTest, MixedBatchEqualsSeparateRuns) {
  // Both greedy prompts prefilled in one step (different slots), then decoded together.
  auto m = MustLoad(GetParam());
  ASSERT_NE(m, nullptr);
  const nlohmann::json ref = Expected(GetParam())["greedy"];
  const std::vector<int32_t> a = Ids(ref[0]["prompt"]), b = Ids(ref[1]["prompt"]);
  ForwardBatch batch = SequenceBatch(a, 0, 3);
  const ForwardBatch second = SequenceBatch(b, 0, 0);
  for (size_t i = 0; i < b.size(); ++i) {
    batch.tokens.push_back(b[i]);
    batch.positions.push_back(static_cast<int32_t>(i));
    batch.slots.push_back(0);
  }
  batch.sample_rows.push_back(static_cast<int32_t>(a.size() + b.size() - 1));
  batch.sampling.push_back({});
  std::vector<int32_t> next, got_a, got_b;
  for (int step = 0; step < 20; ++step) {
    ASSERT_TRUE(m->Forward(batch, &next, nullptr).ok());
    got_a.push_back(next[0]);
    got_b.push_back(next[1]);
    batch = ForwardBatch();
    batch.tokens = {next[1], next[0]};  // order within a step does not matter
    batch.positions = {static_cast<int32_t>(b.size()) + step,
                       static_cast<int32_t>(a.size()) + step};
    batch.slots = {0, 3};
    batch.sample_rows = {1, 0};
    batch.sampling = {{}, {}};
  }
  const std::vector<int32_t> want_a = Ids(ref[0]["tokens"]), want_b = Ids(ref[1]["tokens"]);
  EXPECT_EQ(got_a, std::vector<int32_t>(want_a.begin(), want_a.begin() + 20));
  EXPECT_EQ(got_b, std::vector<int32_t>(want_b.begin(), want_b.begin() + 20));
}

TEST_P(FixtureTest, ChunkedPrefillEqualsOneShot) {
  auto m = MustLoad(GetParam());
  ASSERT_NE(m, nullptr);
  const std::vector<int32_t> prompt = Ids(Expected(GetParam())["last_logits"][2]["prompt"]);
  const std::vector<float> one_shot = Logits(m.get(), SequenceBatch(prompt, 0, 0));
  for (int chunk : {1, 4, 7}) {
    std::vector<float> last;
    for (size_t begin = 0; begin < prompt.size(); begin += chunk) {
      const size_t end = std::min(prompt.size(), begin + chunk);
      last = Logits(m.get(), SequenceBatch({prompt.begin() + begin, prompt.begin() + end},
                                           static_cast<int>(begin), 1));
    }
    EXPECT_LT(RelativeError(last.data(), one_shot), kTpTolerance) << "chunk " << chunk;
  }
}

// Runs `body` on rank 0 of a T-rank in-process group while ranks 1..T-1 follow.
void WithGroup(const std::string& name, int T, const std::function<void(Model*)>& body) {
  InProcessGroup group(T);
  std::vector<std::unique_ptr<Model>> models;
  for (int r = 0; r < T; ++r) models.push_back(MustLoad(name, group.Get(r)));
  for (const auto& m : models) ASSERT_NE(m, nullptr);
  std::vector<std::thread> followers;
  for (int r = 1; r < T; ++r) {
    followers.emplace_back([&, r] { EXPECT_TRUE(models[r]->FollowerLoop().ok()); });
  }
  body(models[0].get());
  EXPECT_TRUE(models[0]->StopFollowers().ok());
  for (auto& f : followers) f.join();
}

TEST_P(FixtureTest, TensorParallelMatchesSingleRank) {
  auto single = MustLoad(GetParam());
  ASSERT_NE(single, nullptr);
  const nlohmann::json ref = Expected(GetParam());
  const auto& full = ref["full_logits"];
  const ForwardBatch batch = SequenceBatch(Ids(full["prompt"]), 0, 0, /*all_rows=*/true);
  const std::vector<float> want = Logits(single.get(), batch);
  const int kv_heads = single->config().num_key_value_heads;
  for (int T = 2; T <= kv_heads; ++T) {
    if (kv_heads % T != 0 || single->config().intermediate_size % T != 0) continue;
    WithGroup(GetParam(), T, [&](Model* m) {
      EXPECT_LT(RelativeError(Logits(m, batch).data(), want), kTpTolerance) << "T = " << T;
      for (const auto& g : ref["greedy"]) {
        EXPECT_EQ(Greedy(m, Ids(g["prompt"]), 64, 1), Ids(g["tokens"])) << "T = " << T;
      }
    });
  }
}

INSTANTIATE_TEST_SUITE_P(TinyLlama, FixtureTest,
                         ::testing::Values("tiny_llama", "tiny_llama_tied"));

TEST(CpuModelTest, TensorParallelSizesUsed) {
  // The fixtures allow T = 2 (tiny_llama) and T = 3 (tiny_llama_tied), so the TP test
  // above covers an even and an uneven vocabulary split (256 rows over 3 ranks).
  auto a = MustLoad("tiny_llama"), b = MustLoad("tiny_llama_tied");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->config().num_key_value_heads, 2);
  EXPECT_EQ(b->config().num_key_value_heads, 3);
}

TEST(CpuModelTest, BadBatchIsRejectedAndChangesNothing) {
  auto m = MustLoad("tiny_llama");
  ASSERT_NE(m, nullptr);
  const nlohmann::json ref = Expected("tiny_llama")["greedy"][0];
  const std::vector<int32_t> prompt = Ids(ref["prompt"]);
  const std::vector<int32_t> want = Ids(ref["tokens"]);
  std::vector<int32_t> next;
  ASSERT_TRUE(m->Forward(SequenceBatch(prompt, 0, 0), &next, nullptr).ok());
  ASSERT_EQ(next[0], want[0]);

  // Each bad batch would also overwrite slot 0's next position if it were applied.
  const int pos = static_cast<int>(prompt.size());
  struct Case {
    std::function<void(ForwardBatch*)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](ForwardBatch* b) { b->tokens[1] = 256; }, "tokens[1]"},
      {[](ForwardBatch* b) { b->tokens[0] = -1; }, "tokens[0]"},
      {[](ForwardBatch* b) { b->positions[1] = 128; }, "positions[1]"},
      {[](ForwardBatch* b) { b->positions[1] = -3; }, "positions[1]"},
      {[](ForwardBatch* b) { b->positions[1] = b->positions[0]; }, "positions[1]"},
      {[](ForwardBatch* b) { b->slots[1] = 4; }, "slots[1]"},
      {[](ForwardBatch* b) { b->slots.pop_back(); }, "slots"},
      {[](ForwardBatch* b) { b->positions.push_back(3); }, "positions"},
      {[](ForwardBatch* b) { b->sample_rows[0] = 2; }, "sample_rows[0]"},
      {[](ForwardBatch* b) { b->sampling.clear(); }, "sampling"},
      {[](ForwardBatch* b) { b->sampling[0].top_p = 0.0f; }, "sampling[0].top_p"},
      {[](ForwardBatch* b) { b->sampling[0].temperature = -1.0f; }, "sampling[0].temperature"},
      {[](ForwardBatch* b) { *b = ForwardBatch(); }, "tokens"},
  };
  for (const Case& c : cases) {
    ForwardBatch b = SequenceBatch({want[0], 7}, pos, 0);
    c.edit(&b);
    std::vector<int32_t> out = {-5};
    absl::Status s = m->Forward(b, &out, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.field));
    EXPECT_EQ(out, std::vector<int32_t>{-5}) << c.field;
  }
  // The cache is as before: decoding continues exactly.
  int p = pos;
  for (int i = 1; i < 10; ++i) {
    ASSERT_TRUE(m->Forward(SequenceBatch({next[0]}, p++, 0), &next, nullptr).ok());
    EXPECT_EQ(next[0], want[i]) << i;
  }
}

TEST(CpuModelTest, MaxSeqLenIsCappedByConfig) {
  auto m = MustLoad("tiny_llama", nullptr, {2, 100000});
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->max_seq_len(), 256);
  EXPECT_EQ(m->max_slots(), 2);
}

// Copies tiny_llama into a temp folder with its tensors edited by `edit`.
std::string EditedCheckpoint(const std::string& tag,
                             const std::function<void(std::vector<TensorToWrite>*)>& edit) {
  const std::string src = ModelDir("tiny_llama");
  const std::string dir = absl::StrCat(testing::TempDir(), "/", tag);
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto ckpt = Checkpoint::Open(src);
  EXPECT_TRUE(ckpt.ok());
  std::vector<TensorToWrite> tensors;
  for (const std::string& name : (*ckpt)->Names()) {
    const TensorView* v = (*ckpt)->Find(name);
    tensors.push_back({name, v->dtype, v->shape, {v->data, v->data + v->nbytes}});
  }
  edit(&tensors);
  EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  return dir;
}

TEST(CpuModelTest, LoadErrorsNameTheTensor) {
  const std::string missing = EditedCheckpoint("missing", [](std::vector<TensorToWrite>* t) {
    t->erase(std::remove_if(t->begin(), t->end(),
                            [](const TensorToWrite& w) {
                              return w.name == "model.layers.1.mlp.up_proj.weight";
                            }),
             t->end());
  });
  auto m = CpuModel::Load(missing, {});
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("model.layers.1.mlp.up_proj.weight"));

  const std::string shape = EditedCheckpoint("shape", [](std::vector<TensorToWrite>* t) {
    for (TensorToWrite& w : *t) {
      if (w.name == "model.layers.0.self_attn.k_proj.weight") w.shape = {16, 128};
    }
  });
  m = CpuModel::Load(shape, {});
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()),
              HasSubstr("model.layers.0.self_attn.k_proj.weight"));

  const std::string no_head = EditedCheckpoint("no_head", [](std::vector<TensorToWrite>* t) {
    t->erase(std::remove_if(t->begin(), t->end(),
                            [](const TensorToWrite& w) { return w.name == "lm_head.weight"; }),
             t->end());
  });
  m = CpuModel::Load(no_head, {});
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("lm_head.weight"));
}

TEST(CpuModelTest, BFloat16CheckpointLoads) {
  // The same weights rounded to bf16 (by truncation, which the loader widens exactly)
  // still give close logits: a check of the bf16 load path.
  const std::string dir = EditedCheckpoint("bf16", [](std::vector<TensorToWrite>* t) {
    for (TensorToWrite& w : *t) {
      std::vector<uint8_t> half(w.bytes.size() / 2);
      for (size_t i = 0; i < w.bytes.size() / 4; ++i) {
        half[2 * i] = w.bytes[4 * i + 2];
        half[2 * i + 1] = w.bytes[4 * i + 3];
      }
      w.bytes = half;
      w.dtype = DType::kBF16;
    }
  });
  auto m = CpuModel::Load(dir, {2, 64});
  ASSERT_TRUE(m.ok()) << m.status();
  const nlohmann::json c = Expected("tiny_llama")["last_logits"][0];
  const std::vector<float> got = Logits(m->get(), SequenceBatch(Ids(c["prompt"]), 0, 0));
  EXPECT_LT(RelativeError(got.data(), c["logits"].get<std::vector<float>>()), 0.03f);
}

TEST(CpuModelTest, TensorParallelSizeMustDivideHeads) {
  InProcessGroup group(3);
  auto m = CpuModel::Load(ModelDir("tiny_llama"), {}, group.Get(0));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("num_key_value_heads"));
}

TEST(CpuModelTest, FollowerCallsAreRejectedOnTheWrongRank) {
  auto m = MustLoad("tiny_llama");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->FollowerLoop().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(m->StopFollowers().ok());  // no-op for T = 1
}

}  // namespace
}  // namespace shardvec::llm
