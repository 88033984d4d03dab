#include "kernels/cuda/check.h"

#include "engine/core/error.h"

namespace mt::gpu {

void fail(const char* file, int line, const char* call, cudaError_t status) {
  ::mt::detail::fail(file, line,
                     fmt::format("CUDA error {} ({}) in {}", cudaGetErrorName(status),
                                 cudaGetErrorString(status), call));
}

void refuse(const char* file, int line, const char* message) {
  ::mt::detail::fail(file, line, message);
}

}  // namespace mt::gpu
