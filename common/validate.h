// Request validation shared by the router (the edge) and the shard (defence in depth).
// Every error is INVALID_ARGUMENT and names the offending field, e.g.
// "queries[3]: dimension 127 does not match collection 'docs' (dim 128)".
#ifndef SHARDVEC_COMMON_VALIDATE_H_
#define SHARDVEC_COMMON_VALIDATE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "proto/shardvec.pb.h"

namespace shardvec {

inline constexpr int kMaxDim = 65536;
inline constexpr int kMaxTopK = 4096;
inline constexpr int kMaxQueriesPerSearch = 16384;
inline constexpr int kMaxRecordsPerWrite = 100000;
inline constexpr int kMaxPayloadBytes = 1 << 20;
// Training sample per collection (FAISS uses at most 256 x nlist of it anyway).
inline constexpr int64_t kMaxTrainingVectors = int64_t{1} << 20;
// gRPC message limit on every server and client of the project.
inline constexpr int kMaxMessageBytes = 64 << 20;
// queries x k per search, so that a response fits in one message.
inline constexpr int64_t kMaxResultsPerSearch = int64_t{1} << 22;

// Index of the first NaN or +-Inf among x[0..n), or -1. A branch-free pass comes
// first (it vectorises): this runs over every component of every write.
int64_t FirstNonFinite(const float* x, int64_t n);

absl::Status ValidateCollectionName(const std::string& name);

// Fills defaults (metric L2, index "Flat", device CPU) and validates.
absl::Status NormalizeCollectionSpec(v1::CollectionSpec* spec);

// Both the records and the columnar block (its vector bytes must be ids x dim x 4).
absl::Status ValidateUpsert(const v1::CollectionSpec& spec, const v1::UpsertRequest& req);
absl::Status ValidateIds(const char* field, const google::protobuf::RepeatedField<uint64_t>& ids);
// Samples of one TrainRequest message: dimension and finiteness.
absl::Status ValidateTrainSamples(const v1::CollectionSpec& spec, const v1::TrainRequest& req);

absl::Status ValidateSearch(const v1::CollectionSpec& spec, const v1::SearchRequest& req);

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_VALIDATE_H_
