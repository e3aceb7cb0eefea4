#include "index/faiss_index.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <initializer_list>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "faiss/IVFlib.h"
#include "faiss/IndexFlat.h"
#include "faiss/IndexHNSW.h"
#include "faiss/IndexIDMap.h"
#include "faiss/IndexIVFPQ.h"
#include "faiss/IndexPQ.h"
#include "faiss/IndexPreTransform.h"
#include "faiss/impl/FaissAssert.h"
#include "faiss/impl/IDSelector.h"
#include "faiss/impl/io.h"
#include "faiss/index_factory.h"
#include "faiss/index_io.h"
#include "index/faiss_store.h"
#include "index/input_checks.h"

namespace shardvec::index {
namespace {

using internal::CheckArrays;
using internal::CheckFinite;
using internal::CheckIds;
using internal::CheckSpec;
using internal::ForMetric;
using internal::NormalizeRows;

using internal::CatchFaiss;
using internal::ToFaissMetric;
using internal::FaissStore;
using internal::NativeIdStore;
using internal::TombstoneStore;

// FAISS's k-means warns when given fewer training points per centroid than this.
constexpr int64_t kPointsPerCentroid = 39;
// Default for other indexes that train (PQ, SQ): enough for 256-centroid codebooks.
constexpr int64_t kDefaultTrainThreshold = kPointsPerCentroid * 256;

// The factory turns on polysemous training for PQ unless the string says "np". It
// only reorders codes for Hamming-filtered search, which is never enabled here, and
// it dominates training (48 s instead of 1.5 s for PQ8 on 10k vectors, 2 cores).
void SkipPolysemousTraining(faiss::Index* index) {
  if (auto* pre = dynamic_cast<faiss::IndexPreTransform*>(index)) index = pre->index;
  if (auto* hnsw = dynamic_cast<faiss::IndexHNSW*>(index)) index = hnsw->storage;
  if (auto* pq = dynamic_cast<faiss::IndexPQ*>(index)) pq->do_polysemous_training = false;
  if (auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(index)) ivfpq->do_polysemous_training = false;
}

absl::StatusOr<std::unique_ptr<faiss::Index>> BuildFaissIndex(const IndexSpec& spec) {
  std::unique_ptr<faiss::Index> index;
  try {
    index.reset(faiss::index_factory(spec.dim, spec.factory.c_str(), ToFaissMetric(spec.metric)));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_spec: cannot build '", spec.factory, "': ", e.what()));
  }
  if (dynamic_cast<const faiss::IndexIDMap*>(index.get()) != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "index_spec: '", spec.factory, "': drop the IDMap prefix, ids are managed here"));
  }
  // Some factory paths ignore the metric (HNSW<M>,PQ<m> is always L2 in 1.7.3).
  if (index->metric_type != ToFaissMetric(spec.metric)) {
    return absl::InvalidArgumentError(
        absl::StrCat("index_spec: FAISS builds '", spec.factory, "' only for another metric"));
  }
  SkipPolysemousTraining(index.get());
  return index;
}

