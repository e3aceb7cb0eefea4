// Index snapshot files: a SnapshotHeader (collection, op number) and Index::Save()
// output, guarded by a CRC-32 that is checked over the whole file before anything in
// it is trusted. Layout in shard/FORMAT.md.
#ifndef SHARDVEC_SHARD_SNAPSHOT_H_
#define SHARDVEC_SHARD_SNAPSHOT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "index/index.h"
#include "proto/shard_store.pb.h"

namespace shardvec::shard {

// Writes path.tmp, fsyncs it, renames it over `path` and fsyncs the directory.
absl::Status WriteSnapshot(const std::string& path, const store::SnapshotHeader& header, const index::Index& index);

struct Snapshot {
  store::SnapshotHeader header;
  std::unique_ptr<index::Index> index;
};

// NOT_FOUND if there is no file; DATA_LOSS naming the problem if it is truncated,
// corrupt or for another collection; the caller then rebuilds from the store.
absl::StatusOr<Snapshot> ReadSnapshot(const std::string& path, uint32_t cid, const index::IndexSpec& spec);

}  // namespace shardvec::shard

#endif  // SHARDVEC_SHARD_SNAPSHOT_H_
