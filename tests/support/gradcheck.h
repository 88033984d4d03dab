// Finite-difference checks of gradients in double precision, first and second order.
//
// First order: the Jacobian of f at the inputs is built twice, by central differences and by
// one backward pass per output element with a one-hot grad_output, and compared entry by entry.
// Second order: the same check applied to h(x, v) = grad(<f(x), v>, x, create_graph=true), a
// function of the inputs and of v, so every entry of the Hessian-vector product's Jacobian
// (including the cross terms with v) is checked.
#pragma once

#include <functional>
#include <string>

#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/ops.h"

namespace mt::testing {

// |analytic - numeric| <= atol + rtol * |numeric|, elementwise.
struct Tolerance {
  double atol;
  double rtol;
};

// Central differences in f64 with step 1e-6: truncation error ~ eps^2 |f'''| ~ 1e-12 and rounding
// error ~ 1e-16 |f| / eps ~ 1e-10 |f|, so 1e-6 absolute plus 1e-5 relative leaves two orders of
// margin over both while still catching any wrong term (those are O(1)).
inline constexpr Tolerance kGradTol{1e-6, 1e-5};
// Second order differentiates a gradient that is itself computed in f64: the same error budget
// applied one level up, with one more order of margin for the extra rounding.
inline constexpr Tolerance kGradGradTol{1e-5, 1e-4};
inline constexpr double kFdStep = 1e-6;

using Fn = std::function<Tensor(const TensorList&)>;

// Checks the first-order gradient of f with respect to every input (all f64). `name` labels
// failures. Returns the number of Jacobian entries compared (to assert the check did something).
int64_t check_gradients(const std::string& name, const Fn& f, const TensorList& inputs,
                        Tolerance tol = kGradTol);

// Checks the gradient of the gradient (see above). Returns the number of entries compared.
int64_t check_second_order(const std::string& name, const Fn& f, const TensorList& inputs,
                           Tolerance tol = kGradGradTol);

// Max |a - b| over elements (shapes must match); for forward checks.
double max_abs_diff(const Tensor& a, const Tensor& b);

// Random f64 tensor in [lo, hi) from a fixed seed (deterministic test inputs).
Tensor random_tensor(const Shape& shape, double lo, double hi, uint64_t seed,
                     DType dtype = DType::f64);

}  // namespace mt::testing
