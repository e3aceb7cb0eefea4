#include "llm/service/generator_service.h"

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace shardvec::llm {
namespace {

constexpr uint32_t kDefaultMaxTokens = 256;
constexpr float kMaxTemperature = 100.0f;

// What the engine's thread hands to the RPC's thread.
struct CallQueue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<TokenEvent> events;
};

}  // namespace

absl::StatusOr<GenerateRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                                const Tokenizer* tokenizer, int vocab_size,
                                                int max_seq_len) {
  const bool has_text = !request.prompt().empty();
  const bool has_tokens = request.prompt_tokens_size() > 0;
  if (has_text == has_tokens) {
    return absl::InvalidArgumentError(
        "exactly one of prompt and prompt_tokens must be set");
  }
  GenerateRequest out;
  if (has_text) {
    if (tokenizer == nullptr) {
      return absl::FailedPreconditionError(
          "prompt: this model has no tokenizer.json; send prompt_tokens instead");
    }
    out.prompt = tokenizer->Encode(request.prompt(), /*add_bos=*/true);
    if (out.prompt.empty()) return absl::InvalidArgumentError("prompt: tokenizes to nothing");
  } else {
    out.prompt.assign(request.prompt_tokens().begin(), request.prompt_tokens().end());
    for (size_t i = 0; i < out.prompt.size(); ++i) {
      if (out.prompt[i] < 0 || out.prompt[i] >= vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("prompt_tokens[", i, "]: ", out.prompt[i],
                                                       " is outside the vocabulary [0, ",
                                                       vocab_size, ")"));
      }
    }
  }
  if (static_cast<int>(out.prompt.size()) >= max_seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", out.prompt.size(),
                                                   " tokens leave no room under the context of ",
                                                   max_seq_len, " tokens"));
  }
  const v1::GenerationParams& p = request.params();
  const uint32_t max_tokens = p.max_tokens() == 0 ? kDefaultMaxTokens : p.max_tokens();
  if (max_tokens > static_cast<uint32_t>(max_seq_len)) {
    return absl::InvalidArgumentError(absl::StrCat("params.max_tokens: ", max_tokens,
                                                   " exceeds the context of ", max_seq_len,
                                                   " tokens"));
  }
  if (!std::isfinite(p.temperature()) || p.temperature() < 0 ||
      p.temperature() > kMaxTemperature) {
    return absl::InvalidArgumentError(
        absl::StrCat("params.temperature: ", p.temperature(), " is not in [0, 100]"));
  }
  if (!std::isfinite(p.top_p()) || p.top_p() < 0 || p.top_p() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("params.top_p: ", p.top_p(), " is not in (0, 1]"));
  }
  out.params.max_tokens = static_cast<int>(max_tokens);
  out.params.temperature = p.temperature();
  out.params.top_p = p.top_p() == 0 ? 1.0f : p.top_p();
  out.params.seed = p.seed();
  out.params.ignore_eos = p.ignore_eos();
  return out;
}

size_t CompleteUtf8Prefix(const std::string& bytes) {
  // Look back at most 3 bytes for the lead byte of an unfinished sequence.
  const size_t n = bytes.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const unsigned char c = static_cast<unsigned char>(bytes[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for its lead
    size_t need = 1;
    if ((c & 0xE0) == 0xC0) need = 2;
    else if ((c & 0xF0) == 0xE0) need = 3;
    else if ((c & 0xF8) == 0xF0) need = 4;
    return back < need ? n - back : n;
  }
  return n;  // only continuation bytes (invalid UTF-8): pass them on as they are
}

std::string LossyUtf8(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  const size_t n = bytes.size();
  size_t i = 0;
  auto byte = [&](size_t j) { return static_cast<unsigned char>(bytes[j]); };
  while (i < n) {
    const unsigned char c = byte(i);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    // Length and the allowed range of the second byte (Unicode Table 3-7).
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c >= 0xE1 && c <= 0xEC) len = 3;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xEE && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    // j ends at the first byte that does not continue the sequence.
    size_t j = i + 1;
    size_t k = 1;
    while (len > 0 && k < len && j < n) {
      const unsigned char lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xBF;
      if (byte(j) < lo_k || byte(j) > hi_k) break;
      ++j;
      ++k;
    }
    if (len > 0 && k == len) {
      out.append(bytes, i, len);
    } else {
      out.append("\xEF\xBF\xBD");  // one U+FFFD for the maximal subpart bytes[i, j)
    }
    i = j;
  }
  return out;
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kEos: return "eos";
    case FinishReason::kMaxTokens: return "max_tokens";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
    case FinishReason::kNone: break;
  }
  return "";
}

