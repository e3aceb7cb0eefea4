#include "llm/engine.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace shardvec::llm {

namespace {

struct Sequence {
  uint64_t id = 0;
  std::vector<int32_t> prompt;
  GenerateParams params;
  std::function<void(const TokenEvent&)> on_event;
  int slot = -1;         // KV-cache slot while it holds one
  size_t prefilled = 0;  // prompt tokens already in the cache
  int generated = 0;     // tokens sampled so far
  int32_t last = -1;     // the latest sampled token (the next step's input)
  bool cancelled = false;
};

// A callback to run once the engine's lock is released.
struct Delivery {
  std::function<void(const TokenEvent&)> on_event;
  TokenEvent event;
};

void Deliver(std::vector<Delivery>* deliveries) {
  for (Delivery& d : *deliveries) {
    if (d.on_event) d.on_event(d.event);
  }
  deliveries->clear();
}

}  // namespace

struct Engine::Impl {
  Model* model;
  EngineOptions options;
  int max_running;  // min(max_batch, model slots)

  mutable std::mutex mu;       // guards everything below except step_mu
  std::condition_variable cv;  // work arrived or stop requested
  std::deque<Sequence*> waiting;
  std::vector<Sequence*> running;  // in admission order; each holds a slot
  std::vector<int> free_slots;
  std::map<uint64_t, std::unique_ptr<Sequence>> all;
  uint64_t next_id = 1;
  bool cancel_pending = false;
  bool stop = false;
  Stats stats;

  std::mutex step_mu;  // one step at a time (engine thread or StepOnce callers)
  std::thread thread;

  Impl(Model* m, EngineOptions o) : model(m), options(o) {
    options.max_batch = std::max(1, options.max_batch);
    options.max_step_tokens = std::max(1, options.max_step_tokens);
    max_running = std::min(options.max_batch, model->max_slots());
    for (int s = max_running - 1; s >= 0; --s) free_slots.push_back(s);
  }

  bool HasWorkLocked() const { return !waiting.empty() || !running.empty() || cancel_pending; }

  // Removes a finished sequence (releasing its slot) and queues its final event.
  void FinishLocked(Sequence* s, int32_t token, FinishReason reason, absl::Status status,
                    std::vector<Delivery>* out) {
    TokenEvent e;
    e.token = token;
    e.done = true;
    e.reason = reason;
    e.status = std::move(status);
    out->push_back({std::move(s->on_event), std::move(e)});
    if (s->slot >= 0) {
      free_slots.push_back(s->slot);
      running.erase(std::find(running.begin(), running.end(), s));
    } else {
      auto it = std::find(waiting.begin(), waiting.end(), s);
      if (it != waiting.end()) waiting.erase(it);
    }
    all.erase(s->id);
  }

  void FinishCancelledLocked(std::vector<Delivery>* out) {
    cancel_pending = false;
    std::vector<Sequence*> victims;
    for (Sequence* s : running) {
      if (s->cancelled) victims.push_back(s);
    }
    for (Sequence* s : waiting) {
      if (s->cancelled) victims.push_back(s);
    }
    for (Sequence* s : victims) {
      FinishLocked(s, -1, FinishReason::kCancelled, absl::OkStatus(), out);
    }
  }

  bool IsEos(const Sequence& s, int32_t token) const {
    if (s.params.ignore_eos) return false;
    const auto& eos = model->config().eos_token_ids;
    return std::find(eos.begin(), eos.end(), token) != eos.end();
  }

  void PlanLocked(ForwardBatch* batch, std::vector<Sequence*>* sampled,
                  std::vector<Delivery>* deliveries);
  void ApplyLocked(const ForwardBatch& batch, const std::vector<Sequence*>& sampled,
                   const absl::Status& status, const std::vector<int32_t>& next,
                   std::vector<Delivery>* deliveries);
  bool Step();
};

