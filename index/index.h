// The vector index interface every backend (FAISS CPU, CUDA GPU) implements.
//
//   auto index = Index::Create({/*dim=*/128, Metric::kL2, "IVF1024,Flat"});
//   (*index)->Upsert(n, ids, vectors);              // row-major: x[i * dim + j]
//   (*index)->Search(nq, queries, k, {}, distances, labels);
//
// Ids are the user's uint64 record ids; kNoId marks an empty result slot (fewer
// than k live vectors). Results are nearest first: ascending squared L2 for kL2,
// descending inner product / cosine similarity for kInnerProduct / kCosine.
//
// Thread safety: Search() is const and may run concurrently with other Search()
// calls. Upsert/Remove/Train mutate and need exclusive access (the shard holds a
// per-collection writer lock). Errors come back as absl::Status; nothing throws.
#ifndef SHARDVEC_INDEX_INDEX_H_
#define SHARDVEC_INDEX_INDEX_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shardvec::index {

enum class Metric { kL2, kInnerProduct, kCosine };

// Where an index keeps its vectors: FaissIndex (any factory string) or GpuIndex (Flat,
// SQfp16, IVF<n>,Flat, IVF<n>,SQfp16 on CUDA devices).
enum class Device { kCpu, kGpu };

inline constexpr uint64_t kNoId = ~uint64_t{0};
inline constexpr int kMaxK = 4096;

struct IndexSpec {
  int dim = 0;
  Metric metric = Metric::kL2;
  // A FAISS index_factory string: "Flat", "IVF1024,Flat", "IVF256,PQ16", "HNSW32"...
  std::string factory = "Flat";
  // Indexes that need training (IVF, PQ) hold vectors in an exact staging index
  // until this many are present, then train on them and move them over.
  // 0 picks a default from the spec (39 x nlist for IVF, 9984 for PQ/SQ).
  int64_t train_threshold = 0;
  Device device = Device::kCpu;
  // kGpu: the CUDA device ordinals to spread the vectors over, one partition each (an
  // ordinal may repeat); empty means every visible device. Ignored for kCpu.
  std::vector<int> gpus;
};

struct SearchParams {
  int nprobe = 0;     // IVF: inverted lists visited per query; 0 keeps the index default.
  int ef_search = 0;  // HNSW: candidate list size; 0 keeps the index default.
};

// Byte streams for index snapshots; implementations report I/O errors as Status.
class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual absl::Status Write(const void* data, size_t size) = 0;
};

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Exactly `size` bytes, or an error (DATA_LOSS at a premature end).
  virtual absl::Status Read(void* data, size_t size) = 0;
};

class Index {
 public:
  // Validates the spec; INVALID_ARGUMENT naming the field (dim, index_spec) if bad.
  static absl::StatusOr<std::unique_ptr<Index>> Create(const IndexSpec& spec);

  virtual ~Index() = default;
  Index(const Index&) = delete;
  Index& operator=(const Index&) = delete;

  virtual const IndexSpec& spec() const = 0;

  // Inserts vectors, replacing any vector already stored under the same id. An id
  // repeated within one call keeps its last vector. kNoId is not a valid id.
  virtual absl::Status Upsert(int64_t n, const uint64_t* ids, const float* x) = 0;

  // Removes the ids that exist; ids not present are ignored. `removed` (optional)
  // receives how many were present.
  virtual absl::Status Remove(int64_t n, const uint64_t* ids, int64_t* removed) = 0;

  // k nearest neighbours of each of the n queries: distances[n*k], labels[n*k].
  // 1 <= k <= kMaxK. Missing results are (kNoId, +inf for kL2 / -inf otherwise).
  virtual absl::Status Search(int64_t n, const float* queries, int k, const SearchParams& params,
                              float* distances, uint64_t* labels) const = 0;

  // Live vectors.
  virtual int64_t size() const = 0;

  // True once the underlying index is trained (always true for Flat and HNSW).
  virtual bool is_trained() const = 0;

  // Trains on n sample vectors now, instead of waiting for train_threshold
  // vectors; vectors already staged move into the trained index.
  // FAILED_PRECONDITION if already trained.
  virtual absl::Status Train(int64_t n, const float* x) = 0;

  // The trained parts (coarse quantizer, codebooks) without any vectors, as bytes,
  // so that other indexes of the same spec can share one training; "" when the
  // index needs no training. FAILED_PRECONDITION while untrained.
  virtual absl::StatusOr<std::string> TrainedTemplate() const = 0;

  // Adopts a TrainedTemplate() from an index of the same spec instead of training:
  // staged vectors move into it. FAILED_PRECONDITION if already trained.
  virtual absl::Status InstallTrained(const std::string& trained_template) = 0;

  // Writes the whole state (vectors, ids, training) for a snapshot; Load() reads it
  // back. Callers hold the index still (no mutation) while this runs.
  virtual absl::Status Save(ByteSink* sink) const = 0;

  // An index restored from Save() output, for the same spec. DATA_LOSS when the
  // bytes do not parse.
  static absl::StatusOr<std::unique_ptr<Index>> Load(const IndexSpec& spec, ByteSource* source);

 protected:
  Index() = default;
};

// Whether `a` ranks before `b` under `metric` (smaller L2, larger similarity).
inline bool Better(Metric metric, float a, float b) {
  return metric == Metric::kL2 ? a < b : a > b;
}

}  // namespace shardvec::index

#endif  // SHARDVEC_INDEX_INDEX_H_
