#include "index/faiss_store.h"

#include <algorithm>
#include <limits>

#include "absl/memory/memory.h"
#include "faiss/IVFlib.h"
#include "faiss/IndexHNSW.h"
#include "faiss/IndexIDMap.h"
#include "faiss/IndexPreTransform.h"
#include "faiss/impl/FaissAssert.h"
#include "faiss/impl/IDSelector.h"
#include "faiss/impl/io.h"
#include "faiss/index_io.h"

namespace shardvec::index::internal {
namespace {

// FAISS's "no result" label. Only -1 counts: NativeIdStore ids >= 2^63 are negative
// labels but real ones.
constexpr FaissLabel kMissingLabel = -1;

// Bit-cast, so the whole uint64 range round-trips through FAISS's int64 labels.
FaissLabel ToLabel(uint64_t id) { return static_cast<FaissLabel>(id); }

// Copies the first k hits of each row of a FAISS result that is `fetched` wide,
// mapping labels through `to_id` (kNoId drops the hit), then pads the row.
template <typename ToId>
void CollectHits(int64_t n, int64_t fetched, const std::vector<float>& faiss_distances,
                 const std::vector<FaissLabel>& faiss_labels, int k, float pad, ToId to_id,
                 float* distances, uint64_t* labels) {
  for (int64_t q = 0; q < n; ++q) {
    float* row_distances = distances + q * k;
    uint64_t* row_labels = labels + q * k;
    int found = 0;
    for (int64_t j = q * fetched; j < (q + 1) * fetched && found < k; ++j) {
      if (faiss_labels[j] == kMissingLabel) continue;
      const uint64_t id = to_id(faiss_labels[j]);
      if (id == kNoId) continue;
      row_distances[found] = faiss_distances[j];
      row_labels[found] = id;
      ++found;
    }
    std::fill(row_distances + found, row_distances + k, pad);
    std::fill(row_labels + found, row_labels + k, kNoId);
  }
}

// The HNSW inside `index`, looking through a pre-transform; null if there is none.
const faiss::IndexHNSW* FindHnsw(const faiss::Index* index) {
  if (const auto* pre = dynamic_cast<const faiss::IndexPreTransform*>(index)) {
    index = pre->index;
  }
  return dynamic_cast<const faiss::IndexHNSW*>(index);
}

// Admits labels that are not tombstones.
class LiveLabels final : public faiss::IDSelector {
 public:
  explicit LiveLabels(const std::vector<uint64_t>& label_to_id) : label_to_id_(label_to_id) {}
  bool is_member(idx_t label) const override { return label_to_id_[label] != kNoId; }