// Under mu: finishes cancelled sequences, admits waiting ones into free slots and builds
// the step's batch (decode tokens first, then prompt chunks within the token budget).
void Engine::Impl::PlanLocked(ForwardBatch* batch, std::vector<Sequence*>* sampled,
                              std::vector<Delivery>* deliveries) {
  if (cancel_pending) FinishCancelledLocked(deliveries);
  const auto add = [&](Sequence* s, int32_t token, int32_t pos, bool sample) {
    batch->tokens.push_back(token);
    batch->positions.push_back(pos);
    batch->slots.push_back(s->slot);
    if (!sample) return;
    batch->sample_rows.push_back(static_cast<int32_t>(batch->tokens.size() - 1));
    SamplingParams p;
    p.temperature = s->params.temperature;
    p.top_p = s->params.top_p;
    p.seed = s->params.seed;
    p.step = static_cast<uint64_t>(s->generated);
    batch->sampling.push_back(p);
    sampled->push_back(s);
  };
  // Every running sequence past its prompt advances each step, whatever the budget.
  size_t decode_tokens = 0, prefill_tokens = 0;
  for (Sequence* s : running) {
    if (s->prefilled == s->prompt.size()) {
      add(s, s->last, static_cast<int32_t>(s->prompt.size()) + s->generated - 1, true);
      ++decode_tokens;
    }
  }
  size_t budget =
      static_cast<size_t>(std::max(0, options.max_step_tokens - static_cast<int>(decode_tokens)));
  const auto prefill = [&](Sequence* s) {
    const size_t n = std::min(budget, s->prompt.size() - s->prefilled);
    for (size_t i = 0; i < n; ++i) {
      const size_t pos = s->prefilled + i;
      add(s, s->prompt[pos], static_cast<int32_t>(pos), pos + 1 == s->prompt.size());
    }
    s->prefilled += n;
    budget -= n;
    prefill_tokens += n;
  };
  // Sequences already part-way through their prompt first, in admission order.
  for (Sequence* s : running) {
    if (budget == 0) break;
    if (s->prefilled < s->prompt.size()) prefill(s);
  }
  while (budget > 0 && !waiting.empty() && !free_slots.empty()) {
    Sequence* s = waiting.front();
    waiting.pop_front();
    s->slot = free_slots.back();
    free_slots.pop_back();
    running.push_back(s);
    prefill(s);
  }
  if (batch->tokens.empty()) return;
  ++stats.steps;
  stats.prefill_tokens += prefill_tokens;
  stats.decode_tokens += decode_tokens;
  std::vector<int32_t> slots = batch->slots;
  std::sort(slots.begin(), slots.end());
  const int seqs = static_cast<int>(std::unique(slots.begin(), slots.end()) - slots.begin());
  stats.max_batch_seen = std::max(stats.max_batch_seen, seqs);
}

// Under mu: hands each sampled token to its sequence and finishes those that stop.
void Engine::Impl::ApplyLocked(const ForwardBatch& batch, const std::vector<Sequence*>& sampled,
                               const absl::Status& status, const std::vector<int32_t>& next,
                               std::vector<Delivery>* deliveries) {
  if (!status.ok()) {
    // The cache contents of every sequence in the step are now unknown.
    std::vector<Sequence*> failed;
    for (Sequence* s : running) {
      if (std::find(batch.slots.begin(), batch.slots.end(), s->slot) != batch.slots.end()) {
        failed.push_back(s);
      }
    }
    for (Sequence* s : failed) FinishLocked(s, -1, FinishReason::kError, status, deliveries);
    return;
  }
  const int max_len = model->max_seq_len();
  for (size_t i = 0; i < sampled.size(); ++i) {
    Sequence* s = sampled[i];
    if (s->cancelled) {
      FinishLocked(s, -1, FinishReason::kCancelled, absl::OkStatus(), deliveries);
      continue;
    }
    const int32_t token = next[i];
    s->last = token;
    ++s->generated;
    FinishReason reason = FinishReason::kNone;
    if (IsEos(*s, token)) {
      reason = FinishReason::kEos;
    } else if (s->generated >= s->params.max_tokens) {
      reason = FinishReason::kMaxTokens;
    } else if (static_cast<int>(s->prompt.size()) + s->generated >= max_len) {
      // The slot holds max_len positions: with this token the sequence fills it.
      reason = FinishReason::kLength;
    }
    if (reason != FinishReason::kNone) {
      FinishLocked(s, token, reason, absl::OkStatus(), deliveries);
    } else {
      TokenEvent e;
      e.token = token;
      deliveries->push_back({s->on_event, e});
    }
  }
}

