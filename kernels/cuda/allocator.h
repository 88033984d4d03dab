// The CUDA caching allocator (registered for DeviceType::CUDA by init_cuda_backend()). Its
// statistics are read through the engine's memory_stats(cuda(i)), reset_peak_memory_stats and
// empty_cache; this header adds what only CUDA has: the private pools of CUDA-graph captures.
//
// Sizes are rounded up to 512 bytes. Requests up to 1 MiB are carved out of 2 MiB segments
// (the small pool); larger ones get segments rounded up to 2 MiB (the large pool). A free block
// is reused by the smallest fitting free block of the same stream and pool, split when the rest
// is worth keeping (>= 512 B in the small pool, > 1 MiB in the large), and merged with free
// neighbours of its segment when released. Memory goes back to the driver only on
// empty_cache() or when cudaMalloc fails (then the allocator frees its unused segments and
// tries once more before reporting out of memory with the current statistics).
//
// Graph capture: while the device's compute stream is capturing a CUDA graph, allocations come
// from a private pool owned by that capture (identified by its capture id). Blocks the capture
// frees go back to that pool, so they are reused only by the same capture, and the pool keeps
// its memory after the capture ends, so a replay writes to the addresses it was captured with.
// Blocks allocated before the capture and freed during it are held back until the pool is
// released, since the graph may still touch them. Call release_graph_pool() once the graph is
// destroyed. Capture with cudaStreamCaptureModeRelaxed (or warm the pool up first): a capture
// that needs a new segment calls cudaMalloc.
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
