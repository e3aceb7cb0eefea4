#include "llm/comm.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace shardvec::llm {

size_t CommTypeBytes(CommType t) {
  switch (t) {
    case CommType::kFloat32:
    case CommType::kInt32:
      return 4;
    case CommType::kBFloat16:
      return 2;
    case CommType::kUInt8:
      return 1;
  }
  return 0;
}

namespace {

// What the ranks of one collective publish to each other. A rank writes only its own
// entry, before the first barrier of a collective, and every read of other entries
// happens between that barrier and the last one, so entries are never read while being
// rewritten by the next collective.
struct GroupState {
  struct Entry {
    const void* send = nullptr;
    void* recv = nullptr;
    const void* partial = nullptr;  // AllReduceSum: this rank's summed chunk
    size_t count = 0;
    CommType type = CommType::kFloat32;
    int root = 0;
    int op = 0;
  };

  explicit GroupState(int n) : size(n), entries(n) {}

  // Generation-counted barrier: the last rank to arrive opens the current generation;
  // waiters wake when the generation moves on, so a fast rank re-entering the next
  // barrier cannot be confused with the previous one.
  void Barrier() {
    std::unique_lock<std::mutex> lock(mu);
    const uint64_t gen = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    cv.wait(lock, [&] { return generation != gen; });
  }

  const int size;
  std::vector<Entry> entries;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
};

enum Op { kAllReduce = 1, kAllGather, kBroadcast };

class InProcessComm : public Communicator {
 public:
  InProcessComm(GroupState* shared, int rank) : shared_(shared), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return shared_->size; }

  absl::Status AllReduceSum(void* data, size_t count, CommType type, void*) override {
    if (type == CommType::kBFloat16) {
      return absl::UnimplementedError("InProcessGroup: AllReduceSum of bfloat16 on the host");
    }
    if (size() == 1) return absl::OkStatus();
    // Rank r sums chunk r over all ranks, in rank order (so every element's sum is the
    // same floating-point expression on every rank); then every rank copies all chunks.
    const int n = size();
    const size_t chunk = (count + n - 1) / n;
    const size_t begin = std::min(count, chunk * rank_);
    const size_t end = std::min(count, begin + chunk);
    partial_.resize((end - begin) * 4);
    auto& me = shared_->entries[rank_];
    me = {};
    me.send = data;
    me.count = count;
    me.type = type;
    me.op = kAllReduce;
    me.partial = partial_.data();
    shared_->Barrier();
    if (absl::Status s = CheckAgreement(); !s.ok()) {
      shared_->Barrier();
      return s;
    }
    if (type == CommType::kFloat32) {
      Sum<float>(begin, end);
    } else if (type == CommType::kInt32) {
      Sum<int32_t>(begin, end);
    } else {
      Sum<uint8_t>(begin, end);
    }
    shared_->Barrier();  // all partial sums are ready
    const size_t es = CommTypeBytes(type);
    for (int r = 0; r < n; ++r) {
      const size_t b = std::min(count, chunk * r);
      const size_t e = std::min(count, b + chunk);
      if (e > b) {
        std::memcpy(static_cast<uint8_t*>(data) + b * es, shared_->entries[r].partial,
                    (e - b) * es);
      }
    }
    shared_->Barrier();  // nobody reads partial_ any more
    return absl::OkStatus();
  }

  absl::Status AllGather(const void* send, void* recv, size_t count, CommType type,
                         void*) override {
    const size_t bytes = count * CommTypeBytes(type);
    if (size() == 1) {
      if (bytes > 0 && send != recv) std::memmove(recv, send, bytes);
      return absl::OkStatus();
    }
    auto& me = shared_->entries[rank_];
    me = {};
    me.send = send;
    me.count = count;
    me.type = type;
    me.op = kAllGather;
    shared_->Barrier();
    if (absl::Status s = CheckAgreement(); !s.ok()) {
      shared_->Barrier();
      return s;
    }
    // A rank's own send may alias its slot in recv (in-place gather), so other ranks'
    // slots are written from their buffers and our own only when it is elsewhere.
    for (int r = 0; r < size(); ++r) {
      uint8_t* dst = static_cast<uint8_t*>(recv) + r * bytes;
      if (shared_->entries[r].send != dst) std::memcpy(dst, shared_->entries[r].send, bytes);
    }
    shared_->Barrier();
    return absl::OkStatus();
  }

  absl::Status Broadcast(void* data, size_t count, CommType type, int root, void*) override {
    if (root < 0 || root >= size()) {
      return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root, " is not a rank"));
    }
    if (size() == 1) return absl::OkStatus();
    auto& me = shared_->entries[rank_];
    me = {};
    me.send = data;
    me.count = count;
    me.type = type;
    me.root = root;
    me.op = kBroadcast;
    shared_->Barrier();
    if (absl::Status s = CheckAgreement(); !s.ok()) {
      shared_->Barrier();
      return s;
    }
    if (rank_ != root) {
      std::memcpy(data, shared_->entries[root].send, count * CommTypeBytes(type));
    }
    shared_->Barrier();
    return absl::OkStatus();
  }

  absl::Status BroadcastHost(void* data, size_t bytes, int root) override {
    return Broadcast(data, bytes, CommType::kUInt8, root, nullptr);
  }

 private:
  // Every rank sees the same entries, so every rank reaches the same verdict and the
  // group stays in step even when a caller passed mismatched arguments.
  absl::Status CheckAgreement() const {
    const auto& e0 = shared_->entries[0];
    for (int r = 1; r < size(); ++r) {
      const auto& e = shared_->entries[r];
      if (e.op != e0.op || e.count != e0.count || e.type != e0.type || e.root != e0.root) {
        return absl::InvalidArgumentError(absl::StrCat("InProcessGroup: rank ", r,
                                                       " called a different collective or count (",
                                                       e.count, ") than rank 0 (", e0.count, ")"));
      }
    }
    return absl::OkStatus();
  }

  template <typename T>
  void Sum(size_t begin, size_t end) {
    T* out = reinterpret_cast<T*>(partial_.data());
    const auto& entries = shared_->entries;
    const T* first = static_cast<const T*>(entries[0].send);
    for (size_t i = begin; i < end; ++i) out[i - begin] = first[i];
    for (int r = 1; r < size(); ++r) {
      const T* src = static_cast<const T*>(entries[r].send);
      for (size_t i = begin; i < end; ++i) out[i - begin] += src[i];
    }
  }

  GroupState* shared_;
  const int rank_;
  std::vector<uint8_t> partial_;  // 4 bytes per element covers every host type
};

}  // namespace

struct InProcessGroup::Shared {
  explicit Shared(int n) : state(n) {}
  GroupState state;
};

InProcessGroup::InProcessGroup(int size) : shared_(new Shared(std::max(1, size))) {
  for (int r = 0; r < shared_->state.size; ++r) {
    ranks_.push_back(std::make_unique<InProcessComm>(&shared_->state, r));
  }
}

InProcessGroup::~InProcessGroup() = default;

Communicator* InProcessGroup::Get(int rank) {
  return rank >= 0 && rank < shared_->state.size ? ranks_[rank].get() : nullptr;
}

int InProcessGroup::size() const { return shared_->state.size; }

}  // namespace shardvec::llm
