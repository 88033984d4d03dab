// Elementwise ops: forward against std:: references, first- and second-order gradients by
// finite differences, broadcasting, comparisons and where.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <numbers>

#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {

// Forward results in f64 agree with the std:: reference to a few ulps of the result.
constexpr double kForwardTolF64 = 1e-12;
// f32 results (computed in f32) against the f64 reference: a few f32 ulps of values of size ~1-10.
constexpr double kForwardTolF32 = 1e-5;

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> reference;
  double lo, hi;  // input domain: away from kinks and poles
  bool differentiable = true;
};

std::vector<UnaryCase> unary_cases() {
  const double s2 = std::numbers::sqrt2;
  return {
      {"neg", [](const Tensor& x) { return neg(x); }, [](double v) { return -v; }, -2, 2},
      {"exp", [](const Tensor& x) { return exp(x); }, [](double v) { return std::exp(v); }, -2, 2},
      {"log", [](const Tensor& x) { return log(x); }, [](double v) { return std::log(v); }, 0.3, 3},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, [](double v) { return std::sqrt(v); }, 0.3,
       3},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); },
       [](double v) { return 1 / std::sqrt(v); }, 0.3, 3},
      // abs and relu: inputs kept at |x| >= 0.1 by the domain split below (kink at 0).
      {"abs", [](const Tensor& x) { return abs(x); }, [](double v) { return std::abs(v); }, 0.1, 2},
      {"abs(neg side)", [](const Tensor& x) { return abs(x); },
       [](double v) { return std::abs(v); }, -2, -0.1},
      {"tanh", [](const Tensor& x) { return tanh(x); }, [](double v) { return std::tanh(v); }, -2,
       2},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); },
       [](double v) { return 1 / (1 + std::exp(-v)); }, -3, 3},
      {"relu", [](const Tensor& x) { return relu(x); },
       [](double v) { return v > 0 ? v : 0.0; }, 0.1, 2},
      {"relu(neg side)", [](const Tensor& x) { return relu(x); },
       [](double v) { return v > 0 ? v : 0.0; }, -2, -0.1},
      {"erf", [](const Tensor& x) { return erf(x); }, [](double v) { return std::erf(v); }, -2, 2},
      {"sin", [](const Tensor& x) { return sin(x); }, [](double v) { return std::sin(v); }, -3, 3},
      {"cos", [](const Tensor& x) { return cos(x); }, [](double v) { return std::cos(v); }, -3, 3},
      {"gelu", [](const Tensor& x) { return gelu(x); },
       [s2](double v) { return 0.5 * v * (1 + std::erf(v / s2)); }, -3, 3},
      {"gelu_second_derivative", [](const Tensor& x) { return gelu_second_derivative(x); },
       [](double v) { return std::exp(-0.5 * v * v) / std::sqrt(2 * std::numbers::pi) * (2 - v * v); },
       -3, 3},
      // clamp: inputs avoid the bounds by the domain (inside) and the separate cases below.
      {"clamp(inside)", [](const Tensor& x) { return clamp(x, -1.0, 1.0); },
       [](double v) { return std::clamp(v, -1.0, 1.0); }, -0.9, 0.9},
      {"clamp(above)", [](const Tensor& x) { return clamp(x, -1.0, 1.0); },
       [](double v) { return std::clamp(v, -1.0, 1.0); }, 1.1, 2},
      {"clamp(lo only)", [](const Tensor& x) { return clamp(x, 0.5, std::nullopt); },
       [](double v) { return std::max(v, 0.5); }, -1, 0.4},
      {"pow(x, 3)", [](const Tensor& x) { return pow(x, 3.0); },
       [](double v) { return v * v * v; }, -2, 2},
      {"pow(x, 0.5)", [](const Tensor& x) { return pow(x, 0.5); },
       [](double v) { return std::sqrt(v); }, 0.3, 3},
  };
}

}  // namespace

TEST_CASE("unary ops: forward matches std:: reference in f64 and f32", "[ops][unary]") {
  for (const auto& c : unary_cases()) {
    INFO(c.name);
    Tensor x = random_tensor(Shape{3, 5}, c.lo, c.hi, 1);
    Tensor y = c.op(x);
    auto xv = x.to_vector<double>();
    auto yv = y.to_vector<double>();
    for (size_t i = 0; i < xv.size(); ++i) CHECK(std::abs(yv[i] - c.reference(xv[i])) <= kForwardTolF64);
    Tensor y32 = c.op(x.to(DType::f32));
    REQUIRE(y32.dtype() == DType::f32);
    auto y32v = y32.to_vector<double>();
    for (size_t i = 0; i < xv.size(); ++i)
      CHECK(std::abs(y32v[i] - c.reference(double(float(xv[i])))) <=
            kForwardTolF32 * (1 + std::abs(yv[i])));
  }
}

