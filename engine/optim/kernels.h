// Per-parameter update kernels of the optimizers. Each is a DispatchStub: the CPU kernels
// (f32 and f64) are registered next to their optimizer (adamw.cpp, sgd.cpp); a device backend
// fills its slot from kernels/ (e.g. a fused CUDA AdamW). The optimizer validates the tensors
// first: all are contiguous with the parameter's shape, dtype and device.
#pragma once

#include <cstdint>

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

}  // namespace mt::optim
