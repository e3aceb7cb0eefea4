// The cluster map: which shard owns which hash slots, and which collections exist.
// Persisted as protobuf text (proto/cluster.proto) with an atomic write, so a crash
// leaves either the old or the new map on disk, never a torn one.
#ifndef SHARDVEC_ROUTER_CLUSTER_MAP_H_
#define SHARDVEC_ROUTER_CLUSTER_MAP_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/cluster.pb.h"

namespace shardvec::router {

// A new map with the shards in the given order, named shard-0.. and owning equal,
// contiguous slot ranges.
cluster::ClusterMap InitialMap(const std::vector<std::string>& addresses);

// Every slot owned by exactly one shard, unique ids and addresses.
absl::Status ValidateMap(const cluster::ClusterMap& map);

// slot -> index into map.shards(); the map must be valid.
std::vector<int> SlotOwners(const cluster::ClusterMap& map);

// Gives slots [begin, end) to the shard `target_id`, taking them from whoever owns
// them; each shard's ranges stay sorted and merged.
void ReassignSlots(cluster::ClusterMap* map, uint32_t begin, uint32_t end, const std::string& target_id);

// Slots owned by each shard, by shard index.
std::vector<uint32_t> SlotCounts(const cluster::ClusterMap& map);

// Index of the shard with this id or address in map.shards(), or -1.
int FindShard(const cluster::ClusterMap& map, const std::string& id_or_address);

// "shard-N" with N one more than any existing shard's number.
std::string NextShardId(const cluster::ClusterMap& map);

absl::StatusOr<cluster::ClusterMap> LoadMap(const std::string& path);

// Writes path.tmp, fsyncs it, renames it over path and fsyncs the directory: after a
// crash the file holds the old contents or the new, never a mix.
absl::Status WriteFileAtomically(const std::string& path, const std::string& data);

// WriteFileAtomically of the map's text form.
absl::Status SaveMap(const std::string& path, const cluster::ClusterMap& map);

}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_CLUSTER_MAP_H_