// FAISS has no capability query, but remove_ids on an empty index is a no-op where
// it is supported and throws where it is not (HNSW).
bool SupportsRemove(faiss::Index& index) {
  try {
    index.remove_ids(faiss::IDSelectorRange(0, 0));
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

std::unique_ptr<FaissStore> StoreFor(std::unique_ptr<faiss::Index> index) {
  if (SupportsRemove(*index)) return NativeIdStore::Create(std::move(index));
  return std::make_unique<TombstoneStore>(std::move(index));
}

absl::StatusOr<std::unique_ptr<FaissStore>> MakeStore(const IndexSpec& spec) {
  absl::StatusOr<std::unique_ptr<faiss::Index>> index = BuildFaissIndex(spec);
  if (!index.ok()) return index.status();
  return StoreFor(std::move(*index));
}

// FAISS's stream interfaces over the project's ByteSink/ByteSource: a short count
// makes FAISS throw, and the underlying Status is kept for the caller.
class SinkWriter final : public faiss::IOWriter {
 public:
  explicit SinkWriter(ByteSink* sink) : sink_(sink) {}
  size_t operator()(const void* ptr, size_t size, size_t nitems) override {
    if (!status_.ok()) return 0;
    status_ = sink_->Write(ptr, size * nitems);
    return status_.ok() ? nitems : 0;
  }
  const absl::Status& status() const { return status_; }

 private:
  ByteSink* sink_;
  absl::Status status_;
};

class SourceReader final : public faiss::IOReader {
 public:
  explicit SourceReader(ByteSource* source) : source_(source) {}
  size_t operator()(void* ptr, size_t size, size_t nitems) override {
    if (!status_.ok()) return 0;
    status_ = source_->Read(ptr, size * nitems);
    return status_.ok() ? nitems : 0;
  }
  const absl::Status& status() const { return status_; }

 private:
  ByteSource* source_;
  absl::Status status_;
};

constexpr uint32_t kSaveMagic = 0x58495653;  // "SVIX"
constexpr uint32_t kSaveVersion = 1;

// The faiss index as bytes (FAISS's own serialization).
absl::StatusOr<std::string> Serialize(const faiss::Index& index) {
  faiss::VectorIOWriter writer;
  absl::Status status = CatchFaiss("serialize", [&] { faiss::write_index(&index, &writer); });
  if (!status.ok()) return status;
  return std::string(writer.data.begin(), writer.data.end());
}

absl::StatusOr<std::unique_ptr<faiss::Index>> Deserialize(const std::string& bytes) {
  faiss::VectorIOReader reader;
  reader.data.assign(bytes.begin(), bytes.end());
  std::unique_ptr<faiss::Index> index;
  absl::Status status = CatchFaiss("deserialize", [&] { index.reset(faiss::read_index(&reader)); });
  if (!status.ok()) return absl::InvalidArgumentError(std::string(status.message()));
  return index;
}

// Each IVF list needs at least one vector for k-means; other indexes one in all.
int64_t MinTrainingVectors(const faiss::Index& index) {
  const faiss::IndexIVF* ivf = faiss::ivflib::try_extract_index_ivf(&index);
  return ivf == nullptr ? 1 : static_cast<int64_t>(ivf->nlist);
}

// The spec's train_threshold, or its default; 0 when `index` needs no training.
absl::StatusOr<int64_t> ResolveTrainThreshold(const IndexSpec& spec, const faiss::Index& index) {
  if (index.is_trained) return 0;
  if (spec.train_threshold > 0) {
    if (spec.train_threshold < MinTrainingVectors(index)) {
      return absl::InvalidArgumentError(absl::StrCat("train_threshold: ", spec.train_threshold,
                                                     " is below nlist (", MinTrainingVectors(index),
                                                     ")"));
    }
    return spec.train_threshold;
  }
  const faiss::IndexIVF* ivf = faiss::ivflib::try_extract_index_ivf(&index);
  if (ivf == nullptr) return kDefaultTrainThreshold;
  int64_t threshold = kPointsPerCentroid * static_cast<int64_t>(ivf->nlist);
  // IVF-PQ also trains its codebooks (2^nbits centroids each) on the same vectors.
  if (const auto* ivfpq = dynamic_cast<const faiss::IndexIVFPQ*>(ivf)) {
    threshold = std::max(threshold, kPointsPerCentroid * static_cast<int64_t>(ivfpq->pq.ksub));
  }
  return threshold;
}

// One Upsert's input with repeated ids resolved (the last occurrence wins, as if the
// rows were applied in order) and vectors prepared for the metric. Points into the
// caller's arrays when no copy is needed.
class UpsertBatch {
 public:
  UpsertBatch(Metric metric, int dim, int64_t n, const uint64_t* ids, const float* x)
      : n_(n), ids_(ids), x_(x) {
    absl::flat_hash_map<uint64_t, int64_t> last;
    last.reserve(n);
    for (int64_t i = 0; i < n; ++i) last[ids[i]] = i;
    if (static_cast<int64_t>(last.size()) < n) {
      for (int64_t i = 0; i < n; ++i) {
        if (last[ids[i]] != i) continue;
        id_copy_.push_back(ids[i]);
        x_copy_.insert(x_copy_.end(), x + i * dim, x + (i + 1) * dim);
      }
      n_ = static_cast<int64_t>(id_copy_.size());
      ids_ = id_copy_.data();
      x_ = x_copy_.data();
    }
    x_ = ForMetric(metric, dim, n_, x_, &x_normalized_);
  }
  UpsertBatch(const UpsertBatch&) = delete;
  UpsertBatch& operator=(const UpsertBatch&) = delete;

  int64_t n() const { return n_; }
  const uint64_t* ids() const { return ids_; }
  const float* x() const { return x_; }

 private:
  int64_t n_;
  const uint64_t* ids_;
  const float* x_;
  std::vector<uint64_t> id_copy_;
  std::vector<float> x_copy_;
  std::vector<float> x_normalized_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<FaissIndex>> FaissIndex::Create(const IndexSpec& spec_in) {
  IndexSpec spec = spec_in;
  if (spec.factory.empty()) spec.factory = "Flat";
  if (absl::Status s = CheckSpec(spec); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<FaissStore>> store = MakeStore(spec);
  if (!store.ok()) return store.status();
  absl::StatusOr<int64_t> threshold = ResolveTrainThreshold(spec, (*store)->faiss_index());
  if (!threshold.ok()) return threshold.status();
  spec.train_threshold = *threshold;
  std::unique_ptr<NativeIdStore> staging;
  if (!(*store)->is_trained()) {
    staging = NativeIdStore::Create(
        std::make_unique<faiss::IndexFlat>(spec.dim, ToFaissMetric(spec.metric)));
  }
  return absl::WrapUnique(new FaissIndex(spec, std::move(*store), std::move(staging)));
}

FaissIndex::FaissIndex(const IndexSpec& spec, std::unique_ptr<FaissStore> store,
                       std::unique_ptr<NativeIdStore> staging)
    : spec_(spec), store_(std::move(store)), staging_(std::move(staging)) {}

FaissIndex::~FaissIndex() = default;

const FaissStore& FaissIndex::active() const {
  if (staging_ != nullptr) return *staging_;
  return *store_;
}

FaissStore& FaissIndex::active() {
  if (staging_ != nullptr) return *staging_;
  return *store_;
}

int64_t FaissIndex::size() const { return active().size(); }

int64_t FaissIndex::tombstones() const { return store_->tombstones(); }

absl::Status FaissIndex::Upsert(int64_t n, const uint64_t* ids, const float* x) {
  absl::Status status = CheckArrays(n, {ids, x});
  if (status.ok()) status = CheckIds(n, ids);
  if (status.ok()) status = CheckFinite("x", n, spec_.dim, x);
  if (!status.ok()) return status;
  const UpsertBatch batch(spec_.metric, spec_.dim, n, ids, x);
  status = active().Upsert(batch.n(), batch.ids(), batch.x());
  if (!status.ok()) return status;
  return TrainIfStagingFull();
}

absl::Status FaissIndex::Remove(int64_t n, const uint64_t* ids, int64_t* removed) {
  absl::Status status = CheckArrays(n, {ids});
  if (!status.ok()) return status;
  absl::StatusOr<int64_t> count = active().Remove(n, ids);
  if (!count.ok()) return count.status();
  if (removed != nullptr) *removed = *count;
  return absl::OkStatus();
}

const faiss::Index& FaissIndex::active_faiss_index() const { return active().faiss_index(); }

absl::Status FaissIndex::Search(int64_t n, const float* queries, int k, const SearchParams& params,
                                float* distances, uint64_t* labels) const {
  const absl::Status status = internal::CheckSearch(n, queries, k, kMaxK, "", params, spec_.dim,
                                                    distances, labels);
  if (!status.ok() || n == 0) return status;
  std::vector<float> buffer;
  const float* prepared = ForMetric(spec_.metric, spec_.dim, n, queries, &buffer);
  return active().Search(n, prepared, k, params, distances, labels);
}

absl::Status FaissIndex::Train(int64_t n, const float* x) {
  if (is_trained()) return absl::FailedPreconditionError("train: index is already trained");
  absl::Status status = CheckArrays(n, {x});
  if (!status.ok()) return status;
  const int64_t min_n = MinTrainingVectors(store_->faiss_index());
  if (n < min_n) {
    return absl::InvalidArgumentError(
        absl::StrCat("n: ", n, " training vectors, need at least ", min_n));
  }
  status = CheckFinite("x", n, spec_.dim, x);
  if (!status.ok()) return status;
  std::vector<float> buffer;
  return TrainAndDrain(n, ForMetric(spec_.metric, spec_.dim, n, x, &buffer));
}

absl::Status FaissIndex::TrainIfStagingFull() {
  if (staging_ == nullptr || staging_->size() < spec_.train_threshold) return absl::OkStatus();
  return TrainAndDrain(0, nullptr);
}

absl::Status FaissIndex::TrainAndDrain(int64_t n, const float* x) {
  std::vector<uint64_t> ids;
  std::vector<float> staged;
  absl::Status status = staging_->Export(&ids, &staged);
  if (!status.ok()) return status;
  const int64_t staged_n = static_cast<int64_t>(ids.size());
  if (!store_->is_trained()) {
    status = n > 0 ? store_->Train(n, x) : store_->Train(staged_n, staged.data());
    if (!status.ok()) return status;
    absl::StatusOr<std::string> bytes = Serialize(store_->faiss_index());
    if (!bytes.ok()) return bytes.status();
    trained_template_ = *std::move(bytes);
  }
  status = store_->Upsert(staged_n, ids.data(), staged.data());
  if (!status.ok()) return status;
  staging_.reset();
  return absl::OkStatus();
}

absl::StatusOr<std::string> FaissIndex::TrainedTemplate() const {
  if (!is_trained()) return absl::FailedPreconditionError("trained template: index is not trained yet");
  return trained_template_;
}

absl::Status FaissIndex::InstallTrained(const std::string& trained_template) {
  if (is_trained()) return absl::FailedPreconditionError("install trained: index is already trained");
  absl::StatusOr<std::unique_ptr<faiss::Index>> index = Deserialize(trained_template);
  if (!index.ok()) return absl::InvalidArgumentError(absl::StrCat("trained template: ", index.status().message()));
  if ((*index)->d != spec_.dim || (*index)->metric_type != ToFaissMetric(spec_.metric) || !(*index)->is_trained ||
      (*index)->ntotal != 0) {
    return absl::InvalidArgumentError("trained template: not an empty trained index of this collection's spec");
  }
  std::unique_ptr<FaissStore> previous = std::move(store_);
  store_ = StoreFor(*std::move(index));
  trained_template_ = trained_template;
  absl::Status status = TrainAndDrain(0, nullptr);
  if (!status.ok()) {
    store_ = std::move(previous);
    trained_template_.clear();
  }
  return status;
}

absl::Status FaissIndex::Save(ByteSink* sink) const {
  SinkWriter writer(sink);
  const uint8_t staged = staging_ != nullptr ? 1 : 0;
  absl::Status status = CatchFaiss("save", [&] {
    const uint32_t header[2] = {kSaveMagic, kSaveVersion};
    const uint64_t template_size = trained_template_.size();
    if (writer(header, sizeof(header), 1) != 1 || writer(&staged, 1, 1) != 1 ||
        writer(&template_size, sizeof(template_size), 1) != 1 ||
        (template_size > 0 && writer(trained_template_.data(), 1, template_size) != template_size)) {
      FAISS_THROW_MSG("write failed");
    }
    active().Save(&writer);
  });
  if (!writer.status().ok()) return writer.status();
  return status;
}

absl::StatusOr<std::unique_ptr<FaissIndex>> FaissIndex::Load(const IndexSpec& spec, ByteSource* source) {
  absl::StatusOr<std::unique_ptr<FaissIndex>> index = Create(spec);
  if (!index.ok()) return index.status();
  SourceReader reader(source);
  uint8_t staged = 0;
  std::unique_ptr<FaissStore> store;
  std::string trained_template;
  absl::Status status = CatchFaiss("load", [&] {
    uint32_t header[2] = {0, 0};
    uint64_t template_size = 0;
    if (reader(header, sizeof(header), 1) != 1 || header[0] != kSaveMagic || header[1] != kSaveVersion) {
      FAISS_THROW_MSG("not an index saved by this version");
    }
    if (reader(&staged, 1, 1) != 1 || reader(&template_size, sizeof(template_size), 1) != 1 ||
        template_size > (uint64_t{1} << 34)) {
      FAISS_THROW_MSG("bad header");
    }
    trained_template.resize(template_size);
    if (template_size > 0 && reader(trained_template.data(), 1, template_size) != template_size) {
      FAISS_THROW_MSG("truncated");
    }
    store = FaissStore::LoadStore(&reader);
  });
  if (!reader.status().ok()) return reader.status();
  if (!status.ok()) return absl::DataLossError(absl::StrCat("index snapshot: ", status.message()));
  const faiss::Index& loaded = store->faiss_index();
  if (loaded.d != spec.dim || loaded.metric_type != ToFaissMetric(spec.metric)) {
    return absl::DataLossError("index snapshot: dimension or metric differ from the collection's");
  }
  FaissIndex& result = **index;
  if (staged != 0) {
    auto* staging = dynamic_cast<NativeIdStore*>(store.get());
    if (staging == nullptr || result.staging_ == nullptr) {
      return absl::DataLossError("index snapshot: staged vectors for an index that needs no training");
    }
    store.release();
    result.staging_.reset(staging);
  } else {
    result.store_ = std::move(store);
    result.staging_.reset();
  }
  result.trained_template_ = std::move(trained_template);
  return index;
}

}  // namespace shardvec::index
