// The project's one logging call: a timestamped line on stderr.
//   LogInfo("shard %s listening on %s", id, address);
#ifndef SHARDVEC_COMMON_LOG_H_
#define SHARDVEC_COMMON_LOG_H_

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace shardvec {

template <typename... Args>
void LogInfo(const absl::FormatSpec<Args...>& format, const Args&... args) {
  std::string line = absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%E3S ", absl::Now(), absl::UTCTimeZone()),
                                  absl::StrFormat(format, args...), "\n");
  std::fputs(line.c_str(), stderr);
}

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_LOG_H_
