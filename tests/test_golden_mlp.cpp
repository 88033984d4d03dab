// The engine against PyTorch on a whole meta-learning step: a 2-layer MLP, its loss and
// gradients, one inner SGD step with create_graph, the query loss on the fast weights, and the
// second-order meta-gradient (tests/golden/mlp_meta_v1.bin, written by
// tools/reference/golden_mlp.py in float64).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <cmath>

#include "support/golden_file.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {

// f64 vs torch f64: the two differ only in summation order (Eigen's GEMM blocking vs torch's)
// and erf/exp last-bit rounding; through ~20 ops of O(1) values that stays below 1e-13
// relative. 1e-12 absolute + 1e-10 relative is two to three orders above it.
constexpr Tolerance kGoldenF64{1e-12, 1e-10};
// f32 run of the same step: f32 rounding (6e-8 relative) accumulated over sums of up to 16
// products and the ~40-op second-order chain; measured worst error is ~1e-7 on values of size
// ~1. 1e-6 absolute + 1e-5 relative keeps a 10x margin and still fails on any wrong term.
constexpr Tolerance kGoldenF32{1e-6, 1e-5};

std::string golden_path() { return mt::testing::golden_path("mlp_meta_v1.bin"); }

Tensor load(const GoldenFile& file, const std::string& name, DType dtype) {
  const GoldenTensor& g = file.at(name);
  return from_vector(g.values, Shape(g.shape), dtype);
}

void expect_close(const GoldenFile& file, const std::string& name, const Tensor& actual,
                  Tolerance tol) {
  const GoldenTensor& g = file.at(name);
  INFO("tensor " << name);
  REQUIRE(actual.shape() == Shape(g.shape));
  auto v = actual.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const double err = std::abs(v[i] - g.values[i]);
    worst = std::max(worst, err / (tol.atol + tol.rtol * std::abs(g.values[i])));
    if (err > tol.atol + tol.rtol * std::abs(g.values[i]))
      FAIL(fmt::format("{}[{}]: got {:.17g}, golden {:.17g} (|diff| {:.3g})", name, i, v[i],
                       g.values[i], err));
  }
  SUCCEED(fmt::format("{}: worst error at {:.3f} of the tolerance", name, worst));
}

struct MetaStep {
  Tensor out_support, loss_support, out_query, loss_query;
  TensorList grads, fast, meta_grads, fo_meta_grads;
};

Tensor mlp(const Tensor& x, const TensorList& p) {
  return add(matmul(gelu(add(matmul(x, p[0]), p[1])), p[2]), p[3]);
}

MetaStep run_meta_step(const GoldenFile& file, DType dtype) {
  TensorList params;
  for (const char* n : {"W1", "b1", "W2", "b2"}) {
    params.push_back(load(file, n, dtype));
    params.back().set_requires_grad(true);
  }
  const double lr = file.at("inner_lr").values.at(0);
  MetaStep s;
  s.out_support = mlp(load(file, "x_support", dtype), params);
  s.loss_support = mse_loss(s.out_support, load(file, "y_support", dtype));
  s.grads = autograd::grad({s.loss_support}, params, {}, std::nullopt, /*create_graph=*/true);
  for (size_t i = 0; i < params.size(); ++i) s.fast.push_back(sub(params[i], mul(s.grads[i], lr)));
  s.out_query = mlp(load(file, "x_query", dtype), s.fast);
  s.loss_query = mse_loss(s.out_query, load(file, "y_query", dtype));
  s.fo_meta_grads = autograd::grad({s.loss_query}, s.fast, {}, /*retain_graph=*/true);
  s.meta_grads = autograd::grad({s.loss_query}, params);
  return s;
}

void compare(const GoldenFile& file, const MetaStep& s, Tolerance tol) {
  const char* names[] = {"W1", "b1", "W2", "b2"};
  expect_close(file, "out_support", s.out_support, tol);
  expect_close(file, "loss_support", s.loss_support, tol);
  expect_close(file, "out_query", s.out_query, tol);
  expect_close(file, "loss_query", s.loss_query, tol);
  for (size_t i = 0; i < 4; ++i) {
    expect_close(file, fmt::format("grad_{}", names[i]), s.grads[i], tol);
    expect_close(file, fmt::format("fast_{}", names[i]), s.fast[i], tol);
    expect_close(file, fmt::format("meta_grad_{}", names[i]), s.meta_grads[i], tol);
    expect_close(file, fmt::format("fo_meta_grad_{}", names[i]), s.fo_meta_grads[i], tol);
  }
}

}  // namespace

TEST_CASE("golden MLP meta-step matches PyTorch in f64", "[golden][meta]") {
  GoldenFile file = GoldenFile::load(golden_path());
  compare(file, run_meta_step(file, DType::f64), kGoldenF64);
}

TEST_CASE("golden MLP meta-step matches PyTorch in f32", "[golden][meta]") {
  GoldenFile file = GoldenFile::load(golden_path());
  compare(file, run_meta_step(file, DType::f32), kGoldenF32);
}

TEST_CASE("the second-order meta-gradient differs from the first-order one", "[golden][meta]") {
  // Guards the test itself: if the two golden tensors were equal, the f64 check above could not
  // tell a first-order engine from a second-order one.
  GoldenFile file = GoldenFile::load(golden_path());
  double gap = 0;
  for (const char* n : {"W1", "b1", "W2", "b2"}) {
    auto& a = file.at(fmt::format("meta_grad_{}", n)).values;
    auto& b = file.at(fmt::format("fo_meta_grad_{}", n)).values;
    for (size_t i = 0; i < a.size(); ++i) gap = std::max(gap, std::abs(a[i] - b[i]));
  }
  CHECK(gap > 1e-3);
}

TEST_CASE("the meta-step is bitwise deterministic on the CPU", "[golden][determinism]") {
  GoldenFile file = GoldenFile::load(golden_path());
  MetaStep a = run_meta_step(file, DType::f32), b = run_meta_step(file, DType::f32);
  CHECK(a.loss_query.to_vector<float>() == b.loss_query.to_vector<float>());
  for (size_t i = 0; i < 4; ++i)
    CHECK(a.meta_grads[i].to_vector<float>() == b.meta_grads[i].to_vector<float>());
}
