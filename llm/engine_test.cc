#include "llm/engine.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "llm/comm.h"
#include "llm/cpu_model.h"
#include "llm/test_fixtures.h"

namespace shardvec::llm {
namespace {

using testing::Expected;
using ::testing::HasSubstr;
using testing::Ids;
using testing::ModelDir;

std::unique_ptr<Model> MustLoad(const std::string& name, ModelOptions options = {4, 128},
                                Communicator* comm = nullptr) {
  auto m = CpuModel::Load(ModelDir(name), options, comm);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

// Collects the events of every request; thread-safe, with a wait for completion.
class Recorder {
 public:
  std::function<void(const TokenEvent&)> For(int key) {
    return [this, key](const TokenEvent& e) {
      std::lock_guard<std::mutex> lock(mu_);
      Result& r = results_[key];
      EXPECT_FALSE(r.done) << "event after done for request " << key;
      if (e.token >= 0) r.tokens.push_back(e.token);
      if (e.done) {
        r.done = true;
        r.reason = e.reason;
        r.status = e.status;
        ++done_;
        cv_.notify_all();
      }
    };
  }
  void WaitFor(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ >= n; });
  }
  struct Result {
    std::vector<int32_t> tokens;
    bool done = false;
    FinishReason reason = FinishReason::kNone;
    absl::Status status;
  };
  Result Get(int key) {
    std::lock_guard<std::mutex> lock(mu_);
    return results_[key];
  }
  int done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, Result> results_;
  int done_ = 0;
};

// Steps synchronously until the engine has nothing to do.
void Drain(Engine* engine) {
  for (int i = 0; i < 10000 && engine->StepOnce(); ++i) {
  }
}

GenerateRequest Request(std::vector<int32_t> prompt, int max_tokens, bool ignore_eos = true) {
  GenerateRequest r;
  r.prompt = std::move(prompt);
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = ignore_eos;
  return r;
}

// Prompts of lengths 5, 11, 23, 4 and 9 from the fixture.
std::vector<std::vector<int32_t>> Prompts(const nlohmann::json& ref) {
  std::vector<std::vector<int32_t>> p;
  for (const auto& c : ref["last_logits"]) p.push_back(Ids(c["prompt"]));
  for (const auto& g : ref["greedy"]) p.push_back(Ids(g["prompt"]));
  return p;
}

TEST(EngineTest, ConcurrentRequestsGetTheirSoloTokens) {
  const nlohmann::json ref = Expected("tiny_llama");
  const auto prompts = Prompts(ref);
  auto model = MustLoad("tiny_llama");
  ASSERT_NE(model, nullptr);
  std::vector<std::vector<int32_t>> solo;
  for (const auto& p : prompts) solo.push_back(testing::Greedy(model.get(), p, 24));

  // 5 requests, 4 slots, 8 tokens per step: prompts are prefilled in chunks mixed with
  // other sequences' decode tokens, and the fifth waits for a slot.
  Engine engine(model.get(), {/*max_batch=*/64, /*max_step_tokens=*/8});
  Recorder rec;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(engine.Submit(Request(prompts[i], 24), rec.For(i)).ok());
  }
  Drain(&engine);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Recorder::Result r = rec.Get(i);
    EXPECT_TRUE(r.done);
    EXPECT_EQ(r.reason, FinishReason::kMaxTokens);
    EXPECT_EQ(r.tokens, solo[i]) << "request " << i;
  }
  const Engine::Stats st = engine.stats();
  EXPECT_EQ(st.max_batch_seen, 4);
  EXPECT_EQ(st.decode_tokens, 5u * 23);  // the first token of each comes from prefill
  EXPECT_EQ(st.prefill_tokens, 5u + 11 + 23 + 4 + 9);
  // The greedy prompts' tokens are transformers' too.
  const std::vector<int32_t> want = Ids(ref["greedy"][0]["tokens"]);
  EXPECT_EQ(rec.Get(3).tokens, std::vector<int32_t>(want.begin(), want.begin() + 24));
}

TEST(EngineTest, StepThreadDeliversTheSameTokens) {
  const nlohmann::json ref = Expected("tiny_llama_tied");
  const auto prompts = Prompts(ref);
  auto model = MustLoad("tiny_llama_tied", {2, 128});
  ASSERT_NE(model, nullptr);
  std::vector<std::vector<int32_t>> solo;
  for (const auto& p : prompts) solo.push_back(testing::Greedy(model.get(), p, 16));

  Engine engine(model.get(), {64, 6});
  Recorder rec;
  engine.Start();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(engine.Submit(Request(prompts[i], 16), rec.For(i)).ok());
  }
  rec.WaitFor(static_cast<int>(prompts.size()));
  engine.Stop();
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(rec.Get(i).tokens, solo[i]) << i;
  EXPECT_EQ(engine.stats().max_batch_seen, 2);  // slot exhaustion: the rest queued
}

