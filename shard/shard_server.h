// Runs one shard server in the foreground until SIGINT/SIGTERM.
#ifndef SHARDVEC_SHARD_SHARD_SERVER_H_
#define SHARDVEC_SHARD_SHARD_SERVER_H_

#include <string>
#include <vector>

namespace shardvec::shard {

struct ShardServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port
  // Created if missing; holds the shard's durable state.
  std::string data_dir;
  // Snapshot policy (ShardServiceOptions).
  uint64_t snapshot_after_ops = 500;
  double snapshot_interval_s = 60;
  // CUDA devices for collections created with device GPU (ShardServiceOptions).
  std::vector<int> gpus;
};

// Prints "shardvec-shard ready on HOST:PORT" on stdout once serving. Returns the
// process exit code. The caller must have called InstallTerminationHandler().
int RunShardServer(const ShardServerOptions& options);

}  // namespace shardvec::shard

#endif  // SHARDVEC_SHARD_SHARD_SERVER_H_
