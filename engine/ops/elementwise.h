// Dispatch stubs of the elementwise ops (CPU kernels in binary.cpp / unary.cpp; the CUDA backend
// fills the CUDA slots) and the checked entry shared by them.
#pragma once

#include "engine/autograd/node.h"
#include "engine/core/dispatch.h"
#include "engine/ops.h"

namespace mt {

using UnaryKernel = void(const Tensor& x, Tensor& out);
using BinaryKernel = void(const Tensor& a, const Tensor& b, Tensor& out);
using TernaryKernel = void(const Tensor& a, const Tensor& b, const Tensor& c, Tensor& out);
// clamp's kernel takes its bounds as values (NaN = no bound).
using ClampKernel = void(const Tensor& x, double lo, double hi, Tensor& out);

extern DispatchStub<BinaryKernel> add_kernel, sub_kernel, mul_kernel, div_kernel, pow_kernel,
    eq_kernel, ne_kernel, lt_kernel, le_kernel, gt_kernel, ge_kernel;
extern DispatchStub<TernaryKernel> where_kernel, add3_kernel;
extern DispatchStub<UnaryKernel> neg_kernel, exp_kernel, log_kernel, sqrt_kernel, rsqrt_kernel,
    abs_kernel, sign_kernel, tanh_kernel, sigmoid_kernel, relu_kernel, erf_kernel, gelu_kernel,
    sin_kernel, cos_kernel, gelu_second_derivative_kernel;
extern DispatchStub<ClampKernel> clamp_kernel;
extern DispatchStub<BinaryKernel> gelu_backward_kernel, relu_backward_kernel;

// Reductions (reduce.cpp): out has x's rank with 1 on every reduced dim.
using ReduceKernel = void(const Tensor& x, Tensor& out);
extern DispatchStub<ReduceKernel> sum_kernel, max_kernel;

// Copies (view.cpp): dst (any strides, already allocated) = src broadcast to dst's shape,
// converting dtype; both on the same device.
using CopyKernel = void(const Tensor& src, Tensor& dst);
extern DispatchStub<CopyKernel> copy_kernel;
// Copies between the CPU and a device, either direction (to_device): src and dst contiguous,
// same shape and dtype. Registered by the device backend and dispatched on the device side.
extern DispatchStub<CopyKernel> transfer_kernel;

// In-place writes of Tensor (tensor.cpp); t may have any strides. add_: t += alpha * other with
// other (same dtype and device) broadcast to t.
using FillKernel = void(Tensor& t, double value);
using AddInplaceKernel = void(Tensor& t, const Tensor& other, double alpha);
using MulInplaceKernel = void(Tensor& t, double value);
extern DispatchStub<FillKernel> fill_kernel;
extern DispatchStub<AddInplaceKernel> add_inplace_kernel;
extern DispatchStub<MulInplaceKernel> mul_inplace_kernel;

// dst (any strides) = src broadcast to dst's shape, converting dtype; no autograd recording.
void copy_into(const Tensor& src, Tensor& dst);

// t as a kernel reads it: contiguous, outside the graph (t itself, detached, when it already
// is; a copy otherwise). For fused ops that hand raw buffers to their kernels and record their
// own node.
Tensor contiguous_nograd(const Tensor& t);

// Checks that every operand has the same dtype and device (naming the op and the fix).
inline void check_operands(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = *ts.begin();
  for (const Tensor* t : ts) {
    MT_CHECK(t->defined(), "{}: an operand is an undefined tensor", op);
    MT_CHECK(t->dtype() == first->dtype(),
             "{}: dtype mismatch ({} vs {}); convert one operand with .to()", op,
             dtype_name(first->dtype()), dtype_name(t->dtype()));
    MT_CHECK(t->device() == first->device(),
             "{}: operands are on different devices ({} vs {}); copy one of them first", op,
             first->device().str(), t->device().str());
  }
}

}  // namespace mt
