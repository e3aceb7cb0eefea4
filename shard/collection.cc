#include "shard/collection.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/validate.h"

namespace shardvec::shard {

index::Metric ToIndexMetric(v1::Metric metric) {
  switch (metric) {
    case v1::IP:
      return index::Metric::kInnerProduct;
    case v1::COSINE:
      return index::Metric::kCosine;
    default:
      return index::Metric::kL2;
  }
}

absl::StatusOr<std::unique_ptr<Collection>> Collection::Create(const v1::CollectionSpec& spec) {
  if (spec.device() == v1::GPU) {
    return absl::InvalidArgumentError(
        "device: this shard has no GPU index backend; create the collection with device cpu");
  }
  index::IndexSpec index_spec;
  index_spec.dim = static_cast<int>(spec.dim());
  index_spec.metric = ToIndexMetric(spec.metric());
  index_spec.factory = spec.index_spec();
  absl::StatusOr<std::unique_ptr<index::Index>> idx = index::Index::Create(index_spec);
  if (!idx.ok()) return idx.status();
  return std::unique_ptr<Collection>(new Collection(spec, *std::move(idx)));
}

absl::Status Collection::Upsert(const v1::UpsertRequest& req, v1::UpsertResponse* resp) {
  if (absl::Status s = ValidateUpsert(spec_, req); !s.ok()) return s;
  const int n = req.records_size();
  const int dim = static_cast<int>(spec_.dim());
  std::vector<uint64_t> ids(n);
  std::vector<float> vectors(static_cast<size_t>(n) * dim);
  std::vector<StoredRecord> stored(n);
  for (int i = 0; i < n; ++i) {
    const v1::Record& r = req.records(i);
    ids[i] = r.id();
    std::copy(r.vector().begin(), r.vector().end(), vectors.begin() + static_cast<size_t>(i) * dim);
    stored[i].vector.assign(r.vector().begin(), r.vector().end());
    if (r.has_payload()) stored[i].payload = r.payload().SerializeAsString();
  }

  absl::WriterMutexLock lock(&mu_);
  // The index can fail (training); the record map cannot, so it goes second.
  if (absl::Status s = index_->Upsert(n, ids.data(), vectors.data()); !s.ok()) return s;
  for (int i = 0; i < n; ++i) records_[ids[i]] = std::move(stored[i]);
  resp->set_upserted(n);
  return absl::OkStatus();
}

absl::Status Collection::Delete(const v1::DeleteRequest& req, v1::DeleteResponse* resp) {
  if (absl::Status s = ValidateIds("ids", req.ids()); !s.ok()) return s;
  std::vector<uint64_t> ids(req.ids().begin(), req.ids().end());
  absl::WriterMutexLock lock(&mu_);
  int64_t removed = 0;
  if (absl::Status s = index_->Remove(static_cast<int64_t>(ids.size()), ids.data(), &removed); !s.ok()) {
    return s;
  }
  for (uint64_t id : ids) records_.erase(id);
  resp->set_deleted(removed);
  return absl::OkStatus();
}

absl::Status Collection::Get(const v1::GetRequest& req, v1::GetResponse* resp) const {
  if (absl::Status s = ValidateIds("ids", req.ids()); !s.ok()) return s;
  absl::ReaderMutexLock lock(&mu_);
  for (uint64_t id : req.ids()) {
    auto it = records_.find(id);
    if (it == records_.end()) {
      resp->add_missing_ids(id);
      continue;
    }
    v1::Record* r = resp->add_records();
    r->set_id(id);
    if (req.include_vectors()) r->mutable_vector()->Add(it->second.vector.begin(), it->second.vector.end());
    if (req.include_payload() && !it->second.payload.empty()) {
      r->mutable_payload()->ParseFromString(it->second.payload);
    }
  }
  return absl::OkStatus();
}

absl::Status Collection::Search(const v1::SearchRequest& req, v1::SearchResponse* resp) const {
  if (absl::Status s = ValidateSearch(spec_, req); !s.ok()) return s;
  const int64_t nq = req.queries_size();
  const int k = req.k();
  const int dim = static_cast<int>(spec_.dim());
  std::vector<float> queries(static_cast<size_t>(nq) * dim);
  for (int64_t i = 0; i < nq; ++i) {
    const auto& v = req.queries(i).values();
    std::copy(v.begin(), v.end(), queries.begin() + i * dim);
  }
  index::SearchParams params;
  params.nprobe = static_cast<int>(req.params().nprobe());
  params.ef_search = static_cast<int>(req.params().ef_search());
  std::vector<float> distances(static_cast<size_t>(nq) * k);
  std::vector<uint64_t> labels(static_cast<size_t>(nq) * k);

  absl::ReaderMutexLock lock(&mu_);
  absl::Status s = index_->Search(nq, queries.data(), k, params, distances.data(), labels.data());
  if (!s.ok()) return s;
  for (int64_t i = 0; i < nq; ++i) {
    v1::QueryResult* result = resp->add_results();
    for (int j = 0; j < k; ++j) {
      uint64_t id = labels[i * k + j];
      if (id == index::kNoId) break;
      result->add_ids(id);
      result->add_distances(distances[i * k + j]);
      if (req.include_payload()) {
        auto it = records_.find(id);
        v1::Payload* payload = result->add_payloads();
        if (it != records_.end() && !it->second.payload.empty()) payload->ParseFromString(it->second.payload);
      }
    }
  }
  return absl::OkStatus();
}

shardrpc::CollectionStats Collection::Stats() const {
  shardrpc::CollectionStats stats;
  *stats.mutable_spec() = spec_;
  absl::ReaderMutexLock lock(&mu_);
  stats.set_num_records(records_.size());
  stats.set_index_trained(index_->is_trained());
  stats.set_num_indexed(index_->size());
  return stats;
}

}  // namespace shardvec::shard
