// Device collectives among the T ranks of a tensor-parallel group, one process per GPU,
// through NCCL; and a host-staged adapter that gives any host Communicator (e.g. the
// in-process group) device-memory collectives, for tests on one GPU.
//
//   // rank 0:
//   std::string id = *llm::NewNcclId();           // hex, passed to the other ranks
//   // every rank r, after cudaSetDevice(gpu_of_r):
//   auto comm = llm::NcclCommunicator::Create(r, T, id, gpu_of_r);
//   (*comm)->AllReduceSum(d_buf, n, llm::CommType::kFloat32, stream);
//
// NVLink multicast (NVLS) is always switched off (NCCL_NVLS_ENABLE=0 is set before the
// communicator is created): it can put a shared host's GPUs out of service.
#ifndef SHARDVEC_LLM_CUDA_NCCL_COMM_H_
#define SHARDVEC_LLM_CUDA_NCCL_COMM_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "llm/comm.h"

namespace shardvec::llm {

// A fresh ncclUniqueId as 256 hex digits (made on rank 0, handed to the others).
absl::StatusOr<std::string> NewNcclId();
// The id through a file, for ranks started as separate processes.
absl::Status WriteNcclIdFile(const std::string& path, const std::string& hex_id);
absl::StatusOr<std::string> ReadNcclIdFile(const std::string& path);

// One rank's NCCL communicator: collectives are enqueued on the stream given to each call
// (cudaStream_t; nullptr means an internal stream, waited for before returning);
// BroadcastHost goes through a device buffer and is synchronous. Used by one thread.
class NcclCommunicator : public Communicator {
 public:
  // Blocks until all `size` ranks have joined with the same id. INVALID_ARGUMENT for a
  // rank outside [0, size) or an id that is not 256 hex digits.
  static absl::StatusOr<std::unique_ptr<NcclCommunicator>> Create(int rank, int size,
                                                                  const std::string& hex_id,
                                                                  int device);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status AllReduceSum(void* data, size_t count, CommType type, void* stream) override;
  absl::Status AllGather(const void* send, void* recv, size_t count, CommType type,
                         void* stream) override;
  absl::Status Broadcast(void* data, size_t count, CommType type, int root,
                         void* stream) override;
  absl::Status BroadcastHost(void* data, size_t bytes, int root) override;

 private:
  NcclCommunicator() = default;
  absl::Status Finish(void* stream, const char* what, int nccl_result);

  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  void* comm_ = nullptr;      // ncclComm_t
  void* stream_ = nullptr;    // cudaStream_t, internal
  void* staging_ = nullptr;   // device buffer of BroadcastHost
  size_t staging_bytes_ = 0;
};

// Device collectives over a host communicator: each call waits for `stream`, copies the
// device data to the host, runs the host collective and copies the result back. Every
// collective synchronizes, so models using it run without CUDA graphs. For tests of
// tensor parallelism with several models on one GPU (NCCL refuses two ranks on one GPU).
class HostStagedCommunicator : public Communicator {
 public:
  explicit HostStagedCommunicator(Communicator* host) : host_(host) {}
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  absl::Status AllReduceSum(void* data, size_t count, CommType type, void* stream) override;
  absl::Status AllGather(const void* send, void* recv, size_t count, CommType type,
                         void* stream) override;
  absl::Status Broadcast(void* data, size_t count, CommType type, int root,
                         void* stream) override;
  absl::Status BroadcastHost(void* data, size_t bytes, int root) override {
    return host_->BroadcastHost(data, bytes, root);
  }

 private:
  Communicator* host_;
  std::vector<uint8_t> send_, recv_;
};

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_CUDA_NCCL_COMM_H_
