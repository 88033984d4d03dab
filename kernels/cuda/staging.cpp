// Pinned staging buffers for host-to-device copies (see staging.h). Each buffer carries an
// event recorded after the copy that reads it; a buffer is reused once its event has completed
// (cudaEventQuery, which does not wait), and a new one is pinned otherwise. Copies above 64 MiB
// go straight from pageable memory (the wait costs little next to the copy). Copies made while
// the stream is being captured into a CUDA graph read a pinned buffer owned by the capture
// instead: the graph's memcpy node reads it at every replay.
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

// Host copies of the transfers recorded by graph captures, by (device, capture id): pinned, kept
// until the capture's graph is destroyed.
class CaptureCopies {
 public:
  void copy(void* dst, const void* src, size_t nbytes, int device, unsigned long long id) {
    DeviceGuard guard(device);
    void* host = nullptr;
    MT_CUDA_CHECK(cudaHostAlloc(&host, nbytes, cudaHostAllocDefault));
    std::memcpy(host, src, nbytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      buffers_[{device, id}].push_back(host);
    }
    MT_CUDA_CHECK(cudaMemcpyAsync(dst, host, nbytes, cudaMemcpyHostToDevice, stream(device)));
  }
  void release(int device, unsigned long long id) {
    std::vector<void*> freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = buffers_.find({device, id});
      if (it == buffers_.end()) return;
      freed = std::move(it->second);
      buffers_.erase(it);
    }
    DeviceGuard guard(device);
    for (void* p : freed) (void)cudaFreeHost(p);
  }

 private:
  std::mutex mutex_;
  std::map<std::pair<int, unsigned long long>, std::vector<void*>> buffers_;
};

CaptureCopies& capture_copies() {
  static auto* copies = new CaptureCopies;  // never destroyed, as the staging buffers
  return *copies;
}

}  // namespace

void copy_host_to_device(void* dst, const void* src, size_t nbytes, int device) {
  if (nbytes == 0) return;
  if (const unsigned long long id = current_capture_id(device); id != 0) {
    capture_copies().copy(dst, src, nbytes, device, id);
    return;
  }
  if (nbytes > kMaxStaged) {
    DeviceGuard guard(device);
    MT_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream(device)));
    return;
  }
  static auto* staging = new Staging;  // never destroyed (pinned memory outlives the runtime)
  staging->copy(dst, src, nbytes, device);
}

void release_capture_copies(int device, unsigned long long capture_id) {
  capture_copies().release(device, capture_id);
}

}  // namespace mt::gpu