GeneratorService::GeneratorService(Engine* engine, const Tokenizer* tokenizer,
                                   v1::ModelInfo info)
    : engine_(engine), tokenizer_(tokenizer), info_(std::move(info)) {}

grpc::Status GeneratorService::GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                                            v1::ModelInfo* response) {
  *response = info_;
  return grpc::Status::OK;
}

grpc::Status GeneratorService::Generate(grpc::ServerContext* context,
                                        const v1::GenerateRequest* request,
                                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
  absl::StatusOr<GenerateRequest> engine_request =
      ToEngineRequest(*request, tokenizer_, static_cast<int>(info_.vocab_size()),
                      static_cast<int>(info_.max_seq_len()));
  if (!engine_request.ok()) return ToGrpc(engine_request.status());
  const uint32_t prompt_tokens = static_cast<uint32_t>(engine_request->prompt.size());

  auto queue = std::make_shared<CallQueue>();
  absl::StatusOr<uint64_t> id =
      engine_->Submit(*std::move(engine_request), [queue](const TokenEvent& event) {
        std::lock_guard<std::mutex> lock(queue->mu);
        queue->events.push_back(event);
        queue->cv.notify_one();
      });
  if (!id.ok()) return ToGrpc(id.status());

  std::string pending;  // decoded bytes not yet sent (an unfinished UTF-8 character)
  uint32_t completion_tokens = 0;
  bool cancelled_sent = false;
  while (true) {
    std::vector<TokenEvent> events;
    {
      std::unique_lock<std::mutex> lock(queue->mu);
      // Wakes on every token; the timeout only bounds how late a client's
      // cancellation is noticed.
      queue->cv.wait_for(lock, std::chrono::milliseconds(50),
                         [&] { return !queue->events.empty(); });
      events.assign(queue->events.begin(), queue->events.end());
      queue->events.clear();
    }
    if (events.empty()) {
      if (context->IsCancelled() && !cancelled_sent) {
        engine_->Cancel(*id);
        cancelled_sent = true;
      }
      continue;
    }
    v1::GenerateResponse response;
    bool done = false;
    for (const TokenEvent& e : events) {
      if (e.token >= 0) {
        response.add_token_ids(e.token);
        ++completion_tokens;
        // Special tokens (EOS, ...) stay out of the text; bytes of a character split
        // across tokens wait in `pending` for the rest.
        if (tokenizer_ != nullptr) pending += tokenizer_->Decode({e.token}, /*skip_special=*/true);
      }
      if (e.done) {
        if (e.reason == FinishReason::kError) return ToGrpc(e.status);
        response.set_done(true);
        response.set_finish_reason(FinishReasonName(e.reason));
        done = true;
        break;
      }
    }
    const size_t cut = done ? pending.size() : CompleteUtf8Prefix(pending);
    response.set_text(LossyUtf8(pending.substr(0, cut)));
    pending.erase(0, cut);
    response.set_prompt_tokens(prompt_tokens);
    response.set_completion_tokens(completion_tokens);
    if (!writer->Write(response)) {
      engine_->Cancel(*id);  // the client went away
      return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
    }
    if (done) return grpc::Status::OK;
  }
}

}  // namespace shardvec::llm