TEST_CASE("unary ops: first- and second-order gradients", "[ops][unary][grad]") {
  for (const auto& c : unary_cases()) {
    Tensor x = random_tensor(Shape{2, 3}, c.lo, c.hi, 2);
    auto f = [&](const TensorList& in) { return c.op(in[0]); };
    CHECK(check_gradients(c.name, f, {x}) == 36);
    CHECK(check_second_order(c.name, f, {x}) > 0);
  }
}

TEST_CASE("gelu_backward: value, and its own first- and second-order gradients",
          "[ops][unary][grad]") {
  // gelu's backward is a fused op; its derivatives in g and x are checked like any other op's,
  // so third-order gradients of gelu are right too.
  Tensor g = random_tensor(Shape{2, 3}, -1, 1, 13), x = random_tensor(Shape{2, 3}, -3, 3, 14);
  auto gv = g.to_vector<double>(), xv = x.to_vector<double>();
  auto y = gelu_backward(g, x).to_vector<double>();
  for (size_t i = 0; i < y.size(); ++i) {
    const double v = xv[i], cdf = 0.5 * (1 + std::erf(v / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * v * v) / std::sqrt(2 * std::numbers::pi);
    CHECK(std::abs(y[i] - gv[i] * (cdf + v * pdf)) <= kForwardTolF64);
  }
  auto f = [](const TensorList& in) { return gelu_backward(in[0], in[1]); };
  CHECK(check_gradients("gelu_backward", f, {g, x}) == 72);
  CHECK(check_second_order("gelu_backward", f, {g, x}) > 0);
}

TEST_CASE("relu_backward: g where x > 0, differentiable in g, no gradient to x",
          "[ops][unary][grad]") {
  Tensor g = random_tensor(Shape{3, 4}, -1, 1, 15), x = random_tensor(Shape{3, 4}, -1, 1, 16);
  auto gv = g.to_vector<double>(), xv = x.to_vector<double>();
  auto y = relu_backward(g, x).to_vector<double>();
  for (size_t i = 0; i < y.size(); ++i) CHECK(y[i] == (xv[i] > 0 ? gv[i] : 0.0));
  // The same for a broadcast mask and in f32.
  Tensor row = random_tensor(Shape{4}, -1, 1, 17);
  CHECK(max_abs_diff(relu_backward(g, row), mul(g, gt(row, scalar_like(row, 0.0)))) == 0);
  CHECK(max_abs_diff(relu_backward(g.to(DType::f32), x.to(DType::f32)).to(DType::f64),
                     relu_backward(g, x)) <= 1e-7);
  auto f = [&](const TensorList& in) { return relu_backward(in[0], x); };
  CHECK(check_gradients("relu_backward", f, {g}) == 144);
  CHECK(check_second_order("relu_backward", f, {g}) > 0);
  Tensor xg = x.detach();
  xg.set_requires_grad(true);
  CHECK_FALSE(relu_backward(g, xg).requires_grad());
  // NaN, as torch: relu(NaN) = NaN (a diverged value is not hidden as 0), and its backward
  // passes the gradient; the fused linear + relu of the CPU does the same.
  const std::vector<double> nan_in{NAN, -1, 2};
  const Tensor xn = from_vector(nan_in, Shape{3}, DType::f64);
  const auto r = relu(xn).to_vector<double>();
  CHECK(std::isnan(r[0]));
  CHECK(r[1] == 0);
  CHECK(r[2] == 2);
  CHECK(relu_backward(ones(Shape{3}, DType::f64), xn).to_vector<double>() ==
        std::vector<double>{1, 0, 1});
  const Tensor w = ones(Shape{1, 3}, DType::f64);
  CHECK(std::isnan(linear(xn.reshape(Shape{1, 3}), w, Tensor(), Activation::relu).item<double>()));
}

TEST_CASE("sign carries no gradient", "[ops][unary]") {
  Tensor x = random_tensor(Shape{4}, -1, 1, 3);
  x.set_requires_grad(true);
  Tensor s = sign(x);
  CHECK_FALSE(s.requires_grad());
  Tensor xs = from_vector(std::vector<double>{-2, 0, 3}, Shape{3}, DType::f64);
  CHECK(sign(xs).to_vector<double>() == std::vector<double>{-1, 0, 1});
}

namespace {
struct BinaryCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  std::function<double(double, double)> reference;
  double lo, hi;
};
std::vector<BinaryCase> binary_cases() {
  return {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); },
       [](double a, double b) { return a + b; }, -2, 2},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); },
       [](double a, double b) { return a - b; }, -2, 2},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); },
       [](double a, double b) { return a * b; }, -2, 2},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); },
       [](double a, double b) { return a / b; }, 0.5, 2},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); },
       [](double a, double b) { return std::pow(a, b); }, 0.5, 2},
  };
}
// Broadcast pairs: equal shapes, a row against a column, a scalar, leading-dim broadcast.
const std::vector<std::pair<Shape, Shape>> kBroadcastShapes = {
    {Shape{2, 3}, Shape{2, 3}}, {Shape{3, 1}, Shape{1, 4}}, {Shape{2, 3}, Shape{}},
    {Shape{2, 1, 3}, Shape{4, 3}}};
}  // namespace

