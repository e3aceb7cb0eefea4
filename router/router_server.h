// Runs the router in the foreground until SIGINT/SIGTERM.
#ifndef SHARDVEC_ROUTER_ROUTER_SERVER_H_
#define SHARDVEC_ROUTER_ROUTER_SERVER_H_

#include <string>
#include <vector>

namespace shardvec::router {

struct RouterServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port
  // Holds cluster_map.textproto. Empty: the map lives in memory only.
  std::string data_dir;
  // Shard addresses for a new cluster; ignored when data_dir already holds a map.
  std::vector<std::string> shards;
  // RouterOptions::gpu_merge_min_batch.
  int gpu_merge_min_batch = 1024;
  // RouterOptions::generator_address (HOST:PORT of a shardvec-generator).
  std::string generator;
};

// Prints "shardvec-router ready on HOST:PORT" on stdout once serving. Returns the
// process exit code. The caller must have called InstallTerminationHandler().
int RunRouterServer(const RouterServerOptions& options);

}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_ROUTER_SERVER_H_
