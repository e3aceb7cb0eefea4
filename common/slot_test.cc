#include "common/slot.h"

#include <vector>

#include "gtest/gtest.h"

namespace shardvec {
namespace {

// These values are part of the on-disk and wire contract (proto/shard.proto).
TEST(SlotTest, GoldenValuesNeverChange) {
  EXPECT_EQ(StableHash64(0), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(SlotOf(0), 3503u);
  EXPECT_EQ(SlotOf(1), 3265u);
  EXPECT_EQ(SlotOf(42), 3733u);
  EXPECT_EQ(SlotOf(1000000), 1511u);
  EXPECT_EQ(SlotOf(~uint64_t{0} - 1), 2081u);
}

TEST(SlotTest, SequentialIdsSpreadEvenlyOverSlots) {
  std::vector<int> count(kNumSlots, 0);
  const int n = 4096 * 64;
  for (uint64_t id = 0; id < static_cast<uint64_t>(n); ++id) ++count[SlotOf(id)];
  for (uint32_t s = 0; s < kNumSlots; ++s) {
    // Mean 64; a binomial with sd 8 stays well within [16, 128] for a good hash.
    EXPECT_GT(count[s], 16) << "slot " << s;
    EXPECT_LT(count[s], 128) << "slot " << s;
  }
}

}  // namespace
}  // namespace shardvec
