// Conversions between absl::Status (used inside every module) and grpc::Status (used
// only at RPC boundaries). absl::StatusCode values are gRPC's canonical codes, so the
// mapping is one to one and the message passes through unchanged.
#ifndef SHARDVEC_COMMON_STATUS_H_
#define SHARDVEC_COMMON_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace shardvec {

inline grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

inline absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

// "UNAVAILABLE: connection refused" style text for logs and coverage records.
std::string Describe(const grpc::Status& s);

// Returns from the enclosing function (which returns grpc::Status) on error.
#define SHARDVEC_RETURN_IF_ERROR_GRPC(expr)            \
  do {                                                 \
    const absl::Status _st = (expr);                   \
    if (!_st.ok()) return ::shardvec::ToGrpc(_st);     \
  } while (0)

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_STATUS_H_
