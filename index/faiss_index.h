// The FAISS CPU backend of Index: any faiss::index_factory string, with uint64 user
// ids, replace-by-id and removal on top of whatever the FAISS index supports.
//
//   auto index = FaissIndex::Create({/*dim=*/64, Metric::kCosine, "HNSW32"});
//
// How ids are kept depends on the FAISS index: IVF stores them itself; Flat, PQ and SQ
// sit behind an IndexIDMap; HNSW (which cannot remove) gets sequential labels plus
// tombstones that searches filter out, and a rebuild once tombstones outnumber live
// vectors. Indexes that need training keep vectors in an exact flat index until
// spec.train_threshold of them arrive (or Train is called). PQ codebooks skip FAISS's
// polysemous training (as if the factory said "PQ<m>np"): search never uses it.
#ifndef SHARDVEC_INDEX_FAISS_INDEX_H_
#define SHARDVEC_INDEX_FAISS_INDEX_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "index/index.h"

namespace faiss {
struct Index;
}  // namespace faiss

namespace shardvec::index {

namespace internal {
class FaissStore;
class NativeIdStore;
}  // namespace internal

// An Index over a FAISS CPU index built from spec.factory. The creator owns it
// (normally a shard, one per collection). Search() is const and may run from many
// threads at once; Upsert/Remove/Train need exclusive access. An INTERNAL or
// RESOURCE_EXHAUSTED error from a mutation may leave part of that call applied.
class FaissIndex final : public Index {
 public:
  // Like Index::Create. spec() then reports the effective spec: factory "Flat" if it
  // was empty, train_threshold resolved (0 when the index needs no training).
  static absl::StatusOr<std::unique_ptr<FaissIndex>> Create(const IndexSpec& spec);

  ~FaissIndex() override;

  const IndexSpec& spec() const override { return spec_; }
  // If this call brings the staged vectors to train_threshold it also trains; should
  // training fail, the vectors stay staged and the next Upsert retries.
  absl::Status Upsert(int64_t n, const uint64_t* ids, const float* x) override;
  absl::Status Remove(int64_t n, const uint64_t* ids, int64_t* removed) override;
  absl::Status Search(int64_t n, const float* queries, int k, const SearchParams& params,
                      float* distances, uint64_t* labels) const override;
  int64_t size() const override;
  bool is_trained() const override { return staging_ == nullptr; }
  absl::Status Train(int64_t n, const float* x) override;

  absl::StatusOr<std::string> TrainedTemplate() const override;
  absl::Status InstallTrained(const std::string& trained_template) override;
  absl::Status Save(ByteSink* sink) const override;
  static absl::StatusOr<std::unique_ptr<FaissIndex>> Load(const IndexSpec& spec, ByteSource* source);

  // Removed or replaced entries not yet compacted away (HNSW only; 0 otherwise).
  int64_t tombstones() const;

  // The FAISS index searches go to now (the staging index until trained). Valid until
  // the next mutation; FaissGpuIndex copies it to the GPU.
  const faiss::Index& active_faiss_index() const;

 private:
  FaissIndex(const IndexSpec& spec, std::unique_ptr<internal::FaissStore> store,
             std::unique_ptr<internal::NativeIdStore> staging);

  absl::Status TrainIfStagingFull();
  // Trains store_ (on x, or on the staged vectors when n == 0) unless it already is,
  // then moves the staged vectors into it.
  absl::Status TrainAndDrain(int64_t n, const float* x);
  const internal::FaissStore& active() const;
  internal::FaissStore& active();

  IndexSpec spec_;
  std::unique_ptr<internal::FaissStore> store_;  // The index spec_.factory describes.
  // Exact copy of every vector while store_ is untrained; null once trained.
  std::unique_ptr<internal::NativeIdStore> staging_;
  // store_'s FAISS index serialized right after training, before any vector; "" when
  // the spec needs no training or it has not happened yet.
  std::string trained_template_;
};

}  // namespace shardvec::index

#endif  // SHARDVEC_INDEX_FAISS_INDEX_H_
