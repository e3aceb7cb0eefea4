// In-memory ByteSink / ByteSource for snapshot tests of the index backends.
#ifndef SHARDVEC_INDEX_TEST_UTIL_H_
#define SHARDVEC_INDEX_TEST_UTIL_H_

#include <algorithm>
#include <string>
#include <utility>

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

}  // namespace shardvec::index

#endif  // SHARDVEC_INDEX_TEST_UTIL_H_
