// The fixed record-id -> hash-slot function (documented in proto/shard.proto). Never
// change it: slots are stored in cluster maps and on disk.
#ifndef SHARDVEC_COMMON_SLOT_H_
#define SHARDVEC_COMMON_SLOT_H_

#include <cstdint>

namespace shardvec {

inline constexpr uint32_t kNumSlots = 4096;

// SplitMix64 finaliser: a stable, well-mixed 64-bit hash of the id.
constexpr uint64_t StableHash64(uint64_t id) {
  uint64_t z = id + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

constexpr uint32_t SlotOf(uint64_t id) { return static_cast<uint32_t>(StableHash64(id) % kNumSlots); }

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_SLOT_H_
