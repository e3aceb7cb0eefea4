#include "index/index.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

#include "absl/strings/match.h"
#include "index/faiss_index.h"
#include "index/gpu_index.h"
#ifdef SHARDVEC_FAISS_GPU
#include "index/faiss_gpu_index.h"
#endif

namespace shardvec::index {
namespace {

// "faiss:..." on a GPU picks FAISS's own GPU indexes, where this build has them.
bool WantsFaissGpu(const IndexSpec& spec) {
  return spec.device == Device::kGpu && absl::StartsWith(spec.factory, "faiss:");
}

#ifndef SHARDVEC_FAISS_GPU
absl::Status NoFaissGpu(const IndexSpec& spec) {
  return absl::InvalidArgumentError(absl::StrCat(
      "index_spec: '", spec.factory,
      "' needs FAISS's GPU backend; this build has none (build with --config=faiss_gpu)"));
}
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<Index>> Index::Create(const IndexSpec& spec) {
  if (WantsFaissGpu(spec)) {
#ifdef SHARDVEC_FAISS_GPU
    absl::StatusOr<std::unique_ptr<FaissGpuIndex>> index = FaissGpuIndex::Create(spec);
    if (!index.ok()) return index.status();
    return std::unique_ptr<Index>(std::move(*index));
#else
    return NoFaissGpu(spec);
#endif
  }
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
  if (WantsFaissGpu(spec)) {
#ifdef SHARDVEC_FAISS_GPU
    absl::StatusOr<std::unique_ptr<FaissGpuIndex>> index = FaissGpuIndex::Load(spec, source);
    if (!index.ok()) return index.status();
    return std::unique_ptr<Index>(std::move(*index));
#else
    return NoFaissGpu(spec);
#endif
  }
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
