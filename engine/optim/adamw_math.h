// The CPU arithmetic of one AdamW element update, shared by the dense kernel (adamw.cpp) and the
// sparse row update (sparse_rows.cpp), so that a sparse step touching every row is bitwise the
// dense one. It follows torch's single-tensor AdamW operation by operation: scalars computed in
// double as Python computes them, elementwise maths at the parameter's precision T.
#pragma once

#include <cmath>
#include <cstdint>

#include "engine/optim/kernels.h"

namespace mt::optim {

// NaN-propagating maximum, as torch.maximum.
template <class T>
T nan_maximum(T a, T b) {
  if (std::isnan(a) || std::isnan(b)) return a + b;
  return a < b ? b : a;
}

template <class T>
struct AdamWElementStep {
  AdamWElementStep(const AdamWHyper& h, int64_t step)
      : maximize(h.maximize),
        decay(h.weight_decay != 0),
        decay_factor(T(1 - h.lr * h.weight_decay)),
        w(T(1 - h.beta1)),
        small_w(std::abs(1 - h.beta1) < 0.5),
        beta2(T(h.beta2)),
        one_minus_beta2(T(1 - h.beta2)),
        neg_step_size(T(-(h.lr / (1 - std::pow(h.beta1, double(step)))))),
        bias_correction2_sqrt(T(std::pow(1 - std::pow(h.beta2, double(step)), 0.5))),
        eps(T(h.eps)) {}

  // p, m, v updated in place from gradient g; vmax (amsgrad's running maximum) may be null.
  void operator()(T& p, T& m, T& v, T* vmax, T g) const {
    const T gi = maximize ? -g : g;
    T pi = p;
    if (decay) pi = pi * decay_factor;
    T mi = m;
    mi = small_w ? mi + w * (gi - mi) : gi - (gi - mi) * (T(1) - w);  // m.lerp_(g, 1 - beta1)
    const T vi = v * beta2 + one_minus_beta2 * gi * gi;
    T vn = vi;
    if (vmax != nullptr) {
      vn = nan_maximum(*vmax, vi);
      *vmax = vn;
    }
    const T denom = std::sqrt(vn) / bias_correction2_sqrt + eps;
    p = pi + neg_step_size * mi / denom;
    m = mi;
    v = vi;
  }

  bool maximize, decay;
  T decay_factor, w;
  bool small_w;
  T beta2, one_minus_beta2, neg_step_size, bias_correction2_sqrt, eps;
};

}  // namespace mt::optim
