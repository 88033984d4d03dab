// Per-device compute streams, multiprocessor counts and the device guard (see stream.h).
#include "kernels/cuda/stream.h"

#include <array>
#include <atomic>
#include <mutex>

#include "engine/core/backend.h"
#include "engine/core/error.h"
#include "kernels/cuda/allocator.h"
#include "kernels/cuda/check.h"

namespace mt::gpu {
namespace {

constexpr int kMaxDevices = 64;

void check_device(int device) {
  MT_CHECK(device >= 0 && device < cuda_device_count(),
           "cuda:{} does not exist: {} CUDA device(s) are visible{}", device, cuda_device_count(),
           cuda_device_count() == 0 ? " (no GPU or no driver on this machine)" : "");
  MT_CHECK(device < kMaxDevices, "cuda:{}: metatape supports at most {} devices", device,
           kMaxDevices);
}

}  // namespace

namespace {
std::array<std::atomic<cudaStream_t>, kMaxDevices> streams{};
std::array<std::once_flag, kMaxDevices> created;
}  // namespace

cudaStream_t stream(int device) {
  check_device(device);
  std::call_once(created[size_t(device)], [device] {
    DeviceGuard guard(device);
    cudaStream_t s = nullptr;
    MT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    streams[size_t(device)].store(s);
  });
  return streams[size_t(device)].load();
}

bool stream_created(int device) {
  return device >= 0 && device < kMaxDevices && streams[size_t(device)].load() != nullptr;
}

int sm_count(int device) {
  static std::array<int, kMaxDevices> counts{};
  static std::array<std::once_flag, kMaxDevices> queried;
  check_device(device);
  std::call_once(queried[size_t(device)], [device] {
    MT_CUDA_CHECK(cudaDeviceGetAttribute(&counts[size_t(device)], cudaDevAttrMultiProcessorCount,
                                         device));
  });
  return counts[size_t(device)];
}

void synchronize(int device) {
  MT_CHECK(current_capture_id(device) == 0,
           "synchronize(cuda:{}) while its stream is being captured into a CUDA graph: the "
           "captured kernels do not run until replay; synchronize after CudaGraph::replay()",
           device);
  MT_CUDA_CHECK(cudaStreamSynchronize(stream(device)));
}

DeviceGuard::DeviceGuard(int device) {
  MT_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) {
    MT_CUDA_CHECK(cudaSetDevice(device));
  } else {
    previous_ = -1;  // nothing to restore
  }
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);  // destructors do not throw
}

}  // namespace mt::gpu

namespace mt {

void synchronize(Device device) {
  if (device.is_cuda()) gpu::synchronize(device.index);
}

}  // namespace mt
