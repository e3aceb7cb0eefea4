#include "router/cluster_map.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "common/slot.h"
#include "google/protobuf/text_format.h"

namespace shardvec::router {
namespace {

absl::Status IoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

absl::Status WriteAndSync(const std::string& path, const std::string& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("cannot create", path);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t w = ::write(fd, data.data() + done, data.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      ::close(fd);
      return IoError("cannot write", path);
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    return IoError("cannot fsync", path);
  }
  if (::close(fd) != 0) return IoError("cannot close", path);
  return absl::OkStatus();
}

}  // namespace

cluster::ClusterMap InitialMap(const std::vector<std::string>& addresses) {
  cluster::ClusterMap map;
  map.set_format_version(1);
  map.set_epoch(1);
  const uint32_t n = static_cast<uint32_t>(addresses.size());
  for (uint32_t i = 0; i < n; ++i) {
    cluster::ShardEntry* shard = map.add_shards();
    shard->set_id(absl::StrCat("shard-", i));
    shard->set_address(addresses[i]);
    v1::SlotRange* range = shard->add_slots();
    range->set_begin(kNumSlots * i / n);
    range->set_end(kNumSlots * (i + 1) / n);
  }
  return map;
}

absl::Status ValidateMap(const cluster::ClusterMap& map) {
  if (map.format_version() != 1) {
    return absl::FailedPreconditionError(
        absl::StrFormat("cluster map: format_version %d is not supported", map.format_version()));
  }
  if (map.shards_size() == 0) return absl::FailedPreconditionError("cluster map: no shards");
  std::vector<int> owner(kNumSlots, -1);
  absl::flat_hash_set<std::string> ids, addresses;
  for (int s = 0; s < map.shards_size(); ++s) {
    const cluster::ShardEntry& shard = map.shards(s);
    if (!ids.insert(shard.id()).second || !addresses.insert(shard.address()).second) {
      return absl::FailedPreconditionError(
          absl::StrCat("cluster map: duplicate shard ", shard.id(), " at ", shard.address()));
    }
    for (const v1::SlotRange& r : shard.slots()) {
      if (r.begin() >= r.end() || r.end() > kNumSlots) {
        return absl::FailedPreconditionError(
            absl::StrFormat("cluster map: shard %s has bad slot range [%d, %d)", shard.id(), r.begin(), r.end()));
      }
      for (uint32_t slot = r.begin(); slot < r.end(); ++slot) {
        if (owner[slot] != -1) {
          return absl::FailedPreconditionError(absl::StrFormat(
              "cluster map: slot %d owned by both %s and %s", slot, map.shards(owner[slot]).id(), shard.id()));
        }
        owner[slot] = s;
      }
    }
  }
  for (uint32_t slot = 0; slot < kNumSlots; ++slot) {
    if (owner[slot] == -1) {
      return absl::FailedPreconditionError(absl::StrFormat("cluster map: slot %d has no owner", slot));
    }
  }
  return absl::OkStatus();
}

std::vector<int> SlotOwners(const cluster::ClusterMap& map) {
  std::vector<int> owner(kNumSlots, -1);
  for (int s = 0; s < map.shards_size(); ++s) {
    for (const v1::SlotRange& r : map.shards(s).slots()) {
      for (uint32_t slot = r.begin(); slot < r.end() && slot < kNumSlots; ++slot) owner[slot] = s;
    }
  }
  return owner;
}

void ReassignSlots(cluster::ClusterMap* map, uint32_t begin, uint32_t end, const std::string& target_id) {
  for (cluster::ShardEntry& shard : *map->mutable_shards()) {
    std::vector<std::pair<uint32_t, uint32_t>> ranges;
    for (const v1::SlotRange& r : shard.slots()) {
      // Keep what lies outside [begin, end).
      if (r.begin() < begin) ranges.push_back({r.begin(), std::min(r.end(), begin)});
      if (r.end() > end) ranges.push_back({std::max(r.begin(), end), r.end()});
    }
    if (shard.id() == target_id) ranges.push_back({begin, end});
    std::sort(ranges.begin(), ranges.end());
    shard.clear_slots();
    for (const auto& [b, e] : ranges) {
      if (shard.slots_size() > 0 && shard.slots(shard.slots_size() - 1).end() == b) {
        shard.mutable_slots(shard.slots_size() - 1)->set_end(e);
        continue;
      }
      v1::SlotRange* r = shard.add_slots();
      r->set_begin(b);
      r->set_end(e);
    }
  }
}

std::vector<uint32_t> SlotCounts(const cluster::ClusterMap& map) {
  std::vector<uint32_t> counts;
  for (const cluster::ShardEntry& shard : map.shards()) {
    uint32_t n = 0;
    for (const v1::SlotRange& r : shard.slots()) n += r.end() - r.begin();
    counts.push_back(n);
  }
  return counts;
}

int FindShard(const cluster::ClusterMap& map, const std::string& id_or_address) {
  for (int i = 0; i < map.shards_size(); ++i) {
    if (map.shards(i).id() == id_or_address || map.shards(i).address() == id_or_address) return i;
  }
  return -1;
}

std::string NextShardId(const cluster::ClusterMap& map) {
  int next = 0;
  for (const cluster::ShardEntry& shard : map.shards()) {
    int n = 0;
    if (absl::StartsWith(shard.id(), "shard-") && absl::SimpleAtoi(absl::string_view(shard.id()).substr(6), &n)) {
      next = std::max(next, n + 1);
    }
  }
  return absl::StrCat("shard-", next);
}

absl::StatusOr<cluster::ClusterMap> LoadMap(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open cluster map ", path));
  std::stringstream text;
  text << in.rdbuf();
  cluster::ClusterMap map;
  if (!google::protobuf::TextFormat::ParseFromString(text.str(), &map)) {
    return absl::DataLossError(absl::StrCat("cluster map ", path, " is not a valid ClusterMap text proto"));
  }
  if (absl::Status s = ValidateMap(map); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  }
  return map;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  if (absl::Status s = WriteAndSync(tmp, data); !s.ok()) return s;
  if (::rename(tmp.c_str(), path.c_str()) != 0) return IoError("cannot rename onto", path);
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return IoError("cannot open directory", dir);
  int rc = ::fsync(dfd);
  ::close(dfd);
  if (rc != 0) return IoError("cannot fsync directory", dir);
  return absl::OkStatus();
}

absl::Status SaveMap(const std::string& path, const cluster::ClusterMap& map) {
  std::string text;
  if (!google::protobuf::TextFormat::PrintToString(map, &text)) {
    return absl::InternalError("cannot print the cluster map");
  }
  return WriteFileAtomically(path, text);
}

}  // namespace shardvec::router