bool Engine::Impl::Step() {
  std::lock_guard<std::mutex> step_lock(step_mu);
  std::vector<Delivery> deliveries;
  ForwardBatch batch;
  std::vector<Sequence*> sampled;  // the sequence of each sample row
  {
    std::lock_guard<std::mutex> lock(mu);
    PlanLocked(&batch, &sampled, &deliveries);
  }
  if (batch.tokens.empty()) {
    const bool did = !deliveries.empty();
    Deliver(&deliveries);
    return did;
  }
  // The model runs without mu so that Submit and Cancel never wait for a step.
  std::vector<int32_t> next;
  const absl::Status status = model->Forward(batch, &next, nullptr);
  {
    std::lock_guard<std::mutex> lock(mu);
    ApplyLocked(batch, sampled, status, next, &deliveries);
  }
  Deliver(&deliveries);
  return true;
}

Engine::Engine(Model* model, EngineOptions options)
    : impl_(std::make_unique<Impl>(model, options)) {}

Engine::~Engine() { Stop(); }

void Engine::Start() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->thread.joinable()) return;
  impl_->stop = false;
  impl_->thread = std::thread([impl = impl_.get()] {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(impl->mu);
        impl->cv.wait(lock, [&] { return impl->stop || impl->HasWorkLocked(); });
        if (impl->stop) return;
      }
      impl->Step();
    }
  });
}

void Engine::Stop() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
  std::lock_guard<std::mutex> step_lock(impl_->step_mu);
  std::vector<Delivery> deliveries;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    std::vector<Sequence*> all;
    for (Sequence* s : impl_->running) all.push_back(s);
    for (Sequence* s : impl_->waiting) all.push_back(s);
    for (Sequence* s : all) {
      impl_->FinishLocked(s, -1, FinishReason::kCancelled, absl::OkStatus(), &deliveries);
    }
    impl_->cancel_pending = false;
  }
  Deliver(&deliveries);
}

absl::StatusOr<uint64_t> Engine::Submit(GenerateRequest request,
                                        std::function<void(const TokenEvent&)> on_event) {
  const LlamaConfig& cfg = impl_->model->config();
  const std::vector<int32_t>& prompt = request.prompt;
  const GenerateParams& p = request.params;
  if (prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= cfg.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt[", i, "] = ", prompt[i], " is outside the vocabulary of ", cfg.vocab_size));
    }
  }
  if (p.max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens = ", p.max_tokens, " is < 1"));
  }
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) {
    return absl::InvalidArgumentError("temperature must be finite and >= 0");
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return absl::InvalidArgumentError("top_p must be in (0, 1]");
  }
  const int max_len = impl_->model->max_seq_len();
  if (static_cast<int>(prompt.size()) >= max_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt of ", prompt.size(), " tokens leaves no room under max_seq_len ", max_len));
  }
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto s = std::make_unique<Sequence>();
    id = impl_->next_id++;
    s->id = id;
    s->prompt = std::move(request.prompt);
    s->params = p;
    s->on_event = std::move(on_event);
    impl_->waiting.push_back(s.get());
    impl_->all.emplace(id, std::move(s));
  }
  impl_->cv.notify_all();
  return id;
}

void Engine::Cancel(uint64_t id) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->all.find(id);
    if (it == impl_->all.end()) return;
    it->second->cancelled = true;
    impl_->cancel_pending = true;
  }
  impl_->cv.notify_all();
}

bool Engine::StepOnce() { return impl_->Step(); }

Engine::Stats Engine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

}  // namespace shardvec::llm
