// CUDA runtime queries for the backend registry: device count and description. A machine
// without a GPU or driver reports zero devices (the error is cleared, not thrown), so the CPU
// suite runs anywhere the CUDA build links.
#include <cstdio>
#include <string>

#include "engine/core/backend.h"
#include "kernels/cuda/check.h"

namespace mt {

bool built_with_cuda() { return true; }

int cuda_device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();  // no driver or no device: clear the sticky error
      return 0;
    }
    return n;
  }();
  return count;
}

std::string cuda_device_description(int index) {
  if (index < 0 || index >= cuda_device_count()) return {};
  cudaDeviceProp prop{};
  MT_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  char text[384];
  std::snprintf(text, sizeof(text), "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                double(prop.totalGlobalMem) / double(1ull << 30));
  return text;
}

}  // namespace mt
