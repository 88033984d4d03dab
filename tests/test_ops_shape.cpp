// Views and joins: reshape, permute/transpose, narrow, expand, squeeze/unsqueeze, contiguous,
// dtype conversion, cat, stack, split. Views must share storage; every op is checked to first
// and second order (composed with a non-linear op so the second order is not trivially zero).
#include <catch2/catch.hpp>

#include <limits>

#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

TEST_CASE("views share storage and have the right strides", "[ops][view]") {
  Tensor x = arange(24, DType::f64).reshape(Shape{2, 3, 4});
  CHECK(x.is_contiguous());
  Tensor t = x.transpose(0, 2);
  CHECK(t.shape() == Shape{4, 3, 2});
  CHECK(t.strides() == Shape{1, 4, 12});
  CHECK_FALSE(t.is_contiguous());
  CHECK(&t.storage() == &x.storage());
  Tensor n = x.narrow(1, 1, 2);
  CHECK(n.shape() == Shape{2, 2, 4});
  CHECK(n.offset() == 4);
  CHECK(n.contiguous().to_vector<double>() ==
        std::vector<double>{4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23});
  Tensor e = arange(3, DType::f64).reshape(Shape{3, 1}).expand(Shape{2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  CHECK(e.contiguous().to_vector<double>()[5] == 1.0);
  Tensor p = x.permute(Shape{2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.contiguous().to_vector<double>()[1] == 4.0);  // p[0,0,1] = x[0,1,0]
  Tensor r = t.reshape(Shape{-1});  // non-contiguous: copies
  CHECK(r.shape() == Shape{24});
  CHECK(r.to_vector<double>()[1] == 12.0);
  CHECK(x.unsqueeze(1).shape() == Shape{2, 1, 3, 4});
  CHECK(x.unsqueeze(-1).shape() == Shape{2, 3, 4, 1});
  CHECK(x.unsqueeze(1).squeeze(1).shape() == Shape{2, 3, 4});
  // A write through a view is seen by the base.
  {
    NoGradGuard no_grad;
    n.fill_(-1.0);
  }
  CHECK(x.to_vector<double>()[4] == -1.0);
}

TEST_CASE("view ops: first- and second-order gradients", "[ops][view][grad]") {
  Tensor x = random_tensor(Shape{2, 3, 4}, -1, 1, 20);
  // Weights make every output element's gradient distinct.
  Tensor w = random_tensor(Shape{24}, 0.5, 1.5, 21);
  auto check = [&](const char* name, std::function<Tensor(const Tensor&)> view) {
    auto f = [&](const TensorList& in) {
      Tensor v = view(mul(in[0], in[0]));  // non-linear before the view: second order non-zero
      return mul(v.reshape(Shape{-1}).narrow(0, 0, std::min<int64_t>(v.numel(), 24)),
                 w.narrow(0, 0, std::min<int64_t>(v.numel(), 24)));
    };
    CHECK(check_gradients(name, f, {x}) > 0);
    CHECK(check_second_order(name, f, {x}) > 0);
  };
  check("reshape", [](const Tensor& t) { return t.reshape(Shape{4, 6}); });
  check("permute", [](const Tensor& t) { return t.permute(Shape{1, 2, 0}); });
  check("transpose", [](const Tensor& t) { return t.transpose(0, 2); });
  check("narrow", [](const Tensor& t) { return t.narrow(2, 1, 2); });
  check("expand", [](const Tensor& t) { return t.narrow(0, 0, 1).expand(Shape{3, 3, 4}); });
  check("unsqueeze+squeeze", [](const Tensor& t) { return t.unsqueeze(0).squeeze(0); });
  check("contiguous of transpose", [](const Tensor& t) { return t.transpose(1, 2).contiguous(); });
  check("clone", [](const Tensor& t) { return t.clone(); });
  check("narrow_scatter", [](const Tensor& t) {
    return narrow_scatter(t, Shape{2, 5, 4}, 1, 2);
  });
}

TEST_CASE("dtype conversion round trips and carries gradients", "[ops][view][grad]") {
  Tensor x = random_tensor(Shape{5}, -3, 3, 22);
  Tensor f32 = x.to(DType::f32);
  CHECK(f32.dtype() == DType::f32);
  CHECK(max_abs_diff(f32.to(DType::f64), x) < 1e-6);
  // bf16 keeps 8 significant bits, f16 11: relative error 2^-8 and 2^-11 after rounding.
  CHECK(max_abs_diff(x.to(DType::bf16).to(DType::f64), x) <= 3.0 * std::ldexp(1.0, -8));
  CHECK(max_abs_diff(x.to(DType::f16).to(DType::f64), x) <= 3.0 * std::ldexp(1.0, -11));
  // An f32 round trip perturbs values by ~1e-7, too much for the f64 finite-difference check,
  // so the gradient through the conversion is checked against its closed form (2x) instead.
  Tensor leaf = x.detach().clone();
  leaf.set_requires_grad(true);
  Tensor y = sum(mul(leaf.to(DType::f32), leaf.to(DType::f32)));
  auto g = autograd::grad({y}, {leaf});
  CHECK(g[0].dtype() == DType::f64);
  CHECK(max_abs_diff(g[0], mul(x, 2.0)) < 1e-5);
}

TEST_CASE("floating point to i64 (casts and fill_): toward zero, NaN to 0, saturated beyond the "
          "range",
          "[ops][view]") {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max(), kMin = std::numeric_limits<int64_t>::min();
  const std::vector<double> values = {2.7, -2.7, NAN, 1e30, -1e30, INFINITY, -INFINITY,
                                      9223372036854775808.0, -9223372036854775808.0, 0.0};
  const std::vector<int64_t> want = {2, -2, 0, kMax, kMin, kMax, kMin, kMax, kMin, 0};
  for (DType from : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    Tensor x = from_vector(values, Shape{int64_t(values.size())}, DType::f64).to(from);
    std::vector<int64_t> got = x.to(DType::i64).to_vector<int64_t>();
    // f16 holds at most 65504: 1e30 and 2^63 are inf there, which saturates the same way.
    INFO(dtype_name(from));
    CHECK(got == want);
  }
  // fill_ of an i64 tensor by the same rule.
  for (size_t i = 0; i < values.size(); ++i) {
    INFO("fill_(" << values[i] << ")");
    CHECK(empty(Shape{3}, DType::i64).fill_(values[i]).to_vector<int64_t>() ==
          std::vector<int64_t>(3, want[i]));
  }
}

TEST_CASE("cat, stack and split: forward", "[ops][join]") {
  Tensor a = arange(6, DType::f64).reshape(Shape{2, 3});
  Tensor b = arange(4, DType::f64).reshape(Shape{2, 2});
  Tensor c = cat({a, b}, 1);
  CHECK(c.shape() == Shape{2, 5});
  CHECK(c.to_vector<double>() == std::vector<double>{0, 1, 2, 0, 1, 3, 4, 5, 2, 3});
  Tensor s = stack({a, a * 2.0}, 0);
  CHECK(s.shape() == Shape{2, 2, 3});
  CHECK(s.to_vector<double>()[7] == 2.0);
  auto parts = split(c, std::vector<int64_t>{3, 2}, 1);
  REQUIRE(parts.size() == 2);
  CHECK(max_abs_diff(parts[0], a) == 0);
  CHECK(max_abs_diff(parts[1], b) == 0);
  auto chunks = split(arange(7, DType::f64), int64_t(3), 0);
  REQUIRE(chunks.size() == 3);
  CHECK(chunks[2].shape() == Shape{1});
  CHECK_THROWS_WITH(cat({a, arange(3, DType::f64)}, 0), Catch::Contains("rank"));
  CHECK_THROWS_WITH(cat({a, b}, 0), Catch::Contains("only dim 0 may differ"));
  CHECK_THROWS_WITH(split(c, std::vector<int64_t>{2, 2}, 1), Catch::Contains("add up to 4"));
}

TEST_CASE("cat, stack and split: first- and second-order gradients", "[ops][join][grad]") {
  Tensor a = random_tensor(Shape{2, 3}, -1, 1, 23);
  Tensor b = random_tensor(Shape{2, 2}, -1, 1, 24);
  auto fcat = [](const TensorList& in) { return cat({mul(in[0], in[0]), exp(in[1])}, 1); };
  CHECK(check_gradients("cat", fcat, {a, b}) == 10 * 10);
  CHECK(check_second_order("cat", fcat, {a, b}) > 0);
  auto fstack = [](const TensorList& in) { return stack({tanh(in[0]), mul(in[0], in[1])}, 1); };
  Tensor c = random_tensor(Shape{2, 3}, -1, 1, 25);
  CHECK(check_gradients("stack", fstack, {a, c}) > 0);
  CHECK(check_second_order("stack", fstack, {a, c}) > 0);
  auto fsplit = [](const TensorList& in) {
    auto p = split(in[0], std::vector<int64_t>{1, 2}, 1);
    return mul(p[0], sum(mul(p[1], p[1]), {1}, true));
  };
  CHECK(check_gradients("split", fsplit, {a}) > 0);
  CHECK(check_second_order("split", fsplit, {a}) > 0);
}