TEST(EngineTest, StopsAtEosUnlessIgnored) {
  // tiny_llama_tied has eos_token_id [2, 3]; its first greedy continuation emits 3.
  const nlohmann::json g = Expected("tiny_llama_tied")["greedy"][0];
  const std::vector<int32_t> want = Ids(g["tokens"]);
  size_t eos_at = 0;
  while (eos_at < want.size() && want[eos_at] != 2 && want[eos_at] != 3) ++eos_at;
  ASSERT_LT(eos_at, want.size());
  auto model = MustLoad("tiny_llama_tied");
  ASSERT_NE(model, nullptr);
  Engine engine(model.get(), {});
  Recorder rec;
  ASSERT_TRUE(engine.Submit(Request(Ids(g["prompt"]), 64, false), rec.For(0)).ok());
  ASSERT_TRUE(engine.Submit(Request(Ids(g["prompt"]), 64, true), rec.For(1)).ok());
  Drain(&engine);
  EXPECT_EQ(rec.Get(0).reason, FinishReason::kEos);
  EXPECT_EQ(rec.Get(0).tokens, std::vector<int32_t>(want.begin(), want.begin() + eos_at + 1));
  EXPECT_EQ(rec.Get(1).reason, FinishReason::kMaxTokens);
  EXPECT_EQ(rec.Get(1).tokens, want);
}

TEST(EngineTest, LengthStopsWhenTheSlotIsFull) {
  auto model = MustLoad("tiny_llama", {2, 16});
  ASSERT_NE(model, nullptr);
  const nlohmann::json g = Expected("tiny_llama")["greedy"][1];  // a 9-token prompt
  Engine engine(model.get(), {});
  Recorder rec;
  ASSERT_TRUE(engine.Submit(Request(Ids(g["prompt"]), 100), rec.For(0)).ok());
  Drain(&engine);
  const Recorder::Result r = rec.Get(0);
  EXPECT_EQ(r.reason, FinishReason::kLength);
  const std::vector<int32_t> want = Ids(g["tokens"]);
  EXPECT_EQ(r.tokens, std::vector<int32_t>(want.begin(), want.begin() + 16 - 9));
}

TEST(EngineTest, CancelFinishesRunningAndWaitingRequests) {
  auto model = MustLoad("tiny_llama", {1, 128});
  ASSERT_NE(model, nullptr);
  const nlohmann::json ref = Expected("tiny_llama");
  const auto prompts = Prompts(ref);
  Engine engine(model.get(), {});
  Recorder rec;
  auto a = engine.Submit(Request(prompts[0], 50), rec.For(0));
  auto b = engine.Submit(Request(prompts[1], 50), rec.For(1));
  auto c = engine.Submit(Request(prompts[3], 10), rec.For(2));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine.StepOnce());
  EXPECT_EQ(rec.Get(0).tokens.size(), 3u);
  engine.Cancel(*a);     // running
  engine.Cancel(*b);     // waiting for the only slot
  engine.Cancel(12345);  // unknown ids are ignored
  Drain(&engine);
  EXPECT_EQ(rec.Get(0).reason, FinishReason::kCancelled);
  EXPECT_EQ(rec.Get(0).tokens.size(), 3u);
  EXPECT_EQ(rec.Get(1).reason, FinishReason::kCancelled);
  EXPECT_TRUE(rec.Get(1).tokens.empty());
  // The freed slot went to the third request, which ran to completion alone.
  EXPECT_EQ(rec.Get(2).reason, FinishReason::kMaxTokens);
  const std::vector<int32_t> want = Ids(ref["greedy"][0]["tokens"]);
  EXPECT_EQ(rec.Get(2).tokens, std::vector<int32_t>(want.begin(), want.begin() + 10));
  EXPECT_FALSE(engine.StepOnce());
}

TEST(EngineTest, StopCancelsEverything) {
  auto model = MustLoad("tiny_llama", {1, 128});
  ASSERT_NE(model, nullptr);
  const auto prompts = Prompts(Expected("tiny_llama"));
  Engine engine(model.get(), {});
  Recorder rec;
  ASSERT_TRUE(engine.Submit(Request(prompts[0], 100), rec.For(0)).ok());
  ASSERT_TRUE(engine.Submit(Request(prompts[1], 100), rec.For(1)).ok());
  ASSERT_TRUE(engine.StepOnce());
  engine.Stop();
  EXPECT_EQ(rec.done(), 2);
  EXPECT_EQ(rec.Get(0).reason, FinishReason::kCancelled);
  EXPECT_EQ(rec.Get(1).reason, FinishReason::kCancelled);
  EXPECT_EQ(rec.Get(0).tokens.size(), 1u);
}

