// Collective operations among the T ranks of a tensor-parallel group.
//
// Two implementations: InProcessGroup (threads in one process, host memory; used by the
// CPU reference path and the CI tests) and NcclCommunicator (one process per GPU, device
// memory, enqueued on the given CUDA stream; see nccl_comm.h). Every rank calls every
// collective in the same order with the same sizes, as with NCCL.
#ifndef SHARDVEC_LLM_COMM_H_
#define SHARDVEC_LLM_COMM_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"

namespace shardvec::llm {

enum class CommType { kFloat32, kBFloat16, kInt32, kUInt8 };
// Bytes of one element of type t.
size_t CommTypeBytes(CommType t);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: data[i] = sum over ranks of data[i]. `stream` is a cudaStream_t for
  // device communicators and ignored by host ones.
  virtual absl::Status AllReduceSum(void* data, size_t count, CommType type,
                                    void* stream = nullptr) = 0;
  // recv holds size() * count elements: rank r's send lands at recv + r * count.
  virtual absl::Status AllGather(const void* send, void* recv, size_t count, CommType type,
                                 void* stream = nullptr) = 0;
  // In place: every rank's data becomes root's.
  virtual absl::Status Broadcast(void* data, size_t count, CommType type, int root,
                                 void* stream = nullptr) = 0;
  // Broadcast of host memory, synchronous (a device communicator stages it through a
  // device buffer); how rank 0 sends each step's batch to the followers.
  virtual absl::Status BroadcastHost(void* data, size_t bytes, int root) = 0;
};

// T host communicators that meet in shared memory; rank r's is Get(r), used by one
// thread. Collectives block until all T ranks have arrived.
class InProcessGroup {
 public:
  explicit InProcessGroup(int size);
  ~InProcessGroup();
  Communicator* Get(int rank);
  int size() const;

 private:
  struct Shared;
  std::unique_ptr<Shared> shared_;
  std::vector<std::unique_ptr<Communicator>> ranks_;
};

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_COMM_H_