TEST_CASE("binary ops: forward with broadcasting", "[ops][binary]") {
  for (const auto& c : binary_cases()) {
    for (const auto& [sa, sb] : kBroadcastShapes) {
      INFO(c.name << " " << sa.str() << " x " << sb.str());
      Tensor a = random_tensor(sa, c.lo, c.hi, 4), b = random_tensor(sb, c.lo, c.hi, 5);
      Tensor y = c.op(a, b);
      Shape expected = broadcast_shapes(sa, sb, "test");
      REQUIRE(y.shape() == expected);
      // Reference through explicit expansion.
      auto ae = expand(a, expected).contiguous().to_vector<double>();
      auto be = expand(b, expected).contiguous().to_vector<double>();
      auto yv = y.to_vector<double>();
      for (size_t i = 0; i < yv.size(); ++i)
        CHECK(std::abs(yv[i] - c.reference(ae[i], be[i])) <= kForwardTolF64);
    }
  }
}

TEST_CASE("binary ops: first- and second-order gradients with broadcasting",
          "[ops][binary][grad]") {
  for (const auto& c : binary_cases()) {
    for (const auto& [sa, sb] : kBroadcastShapes) {
      Tensor a = random_tensor(sa, c.lo, c.hi, 6), b = random_tensor(sb, c.lo, c.hi, 7);
      auto f = [&](const TensorList& in) { return c.op(in[0], in[1]); };
      std::string label = std::string(c.name) + " " + sa.str() + " x " + sb.str();
      CHECK(check_gradients(label, f, {a, b}) > 0);
      CHECK(check_second_order(label, f, {a, b}) > 0);
    }
  }
}

TEST_CASE("pow: torch's gradients where the formulas meet 0 * inf", "[ops][binary][grad]") {
  // a = (0, 0, 2), b = (2, 0, 0): d/db of a^b at a = 0, b >= 0 is 0 (the limit of a^b log a);
  // d/da of a^0 is 0, also at a = 0.
  Tensor a = from_vector(std::vector<double>{0, 0, 2}, Shape{3}, DType::f64).set_requires_grad(true);
  Tensor b = from_vector(std::vector<double>{2, 0, 0}, Shape{3}, DType::f64).set_requires_grad(true);
  const TensorList g = autograd::grad({sum(pow(a, b))}, {a, b});
  CHECK(g[0].to_vector<double>() == std::vector<double>{0, 0, 0});  // 2 * 0^1, 0, 0
  CHECK(g[1].to_vector<double>() == std::vector<double>{0, 0, std::log(2.0)});
  // Away from those points the rule is unchanged: first and second order against differences.
  auto f = [](const TensorList& in) { return pow(in[0], in[1]); };
  const Tensor pa = random_tensor(Shape{5}, 0.5, 2.0, 41), pb = random_tensor(Shape{5}, -1, 2, 42);
  CHECK(check_gradients("pow", f, {pa, pb}) > 0);
  CHECK(check_second_order("pow", f, {pa, pb}) > 0);
  // Higher orders at those points: the masked branches held pow(0, -1) = inf and log(0), whose
  // derivatives made NaN through the mask (torch gives 0).
  Tensor x = from_vector(std::vector<double>{0, 2}, Shape{2}, DType::f64).set_requires_grad(true);
  const TensorList d1 = autograd::grad({sum(pow(x, 0.0))}, {x}, {}, true, true);
  CHECK(autograd::grad({sum(d1[0])}, {x})[0].to_vector<double>() == std::vector<double>{0, 0});
  const TensorList e1 = autograd::grad({sum(pow(x, 1.0))}, {x}, {}, true, true);
  const TensorList e2 = autograd::grad({sum(e1[0])}, {x}, {}, true, true);
  CHECK(autograd::grad({sum(e2[0])}, {x})[0].to_vector<double>() == std::vector<double>{0, 0});
  Tensor e = from_vector(std::vector<double>{1, 2}, Shape{2}, DType::f64).set_requires_grad(true);
  const TensorList db = autograd::grad({sum(pow(x, e))}, {e}, {}, true, true);  // 0 at x = 0
  const TensorList dxdb = autograd::grad({sum(db[0])}, {x});
  for (const double v : dxdb[0].to_vector<double>()) CHECK(std::isfinite(v));
}

