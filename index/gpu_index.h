// The CUDA backend of Index: exact (Flat, SQfp16) and IVF (IVF<n>,Flat, IVF<n>,SQfp16)
// search with the kernels of //kernels, vectors kept in device memory.
//
//   IndexSpec spec{/*dim=*/128, Metric::kL2, "IVF1024,Flat"};
//   spec.device = Device::kGpu;
//   spec.gpus = {0, 1};                       // one partition per listed device
//   auto index = GpuIndex::Create(spec);      // or Index::Create(spec)
//
// Vectors are spread over partitions, one per entry of spec.gpus (new rows go to the
// partition with the fewest live rows); a search runs on every partition at once and
// their top-k lists are merged on the host. Each partition keeps, per inverted list
// (one list for Flat), growable device arrays (capacity doubles) of vectors (float32
// or float16), row handles (IVF) or row biases (Flat), and a host array of the user
// ids. Upsert appends and tombstones the old row; Remove tombstones; a partition is
// compacted once its tombstones reach a quarter of its rows (at least
// kMinTombstonesToCompact of them) or outnumber its live rows.
//
// IVF training is FAISS's CPU k-means on the same factory string as FaissIndex, so
// TrainedTemplate() is a serialized FAISS index that FaissIndex::InstallTrained of the
// same spec accepts, and vice versa: the GPU and CPU backends share centroids (for
// IVF<n>,SQfp16 the GPU keeps each vector in float16 where FAISS's CPU index keeps its
// residual from the centroid, so distances differ in the last bits there). Until
// trained, vectors are staged in exact float32 partitions (searched exactly), as
// FaissIndex stages them. Rows are assigned to lists on the GPU (nearest centroid).
//
// Snapshot format (Save/Load), all integers little-endian:
//   u32 magic "SVGI" (0x49475653), u32 version (1)
//   u8 layout: 0 exact (Flat, SQfp16), 1 IVF staged (untrained), 2 IVF trained
//   u8 storage of the rows below: 0 float32, 1 float16
//   u32 dim
//   u64 template size, then the TrainedTemplate() bytes (empty unless layout 2)
//   u64 block count, then per block:
//     u32 list (0 unless layout 2), u64 rows, u64 ids[rows], rows x dim vectors
// The rows are the live ones only; Load spreads them over the partitions it is given,
// keeping each row's list, so a snapshot may be loaded with another spec.gpus.
#ifndef SHARDVEC_INDEX_GPU_INDEX_H_
#define SHARDVEC_INDEX_GPU_INDEX_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "index/index.h"

namespace shardvec::index {

namespace internal {
class GpuPartition;
}  // namespace internal

// An Index in CUDA device memory. The creator owns it (normally a shard, one per
// collection). Search() is const and may run from many threads at once (each partition
// serialises its own device work); Upsert/Remove/Train need exclusive access. An
// INTERNAL or RESOURCE_EXHAUSTED (device memory) error from a mutation may leave part
// of that call applied.
class GpuIndex final : public Index {
 public:
  // Like Index::Create, for spec.device == kGpu. INVALID_ARGUMENT naming index_spec for
  // a factory string the GPU does not run; FAILED_PRECONDITION naming device when the
  // machine has no GPU or lacks a listed one. spec() then reports the effective spec:
  // factory "Flat" if it was empty, train_threshold resolved, gpus the devices used.
  static absl::StatusOr<std::unique_ptr<GpuIndex>> Create(const IndexSpec& spec);
  static absl::StatusOr<std::unique_ptr<GpuIndex>> Load(const IndexSpec& spec, ByteSource* source);

  ~GpuIndex() override;

  const IndexSpec& spec() const override { return spec_; }
  absl::Status Upsert(int64_t n, const uint64_t* ids, const float* x) override;
  absl::Status Remove(int64_t n, const uint64_t* ids, int64_t* removed) override;
  absl::Status Search(int64_t n, const float* queries, int k, const SearchParams& params,
                      float* distances, uint64_t* labels) const override;
  int64_t size() const override { return static_cast<int64_t>(where_.size()); }
  bool is_trained() const override { return !staged_; }
  absl::Status Train(int64_t n, const float* x) override;
  absl::StatusOr<std::string> TrainedTemplate() const override;
  absl::Status InstallTrained(const std::string& trained_template) override;
  absl::Status Save(ByteSink* sink) const override;

  // Removed or replaced rows not yet compacted away, over all partitions.
  int64_t tombstones() const;
  // Live rows of each partition, in spec().gpus order.
  std::vector<int64_t> partition_sizes() const;
  // The inverted list holding `id`; -1 if absent or the index has no lists (yet).
  int ListOf(uint64_t id) const;

  // Compaction waits for at least this many tombstones in a partition, unless they
  // outnumber its live rows: rebuilding is O(rows).
  static constexpr int64_t kMinTombstonesToCompact = 1024;
  // nprobe when SearchParams leave it 0: FAISS's IndexIVF default, as FaissIndex uses.
  static constexpr int kDefaultNprobe = 1;

 private:
  struct Location {
    int32_t partition;
    int32_t list;
    int32_t row;
  };
  GpuIndex(const IndexSpec& spec, int nlist, bool half);

  // Appends rows (unique ids, prepared for the metric) to the partitions and replaces
  // older rows of the same ids.
  absl::Status Add(int64_t n, const uint64_t* ids, const float* x);
  absl::Status TrainIfStagingFull();
  // Trains on x (or the staged rows when n == 0) unless `trained_template` is given,
  // then moves the staged rows into inverted lists.
  absl::Status TrainAndDrain(int64_t n, const float* x, std::string trained_template);
  absl::Status CompactIfNeeded();
  absl::Status FlushAll();

  IndexSpec spec_;
  const int nlist_;  // 0 for Flat and SQfp16
  const bool half_;  // float16 storage once trained (always, for SQfp16)
  bool staged_;      // IVF not trained yet: rows sit in exact float32 partitions
  std::string trained_template_;
  std::vector<std::unique_ptr<internal::GpuPartition>> partitions_;
  absl::flat_hash_map<uint64_t, Location> where_;
};

}  // namespace shardvec::index

#endif  // SHARDVEC_INDEX_GPU_INDEX_H_
