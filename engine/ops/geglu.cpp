// GEGLU on a fused projection, and its derivatives as fused ops.
//
// h (..., 2F) = [v | u], the output of one linear layer whose first F features are the value and
// the last F the gate:
//   geglu(h)             = v gelu(u)                                             (..., F)
// With Phi the normal CDF, phi its density: gelu(u) = u Phi(u), gelu'(u) = Phi(u) + u phi(u),
// gelu''(u) = phi(u) (2 - u^2), gelu'''(u) = u phi(u) (u^2 - 4). Per element the Jacobian of
// geglu is J = [gelu(u), v gelu'(u)] and its Hessian H = [[0, gelu'(u)], [gelu'(u), v gelu''(u)]].
// The backward and the terms of the double backward are each one fused op (one pass, one
// kernel), t = [t_v | t_u] and s = [s_v | s_u] (..., 2F):
//   geglu_backward(g, h) = J^T g     = [g gelu(u) | g v gelu'(u)]                     (..., 2F)
//   geglu_jvp(h, t)      = J t       = t_v gelu(u) + t_u v gelu'(u)                   (..., F)
//   geglu_hvp(g, h, t)   = g H t     = [g t_u gelu'(u) | g t_v gelu'(u) + g t_u v gelu''(u)]
// Their backward rules (every identity is per element):
//   geglu:          dh = geglu_backward(g, h)
//   geglu_backward: dg = geglu_jvp(h, gg),  dh = geglu_hvp(g, h, gg)
//   geglu_jvp:      dh = geglu_hvp(gg, h, t),  dt = geglu_backward(gg, h)
//   geglu_hvp:      dg = s . (H t) = s_v t_u gelu' + s_u t_v gelu' + s_u t_u v gelu''
//                        (geglu_hvp with g = 1, contracted with s),
//                   dt = geglu_hvp(g, h, s) (H is symmetric),
//                   dh = g times the third derivatives contracted with s and t (composite):
//                        dv = g s_u t_u gelu'',
//                        du = g (s_v t_u + s_u t_v) gelu'' + g s_u t_u v gelu'''
// so gradients of every order are right: the first two orders run as the fused kernels, the
// third and above through composites of engine ops.
//
// In POCO's feed-forward blocks this replaces two half-width linear layers (value and gate, each
// narrowing the weight), a gelu and a product: one GEMM over the whole weight in each direction,
// no zero-padded gradient of a weight half, one pass instead of three, and the gelu(u) tensor is
// never stored.
#include <cmath>
#include <numbers>

#include "engine/autograd/grad_mode.h"
#include "engine/cpu/vectorized.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

DispatchStub<GegluKernel> geglu_kernel("geglu");
DispatchStub<GegluKernel> geglu_backward_kernel("geglu_backward");
DispatchStub<GegluKernel> geglu_jvp_kernel("geglu_jvp");
DispatchStub<GegluKernel> geglu_hvp_kernel("geglu_hvp");