TEST_CASE("clamp: the gradient where x was clamped is 0, even for an inf incoming gradient",
          "[ops][unary][grad]") {
  // sqrt(clamp(v, 0)): sqrt's gradient at 0 is inf, and the mask multiplied it into NaN.
  Tensor x = from_vector(std::vector<double>{-1.0, 0.25}, Shape{2}, DType::f64)
                 .set_requires_grad(true);
  const TensorList g = autograd::grad({sum(sqrt(clamp(x, 0.0, std::nullopt)))}, {x});
  CHECK(g[0].to_vector<double>() == std::vector<double>{0, 1});
  auto f = [](const TensorList& in) { return clamp(in[0], -0.5, 0.5); };
  const Tensor p = random_tensor(Shape{7}, -1, 1, 43);
  CHECK(check_gradients("clamp", f, {p}) > 0);
}

TEST_CASE("scalar operators", "[ops][binary]") {
  Tensor x = random_tensor(Shape{3}, 0.5, 2, 8);
  auto f = [](const TensorList& in) {
    return (2.0 * in[0] + 1.0) / (in[0] - 0.1) - 3.0 / in[0] + (1.0 - in[0]) * 0.5;
  };
  auto xv = x.to_vector<double>();
  auto yv = f({x}).to_vector<double>();
  for (size_t i = 0; i < 3; ++i) {
    double v = xv[i];
    CHECK(std::abs(yv[i] - ((2 * v + 1) / (v - 0.1) - 3 / v + (1 - v) * 0.5)) < kForwardTolF64);
  }
  CHECK(check_gradients("scalar operators", f, {x}) == 9);
  CHECK(check_second_order("scalar operators", f, {x}) > 0);
}

TEST_CASE("comparisons give masks without gradient", "[ops][binary]") {
  Tensor a = from_vector(std::vector<double>{1, 2, 3}, Shape{3}, DType::f64);
  Tensor b = from_vector(std::vector<double>{2, 2, 2}, Shape{3}, DType::f64);
  a.set_requires_grad(true);
  CHECK(eq(a, b).to_vector<double>() == std::vector<double>{0, 1, 0});
  CHECK(ne(a, b).to_vector<double>() == std::vector<double>{1, 0, 1});
  CHECK(lt(a, b).to_vector<double>() == std::vector<double>{1, 0, 0});
  CHECK(le(a, b).to_vector<double>() == std::vector<double>{1, 1, 0});
  CHECK(gt(a, b).to_vector<double>() == std::vector<double>{0, 0, 1});
  CHECK(ge(a, b).to_vector<double>() == std::vector<double>{0, 1, 1});
  CHECK_FALSE(gt(a, b).requires_grad());
}

TEST_CASE("where: forward, gradients to both branches, none to the mask", "[ops][binary][grad]") {
  Tensor mask = from_vector(std::vector<double>{1, 0, 1, 0, 0, 1}, Shape{2, 3}, DType::f64);
  Tensor a = random_tensor(Shape{2, 3}, -1, 1, 9), b = random_tensor(Shape{3}, -1, 1, 10);
  Tensor y = where(mask, a, b);
  auto av = a.to_vector<double>(), bv = b.to_vector<double>(), yv = y.to_vector<double>();
  for (int i = 0; i < 6; ++i) CHECK(yv[size_t(i)] == ((i == 0 || i == 2 || i == 5) ? av[size_t(i)] : bv[size_t(i % 3)]));
  auto f = [&](const TensorList& in) { return where(mask, mul(in[0], in[0]), exp(in[1])); };
  CHECK(check_gradients("where", f, {a, b}) == 6 * 9);
  CHECK(check_second_order("where", f, {a, b}) > 0);
}

