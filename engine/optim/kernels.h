// Per-parameter update kernels of the optimizers. Each is a DispatchStub: the CPU kernels
// (f32 and f64) are registered next to their optimizer (adamw.cpp, sgd.cpp); a device backend
// fills its slot from kernels/ (e.g. a fused CUDA AdamW). The optimizer validates the tensors
// first: all are contiguous with the parameter's shape, dtype and device.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/core/dispatch.h"
#include "engine/core/tensor.h"

namespace mt::optim {

struct AdamWHyper {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize;
};

// One AdamW update of one parameter, as torch.optim.AdamW:
//   p *= 1 - lr * weight_decay;  m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g^2;
//   vmax = max(vmax, v) (amsgrad);  p -= lr / (1 - beta1^step) * m / (sqrt(v or vmax) /
//   sqrt(1 - beta2^step) + eps).
// `step` is the parameter's step count including this update (1 on the first);
// max_exp_avg_sq is undefined unless amsgrad.
using AdamWKernel = void(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
                         Tensor& max_exp_avg_sq, int64_t step, const AdamWHyper& hyper);
extern DispatchStub<AdamWKernel> adamw_kernel;
// The same update with the step count kept in `step`, a 0-d i64 tensor on the parameter's device
// (AdamWOptions::capturable): the kernel adds one to it and takes the bias corrections from the
// new count on the device, so a CUDA graph that captured the update stays right at every replay.
// The arithmetic is adamw_kernel's (the CPU computes the scalars as it does; a device computes
// them in double from the count it reads).
using AdamWDeviceStepKernel = void(Tensor& param, const Tensor& grad, Tensor& exp_avg,
                                   Tensor& exp_avg_sq, Tensor& max_exp_avg_sq, Tensor& step,
                                   const AdamWHyper& hyper);
extern DispatchStub<AdamWDeviceStepKernel> adamw_device_step_kernel;

// AdamW over a list of parameters on one device (AdamWOptions::foreach): each entry exactly as
// adamw_kernel (host count `step`, including this update) or, where `device_step` is defined,
// adamw_device_step_kernel (its count on the device, incremented) updates it; a device backend
// does it in a few launches for the whole list. Tensors as for adamw_kernel, dtypes may differ
// between entries.
struct AdamWEntry {
  Tensor param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq;
  Tensor device_step;  // 0-d i64 on the parameter's device, or undefined
  int64_t step = 0;    // the host count including this update, when device_step is undefined
};
using AdamWForeachKernel = void(std::vector<AdamWEntry>& entries, const AdamWHyper& hyper);
extern DispatchStub<AdamWForeachKernel> adamw_foreach_kernel;

struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

// One SGD update of one parameter, as torch.optim.SGD:
//   g += weight_decay * p;  buf = g (first update) or momentum * buf + (1 - dampening) * g;
//   g = nesterov ? g + momentum * buf : buf;  p -= lr * g.
// momentum_buffer is undefined when momentum is 0; `first` is true on the parameter's first
// update.
using SgdKernel = void(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, bool first,
                       const SgdHyper& hyper);
extern DispatchStub<SgdKernel> sgd_kernel;

// ---- sparse row updates of an embedding table (engine/optim/sparse_rows.h) ----
// weight (V, D) contiguous; indices contiguous i64 (n); grad_rows contiguous (n, D), the
// weight's dtype. Row indices[i] receives grad_rows[i]; the rows of equal indices are summed
// first, in position order (at f32 for f32/f16/bf16, f64 for f64), then every distinct row gets
// one update with the dense kernel's arithmetic; rows not in `indices` are not touched. The
// entry point has validated everything but the index range (a device kernel traps on it).
// SGD: hyper.momentum == 0 (no buffer).
using SparseSgdRowsKernel = void(Tensor& weight, const Tensor& indices, const Tensor& grad_rows,
                                 const SgdHyper& hyper);
extern DispatchStub<SparseSgdRowsKernel> sparse_sgd_rows_kernel;
// AdamW: exp_avg, exp_avg_sq (V, D) contiguous, the weight's dtype or (16-bit weights) f32;
// `step` is the table's step count including this update; hyper.amsgrad is false.
using SparseAdamWRowsKernel = void(Tensor& weight, Tensor& exp_avg, Tensor& exp_avg_sq,
                                   const Tensor& indices, const Tensor& grad_rows, int64_t step,
                                   const AdamWHyper& hyper);
extern DispatchStub<SparseAdamWRowsKernel> sparse_adamw_rows_kernel;

}  // namespace mt::optim
