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

}  // namespace mt::gpu
