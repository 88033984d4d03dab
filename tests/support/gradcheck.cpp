#include "support/gradcheck.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cmath>

#include "engine/autograd/grad_mode.h"
#include "engine/core/generator.h"

namespace mt::testing {

namespace {

// Leaf copies of the inputs that require grad.
TensorList make_leaves(const TensorList& inputs) {
  TensorList leaves;
  for (const Tensor& t : inputs) {
    REQUIRE(t.dtype() == DType::f64);
    Tensor leaf = t.detach().clone();
    leaf.set_requires_grad(true);
    leaves.push_back(leaf);
  }
  return leaves;
}

// Numeric Jacobian: J[k][col] with col running over all input elements in order.
std::vector<std::vector<double>> numeric_jacobian(const Fn& f, const TensorList& leaves,
                                                  int64_t out_numel) {
  std::vector<std::vector<double>> J(static_cast<size_t>(out_numel));
  // Grad mode stays on: f may itself call grad() (the second-order check does).
  for (const Tensor& x : leaves) {
    double* p = x.data_ptr<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      const double orig = p[j];
      p[j] = orig + kFdStep;
      std::vector<double> plus = f(leaves).to_vector<double>();
      p[j] = orig - kFdStep;
      std::vector<double> minus = f(leaves).to_vector<double>();
      p[j] = orig;
      for (int64_t k = 0; k < out_numel; ++k)
        J[size_t(k)].push_back((plus[size_t(k)] - minus[size_t(k)]) / (2 * kFdStep));
    }
  }
  return J;
}

std::vector<std::vector<double>> analytic_jacobian(const Tensor& y, const TensorList& leaves) {
  std::vector<std::vector<double>> J(static_cast<size_t>(y.numel()));
  for (int64_t k = 0; k < y.numel(); ++k) {
    std::vector<double> row;
    if (y.requires_grad()) {
      Tensor onehot = zeros(y.shape(), DType::f64);
      onehot.data_ptr<double>()[k] = 1.0;
      TensorList g = autograd::grad({y}, leaves, {onehot}, /*retain_graph=*/true,
                                    /*create_graph=*/false, /*allow_unused=*/true);
      for (size_t i = 0; i < leaves.size(); ++i) {
        if (!g[i].defined()) {
          row.insert(row.end(), size_t(leaves[i].numel()), 0.0);
          continue;
        }
        REQUIRE(g[i].shape() == leaves[i].shape());
        auto v = g[i].to_vector<double>();
        row.insert(row.end(), v.begin(), v.end());
      }
    } else {
      // Output does not depend differentiably on any input: the Jacobian is zero.
      for (const Tensor& x : leaves) row.insert(row.end(), size_t(x.numel()), 0.0);
    }
    J[size_t(k)] = std::move(row);
  }
  return J;
}

}  // namespace

int64_t check_gradients(const std::string& name, const Fn& f, const TensorList& inputs,
                        Tolerance tol) {
  TensorList leaves = make_leaves(inputs);
  Tensor y = f(leaves);
  REQUIRE(y.dtype() == DType::f64);
  auto analytic = analytic_jacobian(y, leaves);
  auto numeric = numeric_jacobian(f, leaves, y.numel());
  int64_t compared = 0;
  for (size_t k = 0; k < numeric.size(); ++k) {
    REQUIRE(analytic[k].size() == numeric[k].size());
    for (size_t c = 0; c < numeric[k].size(); ++c) {
      const double a = analytic[k][c], n = numeric[k][c];
      const bool ok = std::abs(a - n) <= tol.atol + tol.rtol * std::abs(n);
      if (!ok) {
        FAIL(fmt::format("{}: d out[{}] / d in[{}]: analytic {:.12g} vs numeric {:.12g} "
                         "(|diff| {:.3g} > {:.1g} + {:.1g}*|numeric|)",
                         name, k, c, a, n, std::abs(a - n), tol.atol, tol.rtol));
      }
      ++compared;
    }
  }
  return compared;
}

int64_t check_second_order(const std::string& name, const Fn& f, const TensorList& inputs,
                           Tolerance tol) {
  // v: a fixed random direction with f's output shape.
  Tensor y0;
  {
    NoGradGuard no_grad;
    y0 = f(inputs);
  }
  TensorList extended = inputs;
  extended.push_back(random_tensor(y0.shape(), -1.0, 1.0, 12345));
  const size_t n = inputs.size();
  Fn h = [&f, n](const TensorList& xs) {
    TensorList x(xs.begin(), xs.begin() + long(n));
    Tensor v = xs[n];
    Tensor y = f(x);
    TensorList parts;
    if (y.requires_grad()) {
      TensorList g = autograd::grad({y}, x, {v}, std::nullopt, /*create_graph=*/true,
                                    /*allow_unused=*/true);
      for (size_t i = 0; i < n; ++i)
        parts.push_back(reshape(g[i].defined() ? g[i] : zeros_like(x[i]), Shape{-1}));
    } else {
      for (size_t i = 0; i < n; ++i) parts.push_back(reshape(zeros_like(x[i]), Shape{-1}));
    }
    return cat(parts, 0);
  };
  return check_gradients(name + " (second order)", h, extended, tol);
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    double d = std::abs(va[i] - vb[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

Tensor random_tensor(const Shape& shape, double lo, double hi, uint64_t seed, DType dtype) {
  Generator gen(seed);
  return uniform(shape, lo, hi, gen, dtype);
}

}  // namespace mt::testing
