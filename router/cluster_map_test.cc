#include "router/cluster_map.h"

#include <cstdlib>
#include <fstream>

#include "common/slot.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardvec::router {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

TEST(ClusterMapTest, InitialMapSplitsSlotsEvenly) {
  cluster::ClusterMap map = InitialMap({"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"});
  ASSERT_TRUE(ValidateMap(map).ok());
  std::vector<int> owner = SlotOwners(map);
  std::vector<int> count(3, 0);
  for (int o : owner) ++count[o];
  EXPECT_EQ(count, (std::vector<int>{1365, 1365, 1366}));
  EXPECT_EQ(map.shards(2).id(), "shard-2");
}

TEST(ClusterMapTest, ValidateRejectsGapsOverlapsAndDuplicates) {
  cluster::ClusterMap map = InitialMap({"a:1", "b:2"});
  cluster::ClusterMap gap = map;
  gap.mutable_shards(1)->mutable_slots(0)->set_end(kNumSlots - 1);
  EXPECT_THAT(std::string(ValidateMap(gap).message()), HasSubstr("slot 4095 has no owner"));

  cluster::ClusterMap overlap = map;
  overlap.mutable_shards(1)->mutable_slots(0)->set_begin(100);
  EXPECT_THAT(std::string(ValidateMap(overlap).message()), HasSubstr("slot 100 owned by both"));

  cluster::ClusterMap dup = map;
  dup.mutable_shards(1)->set_address("a:1");
  EXPECT_THAT(std::string(ValidateMap(dup).message()), HasSubstr("duplicate shard"));
}

TEST(ClusterMapTest, SaveThenLoadRoundTrips) {
  const std::string path = TempPath("map.textproto");
  cluster::ClusterMap map = InitialMap({"127.0.0.1:7001", "127.0.0.1:7002"});
  v1::CollectionSpec* c = map.add_collections();
  c->set_name("docs");
  c->set_dim(64);
  c->set_metric(v1::COSINE);
  ASSERT_TRUE(SaveMap(path, map).ok());
  absl::StatusOr<cluster::ClusterMap> back = LoadMap(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->SerializeAsString(), map.SerializeAsString());
  std::ifstream tmp(path + ".tmp");
  EXPECT_FALSE(tmp.good()) << "the temporary file must be renamed away";
}

TEST(ClusterMapTest, LoadRejectsGarbageAndInvalidMaps) {
  const std::string garbage = TempPath("garbage.textproto");
  std::ofstream(garbage) << "shards { id: ";
  EXPECT_EQ(LoadMap(garbage).status().code(), absl::StatusCode::kDataLoss);

  const std::string invalid = TempPath("invalid.textproto");
  std::ofstream(invalid) << "format_version: 1 shards { id: \"s\" address: \"a:1\" slots { begin: 0 end: 10 } }";
  absl::Status s = LoadMap(invalid).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("slot 10 has no owner"));

  EXPECT_EQ(LoadMap(TempPath("absent.textproto")).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace shardvec::router
