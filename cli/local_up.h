// `shardvec local up`: a router and N shards as separate processes on loopback.
#ifndef SHARDVEC_CLI_LOCAL_UP_H_
#define SHARDVEC_CLI_LOCAL_UP_H_

#include <string>

namespace shardvec::cli {

struct LocalUpOptions {
  int shards = 3;
  int port = 7000;             // the router's; shards take the next ports
  int shard_base_port = 0;     // 0: port + 1
  std::string data_dir;        // empty: a new temporary directory
  std::string gpus;            // each shard's --gpus; empty: the shard's default
  // A checkpoint folder: also start `shardvec generator serve` on the port after the
  // shards' and let the router answer Rag calls with it.
  std::string generator_model;
  std::string generator_device = "cpu";
  int generator_tp = 1;
};

// Starts the shards, then the router; prints a line containing "ready"; stops every
// process on SIGINT/SIGTERM. Returns the exit code.
int LocalUp(const LocalUpOptions& options);

}  // namespace shardvec::cli

#endif  // SHARDVEC_CLI_LOCAL_UP_H_
