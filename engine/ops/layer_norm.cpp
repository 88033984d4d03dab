// layer_norm over the last k dims with optional affine weight and bias.
// Forward: a fused CPU kernel over rows (mean, variance, normalise, scale, shift), rows split
// across threads.
// Backward:
//   xhat = (x - mu) * rstd,  gh = g * w
//   dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)),  dw = g * xhat,  db = g
// (dw and db are returned at the input's shape and summed to (normalized dims) by the engine).
// Without create_graph one fused pass computes all three. With it, dx is the op
// layer_norm_input_grad (the same fused pass, recorded) and dw = g * xhat is composed, xhat
// recomputed from the saved input. layer_norm_input_grad's backward, for an upstream gradient v
// of dx, with a = mean(gh), b = mean(gh xhat), mv = mean(v), mvx = mean(v xhat) (row means):
//   d/dgh = rstd * (v - mv - xhat * mvx)             (layer_norm_input_grad of v, no weight)
//   d/dg  = w * d/dgh,   d/dw = g * d/dgh
//   d/dx  = -rstd^2 * (xhat * (mean(v gh) - a mv - 3 b mvx) + mvx (gh - a) + b (v - mv))
// (differentiate rstd = (mean(c^2) + eps)^-1/2 and xhat = c rstd, c = x - mu, through
// dx = rstd (gh - a) - rstd xhat b). All in differentiable ops: third order and beyond work.
// When that backward is not itself recorded (the outer backward of a meta-gradient), one fused
// pass over the rows computes the three (layer_norm_double_backward_kernel; about 35 composite
// ops per node otherwise).
#include <cmath>
#include <utility>
#include <vector>

#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

DispatchStub<LayerNormKernel> layer_norm_kernel("layer_norm");
DispatchStub<LayerNormBackwardKernel> layer_norm_backward_kernel("layer_norm_backward");
DispatchStub<LayerNormDoubleBackwardKernel> layer_norm_double_backward_kernel(
    "layer_norm_double_backward");

namespace {

// sum_j f(j) over [0, D) in double with 8 partial sums (j into lane j mod 8, lanes added in
// order): the loop vectorises instead of being one dependency chain, and the order depends on D
// only.
template <class F>
double lane_sum(int64_t D, F f) {
  constexpr int64_t kLanes = 8;
  double part[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= D; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] += f(j + l);
  double total = 0;
  for (double q : part) total += q;
  for (; j < D; ++j) total += f(j);
  return total;
}

// Mean and 1 / sqrt(variance + eps) of one row, in double.
template <class T>
std::pair<double, double> row_moments(const T* xr, int64_t D, double eps) {
  const double mu = lane_sum(D, [&](int64_t j) { return double(xr[j]); }) / double(D);
  const double m2 = lane_sum(D, [&](int64_t j) {
    const double d = double(xr[j]) - mu;
    return d * d;
  });
  return {mu, 1.0 / std::sqrt(m2 / double(D) + eps)};
}

void layer_norm_cpu(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t D,
                    double eps, Tensor& out) {
  dispatch_float(x.dtype(), "layer_norm", [&]<class T>() {
    const int64_t rows = D == 0 ? 0 : x.numel() / D;
    const T* px = x.data_ptr<T>();
    const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
    const T* pb = bias.defined() ? bias.data_ptr<T>() : nullptr;
    T* py = out.data_ptr<T>();
    cpu::parallel_range(rows, 4 * D, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * D;
        T* yr = py + r * D;
        const auto [mu, rstd] = row_moments(xr, D, eps);
        for (int64_t j = 0; j < D; ++j) {
          T v = T((double(xr[j]) - mu) * rstd);
          if (pw) v *= pw[j];
          if (pb) v += pb[j];
          yr[j] = v;
        }
      }
    });
  });
}
// First-order backward (see the stub in engine/ops/kernels.h).

