// `shardvec local up`: starts a router and N shards, prints "ready", serves, stops
// every process on SIGTERM, and comes back with the same cluster map on the same
// data directory.
#include <signal.h>
#include <sys/wait.h>

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<ChildProcess> Up(int port, const std::string& dir) {
  auto child = ChildProcess::Start({ShardvecBinary(), "local", "up", "--shards", "2", "--port", std::to_string(port),
                                    "--data-dir", dir});
  EXPECT_TRUE(child.ok()) << child.status();
  absl::StatusOr<std::string> line = (*child)->WaitForLine("ready", absl::Seconds(60));
  EXPECT_TRUE(line.ok()) << line.status();
  if (line.ok()) {
    EXPECT_THAT(*line, HasSubstr("router 127.0.0.1:" + std::to_string(port) + ", 2 shards"));
  }
  return *std::move(child);
}

TEST(LocalUpE2ETest, ServesStopsOnSigtermAndRestartsWithSameMap) {
  const int port = FreePortRange(3);
  ASSERT_GT(port, 0);
  const std::string dir = TestDir("local_up_e2e") + "/data";
  const std::string router = "127.0.0.1:" + std::to_string(port);
  const std::string base = TestDir("local_up_e2e") + "/base.fvecs";
  ASSERT_TRUE(WriteFvecs(base, RandomVectors(1000, 16, 4)).ok());

  {
    std::unique_ptr<ChildProcess> up = Up(port, dir);
    CliResult r = RunShardvec({"--router", router, "collection", "create", "demo", "--dim", "16"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = RunShardvec({"--router", router, "ingest", "demo", base});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = RunShardvec({"--router", router, "status"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("shard-0"));
    EXPECT_THAT(r.out, HasSubstr("shard-1"));
    EXPECT_THAT(r.out, HasSubstr("127.0.0.1:" + std::to_string(port + 2)));
    EXPECT_THAT(r.out, HasSubstr("demo                 dim 16"));
    EXPECT_THAT(r.out, HasSubstr("1000 records"));

    up->Signal(SIGTERM);
    int status = up->Wait(absl::Seconds(30));
    ASSERT_NE(status, -1) << "local up did not exit after SIGTERM";
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  // Every process is gone: the router's and both shards' ports can be bound again.
  for (int p = port; p < port + 3; ++p) EXPECT_TRUE(PortFree(p)) << "port " << p << " still in use";

  // Same data dir: the router reloads its cluster map and the shards their records.
  std::unique_ptr<ChildProcess> again = Up(port, dir);
  CliResult r = RunShardvec({"--router", router, "collection", "list"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("demo"));
  EXPECT_THAT(r.out, HasSubstr("1000 records"));
  const std::string out = TestDir("local_up_e2e") + "/after.ivecs";
  r = RunShardvec({"--router", router, "search", "demo", "--queries", base, "--k", "1", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  absl::StatusOr<IntMatrix> ids = ReadIvecs(out);
  ASSERT_TRUE(ids.ok());
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(ids->data[i], i) << "each stored vector finds itself after a restart";
  r = RunShardvec({"--router", router, "status"});
  EXPECT_THAT(r.out, HasSubstr("map epoch 2"));
  again->Stop();
}

}  // namespace
}  // namespace shardvec::testing
