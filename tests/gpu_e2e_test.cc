// Collections created with device GPU, through the router. Without the GPU a shard is
// asked for, CreateCollection fails with FAILED_PRECONDITION naming device and nothing
// is stored anywhere (this runs on every machine: on a GPU machine the shards are asked
// for one GPU past the last). With a GPU, collections split over two partitions of
// device 0 search exactly and answer the same after a restart from their snapshots.
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "index/brute_force.h"
#include "kernels/knn.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

using ::testing::HasSubstr;

constexpr int kDim = 32;

grpc::Status Create(v1::ShardVec::Stub* stub, const std::string& name, const std::string& index,
                    v1::Metric metric, v1::Device device) {
  v1::CreateCollectionRequest req;
  req.mutable_spec()->set_name(name);
  req.mutable_spec()->set_dim(kDim);
  req.mutable_spec()->set_metric(metric);
  req.mutable_spec()->set_index_spec(index);
  req.mutable_spec()->set_device(device);
  v1::CreateCollectionResponse resp;
  grpc::ClientContext ctx;
  return stub->CreateCollection(&ctx, req, &resp);
}

v1::ListCollectionsResponse List(v1::ShardVec::Stub* stub) {
  v1::ListCollectionsResponse list;
  grpc::ClientContext ctx;
  EXPECT_TRUE(stub->ListCollections(&ctx, {}, &list).ok());
  return list;
}

TEST(GpuE2ETest, MissingGpuIsFailedPreconditionAndStoresNothing) {
  const int gpus = kernels::DeviceCount();
  std::vector<std::string> shard_args;
  if (gpus > 0) shard_args = {"--gpus", std::to_string(gpus)};
  auto cluster = TestCluster::Start(2, TestDir("gpu_e2e_missing"), shard_args);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto stub = (*cluster)->Client();

  for (const char* index : {"Flat", "IVF16,Flat"}) {
    grpc::Status s = Create(stub.get(), "vecs", index, v1::L2, v1::GPU);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("device: "));
    EXPECT_THAT(s.error_message(), HasSubstr(gpus == 0 ? "asks for a GPU but this machine has none"
                                                       : "requested, this machine has"));
  }
  // The CLI says the same in one line.
  CliResult r = (*cluster)->Cli({"collection", "create", "vecs", "--dim", "32", "--device", "gpu"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("device: "));
  // A factory string the GPU cannot run is INVALID_ARGUMENT on any machine.
  grpc::Status s = Create(stub.get(), "vecs", "HNSW32", v1::L2, v1::GPU);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_THAT(s.error_message(), HasSubstr("index_spec"));
  EXPECT_EQ(List(stub.get()).collections_size(), 0);

  // No shard kept anything: the name is free for a CPU collection, and a restarted
  // shard recovers (a stored GPU collection could not).
  ASSERT_TRUE(Create(stub.get(), "vecs", "Flat", v1::L2, v1::CPU).ok());
  (*cluster)->shard(0)->Stop();
  ASSERT_TRUE((*cluster)->RestartShard(0).ok());
  v1::ListCollectionsResponse list = List(stub.get());
  ASSERT_EQ(list.collections_size(), 1);
  EXPECT_EQ(list.collections(0).spec().device(), v1::CPU);
}

// Every result of `name` for `queries` equals the brute force over `base` (ids 0..n-1).
void ExpectExact(v1::ShardVec::Stub* stub, const std::string& name, index::Metric metric,
                 const FloatMatrix& base, const FloatMatrix& queries, int k) {
  v1::SearchRequest req;
  req.set_collection(name);
  req.set_k(k);
  req.mutable_params()->set_nprobe(16);  // every list
  for (int64_t i = 0; i < queries.rows; ++i) {
    req.add_queries()->mutable_values()->Add(queries.row(i), queries.row(i) + kDim);
  }
  v1::SearchResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = stub->Search(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  std::vector<float> got_d;
  std::vector<uint64_t> got_ids;
  for (const v1::QueryResult& q : resp.results()) {
    got_ids.insert(got_ids.end(), q.ids().begin(), q.ids().end());
    got_d.insert(got_d.end(), q.distances().begin(), q.distances().end());
  }
  std::vector<uint64_t> base_ids(base.rows);
  for (int64_t i = 0; i < base.rows; ++i) base_ids[i] = static_cast<uint64_t>(i);
  std::vector<double> want_d;
  std::vector<uint64_t> want_ids;
  index::BruteForceSearch(metric, kDim, base.rows, base.data.data(), base_ids.data(), queries.rows,
                          queries.data.data(), k, &want_d, &want_ids);
  absl::Status check = index::CheckKnnResult(metric, k, want_d, want_ids, got_d, got_ids, 1e-5);
  EXPECT_TRUE(check.ok()) << name << ": " << check;
}

TEST(GpuE2ETest, GpuCollectionsSearchExactlyAndSurviveRestart) {
  if (kernels::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device: GPU end-to-end test skipped";
  const std::string dir = TestDir("gpu_e2e_search");
  auto cluster = TestCluster::Start(2, dir, {"--gpus", "0,0"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto stub = (*cluster)->Client();
  ASSERT_TRUE(Create(stub.get(), "flat", "Flat", v1::L2, v1::GPU).ok());
  ASSERT_TRUE(Create(stub.get(), "ivf", "IVF16,Flat", v1::COSINE, v1::GPU).ok());
  const FloatMatrix base = RandomVectors(4000, kDim, 81);
  const FloatMatrix queries = RandomVectors(25, kDim, 82);
  for (const char* name : {"flat", "ivf"}) {
    v1::UpsertResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Upsert(&ctx, MakeUpsert(name, base, 0), &resp).ok());
  }
  ExpectExact(stub.get(), "flat", index::Metric::kL2, base, queries, 10);
  ExpectExact(stub.get(), "ivf", index::Metric::kCosine, base, queries, 10);

  (*cluster)->shard(0)->Stop();  // SIGTERM: snapshots at shutdown
  ASSERT_TRUE((*cluster)->RestartShard(0).ok());
  ExpectExact(stub.get(), "flat", index::Metric::kL2, base, queries, 10);
  ExpectExact(stub.get(), "ivf", index::Metric::kCosine, base, queries, 10);
  std::ifstream log(dir + "/shard-0.log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_THAT(text, HasSubstr("from snapshot"));
}

}  // namespace
}  // namespace shardvec::testing
