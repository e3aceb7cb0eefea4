#include "tests/test_cluster.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/server_util.h"

namespace shardvec::testing {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(60);

// "... ready on 127.0.0.1:PORT" -> "127.0.0.1:PORT"
std::string AddressOf(const std::string& ready_line) { return ready_line.substr(ready_line.rfind(' ') + 1); }

}  // namespace

bool PortFree(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

grpc::Status CreateCollection(v1::ShardVec::Stub* stub, const std::string& name, int dim, const std::string& index,
                              v1::Metric metric) {
  v1::CreateCollectionRequest req;
  req.mutable_spec()->set_name(name);
  req.mutable_spec()->set_dim(dim);
  req.mutable_spec()->set_metric(metric);
  req.mutable_spec()->set_index_spec(index);
  v1::CreateCollectionResponse resp;
  grpc::ClientContext ctx;
  return stub->CreateCollection(&ctx, req, &resp);
}

v1::UpsertRequest MakeUpsert(const std::string& collection, const FloatMatrix& m, uint64_t first_id) {
  v1::UpsertRequest req;
  req.set_collection(collection);
  for (int64_t i = 0; i < m.rows; ++i) {
    v1::Record* r = req.add_records();
    r->set_id(first_id + static_cast<uint64_t>(i));
    r->mutable_vector()->Add(m.row(i), m.row(i) + m.dim);
  }
  return req;
}

std::string ShardvecBinary() {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  if (srcdir != nullptr) {
    std::string path = absl::StrCat(srcdir, "/shardvec/cli/shardvec");
    if (std::filesystem::exists(path)) return path;
  }
  return std::filesystem::absolute("cli/shardvec").string();
}

std::string TestDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  std::filesystem::path dir = std::filesystem::path(tmp != nullptr ? tmp : "/tmp") / name;
  std::filesystem::create_directories(dir);
  return dir.string();
}

CliResult RunShardvec(const std::vector<std::string>& args, absl::Duration timeout) {
  static int counter = 0;
  const std::string err_path = absl::StrCat(TestDir("cli"), "/stderr-", ::getpid(), "-", counter++);
  std::vector<std::string> argv = {ShardvecBinary()};
  argv.insert(argv.end(), args.begin(), args.end());
  CliResult result;
  auto child = ChildProcess::Start(argv, err_path);
  if (!child.ok()) {
    result.err = child.status().ToString();
    return result;
  }
  result.out = (*child)->ReadRest(timeout);
  int status = (*child)->Wait(absl::Seconds(10));
  if (status == -1) status = (*child)->Stop();
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream err(err_path);
  std::stringstream ss;
  ss << err.rdbuf();
  result.err = ss.str();
  return result;
}

int FreePortRange(int count) {
  std::mt19937 rng(static_cast<uint32_t>(::getpid()) * 7919u + static_cast<uint32_t>(absl::ToUnixNanos(absl::Now())));
  for (int attempt = 0; attempt < 200; ++attempt) {
    int base = 20000 + static_cast<int>(rng() % 30000);
    bool all = true;
    for (int i = 0; i < count && all; ++i) all = PortFree(base + i);
    if (all) return base;
  }
  return -1;
}

FloatMatrix RandomVectors(int64_t rows, int dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  FloatMatrix m{rows, dim, std::vector<float>(static_cast<size_t>(rows) * dim)};
  for (float& x : m.data) x = normal(rng);
  return m;
}

absl::StatusOr<std::unique_ptr<ChildProcess>> TestCluster::StartShard(int i, const std::string& port) const {
  std::vector<std::string> argv = {ShardvecBinary(), "shard", "serve", "--port", port, "--data-dir", shard_dirs_[i]};
  argv.insert(argv.end(), shard_args_.begin(), shard_args_.end());
  return ChildProcess::Start(argv, absl::StrCat(data_dir_, "/shard-", i, ".log"));
}

absl::StatusOr<std::unique_ptr<TestCluster>> TestCluster::Start(int num_shards, const std::string& data_dir,
                                                                const std::vector<std::string>& shard_args,
                                                                const std::vector<std::string>& router_args) {
  std::unique_ptr<TestCluster> c(new TestCluster());
  c->router_args_ = router_args;
  const std::string binary = ShardvecBinary();
  c->data_dir_ = data_dir;
  c->shard_args_ = shard_args;
  std::filesystem::create_directories(data_dir);
  for (int i = 0; i < num_shards; ++i) {
    c->shard_dirs_.push_back(absl::StrCat(data_dir, "/shard-", i));
    auto child = c->StartShard(i, "0");
    if (!child.ok()) return child.status();
    c->shards_.push_back(*std::move(child));
  }
  for (auto& shard : c->shards_) {
    absl::StatusOr<std::string> line = shard->WaitForLine("ready", kStartTimeout);
    if (!line.ok()) return line.status();
    c->shard_addresses_.push_back(AddressOf(*line));
  }
  std::vector<std::string> argv = {binary, "router", "serve", "--port", "0", "--data-dir",
                                   absl::StrCat(data_dir, "/router"), "--shards",
                                   absl::StrJoin(c->shard_addresses_, ",")};
  argv.insert(argv.end(), router_args.begin(), router_args.end());
  auto router = ChildProcess::Start(argv, absl::StrCat(data_dir, "/router.log"));
  if (!router.ok()) return router.status();
  c->router_ = *std::move(router);
  absl::StatusOr<std::string> line = c->router_->WaitForLine("ready", kStartTimeout);
  if (!line.ok()) return line.status();
  c->router_address_ = AddressOf(*line);
  return c;
}

absl::Status TestCluster::RestartShard(int i) {
  shards_[i]->Stop();
  const std::string port = shard_addresses_[i].substr(shard_addresses_[i].rfind(':') + 1);
  auto child = StartShard(i, port);
  if (!child.ok()) return child.status();
  shards_[i] = *std::move(child);
  return shards_[i]->WaitForLine("ready", kStartTimeout).status();
}

absl::Status TestCluster::RestartRouter() {
  router_->Stop();
  const std::string port = router_address_.substr(router_address_.rfind(':') + 1);
  std::vector<std::string> argv = {ShardvecBinary(), "router", "serve", "--port", port, "--data-dir",
                                   absl::StrCat(data_dir_, "/router")};
  argv.insert(argv.end(), router_args_.begin(), router_args_.end());
  auto child = ChildProcess::Start(argv, absl::StrCat(data_dir_, "/router.log"));
  if (!child.ok()) return child.status();
  router_ = *std::move(child);
  return router_->WaitForLine("ready", kStartTimeout).status();
}

std::unique_ptr<v1::ShardVec::Stub> TestCluster::Client() const {
  return v1::ShardVec::NewStub(MakeChannel(router_address_));
}

CliResult TestCluster::Cli(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {"--router", router_address_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunShardvec(argv);
}

}  // namespace shardvec::testing