void layer_norm_backward_cpu(const Tensor& x, const Tensor& weight, const Tensor& g, int64_t D,
                             double eps, Tensor& dx, Tensor& dw, Tensor& db) {
  dispatch_float(x.dtype(), "layer_norm_backward", [&]<class T>() {
    const int64_t rows = D == 0 ? 0 : x.numel() / D;
    const T* px = x.data_ptr<T>();
    const T* pg = g.data_ptr<T>();
    const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
    T* pdx = dx.data_ptr<T>();
    std::vector<double> mean(static_cast<size_t>(rows)), rstd(static_cast<size_t>(rows));
    cpu::parallel_range(rows, 4 * D, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * D;
        const T* gr = pg + r * D;
        const auto [mu, rs] = row_moments(xr, D, eps);
        mean[size_t(r)] = mu;
        rstd[size_t(r)] = rs;
        // dx = rstd (gh - mean(gh) - xhat mean(gh xhat)), gh = g w
        auto gh = [&](int64_t j) { return double(gr[j]) * (pw ? double(pw[j]) : 1.0); };
        const double s1 = lane_sum(D, gh) / double(D);
        const double s2 =
            lane_sum(D, [&](int64_t j) { return gh(j) * (double(xr[j]) - mu) * rs; }) / double(D);
        for (int64_t j = 0; j < D; ++j) {
          const double xhat = (double(xr[j]) - mu) * rs;
          pdx[r * D + j] = T(rs * (gh(j) - s1 - xhat * s2));
        }
      }
    });
    // dw = sum over rows of g xhat, db = sum of g: each column summed over the rows in row order
    // (deterministic), columns split across threads.
    if (dw.defined() || db.defined()) {
      std::vector<double> sw(static_cast<size_t>(D), 0.0), sb(static_cast<size_t>(D), 0.0);
      cpu::parallel_range(D, 2 * rows, [&](int64_t j0, int64_t j1) {
        for (int64_t r = 0; r < rows; ++r) {
          const T* xr = px + r * D;
          const T* gr = pg + r * D;
          const double mu = mean[size_t(r)], rs = rstd[size_t(r)];
          for (int64_t j = j0; j < j1; ++j) {
            sw[size_t(j)] += double(gr[j]) * (double(xr[j]) - mu) * rs;
            sb[size_t(j)] += double(gr[j]);
          }
        }
      });
      if (dw.defined())
        for (int64_t j = 0; j < D; ++j) dw.data_ptr<T>()[j] = T(sw[size_t(j)]);
      if (db.defined())
        for (int64_t j = 0; j < D; ++j) db.data_ptr<T>()[j] = T(sb[size_t(j)]);
    }
  });
}

// Double backward (see the stub in engine/ops/kernels.h): per row, the statistics in double,
// then gx and gg; gw as column sums over the rows in row order (deterministic), columns split
// across threads, from the row statistics kept by the first pass.
void layer_norm_double_backward_cpu(const Tensor& x, const Tensor& weight, const Tensor& g,
                                    const Tensor& v, int64_t D, double eps, Tensor& gx, Tensor& gw,
                                    Tensor& gg) {
  dispatch_float(x.dtype(), "layer_norm_double_backward", [&]<class T>() {
    const int64_t rows = D == 0 ? 0 : x.numel() / D;
    const T* px = x.data_ptr<T>();
    const T* pg = g.data_ptr<T>();
    const T* pv = v.data_ptr<T>();
    const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
    T* pgx = gx.defined() ? gx.data_ptr<T>() : nullptr;
    T* pgg = gg.defined() ? gg.data_ptr<T>() : nullptr;
    // Per row: mean, rstd, mean(v), mean(v xhat) (what d/dgh needs, for the gw pass).
    const size_t n_rows = static_cast<size_t>(rows);
    std::vector<double> mean(n_rows), rstd(n_rows), mv(n_rows), mvx(n_rows);
    cpu::parallel_range(rows, 8 * D, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * D;
        const T* gr = pg + r * D;
        const T* vr = pv + r * D;
        const auto [mu, rs] = row_moments(xr, D, eps);
        auto xhat = [&](int64_t j) { return (double(xr[j]) - mu) * rs; };
        auto gh = [&](int64_t j) { return pw ? double(gr[j]) * double(pw[j]) : double(gr[j]); };
        const double inv_d = 1.0 / double(D);
        const double a = lane_sum(D, gh) * inv_d;
        const double b = lane_sum(D, [&](int64_t j) { return gh(j) * xhat(j); }) * inv_d;
        const double m_v = lane_sum(D, [&](int64_t j) { return double(vr[j]); }) * inv_d;
        const double m_vx = lane_sum(D, [&](int64_t j) { return double(vr[j]) * xhat(j); }) * inv_d;
        const double m_vg = lane_sum(D, [&](int64_t j) { return double(vr[j]) * gh(j); }) * inv_d;
        mean[size_t(r)] = mu;
        rstd[size_t(r)] = rs;
        mv[size_t(r)] = m_v;
        mvx[size_t(r)] = m_vx;
        const double coef = m_vg - a * m_v - 3.0 * b * m_vx;
        for (int64_t j = 0; j < D; ++j) {
          const double xh = xhat(j), vj = double(vr[j]);
          if (pgx)
            pgx[r * D + j] =
                T(-rs * rs * (xh * coef + m_vx * (gh(j) - a) + b * (vj - m_v)));
          if (pgg) {
            const double dgh = rs * (vj - m_v - xh * m_vx);
            pgg[r * D + j] = T(pw ? dgh * double(pw[j]) : dgh);
          }
        }
      }
    });
    if (gw.defined()) {
      std::vector<double> sw(size_t(D), 0.0);
      cpu::parallel_range(D, 2 * rows, [&](int64_t j0, int64_t j1) {
        for (int64_t r = 0; r < rows; ++r) {
          const T* xr = px + r * D;
          const T* gr = pg + r * D;
          const T* vr = pv + r * D;
          const double mu = mean[size_t(r)], rs = rstd[size_t(r)], m_v = mv[size_t(r)],
                       m_vx = mvx[size_t(r)];
          for (int64_t j = j0; j < j1; ++j) {
            const double xh = (double(xr[j]) - mu) * rs;
            sw[size_t(j)] += double(gr[j]) * rs * (double(vr[j]) - m_v - xh * m_vx);
          }
        }
      });
      T* pgw = gw.data_ptr<T>();
      for (int64_t j = 0; j < D; ++j) pgw[j] = T(sw[size_t(j)]);
    }
  });
}

