// GEGLU of a fused projection and its fused derivatives (engine/ops/geglu.cpp): values against
// the composite v * gelu(u), each op's first- and second-order gradients by finite differences
// (so geglu's gradients are checked to the fourth order), the fused double backward against the
// composite's, layouts, and the errors.
#include <catch2/catch.hpp>

#include "engine/autograd/engine.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {

// f64 fused kernels against the composite in f64: the same formulas in another order, a few
// ulps of values of size ~1-10.
constexpr double kFusedVsCompositeF64 = 1e-12;
// f32 fused kernels (Eigen's vectorised erf and exp, 6.3 and 1.1 ulp) against the f64 result:
// a few f32 ulps of values of size ~1-10.
constexpr double kF32VsF64 = 2e-5;

Tensor composite_geglu(const Tensor& h) {
  const int64_t F = h.size(-1) / 2;
  return mul(narrow(h, -1, 0, F), gelu(narrow(h, -1, F, F)));
}

}  // namespace

TEST_CASE("geglu: value * gelu(gate) of a fused projection, f64 and f32, any layout",
          "[ops][geglu]") {
  const Tensor h = random_tensor(Shape{3, 5, 14}, -3, 3, 11);  // F = 7
  const Tensor ref = composite_geglu(h);
  const Tensor y = geglu(h);
  REQUIRE(y.shape() == (Shape{3, 5, 7}));
  CHECK(max_abs_diff(y, ref) < kFusedVsCompositeF64);
  CHECK(max_abs_diff(geglu(h.to(DType::f32)).to(DType::f64), ref) < kF32VsF64);
  // A non-contiguous h (a transposed buffer) gives the same values.
  const Tensor ht = transpose(random_tensor(Shape{14, 6}, -3, 3, 12), 0, 1);  // (6, 14)
  REQUIRE_FALSE(ht.is_contiguous());
  CHECK(max_abs_diff(geglu(ht), composite_geglu(ht)) < kFusedVsCompositeF64);
  // Long rows take the vectorised f32 path in several blocks.
  const Tensor hw = random_tensor(Shape{33, 2 * 515}, -4, 4, 13);
  CHECK(max_abs_diff(geglu(hw.to(DType::f32)).to(DType::f64), composite_geglu(hw)) < kF32VsF64);
}

TEST_CASE("geglu: the fused backward and double-backward terms equal their definitions",
          "[ops][geglu]") {
  const Tensor h = random_tensor(Shape{4, 10}, -3, 3, 21);  // F = 5
  const Tensor g = random_tensor(Shape{4, 5}, -1, 1, 22);
  const Tensor t = random_tensor(Shape{4, 10}, -1, 1, 23);
  // J^T g and J t against the composite's gradient and its directional derivative.
  Tensor hv = h.clone().set_requires_grad();
  Tensor y = composite_geglu(hv);
  TensorList gh = autograd::grad({y}, {hv}, {g}, std::nullopt, /*create_graph=*/true);
  CHECK(max_abs_diff(geglu_backward(g, h), gh[0].detach()) < kFusedVsCompositeF64);
  const Tensor jt = sum(mul(gh[0], t));  // <J^T g, t> = <g, J t>: d/dg gives J t
  Tensor gv = g.clone().set_requires_grad();
  Tensor y2 = composite_geglu(hv);
  TensorList gh2 = autograd::grad({y2}, {hv}, {gv}, std::nullopt, true);
  TensorList d = autograd::grad({sum(mul(gh2[0], t))}, {gv, hv}, {}, std::nullopt, false);
  CHECK(max_abs_diff(geglu_jvp(h, t), d[0]) < kFusedVsCompositeF64);
  // d/dh <J^T g, t> = g H t.
  CHECK(max_abs_diff(geglu_hvp(g, h, t), d[1]) < kFusedVsCompositeF64);
  (void)jt;
  // f32 kernels against f64.
  CHECK(max_abs_diff(geglu_backward(g.to(DType::f32), h.to(DType::f32)).to(DType::f64),
                     geglu_backward(g, h)) < kF32VsF64);
  CHECK(max_abs_diff(geglu_jvp(h.to(DType::f32), t.to(DType::f32)).to(DType::f64),
                     geglu_jvp(h, t)) < kF32VsF64);
  CHECK(max_abs_diff(
            geglu_hvp(g.to(DType::f32), h.to(DType::f32), t.to(DType::f32)).to(DType::f64),
            geglu_hvp(g, h, t)) < kF32VsF64);
}

