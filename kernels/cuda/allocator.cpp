// The CUDA caching allocator: the engine's CachingAllocator (engine/core/caching_allocator.h)
// over cudaMalloc/cudaFree, the per-device compute streams and their capture state.
#include "kernels/cuda/allocator.h"

#include <cuda_runtime.h>

#include "engine/core/caching_allocator.h"
#include "engine/core/error.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/stream.h"

namespace mt::gpu {
namespace {

class CudaSegmentSource final : public SegmentSource {
 public:
  void* allocate_segment(size_t bytes, int device) override {
    DeviceGuard guard(device);
    void* p = nullptr;
    const cudaError_t status = cudaMalloc(&p, bytes);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // not sticky; clear it so later checks do not see it
      return nullptr;
    }
    MT_CUDA_CHECK(status);
    return p;
  }
  // cudaFree waits for the device, so no kernel still uses the segment.
  void free_segment(void* ptr, size_t, int device) override {
    DeviceGuard guard(device);
    MT_CUDA_CHECK(cudaFree(ptr));
  }
  const void* stream(int device) override { return gpu::stream(device); }
  unsigned long long capture_id(int device) noexcept override {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    unsigned long long id = 0;
    try {
      if (cudaStreamGetCaptureInfo(gpu::stream(device), &status, &id) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
      }
    } catch (...) {  // no such device: nothing is capturing on it
      return 0;
    }
    return status == cudaStreamCaptureStatusActive ? id : 0;
  }
  std::string memory_info(int device) override {
    DeviceGuard guard(device);
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
      (void)cudaGetLastError();
      return {};
    }
    return fmt::format("the device has {:.1f} MiB free of {:.1f} MiB",
                       double(free_bytes) / double(1 << 20), double(total_bytes) / double(1 << 20));
  }
  const char* name() const override { return "CUDA"; }
};

// Never destroyed: tensors freed during static destruction still find it, and no cudaFree runs
// after the CUDA runtime has shut down.
CachingAllocator& the_allocator() {
  static auto* source = new CudaSegmentSource;
  static auto* allocator = new CachingAllocator(*source);
  return *allocator;
}

}  // namespace

Allocator* caching_allocator() { return &the_allocator(); }

unsigned long long current_capture_id(int device) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  unsigned long long id = 0;
  MT_CUDA_CHECK(cudaStreamGetCaptureInfo(stream(device), &status, &id));
  return status == cudaStreamCaptureStatusActive ? id : 0;
}

void release_graph_pool(int device, unsigned long long capture_id) {
  the_allocator().release_graph_pool(device, capture_id);
}

int64_t graph_pool_bytes(int device) { return the_allocator().graph_pool_bytes(device); }

}  // namespace mt::gpu