namespace {

constexpr double kInvSqrt2 = std::numbers::sqrt2 / 2;
constexpr double kInvSqrt2Pi = 0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2;

// ---- CPU kernels: rows of F (g, out of geglu and geglu_jvp) or 2F (h, t, out of geglu_backward
// and geglu_hvp), all contiguous. f32 rows are Eigen array expressions (vectorised erf and exp);
// f64 uses libm per element. ----

// The per-row gate functions of u (f32, vectorised): Phi(u) and, when wanted, phi(u), in
// buffers of one row that stay in L1 while the row's outputs are written.
struct GateRowF32 {
  Eigen::ArrayXf cdf, pdf;
  void compute(const float* u, int64_t F, bool with_pdf) {
    cpu::ConstArrayMap<float> ua(u, F);
    cdf = 0.5f * (1.0f + (ua * float(kInvSqrt2)).erf());
    if (with_pdf) pdf = (ua.square() * -0.5f).exp() * float(kInvSqrt2Pi);
  }
};

// Touches the cache lines of [p, p + n) ahead of use. Rows are read as two half-rows (value and
// gate) and each half-row's stream starts cold; without this the hardware prefetcher, which
// follows one stream at a time, leaves the f32 kernels 1.5-2x slower here than a contiguous map
// over the same bytes.
template <class T>
void prefetch(const T* p, int64_t n) {
  if (p == nullptr) return;
  constexpr int64_t kLine = 64 / int64_t(sizeof(T));
  for (int64_t k = 0; k < n; k += kLine) __builtin_prefetch(p + k);
}

enum class Which { forward, backward, jvp, hvp };

template <Which which>
void geglu_cpu(const Tensor& g, const Tensor& h, const Tensor& t, Tensor& out) {
  const int64_t F = h.size(-1) / 2, rows = F > 0 ? h.numel() / (2 * F) : 0;
  if (rows == 0 || F == 0) return;
  dispatch_float(out.dtype(), "geglu", [&]<class T>() {
    const T* ph = h.data_ptr<T>();
    const T* pg = g.defined() ? g.data_ptr<T>() : nullptr;
    const T* pt = t.defined() ? t.data_ptr<T>() : nullptr;
    T* po = out.data_ptr<T>();
    if constexpr (std::is_same_v<T, float>) {
      cpu::parallel_range(rows, 16 * F, [&](int64_t begin, int64_t end) {
        GateRowF32 gate;
        for (int64_t r = begin; r < end; ++r) {
          if (r + 1 < end) {
            prefetch(ph + (r + 1) * 2 * F, 2 * F);
            prefetch(pg != nullptr ? pg + (r + 1) * F : nullptr, F);
            prefetch(pt != nullptr ? pt + (r + 1) * 2 * F : nullptr, 2 * F);
          }
          cpu::ConstArrayMap<float> v(ph + r * 2 * F, F), u(ph + r * 2 * F + F, F);
          gate.compute(ph + r * 2 * F + F, F, which != Which::forward);
          const auto& cdf = gate.cdf;
          const auto& pdf = gate.pdf;
          if constexpr (which == Which::forward) {
            cpu::ArrayMap<float>(po + r * F, F) = v * u * cdf;
          } else if constexpr (which == Which::backward) {
            cpu::ConstArrayMap<float> gr(pg + r * F, F);
            cpu::ArrayMap<float>(po + r * 2 * F, F) = gr * u * cdf;
            cpu::ArrayMap<float>(po + r * 2 * F + F, F) = gr * v * (cdf + u * pdf);
          } else if constexpr (which == Which::jvp) {
            cpu::ConstArrayMap<float> tv(pt + r * 2 * F, F), tu(pt + r * 2 * F + F, F);
            cpu::ArrayMap<float>(po + r * F, F) = tv * u * cdf + tu * v * (cdf + u * pdf);
          } else {
            cpu::ConstArrayMap<float> gr(pg + r * F, F);
            cpu::ConstArrayMap<float> tv(pt + r * 2 * F, F), tu(pt + r * 2 * F + F, F);
            cpu::ArrayMap<float>(po + r * 2 * F, F) = gr * tu * (cdf + u * pdf);
            cpu::ArrayMap<float>(po + r * 2 * F + F, F) =
                gr * (tv * (cdf + u * pdf) + tu * v * pdf * (2.0f - u.square()));
          }
        }
      });
    } else {
      cpu::parallel_range(rows, 16 * F, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
          for (int64_t j = 0; j < F; ++j) {
            const T v = ph[r * 2 * F + j], u = ph[r * 2 * F + F + j];
            const T cdf = T(0.5) * (T(1) + std::erf(u * T(kInvSqrt2)));
            const T pdf = std::exp(T(-0.5) * u * u) * T(kInvSqrt2Pi);
            const T d1 = cdf + u * pdf;  // gelu'(u)
            if constexpr (which == Which::forward) {
              po[r * F + j] = v * u * cdf;
            } else if constexpr (which == Which::backward) {
              const T gr = pg[r * F + j];
              po[r * 2 * F + j] = gr * u * cdf;
              po[r * 2 * F + F + j] = gr * v * d1;
            } else if constexpr (which == Which::jvp) {
              po[r * F + j] = pt[r * 2 * F + j] * u * cdf + pt[r * 2 * F + F + j] * v * d1;
            } else {
              const T gr = pg[r * F + j], tv = pt[r * 2 * F + j], tu = pt[r * 2 * F + F + j];
              po[r * 2 * F + j] = gr * tu * d1;
              po[r * 2 * F + F + j] = gr * (tv * d1 + tu * v * pdf * (T(2) - u * u));
            }
          }
      });
    }
  });
}

[[maybe_unused]] const bool registered =
    (geglu_kernel.set(DeviceType::CPU, &geglu_cpu<Which::forward>),
     geglu_backward_kernel.set(DeviceType::CPU, &geglu_cpu<Which::backward>),
     geglu_jvp_kernel.set(DeviceType::CPU, &geglu_cpu<Which::jvp>),
     geglu_hvp_kernel.set(DeviceType::CPU, &geglu_cpu<Which::hvp>), true);

// ---- ops ----

Shape half_shape(const Shape& s) {
  Shape out = s;
  out[out.size() - 1] /= 2;
  return out;
}

void check_h(const char* op, const Tensor& h) {
  MT_CHECK(h.dim() >= 1 && h.size(-1) % 2 == 0,
           "{}: h {} must end in an even dim 2F (value features then gate features)", op,
           h.shape().str());
  MT_CHECK(is_floating(h.dtype()), "{}: h has dtype {}; a float dtype is needed", op,
           dtype_name(h.dtype()));
}

void check_same(const char* op, const char* name, const Tensor& x, const Shape& want,
                const Tensor& h) {
  check_operands(op, {&x, &h});
  MT_CHECK(x.shape() == want, "{}: {} must be {} for h {}, got {}", op, name, want.str(),
           h.shape().str(), x.shape().str());
}

// The value and gate halves of a (..., 2F) tensor as differentiable views.
Tensor value_half(const Tensor& x) { return narrow(x, -1, 0, x.size(-1) / 2); }
Tensor gate_half(const Tensor& x) { return narrow(x, -1, x.size(-1) / 2, x.size(-1) / 2); }

