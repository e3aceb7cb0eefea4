// CUDA and cuBLAS results as absl::Status, for host code that calls them:
//
//   SV_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(...), "copy queries"));
#ifndef SHARDVEC_KERNELS_CUDA_STATUS_H_
#define SHARDVEC_KERNELS_CUDA_STATUS_H_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "absl/status/status.h"

namespace shardvec::kernels {

// OK for cudaSuccess. Otherwise RESOURCE_EXHAUSTED "<what>: GPU out of memory" for an
// allocation failure, else INTERNAL "<what>: <CUDA's message>"; the sticky launch error is
// cleared so that the next call starts clean.
absl::Status CudaStatus(cudaError_t e, const char* what);
// OK for CUBLAS_STATUS_SUCCESS, else INTERNAL "<what>: cuBLAS status <n>".
absl::Status CublasStatus(cublasStatus_t s, const char* what);

}  // namespace shardvec::kernels

#endif  // SHARDVEC_KERNELS_CUDA_STATUS_H_
