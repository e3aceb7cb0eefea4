#include "llm/model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>

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

void SampleTokens(const std::vector<const float*>& rows, int vocab,
                  const std::vector<SamplingParams>& params, int32_t* out, int threads) {
  std::vector<size_t> sampled;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] == nullptr) continue;
    if (params[i].temperature > 0.0f) {
      sampled.push_back(i);
    } else {
      out[i] = SampleToken(rows[i], vocab, params[i]);
    }
  }
  if (threads <= 0) {
    // SHARDVEC_SAMPLE_THREADS overrides the default, for tuning runs.
    static const int fixed = [] {
      const char* v = std::getenv("SHARDVEC_SAMPLE_THREADS");
      return v != nullptr ? std::atoi(v) : 0;
    }();
    threads = fixed > 0 ? fixed
                        : static_cast<int>(std::min(16u, std::max(1u, std::thread::hardware_concurrency())));
  }
  const size_t workers = std::min<size_t>(sampled.size(), static_cast<size_t>(threads));
  auto work = [&](size_t w) {
    for (size_t j = w; j < sampled.size(); j += workers) {
      const size_t i = sampled[j];
      out[i] = SampleToken(rows[i], vocab, params[i]);
    }
  };
  std::vector<std::thread> pool;
  for (size_t w = 1; w < workers; ++w) pool.emplace_back(work, w);
  if (workers > 0) work(0);
  for (std::thread& t : pool) t.join();
}

namespace {

// Ids in SampleToken's order (probability descending, id ascending on ties), produced
// lazily: ids are bucketed by the top bits of their probability's float bits (monotonic
// for values >= 0), and each bucket is sorted only when the walk reaches it. A walk that
// stops after a prefix of P ids costs one pass over the vocabulary plus sorting about P
// ids, where a sort of the whole vocabulary would cost V log V.
class DescendingOrder {
 public:
  explicit DescendingOrder(const std::vector<float>& prob) : prob_(prob) {
    const int vocab = static_cast<int>(prob.size());
    std::vector<int32_t> start(kBuckets + 1, 0);
    for (int i = 0; i < vocab; ++i) ++start[Bucket(prob[i]) + 1];
    for (int b = 0; b < kBuckets; ++b) start[b + 1] += start[b];
    bucket_start_ = start;
    ids_.resize(vocab);
    for (int i = 0; i < vocab; ++i) ids_[start[Bucket(prob[i])]++] = i;  // id order within
    next_bucket_ = kBuckets - 1;
  }

  // The id at position j of the order (j < vocab), sorting buckets as needed.
  int32_t At(size_t j) {
    while (j >= order_.size()) {
      const int b = next_bucket_--;
      auto first = ids_.begin() + bucket_start_[b], last = ids_.begin() + bucket_start_[b + 1];
      std::sort(first, last, [this](int32_t a, int32_t c) {
        return prob_[a] != prob_[c] ? prob_[a] > prob_[c] : a < c;
      });
      order_.insert(order_.end(), first, last);
    }
    return order_[j];
  }

 private:
  static constexpr int kShift = 19;  // 8 exponent and 4 mantissa bits (sign 0): 4096 buckets
  static constexpr int kBuckets = 1 << (32 - kShift - 1);
  static int Bucket(float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    return static_cast<int>(u >> kShift);  // v >= 0 and not NaN: sign bit 0
  }

  const std::vector<float>& prob_;
  std::vector<int32_t> bucket_start_, ids_, order_;
  int next_bucket_ = 0;
};

}  // namespace

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
  if (!(p.top_p < 1.0f)) {
    // Everything is kept: the draw walks ids in id order, with the same running sums as
    // `total`, so no order has to be built. u < 1 keeps the target below the last sum.
    const double target = static_cast<double>(SampleUniform(p.seed, p.step)) * total;
    double acc = 0.0;
    int32_t last = top;
    for (int i = 0; i < vocab; ++i) {
      if (prob[i] == 0.0f) continue;
      acc += prob[i];
      last = i;
      if (acc > target) return i;
    }
    return last;
  }
  DescendingOrder order(prob);
  const size_t n = static_cast<size_t>(vocab);
  // The kept prefix [0, kept_end) and its mass: the shortest prefix whose running sum
  // reaches top_p * total (all of it, with its running sum, when rounding keeps the sum
  // below).
  std::vector<double> cum;  // running sums of the walked prefix
  double acc = 0.0;
  auto extend = [&]() {
    acc += prob[order.At(cum.size())];
    cum.push_back(acc);
  };
  const double needed = static_cast<double>(p.top_p) * total;
  while (cum.size() < n) {
    extend();
    if (acc >= needed) break;
  }
  const size_t kept_end = cum.size();
  const double kept_mass = acc;
  // The first kept id whose running sum exceeds u * kept; the last kept id if none does.
  const double target = static_cast<double>(SampleUniform(p.seed, p.step)) * kept_mass;
  for (size_t j = 0; j < kept_end; ++j) {
    if (cum[j] > target) return order.At(j);
  }
  return order.At(kept_end - 1);
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
