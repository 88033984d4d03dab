// The CUDA backend's execution context, usable from .cu and .cpp files alike (no fmt here): one
// compute stream per device, on which every kernel, copy and allocation of that device is
// ordered, and a guard that makes a device current for a scope.
#pragma once

#include <cuda_runtime.h>

namespace mt::gpu {

// The device's compute stream (non-blocking, created on first use and never destroyed, so it
// outlives every tensor). Kernels launched by the backend run on it in issue order, which is
// what lets the caching allocator hand a freed block to the next allocation without waiting:
// every later use of the block is queued after every earlier one. To capture a CUDA graph,
// capture this stream.
cudaStream_t stream(int device);
// Whether stream(device) has been created (no device is touched by asking).
bool stream_created(int device);

// Multiprocessor count of a device (cached); launchers size their grids with it.
int sm_count(int device);

// Waits for everything queued on the device's compute stream (an explicit host read point).
void synchronize(int device);

// Makes `device` current for the scope and restores the previous device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace mt::gpu
