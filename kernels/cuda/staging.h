// Host-to-device copies through pinned staging buffers. A cudaMemcpyAsync from pageable memory
// makes the driver wait for the stream before copying (a hidden synchronisation on every
// transfer); copied into a pinned buffer first, the transfer is queued on the stream like a
// kernel and the host goes on.
#pragma once

#include <cstddef>

namespace mt::gpu {

// Queues dst (device memory of `device`) <- src (any host memory) on the device's compute
// stream. src may be freed or overwritten as soon as this returns. While the stream is being
// captured into a CUDA graph the bytes go to a pinned buffer owned by that capture, which every
// replay copies from (a staging buffer would be reused, and src may be gone, by then).
void copy_host_to_device(void* dst, const void* src, size_t nbytes, int device);

// Frees the host buffers of a capture's copies (after its graph is destroyed).
void release_capture_copies(int device, unsigned long long capture_id);

}  // namespace mt::gpu