TEST(EngineTest, SampledTokensFollowSeedAndStep) {
  auto model = MustLoad("tiny_llama");
  ASSERT_NE(model, nullptr);
  const auto prompts = Prompts(Expected("tiny_llama"));
  GenerateRequest req = Request(prompts[1], 20);
  req.params.temperature = 0.8f;
  req.params.top_p = 0.9f;
  req.params.seed = 7;

  // By hand: the step index of the k-th generated token is k.
  std::vector<int32_t> manual, next;
  ForwardBatch b = testing::SequenceBatch(req.prompt, 0, 0);
  int pos = static_cast<int>(req.prompt.size());
  for (int k = 0; k < 20; ++k) {
    b.sampling[0] = {0.8f, 0.9f, 7, static_cast<uint64_t>(k)};
    ASSERT_TRUE(model->Forward(b, &next, nullptr).ok());
    manual.push_back(next[0]);
    b = testing::SequenceBatch({next[0]}, pos++, 0);
  }

  Engine engine(model.get(), {64, 5});
  Recorder rec;
  ASSERT_TRUE(engine.Submit(Request(prompts[2], 20), rec.For(0)).ok());
  ASSERT_TRUE(engine.Submit(req, rec.For(1)).ok());
  ASSERT_TRUE(engine.Submit(req, rec.For(2)).ok());
  req.params.seed = 8;
  ASSERT_TRUE(engine.Submit(req, rec.For(3)).ok());
  Drain(&engine);
  EXPECT_EQ(rec.Get(1).tokens, manual);
  EXPECT_EQ(rec.Get(2).tokens, manual);
  EXPECT_NE(rec.Get(3).tokens, manual);
}

TEST(EngineTest, TensorParallelEngineMatchesSingleRank) {
  const nlohmann::json ref = Expected("tiny_llama");
  const auto prompts = Prompts(ref);
  InProcessGroup group(2);
  auto m0 = MustLoad("tiny_llama", {4, 128}, group.Get(0));
  auto m1 = MustLoad("tiny_llama", {4, 128}, group.Get(1));
  ASSERT_NE(m0, nullptr);
  ASSERT_NE(m1, nullptr);
  std::thread follower([&] { EXPECT_TRUE(m1->FollowerLoop().ok()); });
  Recorder rec;
  {
    Engine engine(m0.get(), {64, 16});
    for (size_t i = 3; i < prompts.size(); ++i) {
      ASSERT_TRUE(engine.Submit(Request(prompts[i], 64), rec.For(i)).ok());
    }
    Drain(&engine);
  }
  EXPECT_TRUE(m0->StopFollowers().ok());
  follower.join();
  EXPECT_EQ(rec.Get(3).tokens, Ids(ref["greedy"][0]["tokens"]));
  EXPECT_EQ(rec.Get(4).tokens, Ids(ref["greedy"][1]["tokens"]));
}

TEST(EngineTest, SubmitRejectsBadRequestsNamingTheField) {
  auto model = MustLoad("tiny_llama", {2, 32});
  ASSERT_NE(model, nullptr);
  Engine engine(model.get(), {});
  struct Case {
    std::function<void(GenerateRequest*)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](GenerateRequest* r) { r->prompt.clear(); }, "prompt"},
      {[](GenerateRequest* r) { r->prompt[2] = 256; }, "prompt[2]"},
      {[](GenerateRequest* r) { r->prompt[0] = -1; }, "prompt[0]"},
      {[](GenerateRequest* r) { r->params.max_tokens = 0; }, "max_tokens"},
      {[](GenerateRequest* r) { r->params.temperature = -0.5f; }, "temperature"},
      {[](GenerateRequest* r) { r->params.top_p = 0.0f; }, "top_p"},
      {[](GenerateRequest* r) { r->params.top_p = 1.5f; }, "top_p"},
      {[](GenerateRequest* r) { r->prompt.assign(32, 5); }, "max_seq_len"},
  };
  bool called = false;
  for (const Case& c : cases) {
    GenerateRequest r = Request({5, 6, 7}, 4);
    c.edit(&r);
    auto id = engine.Submit(r, [&](const TokenEvent&) { called = true; });
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(std::string(id.status().message()), HasSubstr(c.field));
  }
  EXPECT_FALSE(engine.StepOnce());  // nothing was queued
  EXPECT_FALSE(called);
  EXPECT_EQ(engine.stats().steps, 0u);
  // A prompt of max_seq_len - 1 tokens still fits one generated token.
  Recorder rec;
  ASSERT_TRUE(engine.Submit(Request(std::vector<int32_t>(31, 5), 8), rec.For(0)).ok());
  Drain(&engine);
  EXPECT_EQ(rec.Get(0).reason, FinishReason::kLength);
  EXPECT_EQ(rec.Get(0).tokens.size(), 1u);
}

}  // namespace
}  // namespace shardvec::llm
