// Global settings of the matmul kernels. Kept out of backend.h (which every tensor header pulls
// in) so changing them rebuilds little.
#pragma once

namespace mt {

// Whether f32 matmuls on CUDA may use TF32 tensor cores (10-bit mantissa inputs, f32
// accumulation). Off by default, so CUDA results match the CPU within f32 tolerance; read at
// each matmul (kernels/cuda/gemm.cpp) and at each fused attention call, whose f32 tensor-core
// kernels then take one TF32 product instead of three (kernels/cuda/flash_attention.md). Without
// CUDA the flag is kept but has no effect.
void set_cuda_matmul_allow_tf32(bool allow);
bool cuda_matmul_allow_tf32();

// How many linear() forwards ran as one cuBLASLt call with a bias/ReLU epilogue since the
// process started (all devices); 0 without CUDA. Tests read it to notice a silent fallback.
unsigned long long cuda_linear_epilogue_calls();

}  // namespace mt
