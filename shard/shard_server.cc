#include "shard/shard_server.h"

#include <cstdio>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/server_util.h"
#include "shard/shard_service.h"

namespace shardvec::shard {

int RunShardServer(const ShardServerOptions& options) {
  if (!options.data_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(options.data_dir, ec);
    if (ec) {
      std::fprintf(stderr, "error: --data-dir %s: %s\n", options.data_dir.c_str(), ec.message().c_str());
      return 1;
    }
  }
  ShardService service;
  return ServeUntilSignal("shardvec-shard", options.host, options.port, &service);
}

}  // namespace shardvec::shard