 private:
  const std::vector<uint64_t>& label_to_id_;
};

enum StoreKind : uint8_t { kNative = 1, kTombstone = 2 };

template <typename T>
void WriteVector(faiss::IOWriter* w, const std::vector<T>& v) {
  uint64_t n = v.size();
  if ((*w)(&n, sizeof(n), 1) != 1 || (n > 0 && (*w)(v.data(), sizeof(T), n) != n)) {
    FAISS_THROW_MSG("snapshot write failed");
  }
}

template <typename T>
std::vector<T> ReadVector(faiss::IOReader* r) {
  uint64_t n = 0;
  if ((*r)(&n, sizeof(n), 1) != 1) FAISS_THROW_MSG("snapshot truncated");
  std::vector<T> v(n);
  if (n > 0 && (*r)(v.data(), sizeof(T), n) != n) FAISS_THROW_MSG("snapshot truncated");
  return v;
}

void WriteKind(faiss::IOWriter* w, StoreKind kind) {
  if ((*w)(&kind, 1, 1) != 1) FAISS_THROW_MSG("snapshot write failed");
}

}  // namespace

std::unique_ptr<FaissStore> FaissStore::LoadStore(faiss::IOReader* reader) {
  uint8_t kind = 0;
  if ((*reader)(&kind, 1, 1) != 1) FAISS_THROW_MSG("snapshot truncated");
  std::unique_ptr<faiss::Index> index(faiss::read_index(reader));
  if (kind == kNative) return NativeIdStore::Create(std::move(index));
  if (kind == kTombstone) return TombstoneStore::Load(std::move(index), reader);
  FAISS_THROW_MSG("snapshot: unknown store kind");
}

absl::Status FaissStore::Train(int64_t n, const float* x) {
  return CatchFaiss("train", [&] { index_->train(n, x); });
}

float FaissStore::missing_distance() const {
  return index_->metric_type == faiss::METRIC_L2 ? std::numeric_limits<float>::infinity()
                                                 : -std::numeric_limits<float>::infinity();
}

void FaissStore::FillMissing(int64_t n, int k, float* distances, uint64_t* labels) const {
  std::fill(distances, distances + n * k, missing_distance());
  std::fill(labels, labels + n * k, kNoId);
}

std::unique_ptr<NativeIdStore> NativeIdStore::Create(std::unique_ptr<faiss::Index> index) {
  std::unique_ptr<NativeIdStore> store;
  if (const faiss::IndexIVF* ivf = faiss::ivflib::try_extract_index_ivf(index.get())) {
    store = absl::WrapUnique(new NativeIdStore(std::move(index), ivf));
    const faiss::InvertedLists* lists = ivf->invlists;
    for (size_t list = 0; list < lists->nlist; ++list) {
      faiss::InvertedLists::ScopedIds ids(lists, list);
      for (size_t i = 0; i < lists->list_size(list); ++i) store->ids_.insert(static_cast<uint64_t>(ids[i]));
    }
    return store;
  }
  if (auto* existing = dynamic_cast<faiss::IndexIDMap*>(index.get())) {
    index.release();
    store = absl::WrapUnique(new NativeIdStore(std::unique_ptr<faiss::Index>(existing), nullptr));
    for (FaissLabel label : existing->id_map) store->ids_.insert(static_cast<uint64_t>(label));
    return store;
  }
  auto id_map = std::make_unique<faiss::IndexIDMap>(index.release());
  id_map->own_fields = true;
  return absl::WrapUnique(new NativeIdStore(std::move(id_map), nullptr));
}

void NativeIdStore::Save(faiss::IOWriter* writer) const {
  WriteKind(writer, kNative);
  faiss::write_index(index_.get(), writer);
}

void TombstoneStore::Save(faiss::IOWriter* writer) const {
  WriteKind(writer, kTombstone);
  faiss::write_index(index_.get(), writer);
  WriteVector(writer, label_to_id_);
  WriteVector(writer, empty_index_);
}

std::unique_ptr<TombstoneStore> TombstoneStore::Load(std::unique_ptr<faiss::Index> index,
                                                     faiss::IOReader* reader) {
  auto store = std::make_unique<TombstoneStore>(std::move(index));
  store->label_to_id_ = ReadVector<uint64_t>(reader);
  store->empty_index_ = ReadVector<uint8_t>(reader);
  if (static_cast<int64_t>(store->label_to_id_.size()) != store->index_->ntotal) {
    FAISS_THROW_MSG("snapshot: label table does not match the index");
  }
  for (FaissLabel label = 0; label < static_cast<FaissLabel>(store->label_to_id_.size()); ++label) {
    if (store->label_to_id_[label] == kNoId) {
      ++store->dead_;
    } else {
      store->id_to_label_[store->label_to_id_[label]] = label;
    }
  }
  return store;
}

absl::Status NativeIdStore::Upsert(int64_t n, const uint64_t* ids, const float* x) {
  if (n == 0) return absl::OkStatus();
  std::vector<FaissLabel> replaced;
  std::vector<FaissLabel> labels(n);
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = ToLabel(ids[i]);
    if (ids_.contains(ids[i])) replaced.push_back(labels[i]);
  }
  if (!replaced.empty()) {
    absl::Status status = RemovePresent(replaced);
    if (!status.ok()) return status;
  }
  absl::Status status = CatchFaiss("add", [&] { index_->add_with_ids(n, x, labels.data()); });
  if (!status.ok()) return status;
  ids_.insert(ids, ids + n);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> NativeIdStore::Remove(int64_t n, const uint64_t* ids) {
  std::vector<FaissLabel> present;
  for (int64_t i = 0; i < n; ++i) {
    if (ids_.contains(ids[i])) present.push_back(ToLabel(ids[i]));
  }
  // An id named twice is still removed once.
  std::sort(present.begin(), present.end());
  present.erase(std::unique(present.begin(), present.end()), present.end());
  if (present.empty()) return 0;
  absl::Status status = RemovePresent(present);
  if (!status.ok()) return status;
  return static_cast<int64_t>(present.size());
}

absl::Status NativeIdStore::RemovePresent(const std::vector<FaissLabel>& labels) {
  size_t removed = 0;
  absl::Status status = CatchFaiss("remove_ids", [&] {
    removed = index_->remove_ids(faiss::IDSelectorBatch(labels.size(), labels.data()));
  });
  if (!status.ok()) return status;
  for (FaissLabel label : labels) ids_.erase(static_cast<uint64_t>(label));
  if (removed != labels.size()) {
    return absl::InternalError(absl::StrCat("remove_ids: FAISS removed ", removed, " of ",
                                            labels.size(), " ids known to be present"));
  }
  return absl::OkStatus();
}

absl::Status NativeIdStore::Search(int64_t n, const float* x, int k, const SearchParams& params,
                                   float* distances, uint64_t* labels) const {
  if (size() == 0) {
    FillMissing(n, k, distances, labels);
    return absl::OkStatus();
  }
  faiss::SearchParametersIVF ivf_params;
  const faiss::SearchParameters* faiss_params = nullptr;
  if (ivf_ != nullptr) {
    // Per-call parameters, never ivf_->nprobe: concurrent searches may differ.
    ivf_params.nprobe = params.nprobe > 0 ? params.nprobe : ivf_->nprobe;
    ivf_params.max_codes = ivf_->max_codes;
    faiss_params = &ivf_params;
  }
  std::vector<float> faiss_distances(n * k);
  std::vector<FaissLabel> faiss_labels(n * k);
  absl::Status status = CatchFaiss("search", [&] {
    index_->search(n, x, k, faiss_distances.data(), faiss_labels.data(), faiss_params);
  });
  if (!status.ok()) return status;
  CollectHits(
      n, k, faiss_distances, faiss_labels, k, missing_distance(),
      [](FaissLabel label) { return static_cast<uint64_t>(label); }, distances, labels);
  return absl::OkStatus();
}

absl::Status NativeIdStore::Export(std::vector<uint64_t>* ids, std::vector<float>* x) const {
  const auto* id_map = dynamic_cast<const faiss::IndexIDMap*>(index_.get());
  if (id_map == nullptr) return absl::UnimplementedError("export: needs an IndexIDMap");
  ids->clear();
  for (FaissLabel label : id_map->id_map) ids->push_back(static_cast<uint64_t>(label));
  x->resize(id_map->ntotal * id_map->d);
  if (id_map->ntotal == 0) return absl::OkStatus();
  return CatchFaiss("export", [&] { id_map->index->reconstruct_n(0, id_map->ntotal, x->data()); });
}

absl::Status TombstoneStore::Upsert(int64_t n, const uint64_t* ids, const float* x) {
  if (n == 0) return absl::OkStatus();
  if (empty_index_.empty()) {
    faiss::VectorIOWriter writer;
    absl::Status status =
        CatchFaiss("snapshot", [&] { faiss::write_index(index_.get(), &writer); });
    if (!status.ok()) return status;
    empty_index_ = std::move(writer.data);
  }
  const FaissLabel first = index_->ntotal;
  absl::Status status = CatchFaiss("add", [&] { index_->add(n, x); });
  if (!status.ok()) return status;
  for (int64_t i = 0; i < n; ++i) {
    auto [it, inserted] = id_to_label_.try_emplace(ids[i], first + i);
    if (!inserted) {
      Kill(it->second);
      it->second = first + i;
    }
    label_to_id_.push_back(ids[i]);
  }
  return MaybeCompact();
}

absl::StatusOr<int64_t> TombstoneStore::Remove(int64_t n, const uint64_t* ids) {
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto it = id_to_label_.find(ids[i]);
    if (it == id_to_label_.end()) continue;
    Kill(it->second);
    id_to_label_.erase(it);
    ++removed;
  }
  absl::Status status = MaybeCompact();
  if (!status.ok()) return status;
  return removed;
}