[[maybe_unused]] const bool registered =
    (layer_norm_kernel.set(DeviceType::CPU, &layer_norm_cpu),
     layer_norm_backward_kernel.set(DeviceType::CPU, &layer_norm_backward_cpu),
     layer_norm_double_backward_kernel.set(DeviceType::CPU, &layer_norm_double_backward_cpu),
     true);

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
                        [dims, eps, norm_shape](const Node& n, const Tensor& g) -> TensorList {
                          Tensor x = n.saved(0), w = n.saved(1);
                          if (!GradMode::is_enabled()) {
                            // Not recorded (create_graph = false): one fused pass.
                            Tensor xc = contiguous(x), gc = contiguous(g);
                            Tensor wc = w.defined() ? contiguous(w) : w;
                            Tensor dx = empty(x.shape(), x.dtype(), x.device());
                            Tensor dw = n.needs_input_grad(1)
                                            ? empty(norm_shape, x.dtype(), x.device()) : Tensor();
                            Tensor db = n.needs_input_grad(2)
                                            ? empty(norm_shape, x.dtype(), x.device()) : Tensor();
                            layer_norm_backward_kernel(x.device(), xc, wc, gc, norm_shape.numel(),
                                                       eps, dx, dw, db);
                            return {n.needs_input_grad(0) ? dx : Tensor(), dw, db};
                          }
                          // Recorded (create_graph): dx as one recorded op, dw composed.
                          TensorList grads(3);
                          const int rank = int(dims.size());
                          if (n.needs_input_grad(0))
                            grads[0] = layer_norm_input_grad(x, rank, w, g, eps);
                          if (n.needs_input_grad(1))
                            grads[1] = mul(g, layer_norm(x, rank, Tensor(), Tensor(), eps));
                          if (n.needs_input_grad(2)) grads[2] = g;
                          return grads;
                        });
    node.save(x);
    node.save(weight);
    node.save(bias);  // for the recomputation only
    // One row-wise pass over x: a later node saving y (the linear after a pre-norm) keeps no copy.
    node.set_recompute(
        [](const Node& n, double eps_, int64_t rank) {
          return layer_norm(n.saved(0), int(rank), n.saved(1), n.saved(2), eps_);
        },
        eps, normalized_rank);
  }
  return y;
}

