// Helpers for the index backends' tests: in-memory ByteSink / ByteSource for snapshots,
// and random ids.
#ifndef SHARDVEC_INDEX_TEST_UTIL_H_
#define SHARDVEC_INDEX_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "index/index.h"

namespace shardvec::index {

class StringSink final : public ByteSink {
 public:
  absl::Status Write(const void* data, size_t size) override {
    bytes.append(static_cast<const char*>(data), size);
    return absl::OkStatus();
  }
  std::string bytes;
};

class StringSource final : public ByteSource {
 public:
  explicit StringSource(std::string b) : bytes(std::move(b)) {}
  absl::Status Read(void* data, size_t size) override {
    if (pos + size > bytes.size()) return absl::DataLossError("premature end");
    std::copy(bytes.data() + pos, bytes.data() + pos + size, static_cast<char*>(data));
    pos += size;
    return absl::OkStatus();
  }
  std::string bytes;
  size_t pos = 0;
};

// Distinct ids spread over the whole uint64 range (about half >= 2^63, which FAISS
// sees as negative labels), never kNoId.
inline std::vector<uint64_t> RandomIds(int64_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  absl::flat_hash_set<uint64_t> seen;
  std::vector<uint64_t> ids;
  while (static_cast<int64_t>(ids.size()) < n) {
    const uint64_t id = rng();
    if (id != kNoId && seen.insert(id).second) ids.push_back(id);
  }
  return ids;
}

}  // namespace shardvec::index

#endif  // SHARDVEC_INDEX_TEST_UTIL_H_