absl::Status TombstoneStore::Search(int64_t n, const float* x, int k, const SearchParams& params,
                                    float* distances, uint64_t* labels) const {
  if (size() == 0) {
    FillMissing(n, k, distances, labels);
    return absl::OkStatus();
  }
  const int64_t ntotal = index_->ntotal;
  LiveLabels live(label_to_id_);
  faiss::SearchParametersHNSW hnsw_params;
  const faiss::SearchParameters* faiss_params = nullptr;
  // Without a selector, fetch enough that k live hits survive filtering.
  int64_t fetch = k + dead_;
  if (const faiss::IndexHNSW* hnsw = FindHnsw(index_.get())) {
    int64_t ef = params.ef_search > 0 ? params.ef_search : hnsw->hnsw.efSearch;
    // Tombstones still take candidate slots: widen the list so ~ef live ones fit.
    ef = std::min(ntotal, (ef * ntotal + size() - 1) / size());
    // FAISS 1.7.3 sizes the candidate list max(index efSearch, k) and uses the
    // per-call efSearch only to stop, so ask for ef results and keep the best k.
    fetch = std::max<int64_t>(k, ef);
    hnsw_params.efSearch = static_cast<int>(ef);
    hnsw_params.sel = dead_ > 0 ? &live : nullptr;
    faiss_params = &hnsw_params;
  }
  fetch = std::min(fetch, ntotal);
  std::vector<float> faiss_distances(n * fetch);
  std::vector<FaissLabel> faiss_labels(n * fetch);
  absl::Status status = CatchFaiss("search", [&] {
    index_->search(n, x, fetch, faiss_distances.data(), faiss_labels.data(), faiss_params);
  });
  if (!status.ok()) return status;
  CollectHits(
      n, fetch, faiss_distances, faiss_labels, k, missing_distance(),
      [this](FaissLabel label) { return label_to_id_[label]; }, distances, labels);
  return absl::OkStatus();
}

