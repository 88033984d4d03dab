// Elementwise unary ops: forward dispatch, backward rules, CPU kernels. Each rule is written
// with differentiable ops (reading the saved input x or output y), so it can be differentiated
// again.
#include <cmath>
#include <limits>
#include <numbers>

#include "engine/cpu/vectorized.h"
#include "engine/ops/elementwise.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

// ---- CPU kernels ----
#define MT_CPU_UNARY(name, expr)                                          \
  DispatchStub<UnaryKernel> name##_kernel(#name);                        \
  static void name##_cpu(const Tensor& x, Tensor& out) {                 \
    dispatch_float(out.dtype(), #name, [&]<class T>() {                   \
      cpu::map<T, T>(out, [](T v) -> T { return expr; }, x);             \
    });                                                                   \
  }                                                                       \
  [[maybe_unused]] static const bool name##_registered =                  \
      (name##_kernel.set(DeviceType::CPU, &name##_cpu), true);

// The same with an Eigen array expression of `a` for contiguous f32 (engine/cpu/vectorized.h);
// `expr` of `v` is the scalar form for the other dtypes and layouts. Written as one expression
// each (Eigen nests sub-expressions by value, so no local may be returned inside it).
#define MT_CPU_UNARY_VEC(name, array_expr, expr)                          \
  DispatchStub<UnaryKernel> name##_kernel(#name);                        \
  static void name##_cpu(const Tensor& x, Tensor& out) {                 \
    dispatch_float(out.dtype(), #name, [&]<class T>() {                   \
      cpu::map_vectorized<T>(                                             \
          out, [](const auto& a) { return array_expr; },                  \
          [](T v) -> T { return expr; }, x);                              \
    });                                                                   \
  }                                                                       \
  [[maybe_unused]] static const bool name##_registered =                  \
      (name##_kernel.set(DeviceType::CPU, &name##_cpu), true);

MT_CPU_UNARY(neg, -v)
MT_CPU_UNARY_VEC(exp, a.exp(), std::exp(v))
MT_CPU_UNARY_VEC(log, a.log(), std::log(v))
MT_CPU_UNARY_VEC(sqrt, a.sqrt(), std::sqrt(v))
MT_CPU_UNARY_VEC(rsqrt, a.sqrt().inverse(), T(1) / std::sqrt(v))
MT_CPU_UNARY(abs, std::abs(v))
MT_CPU_UNARY(sign, T((v > T(0)) - (v < T(0))))
MT_CPU_UNARY_VEC(tanh, a.tanh(), std::tanh(v))
MT_CPU_UNARY_VEC(sigmoid, (T(1) + (-a).exp()).inverse(), T(1) / (T(1) + std::exp(-v)))
MT_CPU_UNARY(relu, v <= T(0) ? T(0) : v)  // NaN stays NaN, as torch
MT_CPU_UNARY_VEC(erf, a.erf(), std::erf(v))
MT_CPU_UNARY_VEC(sin, a.sin(), std::sin(v))
MT_CPU_UNARY_VEC(cos, a.cos(), std::cos(v))
MT_CPU_UNARY_VEC(gelu, T(0.5) * a * (T(1) + (a * T(std::numbers::sqrt2 / 2)).erf()),
                 T(0.5) * v * (T(1) + std::erf(v * T(std::numbers::sqrt2 / 2))))
// gelu''(x) = phi(x) (2 - x^2), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
MT_CPU_UNARY_VEC(gelu_second_derivative,
                 (a.square() * T(-0.5)).exp() * T(0.5 * std::numbers::inv_sqrtpi *
                                                 std::numbers::sqrt2) * (T(2) - a.square()),
                 std::exp(T(-0.5) * v * v) *
                     T(0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2) * (T(2) - v * v))
#undef MT_CPU_UNARY
#undef MT_CPU_UNARY_VEC

DispatchStub<ClampKernel> clamp_kernel("clamp");
static void clamp_cpu(const Tensor& x, double lo, double hi, Tensor& out) {
  dispatch_float(out.dtype(), "clamp", [&]<class T>() {
    const T l = std::isnan(lo) ? -std::numeric_limits<T>::infinity() : T(lo);
    const T h = std::isnan(hi) ? std::numeric_limits<T>::infinity() : T(hi);
    cpu::map<T, T>(out, [l, h](T v) -> T { return v < l ? l : (v > h ? h : v); }, x);
  });
}
[[maybe_unused]] static const bool clamp_registered =
    (clamp_kernel.set(DeviceType::CPU, &clamp_cpu), true);

// ---- forward entry ----
namespace {
Tensor unary_forward(const DispatchStub<UnaryKernel>& kernel, const Tensor& x) {
  check_operands(kernel.name, {&x});
  Tensor out = empty(x.shape(), x.dtype(), x.device());
  kernel(x.device(), x, out);
  return out;
}

// Records a unary op whose rule reads the saved input (what = input) or output.
enum class Save { input, output };
template <class Rule>
void record_unary(const char* name, const Tensor& x, Tensor& out, Save what, Rule rule) {
  auto& node = record(name, out, {&x}, [rule](const Node& n, const Tensor& g) -> TensorList {
    return {rule(g, n.saved(0))};
  });
  if (what == Save::input) {
    node.save(x);
  } else {
    node.save_output(out);
  }
}
}  // namespace

Tensor neg(const Tensor& x) {
  Tensor y = unary_forward(neg_kernel, x);
  if (any_requires_grad(x)) {
    record("neg", y, {&x}, [](const Node&, const Tensor& g) -> TensorList { return {neg(g)}; });
  }
  return y;
}

Tensor exp(const Tensor& x) {
  Tensor y = unary_forward(exp_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("exp", x, y, Save::output, [](const Tensor& g, const Tensor& y) {
      return mul(g, y);  // d exp(x) = exp(x)
    });
  }
  return y;
}

Tensor log(const Tensor& x) {
  Tensor y = unary_forward(log_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("log", x, y, Save::input, [](const Tensor& g, const Tensor& x) {
      return div(g, x);  // d log(x) = 1/x
    });
  }
  return y;
}

Tensor sqrt(const Tensor& x) {
  Tensor y = unary_forward(sqrt_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("sqrt", x, y, Save::output, [](const Tensor& g, const Tensor& y) {
      return div(g, mul(y, scalar_like(y, 2.0)));  // d sqrt(x) = 1 / (2 sqrt(x))
    });
  }
  return y;
}

Tensor rsqrt(const Tensor& x) {
  Tensor y = unary_forward(rsqrt_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("rsqrt", x, y, Save::output, [](const Tensor& g, const Tensor& y) {
      return mul(mul(g, scalar_like(y, -0.5)), mul(y, mul(y, y)));  // d x^-1/2 = -x^-3/2 / 2
    });
  }
  return y;
}

Tensor abs(const Tensor& x) {
  Tensor y = unary_forward(abs_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("abs", x, y, Save::input, [](const Tensor& g, const Tensor& x) {
      return mul(g, sign(x));  // sign(0) = 0: the subgradient torch uses
    });
  }
  return y;
}

Tensor sign(const Tensor& x) { return unary_forward(sign_kernel, x); }

Tensor tanh(const Tensor& x) {
  Tensor y = unary_forward(tanh_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("tanh", x, y, Save::output, [](const Tensor& g, const Tensor& y) {
      return mul(g, sub(scalar_like(y, 1.0), mul(y, y)));  // 1 - tanh^2
    });
  }
  return y;
}

Tensor sigmoid(const Tensor& x) {
  Tensor y = unary_forward(sigmoid_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("sigmoid", x, y, Save::output, [](const Tensor& g, const Tensor& y) {
      return mul(g, mul(y, sub(scalar_like(y, 1.0), y)));  // s (1 - s)
    });
  }
  return y;
}

Tensor relu(const Tensor& x) {
  Tensor y = unary_forward(relu_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("relu", x, y, Save::input, [](const Tensor& g, const Tensor& x) {
      return relu_backward(g, x);  // g step(x); 0 at the kink, as torch
    });
  }
  return y;
}

Tensor erf(const Tensor& x) {
  Tensor y = unary_forward(erf_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("erf", x, y, Save::input, [](const Tensor& g, const Tensor& x) {
      // d erf(x) = 2/sqrt(pi) exp(-x^2)
      Tensor e = exp(neg(mul(x, x)));
      return mul(g, mul(e, scalar_like(x, 2.0 * std::numbers::inv_sqrtpi)));
    });
  }
  return y;
}

Tensor sin(const Tensor& x) {
  Tensor y = unary_forward(sin_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("sin", x, y, Save::input, [](const Tensor& g, const Tensor& x) {
      return mul(g, cos(x));
    });
  }
  return y;
}

Tensor cos(const Tensor& x) {
  Tensor y = unary_forward(cos_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("cos", x, y, Save::input, [](const Tensor& g, const Tensor& x) {
      return neg(mul(g, sin(x)));
    });
  }
  return y;
}

Tensor gelu(const Tensor& x) {
  Tensor y = unary_forward(gelu_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("gelu", x, y, Save::input, [](const Tensor& g, const Tensor& x) {
      return gelu_backward(g, x);  // one fused pass instead of a dozen elementwise ops
    });
  }
  return y;
}

// gelu(x) = x Phi(x), Phi(x) = (1 + erf(x/sqrt2)) / 2, phi(x) = exp(-x^2/2) / sqrt(2 pi):
//   gelu'(x)  = Phi(x) + x phi(x)
//   gelu''(x) = phi(x) (2 - x^2)
DispatchStub<BinaryKernel> gelu_backward_kernel("gelu_backward");
static void gelu_backward_cpu(const Tensor& g, const Tensor& x, Tensor& out) {
  dispatch_float(out.dtype(), "gelu_backward", [&]<class T>() {
    static constexpr T kInvSqrt2 = T(std::numbers::sqrt2 / 2);
    static constexpr T kInvSqrt2Pi = T(0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2);
    cpu::map_vectorized<T>(
        out,
        [](const auto& ga, const auto& a) {
          return ga * (T(0.5) * (T(1) + (a * kInvSqrt2).erf()) +
                       a * (a.square() * T(-0.5)).exp() * kInvSqrt2Pi);
        },
        [](T gv, T v) -> T {
          const T cdf = T(0.5) * (T(1) + std::erf(v * kInvSqrt2));
          const T pdf = std::exp(T(-0.5) * v * v) * kInvSqrt2Pi;
          return gv * (cdf + v * pdf);
        },
        g, x);
  });
}
[[maybe_unused]] static const bool gelu_backward_registered =
    (gelu_backward_kernel.set(DeviceType::CPU, &gelu_backward_cpu), true);

Tensor gelu_backward(const Tensor& g, const Tensor& x) {
  check_operands("gelu_backward", {&g, &x});
  Tensor out = empty(broadcast_shapes(g.shape(), x.shape(), "gelu_backward"), x.dtype(), x.device());
  gelu_backward_kernel(x.device(), g, x, out);
  if (any_requires_grad(g, x)) {
    auto& node = record("gelu_backward", out, {&g, &x},
                        [](const Node& n, const Tensor& gg) -> TensorList {
                          Tensor g = n.saved(0), x = n.saved(1);
                          Tensor dg, dx;
                          if (n.needs_input_grad(0)) dg = gelu_backward(gg, x);  // gg gelu'(x)
                          if (n.needs_input_grad(1)) {
                            // gg g gelu''(x) = gg g phi(x) (2 - x^2)
                            dx = mul(mul(gg, g), gelu_second_derivative(x));
                          }
                          return {dg, dx};
                        });
    node.save(g);
    node.save(x);
  }
  return out;
}

Tensor gelu_second_derivative(const Tensor& x) {
  Tensor y = unary_forward(gelu_second_derivative_kernel, x);
  if (any_requires_grad(x)) {
    record_unary("gelu_second_derivative", x, y, Save::input, [](const Tensor& g, const Tensor& x) {
      // d/dx phi(x) (2 - x^2) = -x phi(x) (2 - x^2) - 2 x phi(x) = x phi(x) (x^2 - 4)
      Tensor pdf = mul(exp(mul(mul(x, x), -0.5)),
                       0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2);
      return mul(g, mul(mul(x, pdf), sub(mul(x, x), scalar_like(x, 4.0))));
    });
  }
  return y;
}

DispatchStub<BinaryKernel> relu_backward_kernel("relu_backward");
static void relu_backward_cpu(const Tensor& g, const Tensor& x, Tensor& out) {
  dispatch_float(out.dtype(), "relu_backward", [&]<class T>() {
    // NaN inputs pass the gradient, as torch's threshold_backward (it reads relu's NaN output).
    cpu::map<T, T>(out, [](T gv, T v) -> T { return v <= T(0) ? T(0) : gv; }, g, x);
  });
}
[[maybe_unused]] static const bool relu_backward_registered =
    (relu_backward_kernel.set(DeviceType::CPU, &relu_backward_cpu), true);

Tensor relu_backward(const Tensor& g, const Tensor& x) {
  check_operands("relu_backward", {&g, &x});
  Tensor out = empty(broadcast_shapes(g.shape(), x.shape(), "relu_backward"), g.dtype(), g.device());
  relu_backward_kernel(g.device(), g, x, out);
  if (any_requires_grad(g)) {
    auto& node = record("relu_backward", out, {&g},
                        [](const Node& n, const Tensor& gg) -> TensorList {
                          return {relu_backward(gg, n.saved(0))};
                        });
    node.save(x);
  }
  return out;
}

Tensor clamp(const Tensor& x, std::optional<double> lo, std::optional<double> hi) {
  check_operands("clamp", {&x});
  MT_CHECK(!(lo && std::isnan(*lo)) && !(hi && std::isnan(*hi)),
           "clamp: a bound is NaN; leave out a bound that should not apply (std::nullopt)");
  MT_CHECK(!(lo && hi && *lo > *hi), "clamp: lower bound {} exceeds upper bound {}", *lo, *hi);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Tensor y = empty(x.shape(), x.dtype(), x.device());
  clamp_kernel(x.device(), x, lo.value_or(nan), hi.value_or(nan), y);
  if (any_requires_grad(x)) {
    record_unary("clamp", x, y, Save::input, [lo, hi](const Tensor& g, const Tensor& x) {
      // Gradient passes where lo <= x <= hi (torch's convention at the bounds), selected, not
      // multiplied by the mask: an inf gradient where x was clamped is 0, not inf * 0 = NaN
      // (sqrt(clamp(v, 0)) at v < 0).
      Tensor inside;
      if (lo) inside = ge(x, scalar_like(x, *lo));
      if (hi) inside = inside.defined() ? mul(inside, le(x, scalar_like(x, *hi)))
                                        : le(x, scalar_like(x, *hi));
      return inside.defined() ? where(inside, g, scalar_like(g, 0.0)) : g;
    });
  }
  return y;
}

}  // namespace mt
