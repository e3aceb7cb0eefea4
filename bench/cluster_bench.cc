// Issue-3 measurements on a real local cluster (shardvec local up), printed as tables:
// bulk-load rate (Flat and IVF4096,Flat, 3 shards), restart time with and without an
// index snapshot, slot-move time with search latency before and during the move, and
// the router's RSS while a long stream passes through it.
//
//   bazel build -c opt //bench:cluster_bench //cli:shardvec
//   cd bazel-bin/bench && ./cluster_bench --shardvec ../cli/shardvec --rows 1000000
#include <dirent.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/process.h"
#include "common/server_util.h"
#include "common/stats.h"
#include "proto/shardvec.grpc.pb.h"

namespace shardvec::bench {
namespace {

std::string g_shardvec;
int g_port = 0;

int NextPort() { return g_port += 20; }

// Runs `shardvec args...`; returns its stdout, the time it took, and the time until
// a stdout line containing `mark` (or the end).
struct Run {
  int status = -1;
  std::string out;
  double seconds = 0;
  double mark_seconds = 0;
};

Run Shardvec(const std::vector<std::string>& args, const std::string& mark = "") {
  std::vector<std::string> argv = {g_shardvec};
  argv.insert(argv.end(), args.begin(), args.end());
  Run run;
  const absl::Time start = absl::Now();
  auto child = ChildProcess::Start(argv, "/dev/null");
  if (!child.ok()) return run;
  if (!mark.empty()) {
    absl::StatusOr<std::string> line = (*child)->WaitForLine(mark, absl::Hours(1));
    run.mark_seconds = absl::ToDoubleSeconds(absl::Now() - start);
    if (line.ok()) run.out = *line + "\n";
  }
  run.out += (*child)->ReadRest(absl::Hours(1));
  run.status = (*child)->Wait(absl::Minutes(1));
  run.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (mark.empty()) run.mark_seconds = run.seconds;
  return run;
}

struct Cluster {
  std::unique_ptr<ChildProcess> process;
  std::string router;
  double start_seconds = 0;
};

Cluster Up(int shards, const std::string& dir, int port) {
  Cluster c;
  const absl::Time start = absl::Now();
  auto child = ChildProcess::Start({g_shardvec, "local", "up", "--shards", std::to_string(shards), "--port",
                                    std::to_string(port), "--data-dir", dir},
                                   "/dev/null");
  if (!child.ok() || !(*child)->WaitForLine("ready", absl::Minutes(30)).ok()) {
    std::fprintf(stderr, "local up failed\n");
    std::exit(1);
  }
  c.start_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  c.process = *std::move(child);
  c.router = absl::StrCat("127.0.0.1:", port);
  return c;
}

// RSS in MiB of the process whose command line contains `needle`.
double RssMiB(const std::string& needle) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::ifstream cmd(entry.path() / "cmdline");
    std::string line;
    std::getline(cmd, line, '\0');
    std::string all = line, part;
    while (std::getline(cmd, part, '\0')) all += " " + part;
    if (all.find(needle) == std::string::npos) continue;
    std::ifstream status(entry.path() / "status");
    std::string l;
    while (std::getline(status, l)) {
      if (l.rfind("VmRSS:", 0) == 0) return std::stod(l.substr(6)) / 1024.0;
    }
  }
  return 0;
}

void LoadRates(const std::string& base, int64_t rows) {
  std::printf("\n## Bulk load, %lld x 128 float32 from .fvecs, 3 local shards\n\n", static_cast<long long>(rows));
  std::printf("| index | training (s) | load after training (s) | vectors/s after training | total (s) |\n");
  std::printf("|---|---:|---:|---:|---:|\n");
  for (const std::string index : {"Flat", "IVF4096,Flat"}) {
    const std::string dir = absl::StrCat("/tmp/shardvec-bench-load-", getpid(), "-", index.size());
    std::filesystem::remove_all(dir);
    Cluster c = Up(3, dir, NextPort());
    Shardvec({"--router", c.router, "collection", "create", "b", "--dim", "128", "--index", index});
    Run r = Shardvec({"--router", c.router, "ingest", "b", base}, index == "Flat" ? "" : "trained");
    const double train = index == "Flat" ? 0 : r.mark_seconds;
    const double load = r.seconds - train;
    std::printf("| %s | %.1f | %.1f | %.0f | %.1f |\n", index.c_str(), train, load, rows / load, r.seconds);
    std::fflush(stdout);
    c.process->Stop(absl::Minutes(5));
    std::filesystem::remove_all(dir);
  }
}

