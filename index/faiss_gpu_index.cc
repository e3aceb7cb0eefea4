#include "index/faiss_gpu_index.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "faiss/IndexIDMap.h"
#include "faiss/gpu/GpuCloner.h"
#include "faiss/gpu/GpuIndexIVF.h"
#include "faiss/gpu/StandardGpuResources.h"
#include "index/faiss_store.h"
#include "index/input_checks.h"
#include "kernels/knn.h"

namespace shardvec::index {
namespace {

// FAISS GPU's largest k (its block select).
constexpr int kFaissGpuMaxK = 2048;

using internal::CatchFaiss;

}  // namespace

absl::StatusOr<int> FaissGpuIndex::CheckSpec(const IndexSpec& spec, IndexSpec* cpu_spec) {
  if (!absl::StartsWith(spec.factory, kFaissGpuPrefix)) {
    return absl::InvalidArgumentError("index_spec: the FAISS GPU backend needs a faiss: prefix");
  }
  *cpu_spec = spec;
  cpu_spec->device = Device::kCpu;
  cpu_spec->factory = spec.factory.substr(sizeof(kFaissGpuPrefix) - 1);
  const std::string& f = cpu_spec->factory;
  const bool ivf_flat = absl::StartsWith(f, "IVF") && absl::EndsWith(f, ",Flat") &&
                        f.find(',') == f.rfind(',') && f.find('_') == std::string::npos;
  if (f != "Flat" && !ivf_flat) {
    return absl::InvalidArgumentError(absl::StrCat(
        "index_spec: '", spec.factory, "': the FAISS GPU backend takes faiss:Flat or faiss:IVF<n>,Flat"));
  }
  const int device = spec.gpus.empty() ? 0 : spec.gpus.front();
  const int count = kernels::DeviceCount();
  if (count == 0) {
    return absl::FailedPreconditionError(
        "device: collection asks for a GPU but this machine has none");
  }
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("device: GPU ", device, " requested, this machine has ", count));
  }
  return device;
}

FaissGpuIndex::FaissGpuIndex(const IndexSpec& spec, int device, std::unique_ptr<FaissIndex> cpu)
    : spec_(spec), device_(device), cpu_(std::move(cpu)) {
  spec_.train_threshold = cpu_->spec().train_threshold;
}

FaissGpuIndex::~FaissGpuIndex() {
  absl::MutexLock lock(&mu_);
  gpu_.reset();  // before the resources it allocated from
  resources_.reset();
}

absl::StatusOr<std::unique_ptr<FaissGpuIndex>> FaissGpuIndex::Create(const IndexSpec& spec) {
  IndexSpec cpu_spec;
  absl::StatusOr<int> device = CheckSpec(spec, &cpu_spec);
  if (!device.ok()) return device.status();
  absl::StatusOr<std::unique_ptr<FaissIndex>> cpu = FaissIndex::Create(cpu_spec);
  if (!cpu.ok()) return cpu.status();
  return absl::WrapUnique(new FaissGpuIndex(spec, *device, *std::move(cpu)));
}

absl::StatusOr<std::unique_ptr<FaissGpuIndex>> FaissGpuIndex::Load(const IndexSpec& spec,
                                                                   ByteSource* source) {
  IndexSpec cpu_spec;
  absl::StatusOr<int> device = CheckSpec(spec, &cpu_spec);
  if (!device.ok()) return device.status();
  absl::StatusOr<std::unique_ptr<FaissIndex>> cpu = FaissIndex::Load(cpu_spec, source);
  if (!cpu.ok()) return cpu.status();
  return absl::WrapUnique(new FaissGpuIndex(spec, *device, *std::move(cpu)));
}

absl::Status FaissGpuIndex::Upsert(int64_t n, const uint64_t* ids, const float* x) {
  absl::Status s = cpu_->Upsert(n, ids, x);
  absl::MutexLock lock(&mu_);
  dirty_ = true;  // also after an error: part of the call may have applied
  return s;
}

absl::Status FaissGpuIndex::Remove(int64_t n, const uint64_t* ids, int64_t* removed) {
  absl::Status s = cpu_->Remove(n, ids, removed);
  absl::MutexLock lock(&mu_);
  dirty_ = true;
  return s;
}

absl::Status FaissGpuIndex::Train(int64_t n, const float* x) {
  absl::Status s = cpu_->Train(n, x);
  absl::MutexLock lock(&mu_);
  dirty_ = true;
  return s;
}

absl::Status FaissGpuIndex::InstallTrained(const std::string& trained_template) {
  absl::Status s = cpu_->InstallTrained(trained_template);
  absl::MutexLock lock(&mu_);
  dirty_ = true;
  return s;
}

absl::Status FaissGpuIndex::Refresh() const {
  if (!dirty_ && gpu_ != nullptr) return absl::OkStatus();
  gpu_.reset();
  id_map_.clear();
  return CatchFaiss("FAISS GPU copy", [&] {
    if (resources_ == nullptr) resources_ = std::make_unique<faiss::gpu::StandardGpuResources>();
    const faiss::Index& source = cpu_->active_faiss_index();
    const faiss::Index* to_copy = &source;
    if (const auto* id_map = dynamic_cast<const faiss::IndexIDMap*>(&source)) {
      to_copy = id_map->index;
      id_map_ = id_map->id_map;
    }
    gpu_.reset(faiss::gpu::index_cpu_to_gpu(resources_.get(), device_, to_copy));
    dirty_ = false;
  });
}

absl::Status FaissGpuIndex::Search(int64_t n, const float* queries, int k,
                                   const SearchParams& params, float* distances,
                                   uint64_t* labels) const {
  absl::Status status = internal::CheckSearch(n, queries, k, kFaissGpuMaxK, "FAISS GPU's limit",
                                              params, spec_.dim, distances, labels);
  if (!status.ok() || n == 0) return status;
  std::vector<float> buffer;
  const float* prepared = internal::ForMetric(spec_.metric, spec_.dim, n, queries, &buffer);
  absl::MutexLock lock(&mu_);
  if (absl::Status s = Refresh(); !s.ok()) return s;
  std::vector<faiss::Index::idx_t> found(static_cast<size_t>(n) * k);
  status = CatchFaiss("FAISS GPU search", [&] {
    if (auto* ivf = dynamic_cast<faiss::gpu::GpuIndexIVF*>(gpu_.get())) {
      ivf->setNumProbes(std::min<int>(params.nprobe > 0 ? params.nprobe : 1, ivf->getNumLists()));
    }
    gpu_->search(n, prepared, k, distances, found.data());
  });
  if (!status.ok()) return status;
  const float missing = spec_.metric == Metric::kL2 ? std::numeric_limits<float>::infinity()
                                                    : -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < found.size(); ++i) {
    const faiss::Index::idx_t label = found[i];
    if (label == -1) {  // FAISS's "none"; other negative labels are ids >= 2^63
      labels[i] = kNoId;
      distances[i] = missing;
    } else {
      labels[i] = static_cast<uint64_t>(id_map_.empty() ? label : id_map_[label]);
    }
  }
  return absl::OkStatus();
}

}  // namespace shardvec::index
