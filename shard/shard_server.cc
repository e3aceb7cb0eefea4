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
  grpc::ServerBuilder builder;
  ConfigureServerBuilder(&builder);
  int port = 0;
  builder.AddListeningPort(absl::StrCat(options.host, ":", options.port), grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "error: cannot listen on %s:%d\n", options.host.c_str(), options.port);
    return 1;
  }
  std::printf("shardvec-shard ready on %s:%d\n", options.host.c_str(), port);
  std::fflush(stdout);
  int sig = WaitForTerminationSignal();
  LogInfo("shard %s:%d: signal %d, shutting down", options.host, port, sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}

}  // namespace shardvec::shard