TEST_CASE("geglu and its fused derivatives: first- and second-order gradients", "[ops][geglu]") {
  const Tensor h = random_tensor(Shape{3, 8}, -2.5, 2.5, 31);  // F = 4
  const Tensor g = random_tensor(Shape{3, 4}, -1, 1, 32);
  const Tensor t = random_tensor(Shape{3, 8}, -1, 1, 33);
  auto f_geglu = [](const TensorList& in) { return geglu(in[0]); };
  auto f_backward = [](const TensorList& in) { return geglu_backward(in[0], in[1]); };
  auto f_jvp = [](const TensorList& in) { return geglu_jvp(in[0], in[1]); };
  auto f_hvp = [](const TensorList& in) { return geglu_hvp(in[0], in[1], in[2]); };
  // Jacobian entries: outputs x inputs.
  CHECK(check_gradients("geglu", f_geglu, {h}) == 12 * 24);
  CHECK(check_gradients("geglu_backward", f_backward, {g, h}) == 24 * (12 + 24));
  CHECK(check_gradients("geglu_jvp", f_jvp, {h, t}) == 12 * (24 + 24));
  CHECK(check_gradients("geglu_hvp", f_hvp, {g, h, t}) == 24 * (12 + 24 + 24));
  CHECK(check_second_order("geglu", f_geglu, {h}) > 0);
  CHECK(check_second_order("geglu_backward", f_backward, {g, h}) > 0);
  CHECK(check_second_order("geglu_jvp", f_jvp, {h, t}) > 0);
  CHECK(check_second_order("geglu_hvp", f_hvp, {g, h, t}) > 0);
}

TEST_CASE("geglu: gradients of the gradient equal the composite's through a linear layer",
          "[ops][geglu]") {
  // A feed-forward block as POCO writes it, against the two-half composite it replaces.
  const Tensor x0 = random_tensor(Shape{6, 5}, -1, 1, 41);
  const Tensor w0 = random_tensor(Shape{8, 5}, -0.5, 0.5, 42);  // F = 4
  const Tensor b0 = random_tensor(Shape{8}, -0.2, 0.2, 43);
  const Tensor w2 = random_tensor(Shape{3, 4}, -0.5, 0.5, 44);
  auto run = [&](bool fused) {
    Tensor x = x0.clone().set_requires_grad(), w = w0.clone().set_requires_grad();
    Tensor hh = linear(x, w, b0);
    Tensor a = fused ? geglu(hh) : composite_geglu(hh);
    Tensor loss = sum(mul(linear(a, w2, Tensor()), linear(a, w2, Tensor())));
    TensorList gx = autograd::grad({loss}, {x}, {}, std::nullopt, true);
    Tensor meta = sum(mul(gx[0], gx[0]));
    return autograd::grad({meta}, {x, w}, {}, std::nullopt, false);
  };
  TensorList fused = run(true), composite = run(false);
  CHECK(max_abs_diff(fused[0], composite[0]) < 1e-11);
  CHECK(max_abs_diff(fused[1], composite[1]) < 1e-11);
}

TEST_CASE("geglu: errors name the operand and the shape", "[ops][geglu]") {
  const Tensor odd = random_tensor(Shape{2, 5}, -1, 1, 51);
  CHECK_THROWS_WITH(geglu(odd), Catch::Contains("even") && Catch::Contains("(2, 5)"));
  const Tensor h = random_tensor(Shape{2, 6}, -1, 1, 52);
  CHECK_THROWS_WITH(geglu_backward(random_tensor(Shape{2, 4}, -1, 1, 53), h),
                    Catch::Contains("g must be (2, 3)"));
  CHECK_THROWS_WITH(geglu_jvp(h, random_tensor(Shape{2, 3}, -1, 1, 54)),
                    Catch::Contains("t must be (2, 6)"));
  CHECK_THROWS_WITH(geglu(ones(Shape{2, 4}, DType::i64)), Catch::Contains("float dtype"));
}
