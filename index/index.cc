#include "index/index.h"

#include <memory>
#include <utility>

#include "index/faiss_index.h"
#include "index/gpu_index.h"

namespace shardvec::index {

absl::StatusOr<std::unique_ptr<Index>> Index::Create(const IndexSpec& spec) {
  if (spec.device == Device::kGpu) {
    absl::StatusOr<std::unique_ptr<GpuIndex>> index = GpuIndex::Create(spec);
    if (!index.ok()) return index.status();
    return std::unique_ptr<Index>(std::move(*index));
  }
  absl::StatusOr<std::unique_ptr<FaissIndex>> index = FaissIndex::Create(spec);
  if (!index.ok()) return index.status();
  return std::unique_ptr<Index>(std::move(*index));
}

absl::StatusOr<std::unique_ptr<Index>> Index::Load(const IndexSpec& spec, ByteSource* source) {
  if (spec.device == Device::kGpu) {
    absl::StatusOr<std::unique_ptr<GpuIndex>> index = GpuIndex::Load(spec, source);
    if (!index.ok()) return index.status();
    return std::unique_ptr<Index>(std::move(*index));
  }
  absl::StatusOr<std::unique_ptr<FaissIndex>> index = FaissIndex::Load(spec, source);
  if (!index.ok()) return index.status();
  return std::unique_ptr<Index>(std::move(*index));
}

}  // namespace shardvec::index