TEST_CASE("elementwise ops refuse mismatched dtypes and shapes with clear messages",
          "[ops][errors]") {
  Tensor a = zeros(Shape{2, 3}, DType::f32), b = zeros(Shape{2, 3}, DType::f64);
  CHECK_THROWS_WITH(add(a, b), Catch::Contains("dtype mismatch") && Catch::Contains(".to()"));
  Tensor c = zeros(Shape{4}, DType::f32);
  CHECK_THROWS_WITH(mul(a, c), Catch::Contains("cannot be broadcast") &&
                                   Catch::Contains("(2, 3)") && Catch::Contains("(4,)"));
  Tensor idx = zeros(Shape{3}, DType::i64);
  CHECK_THROWS_WITH(exp(idx), Catch::Contains("i64") && Catch::Contains("not supported"));
  // clamp's bounds: ordered, and never NaN (the kernel would read it as no bound, the backward
  // as a bound no element meets).
  CHECK_THROWS_WITH(clamp(a, 1.0, -1.0), Catch::Contains("lower bound 1 exceeds upper bound -1"));
  CHECK_THROWS_WITH(clamp(a, std::nan(""), 1.0), Catch::Contains("a bound is NaN"));
  CHECK_THROWS_WITH(clamp(a, std::nullopt, std::nan("")), Catch::Contains("a bound is NaN"));
}

TEST_CASE("scalar operands are shared constants, read-only", "[ops]") {
  Tensor x = zeros(Shape{3}, DType::f32);
  Tensor a = scalar_like(x, 0.25), b = scalar_like(x, 0.25);
  CHECK(a.raw_data() == b.raw_data());  // one constant per device, dtype and value
  CHECK(scalar_like(x, 0.5).raw_data() != a.raw_data());
  CHECK(scalar_like(zeros(Shape{3}, DType::f64), 0.25).dtype() == DType::f64);
  // Every graph reading 0.25 shares it: writing into it, or making it learnable, is refused
  // (a graph recorded before would change under its feet, or send gradients to it).
  CHECK_THROWS_WITH(a.fill_(7.0), Catch::Contains("shared constant"));
  CHECK_THROWS_WITH(a.unsqueeze(0).copy_(ones(Shape{1})), Catch::Contains("shared constant"));
  CHECK_THROWS_WITH(a.set_requires_grad(), Catch::Contains("shared constant"));
  CHECK(a.item<double>() == 0.25);
  CHECK(add(x, 0.25).to_vector<double>() == std::vector<double>{0.25, 0.25, 0.25});
  // A learnable scalar from a clone: only the graph that reads it sends it a gradient (a
  // learned inner step size), not one that multiplies by the same value.
  Tensor w = ones(Shape{3}, DType::f64).set_requires_grad();
  const Tensor y = sum(pow(mul(w, 0.5), 2.0));
  Tensor alpha = scalar_like(w, 0.5).clone().set_requires_grad();
  const Tensor g = autograd::grad({y}, {w}, {}, std::nullopt, /*create_graph=*/true)[0];
  sum(g).backward();
  CHECK_FALSE(alpha.grad().defined());
  Tensor c = alpha.clone().detach();
  c.fill_(3.0);  // a clone is the caller's own
  CHECK(c.item<double>() == 3.0);
}

TEST_CASE("add3: (a + b) + c in one pass, broadcast, gradients of the first and second order",
          "[ops][elementwise]") {
  const Tensor a = random_tensor(Shape{4, 5}, -1e4, 1e4, 301, DType::f32);
  const Tensor b = random_tensor(Shape{4, 5}, -1, 1, 302, DType::f32);
  const Tensor c = random_tensor(Shape{5}, -1e4, 1e4, 303, DType::f32);  // broadcast over rows
  // Bitwise the two adds (f32 rounding after each addition).
  CHECK(max_abs_diff(add3(a, b, c), add(add(a, b), c)) == 0);
  auto f = [](const TensorList& in) { return add3(mul(in[0], in[0]), in[1], in[2]); };
  const TensorList in = {random_tensor(Shape{3, 2}, -1, 1, 304), random_tensor(Shape{3, 2}, -1, 1, 305),
                         random_tensor(Shape{2}, -1, 1, 306)};
  CHECK(check_gradients("add3", f, in) == 6 * (6 + 6 + 2));
  CHECK(check_second_order("add3", f, in) > 0);
  CHECK_THROWS_WITH(add3(a, b, random_tensor(Shape{3}, -1, 1, 307)), Catch::Contains("add3"));
}

