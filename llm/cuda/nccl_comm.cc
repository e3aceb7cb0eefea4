#include "llm/cuda/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace shardvec::llm {
namespace {

absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

ncclDataType_t NcclType(CommType t) {
  switch (t) {
    case CommType::kFloat32: return ncclFloat32;
    case CommType::kBFloat16: return ncclBfloat16;
    case CommType::kInt32: return ncclInt32;
    case CommType::kUInt8: return ncclUint8;
  }
  return ncclUint8;
}

constexpr char kHex[] = "0123456789abcdef";

absl::StatusOr<ncclUniqueId> IdFromHex(const std::string& hex) {
  ncclUniqueId id;
  if (hex.size() != 2 * sizeof(id.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("nccl id: expected ", 2 * sizeof(id.internal),
                                                   " hex digits, got ", hex.size()));
  }
  for (size_t i = 0; i < sizeof(id.internal); ++i) {
    int v = 0;
    for (int j = 0; j < 2; ++j) {
      const char c = hex[2 * i + j];
      const char* p = std::strchr(kHex, c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
      if (c == '\0' || p == nullptr) {
        return absl::InvalidArgumentError("nccl id: not a hex string");
      }
      v = v * 16 + static_cast<int>(p - kHex);
    }
    id.internal[i] = static_cast<char>(v);
  }
  return id;
}

}  // namespace

absl::StatusOr<std::string> NewNcclId() {
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  ncclUniqueId id;
  if (absl::Status s = NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"); !s.ok()) return s;
  std::string hex;
  hex.reserve(2 * sizeof(id.internal));
  for (char c : id.internal) {
    const unsigned char u = static_cast<unsigned char>(c);
    hex.push_back(kHex[u >> 4]);
    hex.push_back(kHex[u & 15]);
  }
  return hex;
}

absl::Status WriteNcclIdFile(const std::string& path, const std::string& hex_id) {
  std::ofstream out(path, std::ios::trunc);
  out << hex_id << "\n";
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write nccl id file ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadNcclIdFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("nccl id file ", path, " not found"));
  std::string hex;
  in >> hex;
  if (absl::StatusOr<ncclUniqueId> id = IdFromHex(hex); !id.ok()) return id.status();
  return hex;
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    int rank, int size, const std::string& hex_id, int device) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl rank ", rank, " is outside [0, ", size, ")"));
  }
  absl::StatusOr<ncclUniqueId> id = IdFromHex(hex_id);
  if (!id.ok()) return id.status();
  // Never NVLink multicast: see the header.
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  std::unique_ptr<NcclCommunicator> c(new NcclCommunicator());
  c->rank_ = rank;
  c->size_ = size;
  c->device_ = device;
  if (absl::Status s = CudaStatus(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  cudaStream_t stream = nullptr;
  if (absl::Status s = CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                                  "cudaStreamCreate");
      !s.ok()) {
    return s;
  }
  c->stream_ = stream;
  ncclComm_t comm = nullptr;
  if (absl::Status s = NcclStatus(ncclCommInitRank(&comm, size, *id, rank), "ncclCommInitRank");
      !s.ok()) {
    return s;
  }
  c->comm_ = comm;
  return c;
}

NcclCommunicator::~NcclCommunicator() {
  cudaSetDevice(device_);
  if (comm_ != nullptr) ncclCommDestroy(static_cast<ncclComm_t>(comm_));
  if (staging_ != nullptr) cudaFree(staging_);
  if (stream_ != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

absl::Status NcclCommunicator::Finish(void* stream, const char* what, int nccl_result) {
  if (absl::Status s = NcclStatus(static_cast<ncclResult_t>(nccl_result), what); !s.ok()) {
    return s;
  }
  if (stream == nullptr) {
    return CudaStatus(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), what);
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::AllReduceSum(void* data, size_t count, CommType type,
                                            void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream != nullptr ? stream : stream_);
  return Finish(stream, "ncclAllReduce",
                ncclAllReduce(data, data, count, NcclType(type), ncclSum,
                              static_cast<ncclComm_t>(comm_), s));
}

absl::Status NcclCommunicator::AllGather(const void* send, void* recv, size_t count,
                                         CommType type, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream != nullptr ? stream : stream_);
  return Finish(stream, "ncclAllGather",
                ncclAllGather(send, recv, count, NcclType(type), static_cast<ncclComm_t>(comm_), s));
}

absl::Status NcclCommunicator::Broadcast(void* data, size_t count, CommType type, int root,
                                         void* stream) {
  if (root < 0 || root >= size_) {
    return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root, " is not a rank"));
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream != nullptr ? stream : stream_);
  return Finish(stream, "ncclBroadcast",
                ncclBroadcast(data, data, count, NcclType(type), root,
                              static_cast<ncclComm_t>(comm_), s));
}

