// The launch descriptors the CUDA launchers build from Tensors (ops.cpp), exposed so tests can
// check them, and the offsets the kernels compute from them, on the host
// (tests/test_cuda_launch.cpp).
#pragma once

#include <initializer_list>

#include "engine/core/tensor.h"
#include "kernels/cuda/launch.h"

namespace mt::gpu {

// The iteration space of writing `out` (any strides) from `ins` broadcast to its shape
// (at most three inputs).
Iter describe_elementwise(const Tensor& out, std::initializer_list<const Tensor*> ins);

// The reduction of x into out (x's rank, 1 on the reduced dims), splits included.
ReduceDesc describe_reduction(const Tensor& x, const Tensor& out);

// The GEMM of out = a b (a (..., M, K), b (..., K, N), out (batch..., M, N) contiguous, as
// matmul's stub): cuBLAS's column-major descriptor (launch.h), and whether each operand's
// layout could be expressed without a copy. An operand that does not fit (neither of its last
// two dims unit-stride with a valid leading dim, or batch dims that are not one stride) is made
// contiguous by the launcher, then expanded over the batch if still needed.
struct GemmPlan {
  GemmDesc desc;
  bool a_fits = true, b_fits = true;
};
GemmPlan describe_matmul(const Tensor& a, const Tensor& b, const Tensor& out);

}  // namespace mt::gpu
