// Pinned staging buffers for host-to-device copies (see staging.h). Each buffer carries an
// event recorded after the copy that reads it; a buffer is reused once its event has completed
// (cudaEventQuery, which does not wait), and a new one is pinned otherwise. Copies above 64 MiB
// go straight from pageable memory (the wait costs little next to the copy), as do copies made
// while the stream is being captured into a CUDA graph.
#include "kernels/cuda/staging.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "kernels/cuda/allocator.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/stream.h"

namespace mt::gpu {
namespace {

constexpr size_t kMinBuffer = size_t(64) << 10;
constexpr size_t kMaxStaged = size_t(64) << 20;

struct Buffer {
  void* host = nullptr;
  size_t size = 0;
  cudaEvent_t done = nullptr;
};

bool completed(cudaEvent_t e) {
  const cudaError_t status = cudaEventQuery(e);
  if (status == cudaErrorNotReady) {
    (void)cudaGetLastError();  // not an error: clear it
    return false;
  }
  MT_CUDA_CHECK(status);
  return true;
}

class Staging {
 public:
  void copy(void* dst, const void* src, size_t nbytes, int device) {
    cudaStream_t s = stream(device);
    DeviceGuard guard(device);
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::unique_ptr<Buffer>>& pool = pools_[device];
    Buffer* b = nullptr;
    for (auto& c : pool) {
      if (c->size >= nbytes && (b == nullptr || c->size < b->size) && completed(c->done)) b = c.get();
    }
    if (b == nullptr) {
      auto fresh = std::make_unique<Buffer>();
      fresh->size = std::max(kMinBuffer, std::bit_ceil(nbytes));
      MT_CUDA_CHECK(cudaHostAlloc(&fresh->host, fresh->size, cudaHostAllocDefault));
      MT_CUDA_CHECK(cudaEventCreateWithFlags(&fresh->done, cudaEventDisableTiming));
      b = fresh.get();
      pool.push_back(std::move(fresh));
    }
    std::memcpy(b->host, src, nbytes);
    MT_CUDA_CHECK(cudaMemcpyAsync(dst, b->host, nbytes, cudaMemcpyHostToDevice, s));
    MT_CUDA_CHECK(cudaEventRecord(b->done, s));
  }

 private:
  std::mutex mutex_;
  std::map<int, std::vector<std::unique_ptr<Buffer>>> pools_;  // device -> buffers (never freed)
};

}  // namespace

void copy_host_to_device(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  if (nbytes > kMaxStaged || current_capture_id(device) != 0) {
    DeviceGuard guard(device);
    MT_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream(device)));
    return;
  }
  static auto* staging = new Staging;  // never destroyed (pinned memory outlives the runtime)
  staging->copy(dst, src, nbytes, device);
}

}  // namespace mt::gpu
