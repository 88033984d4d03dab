// Error checks for CUDA runtime calls, usable from .cu files (no fmt here: the message is built
// in check.cpp). Reports the call, the CUDA error name and text, and file:line.
#pragma once

#include <cuda_runtime.h>

namespace mt::gpu {
[[noreturn]] void fail(const char* file, int line, const char* call, cudaError_t status);
// A refusal that is not a CUDA call's error (an mt::Error with the message and file:line).
[[noreturn]] void refuse(const char* file, int line, const char* message);
}  // namespace mt::gpu

#define MT_CUDA_CHECK(call)                                                  \
  do {                                                                       \
    cudaError_t mt_cuda_status_ = (call);                                    \
    if (mt_cuda_status_ != cudaSuccess) [[unlikely]] {                       \
      ::mt::gpu::fail(__FILE__, __LINE__, #call, mt_cuda_status_);          \
    }                                                                        \
  } while (0)
