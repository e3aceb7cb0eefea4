#include "llm/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "llm/comm.h"

namespace shardvec::llm {
namespace {

uint64_t SplitMix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int32_t Argmax(const float* logits, int vocab) {
  int32_t best = 0;
  for (int i = 1; i < vocab; ++i) {
    // Strictly greater keeps the lowest id on ties; a NaN never wins over a number.
    if (logits[i] > logits[best] || (std::isnan(logits[best]) && !std::isnan(logits[i]))) {
      best = i;
    }
  }
  return best;
}

// The wire form of one SamplingParams (fixed layout, no padding surprises).
struct WireSampling {
  float temperature;
  float top_p;
  uint64_t seed;
  uint64_t step;
};
static_assert(sizeof(WireSampling) == 24, "packed sampling params");

enum : int64_t { kOpBatch = 1, kOpStop = 2 };
// More than this many tokens or sample rows in one step means a corrupt header.
constexpr int64_t kMaxWireCount = int64_t{1} << 28;

}  // namespace

float SampleUniform(uint64_t seed, uint64_t step) {
  const uint64_t h = SplitMix64(SplitMix64(seed) ^ step);
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

int32_t SampleToken(const float* logits, int vocab, const SamplingParams& p) {
  if (vocab <= 0) return -1;
  if (!(p.temperature > 0.0f)) return Argmax(logits, vocab);
  const int32_t top = Argmax(logits, vocab);
  const float max_logit = logits[top];
  if (!std::isfinite(max_logit)) return top;
  std::vector<float> prob(vocab);
  double total = 0.0;  // in id order
  for (int i = 0; i < vocab; ++i) {
    const float x = (logits[i] - max_logit) / p.temperature;
    prob[i] = std::isnan(x) ? 0.0f : std::exp(x);
    total += prob[i];
  }
  const bool cut = p.top_p < 1.0f;
  const double needed = static_cast<double>(p.top_p) * total;
  const double u = SampleUniform(p.seed, p.step);
  // Only a prefix of the descending order is ever needed, and for real models it is
  // short, so the order is built by partial sorts of growing length instead of a full
  // sort of the vocabulary.
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  const auto before = [&](int32_t a, int32_t b) {
    return prob[a] != prob[b] ? prob[a] > prob[b] : a < b;
  };
  size_t k = std::min<size_t>(vocab, 64);
  while (true) {
    std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
    // Without a cutoff the kept mass is `total`; with one it is the running sum at the
    // end of the shortest prefix that reaches top_p * total.
    double acc = 0.0;
    size_t kept_end = cut ? 0 : static_cast<size_t>(vocab);
    double kept_mass = total;
    std::vector<double> cum(k);
    for (size_t j = 0; j < k; ++j) {
      acc += prob[order[j]];
      cum[j] = acc;
      if (cut && acc >= needed) {
        kept_end = j + 1;
        kept_mass = acc;
        break;
      }
    }
    if (cut && kept_end == 0 && k == static_cast<size_t>(vocab)) {
      kept_end = k;  // rounding kept the sum below top_p * total: keep everything
      kept_mass = acc;
    }
    if (kept_end > 0 || !cut) {
      const double target = u * kept_mass;
      const size_t limit = std::min(kept_end, k);
      for (size_t j = 0; j < limit; ++j) {
        if (cum[j] > target) return order[j];
      }
      if (kept_end <= k) return order[kept_end - 1];
    }
    if (k == static_cast<size_t>(vocab)) return order[vocab - 1];
    k = std::min<size_t>(vocab, k * 8);
  }
}

namespace {

// BroadcastBatch's protocol with the root's batch read-only: rank 0 sends `send` (and
// *stop), the others fill `receive` (and *stop).
absl::Status ExchangeBatch(Communicator* comm, const ForwardBatch* send, ForwardBatch* receive,
                           bool* stop) {
  const bool root = comm->rank() == 0;
  int64_t header[3] = {0, 0, 0};
  if (root) {
    if (send->tokens.size() != send->positions.size() ||
        send->tokens.size() != send->slots.size() ||
        send->sample_rows.size() != send->sampling.size()) {
      return absl::InvalidArgumentError("BroadcastBatch: batch arrays disagree in size");
    }
    header[0] = *stop ? kOpStop : kOpBatch;
    header[1] = *stop ? 0 : static_cast<int64_t>(send->tokens.size());
    header[2] = *stop ? 0 : static_cast<int64_t>(send->sample_rows.size());
  }
  if (absl::Status s = comm->BroadcastHost(header, sizeof(header), 0); !s.ok()) return s;
  if (header[0] != kOpBatch && header[0] != kOpStop) {
    return absl::InternalError(absl::StrCat("BroadcastBatch: unknown op ", header[0]));
  }
  if (header[1] < 0 || header[1] > kMaxWireCount || header[2] < 0 || header[2] > kMaxWireCount) {
    return absl::InternalError("BroadcastBatch: corrupt header");
  }
  if (!root) *stop = header[0] == kOpStop;
  if (header[0] == kOpStop) return absl::OkStatus();

  const size_t n = static_cast<size_t>(header[1]);
  const size_t m = static_cast<size_t>(header[2]);
  // One payload: tokens, positions, slots, sample_rows (int32), then the sampling params.
  const size_t ints = 3 * n + m;
  std::vector<uint8_t> payload(ints * 4 + m * sizeof(WireSampling));
  if (root) {
    uint8_t* p = payload.data();
    for (const std::vector<int32_t>* v :
         {&send->tokens, &send->positions, &send->slots, &send->sample_rows}) {
      if (!v->empty()) std::memcpy(p, v->data(), v->size() * 4);
      p += v->size() * 4;
    }
    for (const SamplingParams& s : send->sampling) {
      const WireSampling w{s.temperature, s.top_p, s.seed, s.step};
      std::memcpy(p, &w, sizeof(w));
      p += sizeof(w);
    }
  }
  if (!payload.empty()) {
    if (absl::Status s = comm->BroadcastHost(payload.data(), payload.size(), 0); !s.ok()) {
      return s;
    }
  }
  if (!root) {
    const uint8_t* p = payload.data();
    const auto take = [&p](std::vector<int32_t>* v, size_t count) {
      v->resize(count);
      if (count > 0) std::memcpy(v->data(), p, count * 4);
      p += count * 4;
    };
    take(&receive->tokens, n);
    take(&receive->positions, n);
    take(&receive->slots, n);
    take(&receive->sample_rows, m);
    receive->sampling.resize(m);
    for (size_t i = 0; i < m; ++i) {
      WireSampling w;
      std::memcpy(&w, p, sizeof(w));
      p += sizeof(w);
      receive->sampling[i] = {w.temperature, w.top_p, w.seed, w.step};
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status BroadcastBatch(Communicator* comm, ForwardBatch* batch, bool* stop) {
  return ExchangeBatch(comm, batch, batch, stop);
}

absl::Status SendBatch(Communicator* comm, const ForwardBatch& batch) {
  bool stop = false;
  return ExchangeBatch(comm, &batch, nullptr, &stop);
}

absl::Status SendStop(Communicator* comm) {
  const ForwardBatch empty;
  bool stop = true;
  return ExchangeBatch(comm, &empty, nullptr, &stop);
}

absl::Status FollowSteps(Communicator* comm,
                         const std::function<absl::Status(const ForwardBatch&)>& step) {
  while (true) {
    ForwardBatch batch;
    bool stop = false;
    if (absl::Status s = ExchangeBatch(comm, nullptr, &batch, &stop); !s.ok()) return s;
    if (stop) return absl::OkStatus();
    if (absl::Status s = step(batch); !s.ok()) return s;
  }
}

absl::Status ValidateBatch(const ForwardBatch& b, int vocab_size, int max_slots, int max_seq_len) {
  const size_t n = b.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokens is empty");
  if (b.positions.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("positions has ", b.positions.size(), " entries, tokens ", n));
  }
  if (b.slots.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("slots has ", b.slots.size(), " entries, tokens ", n));
  }
  if (b.sampling.size() != b.sample_rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("sampling has ", b.sampling.size(),
                                                   " entries, sample_rows ",
                                                   b.sample_rows.size()));
  }
  std::vector<int32_t> last(max_slots, -1);
  for (size_t i = 0; i < n; ++i) {
    if (b.tokens[i] < 0 || b.tokens[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("tokens[", i, "] = ", b.tokens[i],
                                                     " is outside the vocabulary of ",
                                                     vocab_size));
    }
    if (b.positions[i] < 0 || b.positions[i] >= max_seq_len) {
      return absl::InvalidArgumentError(absl::StrCat("positions[", i, "] = ", b.positions[i],
                                                     " is outside [0, ", max_seq_len, ")"));
    }
    if (b.slots[i] < 0 || b.slots[i] >= max_slots) {
      return absl::InvalidArgumentError(absl::StrCat("slots[", i, "] = ", b.slots[i],
                                                     " is outside [0, ", max_slots, ")"));
    }
    if (b.positions[i] <= last[b.slots[i]]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "positions[", i, "] = ", b.positions[i], " does not follow position ",
          last[b.slots[i]], " of slot ", b.slots[i], " earlier in the batch"));
    }
    last[b.slots[i]] = b.positions[i];
  }
  for (size_t i = 0; i < b.sample_rows.size(); ++i) {
    if (b.sample_rows[i] < 0 || static_cast<size_t>(b.sample_rows[i]) >= n) {
      return absl::InvalidArgumentError(absl::StrCat("sample_rows[", i, "] = ",
                                                     b.sample_rows[i], " is not a token row"));
    }
    const SamplingParams& s = b.sampling[i];
    if (!(s.temperature >= 0.0f) || !std::isfinite(s.temperature)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling[", i, "].temperature must be finite and >= 0"));
    }
    if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
      return absl::InvalidArgumentError(absl::StrCat("sampling[", i, "].top_p must be in (0, 1]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace shardvec::llm
