// End-to-end test support: real shardvec processes on 127.0.0.1 (shards and router
// started from the shardvec binary, each on a port it picks), a gRPC client, and a
// way to run the CLI. Every process is stopped when the TestCluster is destroyed.
#ifndef SHARDVEC_TESTS_TEST_CLUSTER_H_
#define SHARDVEC_TESTS_TEST_CLUSTER_H_

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/process.h"
#include "common/vecs_io.h"
#include "proto/shardvec.grpc.pb.h"

namespace shardvec::testing {

// The shardvec binary inside the test's runfiles.
std::string ShardvecBinary();

// A directory private to this test (TEST_TMPDIR), created if missing.
std::string TestDir(const std::string& name);

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `shardvec args...` to completion (bounded by `timeout`).
CliResult RunShardvec(const std::vector<std::string>& args, absl::Duration timeout = absl::Minutes(5));

// A port on 127.0.0.1 such that it and the next `count - 1` ports are free now.
int FreePortRange(int count);

// Whether a TCP port on 127.0.0.1 can be bound right now.
bool PortFree(int port);

// Creates a collection through the router.
grpc::Status CreateCollection(v1::ShardVec::Stub* stub, const std::string& name, int dim,
                              const std::string& index = "Flat", v1::Metric metric = v1::L2);

// An upsert of the rows of `m` under ids first_id, first_id + 1, ...
v1::UpsertRequest MakeUpsert(const std::string& collection, const FloatMatrix& m, uint64_t first_id);

// Gaussian random vectors, reproducible from `seed`.
FloatMatrix RandomVectors(int64_t rows, int dim, uint32_t seed);

class TestCluster {
 public:
  // `shard_args` are added to every `shardvec shard serve` command line.
  static absl::StatusOr<std::unique_ptr<TestCluster>> Start(int num_shards, const std::string& data_dir,
                                                            const std::vector<std::string>& shard_args = {},
                                                            const std::vector<std::string>& router_args = {});

  const std::string& router_address() const { return router_address_; }
  const std::string& shard_address(int i) const { return shard_addresses_[i]; }
  ChildProcess* shard(int i) { return shards_[i].get(); }
  ChildProcess* router() { return router_.get(); }
  const std::string& shard_data_dir(int i) const { return shard_dirs_[i]; }
  // Starts shard i again on its address and data directory (after it was stopped
  // or killed) and waits until it serves.
  absl::Status RestartShard(int i);
  // Starts the router again on its address and data directory.
  absl::Status RestartRouter();
  const std::string& data_dir() const { return data_dir_; }
  std::unique_ptr<v1::ShardVec::Stub> Client() const;
  // `shardvec --router ADDRESS args...`
  CliResult Cli(const std::vector<std::string>& args) const;

 private:
  TestCluster() = default;
  absl::StatusOr<std::unique_ptr<ChildProcess>> StartShard(int i, const std::string& port) const;
  std::vector<std::unique_ptr<ChildProcess>> shards_;
  std::vector<std::string> shard_addresses_;
  std::vector<std::string> shard_dirs_;
  std::string data_dir_;
  std::vector<std::string> shard_args_;
  std::vector<std::string> router_args_;
  std::unique_ptr<ChildProcess> router_;
  std::string router_address_;
};

}  // namespace shardvec::testing

#endif  // SHARDVEC_TESTS_TEST_CLUSTER_H_
