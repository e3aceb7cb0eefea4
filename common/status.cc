#include "common/status.h"

#include "absl/strings/str_cat.h"

namespace shardvec {

std::string Describe(const grpc::Status& s) {
  absl::Status as = FromGrpc(s);
  return absl::StrCat(absl::StatusCodeToString(as.code()), ": ", as.message());
}

}  // namespace shardvec