absl::Status NcclCommunicator::BroadcastHost(void* data, size_t bytes, int root) {
  if (bytes == 0) return absl::OkStatus();
  if (absl::Status s = CudaStatus(cudaSetDevice(device_), "cudaSetDevice"); !s.ok()) return s;
  if (bytes > staging_bytes_) {
    if (staging_ != nullptr) cudaFree(staging_);
    staging_ = nullptr;
    staging_bytes_ = 0;
    if (absl::Status s = CudaStatus(cudaMalloc(&staging_, bytes), "cudaMalloc"); !s.ok()) return s;
    staging_bytes_ = bytes;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream_);
  if (rank_ == root) {
    if (absl::Status st = CudaStatus(
            cudaMemcpyAsync(staging_, data, bytes, cudaMemcpyHostToDevice, s), "BroadcastHost");
        !st.ok()) {
      return st;
    }
  }
  if (absl::Status st = NcclStatus(ncclBroadcast(staging_, staging_, bytes, ncclUint8, root,
                                                 static_cast<ncclComm_t>(comm_), s),
                                   "ncclBroadcast");
      !st.ok()) {
    return st;
  }
  if (rank_ != root) {
    if (absl::Status st = CudaStatus(
            cudaMemcpyAsync(data, staging_, bytes, cudaMemcpyDeviceToHost, s), "BroadcastHost");
        !st.ok()) {
      return st;
    }
  }
  return CudaStatus(cudaStreamSynchronize(s), "BroadcastHost");
}

// ---------------------------------------------------------------- host-staged

namespace {

absl::Status ToHost(const void* src, size_t bytes, std::vector<uint8_t>* dst, void* stream) {
  dst->resize(bytes);
  if (absl::Status s = CudaStatus(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)),
                                  "cudaStreamSynchronize");
      !s.ok()) {
    return s;
  }
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(dst->data(), src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
}

absl::Status ToDevice(const std::vector<uint8_t>& src, void* dst) {
  if (src.empty()) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(dst, src.data(), src.size(), cudaMemcpyHostToDevice), "cudaMemcpy");
}

}  // namespace

absl::Status HostStagedCommunicator::AllReduceSum(void* data, size_t count, CommType type,
                                                  void* stream) {
  if (absl::Status s = ToHost(data, count * CommTypeBytes(type), &send_, stream); !s.ok()) return s;
  if (absl::Status s = host_->AllReduceSum(send_.data(), count, type, nullptr); !s.ok()) return s;
  return ToDevice(send_, data);
}

absl::Status HostStagedCommunicator::AllGather(const void* send, void* recv, size_t count,
                                               CommType type, void* stream) {
  const size_t bytes = count * CommTypeBytes(type);
  if (absl::Status s = ToHost(send, bytes, &send_, stream); !s.ok()) return s;
  recv_.resize(bytes * size());
  if (absl::Status s = host_->AllGather(send_.data(), recv_.data(), count, type, nullptr);
      !s.ok()) {
    return s;
  }
  return ToDevice(recv_, recv);
}

absl::Status HostStagedCommunicator::Broadcast(void* data, size_t count, CommType type, int root,
                                               void* stream) {
  if (absl::Status s = ToHost(data, count * CommTypeBytes(type), &send_, stream); !s.ok()) return s;
  if (absl::Status s = host_->Broadcast(send_.data(), count, type, root, nullptr); !s.ok()) {
    return s;
  }
  return ToDevice(send_, data);
}

}  // namespace shardvec::llm