void TombstoneStore::Kill(FaissLabel label) {
  label_to_id_[label] = kNoId;
  ++dead_;
}

absl::Status TombstoneStore::MaybeCompact() {
  if (dead_ < kMinTombstonesToCompact || dead_ <= size()) return absl::OkStatus();
  return Compact();
}

absl::Status TombstoneStore::Compact() {
  const int64_t live = size();
  const int dim = index_->d;
  std::vector<uint64_t> ids;
  ids.reserve(live);
  std::vector<float> x(live * dim);
  std::unique_ptr<faiss::Index> fresh;
  // Builds the new index aside, so a failure leaves the old one in service.
  absl::Status status = CatchFaiss("compact", [&] {
    for (FaissLabel label = 0; label < index_->ntotal; ++label) {
      if (label_to_id_[label] == kNoId) continue;
      index_->reconstruct(label, x.data() + ids.size() * dim);
      ids.push_back(label_to_id_[label]);
    }
    faiss::VectorIOReader reader;
    reader.data = empty_index_;
    fresh.reset(faiss::read_index(&reader));
    if (live > 0) fresh->add(live, x.data());
  });
  if (!status.ok()) return status;
  index_ = std::move(fresh);
  label_to_id_ = std::move(ids);
  id_to_label_.clear();
  for (FaissLabel label = 0; label < live; ++label) id_to_label_[label_to_id_[label]] = label;
  dead_ = 0;
  return absl::OkStatus();
}

}  // namespace shardvec::index::internal
