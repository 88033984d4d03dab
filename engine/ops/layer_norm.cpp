// layer_norm over the last k dims with optional affine weight and bias.
// Forward: a fused CPU kernel over rows (mean, variance, normalise, scale, shift).
// Backward: written with differentiable ops, recomputing mean and rstd from the saved input so
// that the rule depends on x through them (needed for second order):
//   xhat = (x - mu) * rstd,  gh = g * w
//   dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)),  dw = g * xhat,  db = g
// (dw and db are returned at the input's shape and summed to (normalized dims) by the engine).
#include <cmath>
#include <vector>

#include "engine/ops/elementwise.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

// x contiguous (rows, D); weight, bias contiguous (D) or undefined; out (rows, D).
using LayerNormKernel = void(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t D,
                             double eps, Tensor& out);
DispatchStub<LayerNormKernel> layer_norm_kernel("layer_norm");

namespace {

void layer_norm_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t D,
                    double eps, Tensor& out) {
  dispatch_float(x.dtype(), "layer_norm", [&]<class T>() {
    const int64_t rows = D == 0 ? 0 : x.numel() / D;
    const T* px = x.data_ptr<T>();
    const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
    const T* pb = bias.defined() ? bias.data_ptr<T>() : nullptr;
    T* py = out.data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = px + r * D;
      T* yr = py + r * D;
      double mu = 0, m2 = 0;
      for (int64_t j = 0; j < D; ++j) mu += double(xr[j]);
      mu /= double(D);
      for (int64_t j = 0; j < D; ++j) m2 += (double(xr[j]) - mu) * (double(xr[j]) - mu);
      const double rstd = 1.0 / std::sqrt(m2 / double(D) + eps);
      for (int64_t j = 0; j < D; ++j) {
        T v = T((double(xr[j]) - mu) * rstd);
        if (pw) v *= pw[j];
        if (pb) v += pb[j];
        yr[j] = v;
      }
    }
  });
}
[[maybe_unused]] const bool registered =
    (layer_norm_kernel.set(DeviceType::CPU, &layer_norm_cpu), true);

}  // namespace

Tensor layer_norm(const Tensor& x, int normalized_rank, const Tensor& weight, const Tensor& bias,
                  double eps) {
  check_operands("layer_norm", {&x});
  MT_CHECK(normalized_rank >= 1 && normalized_rank <= x.dim(),
           "layer_norm: normalized_rank {} must be in [1, {}] for input {}", normalized_rank,
           x.dim(), x.shape().str());
  MT_CHECK(eps >= 0, "layer_norm: eps must be non-negative, got {}", eps);
  Shape norm_shape;
  for (int i = x.dim() - normalized_rank; i < x.dim(); ++i) norm_shape.push_back(x.shape()[i]);
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    check_operands("layer_norm", {&x, p});
    MT_CHECK(p->shape() == norm_shape,
             "layer_norm: {} has shape {} but the normalized dims of input {} are {}",
             p == &weight ? "weight" : "bias", p->shape().str(), x.shape().str(),
             norm_shape.str());
  }
  Tensor xc, wc, bc;
  {
    NoGradGuard no_grad;
    xc = contiguous(x);
    if (weight.defined()) wc = contiguous(weight);
    if (bias.defined()) bc = contiguous(bias);
  }
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  layer_norm_kernel(x.device(), xc, wc, bc, norm_shape.numel(), eps, y);
  if (any_requires_grad(x, weight, bias)) {
    std::vector<int64_t> dims;
    for (int i = x.dim() - normalized_rank; i < x.dim(); ++i) dims.push_back(i);
    auto& node = record("layer_norm", y, {&x, &weight, &bias},
                        [dims, eps](const Node& n, const Tensor& g) -> TensorList {
                          Tensor x = n.saved(0), w = n.saved(1);
                          Tensor centred = sub(x, mean(x, dims, true));
                          Tensor rstd = rsqrt(add(mean(mul(centred, centred), dims, true),
                                                  scalar_like(x, eps)));
                          Tensor xhat = mul(centred, rstd);
                          TensorList grads(3);
                          if (n.needs_input_grad(0)) {
                            Tensor gh = w.defined() ? mul(g, w) : g;
                            Tensor inner = sub(sub(gh, mean(gh, dims, true)),
                                               mul(xhat, mean(mul(gh, xhat), dims, true)));
                            grads[0] = mul(rstd, inner);
                          }
                          if (n.needs_input_grad(1)) grads[1] = mul(g, xhat);
                          if (n.needs_input_grad(2)) grads[2] = g;
                          return grads;
                        });
    node.save(x);
    node.save(weight);
  }
  return y;
}

}  // namespace mt
