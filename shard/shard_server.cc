#include "shard/shard_server.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/server_util.h"
#include "shard/shard_service.h"

namespace shardvec::shard {

int RunShardServer(const ShardServerOptions& options) {
  ShardServiceOptions service_options;
  service_options.data_dir = options.data_dir;
  service_options.snapshot_after_ops = options.snapshot_after_ops;
  service_options.snapshot_interval = absl::Seconds(options.snapshot_interval_s);
  service_options.gpus = options.gpus;
  absl::StatusOr<std::unique_ptr<ShardService>> service = ShardService::Open(service_options);
  if (!service.ok()) {
    std::fprintf(stderr, "error: %s\n", service.status().ToString().c_str());
    return 1;
  }
  int rc = ServeUntilSignal("shardvec-shard", options.host, options.port, service->get());
  // A snapshot now makes the next start fast; the store alone is enough for safety.
  if (absl::Status s = (*service)->SnapshotAll(); !s.ok()) LogInfo("shutdown snapshot failed: %s", s.ToString());
  return rc;
}

}  // namespace shardvec::shard