Tensor run(const DispatchStub<GegluKernel>& kernel, const Tensor& g, const Tensor& h,
           const Tensor& t, const Shape& out_shape) {
  Tensor out = empty(out_shape, h.dtype(), h.device());
  kernel(h.device(), g.defined() ? contiguous_nograd(g) : g, contiguous_nograd(h),
         t.defined() ? contiguous_nograd(t) : t, out);
  return out;
}

// gelu'''(u) = u phi(u) (u^2 - 4), composed of differentiable ops (the third-order terms).
Tensor gelu_third_derivative(const Tensor& u) {
  Tensor pdf = mul(exp(mul(mul(u, u), -0.5)), kInvSqrt2Pi);
  return mul(mul(u, pdf), sub(mul(u, u), scalar_like(u, 4.0)));
}

}  // namespace

Tensor geglu(const Tensor& h) {
  check_h("geglu", h);
  Tensor out = run(geglu_kernel, Tensor(), h, Tensor(), half_shape(h.shape()));
  if (any_requires_grad(h)) {
    auto& node = record("geglu", out, {&h}, [](const Node& n, const Tensor& g) -> TensorList {
      return {geglu_backward(g, n.saved(0))};
    });
    node.save(h);
    // One elementwise pass over h: a later node saving out keeps no copy (engine/autograd/node.h).
    node.set_recompute([](const Node& n, double, int64_t) { return geglu(n.saved(0)); });
  }
  return out;
}

Tensor geglu_backward(const Tensor& g, const Tensor& h) {
  check_h("geglu_backward", h);
  check_same("geglu_backward", "g", g, half_shape(h.shape()), h);
  Tensor dh = run(geglu_backward_kernel, g, h, Tensor(), h.shape());
  if (any_requires_grad(g, h)) {
    auto& node = record("geglu_backward", dh, {&g, &h},
                        [](const Node& n, const Tensor& gg) -> TensorList {
                          const Tensor& g = n.saved(0);
                          const Tensor& h = n.saved(1);
                          return {n.needs_input_grad(0) ? geglu_jvp(h, gg) : Tensor(),
                                  n.needs_input_grad(1) ? geglu_hvp(g, h, gg) : Tensor()};
                        });
    node.save(g);
    node.save(h);
    node.set_recompute(
        [](const Node& n, double, int64_t) { return geglu_backward(n.saved(0), n.saved(1)); });
  }
  return dh;
}

Tensor geglu_jvp(const Tensor& h, const Tensor& t) {
  check_h("geglu_jvp", h);
  check_same("geglu_jvp", "t", t, h.shape(), h);
  Tensor out = run(geglu_jvp_kernel, Tensor(), h, t, half_shape(h.shape()));
  if (any_requires_grad(h, t)) {
    auto& node = record("geglu_jvp", out, {&h, &t},
                        [](const Node& n, const Tensor& gg) -> TensorList {
                          const Tensor& h = n.saved(0);
                          const Tensor& t = n.saved(1);
                          return {n.needs_input_grad(0) ? geglu_hvp(gg, h, t) : Tensor(),
                                  n.needs_input_grad(1) ? geglu_backward(gg, h) : Tensor()};
                        });
    node.save(h);
    node.save(t);
  }
  return out;
}

Tensor geglu_hvp(const Tensor& g, const Tensor& h, const Tensor& t) {
  check_h("geglu_hvp", h);
  check_same("geglu_hvp", "g", g, half_shape(h.shape()), h);
  check_same("geglu_hvp", "t", t, h.shape(), h);
  Tensor out = run(geglu_hvp_kernel, g, h, t, h.shape());
  if (any_requires_grad(g, h, t)) {
    auto& node = record(
        "geglu_hvp", out, {&g, &h, &t}, [](const Node& n, const Tensor& s) -> TensorList {
          const Tensor& g = n.saved(0);
          const Tensor& h = n.saved(1);
          const Tensor& t = n.saved(2);
          Tensor dg, dh, dt;
          if (n.needs_input_grad(0)) {
            // s . (H t) per element: H t is geglu_hvp with g = 1.
            Tensor ht = geglu_hvp(ones_like(g), h, t);
            dg = add(mul(value_half(s), value_half(ht)), mul(gate_half(s), gate_half(ht)));
          }
          if (n.needs_input_grad(1)) {
            const Tensor v = value_half(h), u = gate_half(h);
            const Tensor sv = value_half(s), su = gate_half(s);
            const Tensor tv = value_half(t), tu = gate_half(t);
            const Tensor d2 = gelu_second_derivative(u);
            const Tensor gsu_tu = mul(mul(g, su), tu);
            Tensor dv = mul(gsu_tu, d2);
            Tensor du = add(mul(mul(g, add(mul(sv, tu), mul(su, tv))), d2),
                            mul(mul(gsu_tu, v), gelu_third_derivative(u)));
            dh = cat({dv, du}, -1);
          }
          if (n.needs_input_grad(2)) dt = geglu_hvp(g, h, s);
          return {dg, dh, dt};
        });
    node.save(g);
    node.save(h);
    node.save(t);
  }
  return out;
}

}  // namespace mt
