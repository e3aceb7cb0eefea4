#include "common/validate.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace shardvec {
namespace {

absl::Status Invalid(const std::string& msg) { return absl::InvalidArgumentError(msg); }

// `field` names the vector, e.g. "records[3].vector".
absl::Status CheckVector(const std::string& field, const v1::CollectionSpec& spec,
                         const google::protobuf::RepeatedField<float>& v) {
  if (v.size() != static_cast<int>(spec.dim())) {
    return Invalid(absl::StrFormat("%s: dimension %d does not match collection '%s' (dim %d)", field,
                                   v.size(), spec.name(), spec.dim()));
  }
  const int64_t j = FirstNonFinite(v.data(), v.size());
  if (j < 0) return absl::OkStatus();
  return Invalid(absl::StrFormat("%s[%d]: %s is not allowed in a vector", field, j, std::isnan(v[j]) ? "NaN" : "Inf"));
}

}  // namespace

int64_t FirstNonFinite(const float* x, int64_t n) {
  bool all_finite = true;
  for (int64_t i = 0; i < n; ++i) all_finite &= (x[i] - x[i] == 0.0f);  // false for NaN and +-Inf
  if (all_finite) return -1;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) return i;
  }
  return -1;
}

absl::Status ValidateCollectionName(const std::string& name) {
  if (name.empty()) return Invalid("name: the collection name is empty");
  if (name.size() > 64) return Invalid("name: longer than 64 characters");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-';
    if (!ok) return Invalid(absl::StrCat("name: '", name, "' may use only letters, digits, '_' and '-'"));
  }
  return absl::OkStatus();
}

absl::Status NormalizeCollectionSpec(v1::CollectionSpec* spec) {
  if (absl::Status s = ValidateCollectionName(spec->name()); !s.ok()) return s;
  if (spec->dim() < 1 || spec->dim() > static_cast<uint32_t>(kMaxDim)) {
    return Invalid(absl::StrFormat("dim: %d is out of range [1, %d]", spec->dim(), kMaxDim));
  }
  if (spec->metric() == v1::METRIC_UNSPECIFIED) spec->set_metric(v1::L2);
  if (!v1::Metric_IsValid(spec->metric())) {
    return Invalid(absl::StrFormat("metric: unknown value %d", spec->metric()));
  }
  if (spec->index_spec().empty()) spec->set_index_spec("Flat");
  if (spec->device() == v1::DEVICE_UNSPECIFIED) spec->set_device(v1::CPU);
  if (!v1::Device_IsValid(spec->device())) {
    return Invalid(absl::StrFormat("device: unknown value %d", spec->device()));
  }
  return absl::OkStatus();
}

absl::Status ValidateBlock(const v1::CollectionSpec& spec, const v1::RecordBlock& block) {
  const size_t n = static_cast<size_t>(block.ids_size());
  const size_t row_bytes = static_cast<size_t>(spec.dim()) * sizeof(float);
  if (block.vectors().size() != n * row_bytes) {
    return Invalid(absl::StrFormat(
        "block.vectors: %d bytes for %d ids does not match collection '%s' (dim %d, so %d bytes)",
        block.vectors().size(), n, spec.name(), spec.dim(), n * row_bytes));
  }
  if (block.payloads_size() != 0 && static_cast<size_t>(block.payloads_size()) != n) {
    return Invalid(absl::StrFormat("block.payloads: %d, expected none or one per id (%d)", block.payloads_size(), n));
  }
  const float* x = reinterpret_cast<const float*>(block.vectors().data());
  if (const int64_t bad = FirstNonFinite(x, static_cast<int64_t>(n * spec.dim())); bad >= 0) {
    return Invalid(absl::StrFormat("block.vectors[%d][%d]: %s is not allowed in a vector", bad / spec.dim(),
                                   bad % spec.dim(), std::isnan(x[bad]) ? "NaN" : "Inf"));
  }
  for (size_t i = 0; i < n; ++i) {
    if (block.ids(static_cast<int>(i)) == ~uint64_t{0}) {
      return Invalid(absl::StrFormat("block.ids[%d]: 18446744073709551615 is reserved", i));
    }
    if (block.payloads_size() > 0 &&
        block.payloads(static_cast<int>(i)).ByteSizeLong() > static_cast<size_t>(kMaxPayloadBytes)) {
      return Invalid(absl::StrFormat("block.payloads[%d]: exceeds the limit of %d bytes", i, kMaxPayloadBytes));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateUpsert(const v1::CollectionSpec& spec, const v1::UpsertRequest& req) {
  const int total = req.records_size() + req.block().ids_size();
  if (total == 0) return Invalid("records: empty batch");
  if (total > kMaxRecordsPerWrite) {
    return Invalid(absl::StrFormat("records: batch of %d exceeds the limit of %d per request", total,
                                   kMaxRecordsPerWrite));
  }
  if (absl::Status s = ValidateBlock(spec, req.block()); !s.ok()) return s;
  for (int i = 0; i < req.records_size(); ++i) {
    const v1::Record& r = req.records(i);
    if (r.id() == ~uint64_t{0}) {
      return Invalid(absl::StrFormat("records[%d].id: 18446744073709551615 is reserved", i));
    }
    if (absl::Status s = CheckVector(absl::StrFormat("records[%d].vector", i), spec, r.vector()); !s.ok()) {
      return s;
    }
    if (r.payload().ByteSizeLong() > static_cast<size_t>(kMaxPayloadBytes)) {
      return Invalid(absl::StrFormat("records[%d].payload: %d bytes exceeds the limit of %d", i,
                                     r.payload().ByteSizeLong(), kMaxPayloadBytes));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateIds(const char* field, const google::protobuf::RepeatedField<uint64_t>& ids) {
  if (ids.empty()) return Invalid(absl::StrCat(field, ": empty batch"));
  if (ids.size() > kMaxRecordsPerWrite) {
    return Invalid(absl::StrFormat("%s: batch of %d exceeds the limit of %d per request", field, ids.size(),
                                   kMaxRecordsPerWrite));
  }
  return absl::OkStatus();
}

absl::Status ValidateTrainSamples(const v1::CollectionSpec& spec, const v1::TrainRequest& req) {
  for (int i = 0; i < req.samples_size(); ++i) {
    if (absl::Status s = CheckVector(absl::StrFormat("samples[%d]", i), spec, req.samples(i).values()); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateSearch(const v1::CollectionSpec& spec, const v1::SearchRequest& req) {
  if (req.queries_size() == 0) return Invalid("queries: empty batch");
  if (req.queries_size() > kMaxQueriesPerSearch) {
    return Invalid(absl::StrFormat("queries: batch of %d exceeds the limit of %d per request",
                                   req.queries_size(), kMaxQueriesPerSearch));
  }
  if (req.k() < 1 || req.k() > kMaxTopK) {
    return Invalid(absl::StrFormat("k: %d is out of range [1, %d]", req.k(), kMaxTopK));
  }
  if (int64_t{req.queries_size()} * req.k() > kMaxResultsPerSearch) {
    return Invalid(absl::StrFormat("k: %d queries x k %d exceeds the limit of %d results per request",
                                   req.queries_size(), req.k(), kMaxResultsPerSearch));
  }
  if (req.params().nprobe() > 1u << 20) return Invalid("params.nprobe: out of range");
  if (req.params().ef_search() > 1u << 20) return Invalid("params.ef_search: out of range");
  for (int i = 0; i < req.queries_size(); ++i) {
    if (absl::Status s = CheckVector(absl::StrFormat("queries[%d]", i), spec, req.queries(i).values());
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace shardvec
