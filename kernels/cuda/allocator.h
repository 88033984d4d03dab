// The CUDA caching allocator: the engine's CachingAllocator (engine/core/caching_allocator.h,
// where the policy is described) over cudaMalloc and the per-device compute streams, registered
// for DeviceType::CUDA by init_cuda_backend(). Its statistics are read through the engine's
// memory_stats(cuda(i)), reset_peak_memory_stats and empty_cache; this header adds what only
// CUDA has: the private pools of CUDA-graph captures. Capture the device's compute stream
// (gpu::stream(i)) with cudaStreamCaptureModeRelaxed, or warm the pool up first: a capture that
// needs a new segment calls cudaMalloc.
#pragma once

#include <cstdint>

namespace mt {
class Allocator;
}

namespace mt::gpu {

// The allocator registered for DeviceType::CUDA.
Allocator* caching_allocator();

// The capture id of the device's compute stream, or 0 when it is not capturing.
unsigned long long current_capture_id(int device);

// Returns the memory of a capture's private pool to the ordinary pools (blocks still held by
// tensors follow when those are freed).
void release_graph_pool(int device, unsigned long long capture_id);

// Bytes cached in the private pools of graph captures (included in reserved_bytes).
int64_t graph_pool_bytes(int device);

}  // namespace mt::gpu
