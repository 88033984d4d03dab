// init_cuda_backend(): the one entry that brings the CUDA backend up, on first use of a CUDA
// device. Storage references it, so this object (and through register_kernels() every kernel
// object) is always linked in; static-initialiser registration would be dropped by the linker.
#include <mutex>

#include "engine/core/backend.h"
#include "engine/core/storage.h"
#include "kernels/cuda/allocator.h"
#include "kernels/cuda/register.h"

namespace mt {

void init_cuda_backend() {
  static std::once_flag once;
  std::call_once(once, [] {
    gpu::register_kernels();
    register_allocator(DeviceType::CUDA, gpu::caching_allocator());
  });
}

}  // namespace mt