void RestartTimes(const std::string& base, int64_t rows, const std::string& index) {
  std::printf("\n## Restart of a 3-shard cluster holding %lld x 128 (%s)\n\n", static_cast<long long>(rows),
              index.c_str());
  std::printf("| start | seconds until ready |\n|---|---:|\n");
  const std::string dir = absl::StrCat("/tmp/shardvec-bench-restart-", getpid());
  std::filesystem::remove_all(dir);
  const int port = NextPort();
  {
    Cluster c = Up(3, dir, port);
    Shardvec({"--router", c.router, "collection", "create", "b", "--dim", "128", "--index", index});
    Shardvec({"--router", c.router, "ingest", "b", base});
    c.process->Stop(absl::Minutes(5));  // SIGTERM: each shard writes its snapshot
  }
  {
    Cluster c = Up(3, dir, port);
    std::printf("| with snapshots | %.2f |\n", c.start_seconds);
    c.process->Signal(SIGKILL);  // no shutdown snapshot this time
    c.process->Wait(absl::Minutes(1));
  }
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (entry.path().extension() == ".snap") std::filesystem::remove(entry.path());
  }
  {
    Cluster c = Up(3, dir, port);
    std::printf("| without snapshots (rebuild from RocksDB) | %.2f |\n", c.start_seconds);
    c.process->Stop(absl::Minutes(5));
  }
  std::fflush(stdout);
  std::filesystem::remove_all(dir);
}

// Batch-1 search latency while `busy` runs.
std::vector<double> Latencies(const std::string& router, const std::atomic<bool>& stop) {
  auto stub = v1::ShardVec::NewStub(MakeChannel(router));
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<double> lat;
  while (!stop.load()) {
    v1::SearchRequest req;
    req.set_collection("b");
    req.set_k(10);
    v1::Vector* q = req.add_queries();
    for (int j = 0; j < 128; ++j) q->add_values(normal(rng));
    v1::SearchResponse resp;
    grpc::ClientContext ctx;
    const absl::Time t0 = absl::Now();
    if (stub->Search(&ctx, req, &resp).ok()) lat.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
  }
  return lat;
}

void MoveTime(const std::string& base, int64_t rows) {
  std::printf("\n## Adding a shard to a 1-shard cluster of %lld x 128 (Flat): half the slots move\n\n",
              static_cast<long long>(rows));
  const std::string dir = absl::StrCat("/tmp/shardvec-bench-move-", getpid());
  std::filesystem::remove_all(dir);
  Cluster c = Up(1, dir, NextPort());
  Shardvec({"--router", c.router, "collection", "create", "b", "--dim", "128"});
  Shardvec({"--router", c.router, "ingest", "b", base});
  const int extra_port = NextPort();
  auto extra = ChildProcess::Start({g_shardvec, "shard", "serve", "--port", std::to_string(extra_port), "--data-dir",
                                    dir + "/extra"},
                                   "/dev/null");
  (*extra)->WaitForLine("ready", absl::Minutes(1)).IgnoreError();
  std::atomic<bool> stop{false};
  std::vector<double> before, during;
  std::thread probe([&] { before = Latencies(c.router, stop); });
  absl::SleepFor(absl::Seconds(5));
  stop = true;
  probe.join();
  stop = false;
  probe = std::thread([&] { during = Latencies(c.router, stop); });
  Run r = Shardvec({"--router", c.router, "shard", "add", absl::StrCat("127.0.0.1:", extra_port)});
  stop = true;
  probe.join();
  std::printf("%s\n", r.out.c_str());
  std::printf("| phase | searches | p50 ms | p99 ms |\n|---|---:|---:|---:|\n");
  std::printf("| before the move (5 s) | %zu | %.2f | %.2f |\n", before.size(), Percentile(before, 50),
              Percentile(before, 99));
  std::printf("| during the move (%.1f s) | %zu | %.2f | %.2f |\n", r.seconds, during.size(), Percentile(during, 50),
              Percentile(during, 99));
  std::fflush(stdout);
  (*extra)->Stop();
  c.process->Stop(absl::Minutes(5));
  std::filesystem::remove_all(dir);
}

