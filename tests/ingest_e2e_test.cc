// Bulk ingestion through the CLI's streaming load: payloads from JSONL, one shared
// training for IVF so results do not depend on the shard count, and clear errors
// naming the file and row.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_cluster.h"

namespace shardvec::testing {
namespace {

using ::testing::HasSubstr;

// big-ann .fbin: int32 rows, int32 dim, then the floats.
void WriteFbin(const std::string& path, const FloatMatrix& m) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  int32_t header[2] = {static_cast<int32_t>(m.rows), m.dim};
  std::fwrite(header, sizeof(header), 1, f);
  std::fwrite(m.data.data(), sizeof(float), m.data.size(), f);
  std::fclose(f);
}

// Clustered data, so that IVF lists are meaningful.
FloatMatrix Clustered(int64_t rows, int dim, uint32_t seed) {
  FloatMatrix centres = RandomVectors(64, dim, seed);
  FloatMatrix noise = RandomVectors(rows, dim, seed + 1);
  FloatMatrix m{rows, dim, std::vector<float>(static_cast<size_t>(rows) * dim)};
  for (int64_t i = 0; i < rows; ++i) {
    for (int j = 0; j < dim; ++j) m.data[i * dim + j] = centres.row(i % 64)[j] * 3 + noise.row(i)[j] * 0.5f;
  }
  return m;
}

v1::SearchResponse SearchAll(TestCluster& c, const std::string& name, const FloatMatrix& q, int k, int nprobe) {
  v1::SearchRequest req;
  req.set_collection(name);
  req.set_k(k);
  req.mutable_params()->set_nprobe(nprobe);
  for (int64_t i = 0; i < q.rows; ++i) req.add_queries()->mutable_values()->Add(q.row(i), q.row(i) + q.dim);
  v1::SearchResponse resp;
  grpc::ClientContext ctx;
  EXPECT_TRUE(c.Client()->Search(&ctx, req, &resp).ok());
  return resp;
}

TEST(IngestE2ETest, JsonlPayloadsArriveWithTheirRecords) {
  auto cluster = TestCluster::Start(3, TestDir("ingest_jsonl"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const std::string path = TestDir("ingest_jsonl") + "/docs.jsonl";
  {
    std::ofstream out(path);
    for (int i = 0; i < 500; ++i) {
      out << "{\"id\": " << 1000 + i << ", \"vector\": [" << i << ", " << -i << ", 0.5, 1], \"text\": \"passage "
          << i << "\", \"metadata\": {\"source\": \"doc" << i % 7 << "\"}}\n";
    }
  }
  CliResult r = (*cluster)->Cli({"collection", "create", "docs", "--dim", "4"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = (*cluster)->Cli({"ingest", "docs", path, "--batch", "64"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("ingested 500 vectors into docs"));

  v1::GetRequest get;
  get.set_collection("docs");
  get.set_include_payload(true);
  get.set_include_vectors(true);
  get.add_ids(1000 + 123);
  get.add_ids(1000 + 499);
  v1::GetResponse got;
  grpc::ClientContext ctx;
  ASSERT_TRUE((*cluster)->Client()->Get(&ctx, get, &got).ok());
  ASSERT_EQ(got.records_size(), 2);
  EXPECT_EQ(got.records(0).payload().text(), "passage 123");
  EXPECT_EQ(got.records(0).payload().metadata().at("source"), "doc4");
  EXPECT_THAT(got.records(1).vector(), ::testing::ElementsAre(499, -499, 0.5, 1));
}

TEST(IngestE2ETest, SharedTrainingMakesIvfResultsIndependentOfShardCount) {
  const std::string dir = TestDir("ingest_ivf");
  const std::string path = dir + "/base.fbin";
  WriteFbin(path, Clustered(6000, 16, 3));
  FloatMatrix queries = Clustered(40, 16, 3);
  std::vector<v1::SearchResponse> results;
  for (int shards : {1, 3}) {
    auto cluster = TestCluster::Start(shards, dir + "/cluster" + std::to_string(shards));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    CliResult r = (*cluster)->Cli({"collection", "create", "ivf", "--dim", "16", "--index", "IVF32,Flat"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = (*cluster)->Cli({"ingest", "ivf", path, "--train-size", "6000"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, HasSubstr("trained ivf on 6000 sampled vectors, installed on " + std::to_string(shards)));
    r = (*cluster)->Cli({"status"});
    EXPECT_THAT(r.out, HasSubstr("6000 records"));
    // A second load finds it trained and does not train again.
    r = (*cluster)->Cli({"ingest", "ivf", path});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, ::testing::Not(HasSubstr("trained")));
    results.push_back(SearchAll(**cluster, "ivf", queries, 10, /*nprobe=*/2));
  }
  // Same quantizer, same probed lists: the 3-shard union is the 1-shard answer.
  ASSERT_EQ(results[0].results_size(), results[1].results_size());
  for (int q = 0; q < results[0].results_size(); ++q) {
    EXPECT_THAT(results[1].results(q).ids(), ::testing::ElementsAreArray(results[0].results(q).ids())) << q;
  }
}

TEST(IngestE2ETest, BadFilesAndRowsAreNamed) {
  auto cluster = TestCluster::Start(2, TestDir("ingest_bad"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ASSERT_EQ((*cluster)->Cli({"collection", "create", "v", "--dim", "8"}).exit_code, 0);
  const std::string dir = TestDir("ingest_bad");
  FloatMatrix m = RandomVectors(100, 8, 1);
  m.data[57 * 8 + 3] = std::nanf("");
  WriteFbin(dir + "/nan.fbin", m);
  CliResult r = (*cluster)->Cli({"ingest", "v", dir + "/nan.fbin"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr(dir + "/nan.fbin: row 57: component 3 is NaN"));

  m.data[57 * 8 + 3] = 0;
  WriteFbin(dir + "/short.fbin", m);
  ASSERT_EQ(truncate((dir + "/short.fbin").c_str(), 8 + 4 * 8 * 60 + 5), 0);
  r = (*cluster)->Cli({"ingest", "v", dir + "/short.fbin"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr(dir + "/short.fbin"));
  EXPECT_THAT(r.err, HasSubstr("row 60"));

  WriteFbin(dir + "/wrongdim.fbin", RandomVectors(10, 9, 2));
  r = (*cluster)->Cli({"ingest", "v", dir + "/wrongdim.fbin"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("dimension 9 does not match collection 'v' (dim 8)"));

  r = (*cluster)->Cli({"ingest", "v", dir + "/data.csv"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("data.csv"));
}

}  // namespace
}  // namespace shardvec::testing
