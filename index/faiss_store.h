// Internal to //index: the two ways FaissIndex keeps user ids on top of FAISS labels.
// Not part of the public API; FaissIndex validates every input before it gets here.
#ifndef SHARDVEC_INDEX_FAISS_STORE_H_
#define SHARDVEC_INDEX_FAISS_STORE_H_

#include <cstdint>
#include <exception>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "faiss/Index.h"
#include "faiss/IndexIVF.h"
#include "faiss/impl/io.h"
#include "index/index.h"

namespace shardvec::index::internal {

using FaissLabel = faiss::Index::idx_t;

// Runs `fn`, turning anything FAISS throws into a Status whose message starts with
// `what`: RESOURCE_EXHAUSTED for std::bad_alloc, INTERNAL otherwise.
template <typename Fn>
absl::Status CatchFaiss(absl::string_view what, Fn&& fn) {
  try {
    fn();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
  } catch (const std::exception& e) {  // faiss::FaissException included.
    return absl::InternalError(absl::StrCat(what, ": ", e.what()));
  }
  return absl::OkStatus();
}

// kCosine is inner product on vectors normalised before they reach FAISS.
inline faiss::MetricType ToFaissMetric(Metric metric) {
  return metric == Metric::kL2 ? faiss::METRIC_L2 : faiss::METRIC_INNER_PRODUCT;
}

// Vectors of one faiss::Index addressed by user id. Callers pass ids that are unique
// within a call and never kNoId, vectors already normalised for kCosine, and
// 1 <= k <= kMaxK. Owned by FaissIndex; Search() is const and safe to call
// concurrently, everything else needs exclusive access.
class FaissStore {
 public:
  virtual ~FaissStore() = default;
  FaissStore(const FaissStore&) = delete;
  FaissStore& operator=(const FaissStore&) = delete;

  virtual absl::Status Upsert(int64_t n, const uint64_t* ids, const float* x) = 0;
  // Returns how many of the ids were present.
  virtual absl::StatusOr<int64_t> Remove(int64_t n, const uint64_t* ids) = 0;
  // Writes n*k results, padded with (kNoId, +inf for L2 / -inf otherwise).
  virtual absl::Status Search(int64_t n, const float* x, int k, const SearchParams& params,
                              float* distances, uint64_t* labels) const = 0;
  virtual int64_t size() const = 0;
  // Removed entries still occupying the FAISS index.
  virtual int64_t tombstones() const { return 0; }

  bool is_trained() const { return index_->is_trained; }
  absl::Status Train(int64_t n, const float* x);
  const faiss::Index& faiss_index() const { return *index_; }

  // Writes a kind tag, the FAISS index and the id bookkeeping; LoadStore reads it.
  // FAISS throws on I/O errors: callers wrap these in CatchFaiss.
  virtual void Save(faiss::IOWriter* writer) const = 0;
  static std::unique_ptr<FaissStore> LoadStore(faiss::IOReader* reader);

 protected:
  explicit FaissStore(std::unique_ptr<faiss::Index> index) : index_(std::move(index)) {}

  // +inf for L2, -inf for similarities: ranks after every real result.
  float missing_distance() const;
  // Fills n rows of k results with (kNoId, missing_distance()).
  void FillMissing(int64_t n, int k, float* distances, uint64_t* labels) const;

  std::unique_ptr<faiss::Index> index_;
};

// For indexes whose remove_ids works: IVF natively, flat-code indexes (Flat, PQ, SQ)
// behind an IndexIDMap. FAISS labels are the user ids bit-cast to int64, so kNoId
// would collide with FAISS's -1 "missing" label (callers reject it).
class NativeIdStore final : public FaissStore {
 public:
  // Wraps `index` in an IndexIDMap unless it is an IVF, which stores ids itself, or
  // already an IndexIDMap (read back from a snapshot); existing ids are adopted.
  static std::unique_ptr<NativeIdStore> Create(std::unique_ptr<faiss::Index> index);

  absl::Status Upsert(int64_t n, const uint64_t* ids, const float* x) override;
  absl::StatusOr<int64_t> Remove(int64_t n, const uint64_t* ids) override;
  absl::Status Search(int64_t n, const float* x, int k, const SearchParams& params,
                      float* distances, uint64_t* labels) const override;
  int64_t size() const override { return static_cast<int64_t>(ids_.size()); }
  void Save(faiss::IOWriter* writer) const override;

  // Copies out every (id, vector). Only for IndexIDMap-wrapped indexes whose inner
  // index can reconstruct (the exact staging index); UNIMPLEMENTED otherwise.
  absl::Status Export(std::vector<uint64_t>* ids, std::vector<float>* x) const;

 private:
  NativeIdStore(std::unique_ptr<faiss::Index> index, const faiss::IndexIVF* ivf)
      : FaissStore(std::move(index)), ivf_(ivf) {}

  // Removes the given ids, all known to be present.
  absl::Status RemovePresent(const std::vector<FaissLabel>& labels);

  const faiss::IndexIVF* ivf_;  // Inside index_; non-null when per-call nprobe applies.
  // Ids present: lets pure inserts skip remove_ids, which scans the whole index.
  absl::flat_hash_set<uint64_t> ids_;
};

// For indexes without remove_ids (HNSW). FAISS labels are sequential; a removed or
// replaced entry becomes a tombstone that searches filter out (an IDSelector for
// HNSW, over-fetching otherwise), and the index is rebuilt from the reconstructed
// live vectors once tombstones outnumber them, so memory does not grow forever.
class TombstoneStore final : public FaissStore {
 public:
  explicit TombstoneStore(std::unique_ptr<faiss::Index> index) : FaissStore(std::move(index)) {}

  absl::Status Upsert(int64_t n, const uint64_t* ids, const float* x) override;
  absl::StatusOr<int64_t> Remove(int64_t n, const uint64_t* ids) override;
  absl::Status Search(int64_t n, const float* x, int k, const SearchParams& params,
                      float* distances, uint64_t* labels) const override;
  int64_t size() const override { return static_cast<int64_t>(id_to_label_.size()); }
  int64_t tombstones() const override { return dead_; }
  void Save(faiss::IOWriter* writer) const override;
  static std::unique_ptr<TombstoneStore> Load(std::unique_ptr<faiss::Index> index,
                                              faiss::IOReader* reader);

  // Compaction waits for at least this many tombstones: rebuilding is O(size).
  static constexpr int64_t kMinTombstonesToCompact = 1024;

 private:
  void Kill(FaissLabel label);
  absl::Status MaybeCompact();
  absl::Status Compact();

  // index_ serialized while trained and still empty. Compaction rebuilds from it,
  // which keeps the exact index type, its parameters and any trained codebooks.
  std::vector<uint8_t> empty_index_;
  std::vector<uint64_t> label_to_id_;  // kNoId marks a tombstone.
  absl::flat_hash_map<uint64_t, FaissLabel> id_to_label_;
  int64_t dead_ = 0;
};

}  // namespace shardvec::index::internal

#endif  // SHARDVEC_INDEX_FAISS_STORE_H_
