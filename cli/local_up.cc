#include "cli/local_up.h"

#include <signal.h>
#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/process.h"
#include "common/server_util.h"

namespace shardvec::cli {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(60);

int Error(const std::string& msg) {
  std::fprintf(stderr, "error: %s\n", msg.c_str());
  return 1;
}

// Waits for SIGINT/SIGTERM while watching the children; returns early, with a
// message, if the router exits on its own.
void Supervise(ChildProcess* router, const std::vector<std::unique_ptr<ChildProcess>>& shards) {
  std::vector<bool> reported(shards.size(), false);
  while (true) {
    if (int sig = WaitForTerminationSignalFor(absl::Seconds(1)); sig != 0) {
      LogInfo("local: signal %d, stopping the cluster", sig);
      return;
    }
    if (!router->Running()) {
      LogInfo("local: the router exited (status %d); stopping the cluster", router->Wait(absl::ZeroDuration()));
      return;
    }
    for (size_t i = 0; i < shards.size(); ++i) {
      if (!reported[i] && !shards[i]->Running()) {
        reported[i] = true;
        LogInfo("local: shard-%d exited (status %d); the router reports it unavailable", i,
                shards[i]->Wait(absl::ZeroDuration()));
      }
    }
  }
}

}  // namespace

int LocalUp(const LocalUpOptions& o) {
  if (o.shards < 1 || o.shards > 64) return Error("--shards: must be in [1, 64]");
  if (o.port < 1 || o.port > 65535 - o.shards) return Error("--port: out of range");
  std::string dir = o.data_dir;
  if (dir.empty()) {
    char tmpl[] = "/tmp/shardvec-local-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return Error("cannot create a temporary --data-dir");
    dir = tmpl;
  }
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(dir) / "logs", ec);
  if (ec) return Error(absl::StrCat("--data-dir ", dir, ": ", ec.message()));
  const std::string self = SelfExecutable();
  const std::string logs = (std::filesystem::path(dir) / "logs").string();
  const int base = o.shard_base_port > 0 ? o.shard_base_port : o.port + 1;

  std::vector<std::unique_ptr<ChildProcess>> shards;
  std::vector<std::string> addresses;
  for (int i = 0; i < o.shards; ++i) {
    const std::string id = absl::StrCat("shard-", i);
    std::vector<std::string> args = {self, "shard", "serve", "--port", std::to_string(base + i), "--data-dir",
                                     (std::filesystem::path(dir) / id).string()};
    if (!o.gpus.empty()) args.insert(args.end(), {"--gpus", o.gpus});
    auto child = ChildProcess::Start(args, absl::StrCat(logs, "/", id, ".log"));
    if (!child.ok()) return Error(std::string(child.status().message()));
    shards.push_back(*std::move(child));
    addresses.push_back(absl::StrCat("127.0.0.1:", base + i));
  }
  for (int i = 0; i < o.shards; ++i) {
    absl::StatusOr<std::string> line = shards[i]->WaitForLine("ready", kStartTimeout);
    if (!line.ok()) {
      return Error(absl::StrCat("shard-", i, " on ", addresses[i], " did not start (", line.status().message(),
                                "); see ", logs, "/shard-", i, ".log"));
    }
  }
  std::vector<std::string> router_args = {self, "router", "serve", "--port", std::to_string(o.port), "--data-dir",
                                          (std::filesystem::path(dir) / "router").string(), "--shards",
                                          absl::StrJoin(addresses, ",")};
  std::unique_ptr<ChildProcess> generator;
  std::string generator_address;
  if (!o.generator_model.empty()) {
    const int port = base + o.shards;
    generator_address = absl::StrCat("127.0.0.1:", port);
    auto child = ChildProcess::Start({self, "generator", "serve", "--model", o.generator_model, "--device",
                                      o.generator_device, "--tp", std::to_string(o.generator_tp), "--port",
                                      std::to_string(port)},
                                     absl::StrCat(logs, "/generator.log"));
    if (!child.ok()) return Error(std::string(child.status().message()));
    generator = *std::move(child);
    // Loading a model can take a while; the router can start meanwhile.
    router_args.insert(router_args.end(), {"--generator", generator_address});
  }
  auto router = ChildProcess::Start(router_args, absl::StrCat(logs, "/router.log"));
  if (!router.ok()) return Error(std::string(router.status().message()));
  if (absl::StatusOr<std::string> line = (*router)->WaitForLine("ready", kStartTimeout); !line.ok()) {
    return Error(absl::StrCat("the router on 127.0.0.1:", o.port, " did not start (", line.status().message(),
                              "); see ", logs, "/router.log"));
  }
  if (generator != nullptr) {
    if (absl::StatusOr<std::string> line = generator->WaitForLine("ready", absl::Minutes(10)); !line.ok()) {
      return Error(absl::StrCat("the generator on ", generator_address, " did not start (", line.status().message(),
                                "); see ", logs, "/generator.log"));
    }
  }
  std::printf("shardvec local cluster ready: router 127.0.0.1:%d, %d shards (%s)%s, data %s\n", o.port, o.shards,
              absl::StrJoin(addresses, ",").c_str(),
              generator != nullptr ? absl::StrCat(", generator ", generator_address).c_str() : "", dir.c_str());
  std::fflush(stdout);

  Supervise(router->get(), shards);
  (*router)->Stop();
  if (generator != nullptr) generator->Stop();
  // Shards write index snapshots on the way down: give them time (at most a minute).
  for (auto& s : shards) s->Signal(SIGTERM);
  for (auto& s : shards) s->Stop(absl::Minutes(1));
  std::printf("shardvec local cluster stopped\n");
  return 0;
}

}  // namespace shardvec::cli