void RouterRss(const std::string& file, int64_t rows) {
  std::printf("\n## Router RSS while %lld x 16 vectors stream through `shardvec ingest` (3 shards, Flat)\n\n",
              static_cast<long long>(rows));
  const std::string dir = absl::StrCat("/tmp/shardvec-bench-rss-", getpid());
  std::filesystem::remove_all(dir);
  const int port = NextPort();
  Cluster c = Up(3, dir, port);
  Shardvec({"--router", c.router, "collection", "create", "b", "--dim", "16"});
  std::atomic<bool> done{false};
  std::vector<std::pair<double, double>> samples;
  const std::string needle = absl::StrCat("router serve --port ", port);
  std::thread sampler([&] {
    const absl::Time start = absl::Now();
    while (!done.load()) {
      samples.push_back({absl::ToDoubleSeconds(absl::Now() - start), RssMiB(needle)});
      absl::SleepFor(absl::Seconds(2));
    }
  });
  Run r = Shardvec({"--router", c.router, "ingest", "b", file});
  done = true;
  sampler.join();
  std::printf("%s\n| seconds | router RSS MiB |\n|---:|---:|\n", r.out.c_str());
  for (size_t i = 0; i < samples.size(); i += std::max<size_t>(1, samples.size() / 12)) {
    std::printf("| %.0f | %.1f |\n", samples[i].first, samples[i].second);
  }
  std::fflush(stdout);
  c.process->Stop(absl::Minutes(5));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shardvec::bench

int main(int argc, char** argv) {
  using namespace shardvec::bench;
  CLI::App app{"cluster_bench: load, restart, move and router-memory measurements"};
  int64_t rows = 1000000, stream_rows = 10000000;
  std::string only;
  g_shardvec = "cli/shardvec";
  app.add_option("--shardvec", g_shardvec, "Path of the shardvec binary")->capture_default_str();
  app.add_option("--rows", rows, "Rows of the 128-d data set")->capture_default_str();
  app.add_option("--stream-rows", stream_rows, "Rows of the 16-d stream for the RSS run")->capture_default_str();
  app.add_option("--only", only, "load, restart, move or rss");
  CLI11_PARSE(app, argc, argv);
  g_shardvec = std::filesystem::absolute(g_shardvec).string();
  g_port = 23000 + static_cast<int>(getpid() % 1000) * 20;
  const std::string base = absl::StrCat("/tmp/shardvec-bench-", rows, ".fvecs");
  if (!std::filesystem::exists(base)) {
    Shardvec({"gen", base, "--rows", std::to_string(rows), "--dim", "128", "--clusters", "2000"});
  }
  if (only.empty() || only == "load") LoadRates(base, rows);
  if (only.empty() || only == "restart") {
    RestartTimes(base, rows, "Flat");
    RestartTimes(base, rows, "IVF1024,Flat");
  }
  if (only.empty() || only == "move") MoveTime(base, rows);
  if (only.empty() || only == "rss") {
    const std::string stream = absl::StrCat("/tmp/shardvec-bench-stream-", stream_rows, ".fvecs");
    if (!std::filesystem::exists(stream)) {
      Shardvec({"gen", stream, "--rows", std::to_string(stream_rows), "--dim", "16", "--clusters", "1000"});
    }
    RouterRss(stream, stream_rows);
  }
  return 0;
}