Tensor layer_norm_input_grad(const Tensor& x, int normalized_rank, const Tensor& weight,
                             const Tensor& g, double eps) {
  check_operands("layer_norm_input_grad", {&x, &g});
  MT_CHECK(g.shape() == x.shape(),
           "layer_norm_input_grad: the gradient {} must have the input's shape {}",
           g.shape().str(), x.shape().str());
  MT_CHECK(normalized_rank >= 1 && normalized_rank <= x.dim(),
           "layer_norm_input_grad: normalized_rank {} must be in [1, {}] for input {}",
           normalized_rank, x.dim(), x.shape().str());
  Shape norm_shape;
  std::vector<int64_t> dims;
  for (int i = x.dim() - normalized_rank; i < x.dim(); ++i) {
    norm_shape.push_back(x.shape()[i]);
    dims.push_back(i);
  }
  if (weight.defined()) {
    check_operands("layer_norm_input_grad", {&x, &weight});
    MT_CHECK(weight.shape() == norm_shape,
             "layer_norm_input_grad: weight has shape {} but the normalized dims of input {} are {}",
             weight.shape().str(), x.shape().str(), norm_shape.str());
  }
  Tensor dx = empty(x.shape(), x.dtype(), x.device());
  {
    NoGradGuard no_grad;
    Tensor xc = contiguous(x), gc = contiguous(g), wc = weight.defined() ? contiguous(weight) : weight;
    Tensor none;
    layer_norm_backward_kernel(x.device(), xc, wc, gc, norm_shape.numel(), eps, dx, none, none);
  }
  if (any_requires_grad(x, weight, g)) {
    auto& node = record(
        "layer_norm_input_grad", dx, {&x, &weight, &g},
        [dims, eps, norm_shape](const Node& n, const Tensor& v) -> TensorList {
          const Tensor x = n.saved(0), w = n.saved(1), g = n.saved(2);
          const int rank = int(dims.size());
          if (!GradMode::is_enabled()) {
            // Not recorded (create_graph = false): one fused pass.
            Tensor xc = contiguous(x), gc = contiguous(g), vc = contiguous(v);
            Tensor wc = w.defined() ? contiguous(w) : w;
            auto wanted = [&](int i, const Shape& shape) {
              return n.needs_input_grad(i) ? empty(shape, x.dtype(), x.device()) : Tensor();
            };
            Tensor gx = wanted(0, x.shape()), gg = wanted(2, x.shape());
            Tensor gw = w.defined() ? wanted(1, norm_shape) : Tensor();
            layer_norm_double_backward_kernel(x.device(), xc, wc, gc, vc, norm_shape.numel(), eps,
                                              gx, gw, gg);
            return {gx, gw, gg};
          }
          // Recorded (create_graph): the rule in differentiable ops.
          auto row_mean = [&](const Tensor& t) { return mean(t, dims, true); };
          TensorList grads(3);
          // d/dgh = rstd (v - mean(v) - xhat mean(v xhat)): this op on v without a weight.
          Tensor dgh;
          if (n.needs_input_grad(1) || n.needs_input_grad(2))
            dgh = layer_norm_input_grad(x, rank, Tensor(), v, eps);
          if (n.needs_input_grad(1)) grads[1] = mul(g, dgh);  // summed to w's shape by the engine
          if (n.needs_input_grad(2)) grads[2] = w.defined() ? mul(dgh, w) : dgh;
          if (n.needs_input_grad(0)) {
            Tensor centred = sub(x, row_mean(x));
            Tensor rstd = rsqrt(add(row_mean(mul(centred, centred)), scalar_like(x, eps)));
            Tensor xhat = mul(centred, rstd);
            Tensor gh = w.defined() ? mul(g, w) : g;
            Tensor a = row_mean(gh), b = row_mean(mul(gh, xhat));
            Tensor mv = row_mean(v), mvx = row_mean(mul(v, xhat));
            Tensor coef = sub(sub(row_mean(mul(v, gh)), mul(a, mv)), mul(mul(b, mvx), 3.0));
            Tensor sum_terms = add(add(mul(xhat, coef), mul(mvx, sub(gh, a))), mul(b, sub(v, mv)));
            grads[0] = neg(mul(mul(rstd, rstd), sum_terms));
          }
          return grads;
        });
    node.save(x);
    node.save(weight);
    node.save(g);
    node.set_recompute(
        [](const Node& n, double eps_, int64_t rank) {
          return layer_norm_input_grad(n.saved(0), int(rank), n.saved(1), n.saved(2), eps_);
        },
        eps, normalized_rank);
  }
  return dx;
}

}  // namespace mt
