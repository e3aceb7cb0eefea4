// FAISS's own GPU indexes as an Index backend, the second GPU backend beside GpuIndex.
// Built only with --config=faiss_gpu (FAISS's GPU part comes from
// scripts/build_faiss_gpu.sh); select it with device=gpu and an index spec prefixed by
// "faiss:": "faiss:Flat" or "faiss:IVF<n>,Flat".
//
// Writes, training, templates and snapshots are FaissIndex's (CPU) for the same spec, so
// the semantics and the bytes are identical; a search runs on a GPU copy of that index
// (faiss::gpu::index_cpu_to_gpu), made again after any write. That suits load-then-serve
// use; under a steady stream of writes each search after a write pays for the copy.
// Thread-safe like Index: searches serialise on the GPU copy.
#ifndef SHARDVEC_INDEX_FAISS_GPU_INDEX_H_
#define SHARDVEC_INDEX_FAISS_GPU_INDEX_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "index/faiss_index.h"
#include "index/index.h"

namespace faiss {
struct Index;
namespace gpu {
class StandardGpuResources;
}
}  // namespace faiss

namespace shardvec::index {

inline constexpr char kFaissGpuPrefix[] = "faiss:";

class FaissGpuIndex final : public Index {
 public:
  // spec.factory "faiss:Flat" or "faiss:IVF<n>,Flat"; the GPU is spec.gpus[0] (default 0).
  static absl::StatusOr<std::unique_ptr<FaissGpuIndex>> Create(const IndexSpec& spec);
  static absl::StatusOr<std::unique_ptr<FaissGpuIndex>> Load(const IndexSpec& spec,
                                                             ByteSource* source);
  ~FaissGpuIndex() override;

  const IndexSpec& spec() const override { return spec_; }
  absl::Status Upsert(int64_t n, const uint64_t* ids, const float* x) override;
  absl::Status Remove(int64_t n, const uint64_t* ids, int64_t* removed) override;
  absl::Status Search(int64_t n, const float* queries, int k, const SearchParams& params,
                      float* distances, uint64_t* labels) const override;
  int64_t size() const override { return cpu_->size(); }
  bool is_trained() const override { return cpu_->is_trained(); }
  absl::Status Train(int64_t n, const float* x) override;
  absl::StatusOr<std::string> TrainedTemplate() const override { return cpu_->TrainedTemplate(); }
  absl::Status InstallTrained(const std::string& trained_template) override;
  absl::Status Save(ByteSink* sink) const override { return cpu_->Save(sink); }

 private:
  FaissGpuIndex(const IndexSpec& spec, int device, std::unique_ptr<FaissIndex> cpu);
  static absl::StatusOr<int> CheckSpec(const IndexSpec& spec, IndexSpec* cpu_spec);
  // Rebuilds the GPU copy if a write happened since the last one. Needs mu_.
  absl::Status Refresh() const;

  IndexSpec spec_;
  int device_;
  std::unique_ptr<FaissIndex> cpu_;
  mutable absl::Mutex mu_;
  mutable std::unique_ptr<faiss::gpu::StandardGpuResources> resources_;
  mutable std::unique_ptr<faiss::Index> gpu_;
  // Labels of gpu_ -> user ids, when gpu_ is the inner index of an IndexIDMap.
  mutable std::vector<int64_t> id_map_;
  mutable bool dirty_ = true;
};

}  // namespace shardvec::index

#endif  // SHARDVEC_INDEX_FAISS_GPU_INDEX_H_
