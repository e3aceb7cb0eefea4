#include "router/router_server.h"

#include <cstdio>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/server_util.h"
#include "router/cluster_map.h"
#include "router/router_service.h"

namespace shardvec::router {
namespace {

absl::StatusOr<cluster::ClusterMap> LoadOrCreateMap(const RouterServerOptions& options,
                                                    std::string* map_path) {
  if (options.data_dir.empty()) {
    if (options.shards.empty()) return absl::InvalidArgumentError("--shards: at least one shard address");
    return InitialMap(options.shards);
  }
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("--data-dir ", options.data_dir, ": ", ec.message()));
  *map_path = (std::filesystem::path(options.data_dir) / "cluster_map.textproto").string();
  if (std::filesystem::exists(*map_path)) {
    absl::StatusOr<cluster::ClusterMap> map = LoadMap(*map_path);
    if (map.ok()) LogInfo("loaded cluster map %s (epoch %d)", *map_path, map->epoch());
    return map;
  }
  if (options.shards.empty()) return absl::InvalidArgumentError("--shards: at least one shard address");
  cluster::ClusterMap map = InitialMap(options.shards);
  if (absl::Status s = ValidateMap(map); !s.ok()) return s;
  if (absl::Status s = SaveMap(*map_path, map); !s.ok()) return s;
  LogInfo("new cluster map %s with shards %s", *map_path, absl::StrJoin(options.shards, ","));
  return map;
}

}  // namespace

int RunRouterServer(const RouterServerOptions& options) {
  RouterOptions service_options;
  service_options.gpu_merge_min_batch = options.gpu_merge_min_batch;
  service_options.generator_address = options.generator;
  absl::StatusOr<cluster::ClusterMap> map = LoadOrCreateMap(options, &service_options.map_path);
  if (map.ok()) {
    if (absl::Status s = ValidateMap(*map); !s.ok()) map = s;
  }
  if (!map.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(map.status().message()).c_str());
    return 1;
  }
  RouterService service(*std::move(map), service_options);
  if (absl::Status s = service.LoadEmbedderTables(); !s.ok()) {
    LogInfo("warning: text requests to these collections will fail: %s", s.message());
  }
  if (absl::Status s = service.SyncCollectionsToShards(); !s.ok()) {
    LogInfo("warning: not every shard has every collection yet: %s", s.ToString());
  }
  if (absl::Status s = service.ResumeMigrations(); !s.ok()) {
    LogInfo("warning: an interrupted slot move could not be finished yet: %s", s.ToString());
  }
  return ServeUntilSignal("shardvec-router", options.host, options.port, &service);
}

}  // namespace shardvec::router
