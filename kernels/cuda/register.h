// Fills the CUDA slot of every dispatch stub that has a CUDA kernel (kernels/cuda/ops.cpp).
// Called once by init_cuda_backend(); kernels/README.md lists the stubs still without one.
#pragma once

namespace mt::gpu {
void register_kernels();
}  // namespace mt::gpu
