// Which backends this build has and which devices are present. Safe to call on machines without
// a GPU or driver: the counts are then zero, never an error.
#pragma once

#include <string>

#include "engine/core/device.h"

namespace mt {

bool built_with_cuda();
int cuda_device_count();
inline bool cuda_is_available() { return cuda_device_count() > 0; }
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"; empty when the device does not exist.
std::string cuda_device_description(int index);

// Registers the CUDA caching allocator and the CUDA kernels in the dispatch tables, once; called
// on first use of a CUDA device (allocator_for(DeviceType::CUDA)). Kernels are registered from
// this explicit call, not by static initialisation, because the linker drops unreferenced
// objects of a static library. Does nothing in a build without CUDA.
void init_cuda_backend();

// Waits until everything queued on `device` has run (its compute stream); nothing to wait for on
// the CPU. An explicit host synchronisation point, for timing and for host reads of many
// values at once; the engine itself never calls it on the hot path.
void synchronize(Device device);

}  // namespace mt
