// Reductions: sum, mean, max, var over dims with keepdim, against loops written here; first- and
// second-order gradients; max ties.
#include <catch2/catch.hpp>

#include <cmath>

#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {
// Sums of a few dozen O(1) f64 terms: rounding ~1e-15; the reference sums in another order.
constexpr double kReduceTol = 1e-12;

// Reference reduction of a (2, 3, 4) tensor over dims given as a mask, keepdim shape.
std::vector<double> reference(const std::vector<double>& x, std::array<bool, 3> reduce,
                              const std::string& kind) {
  const int D0 = 2, D1 = 3, D2 = 4;
  int o0 = reduce[0] ? 1 : D0, o1 = reduce[1] ? 1 : D1, o2 = reduce[2] ? 1 : D2;
  std::vector<std::vector<double>> groups(size_t(o0 * o1 * o2));
  for (int i = 0; i < D0; ++i)
    for (int j = 0; j < D1; ++j)
      for (int k = 0; k < D2; ++k) {
        int oi = reduce[0] ? 0 : i, oj = reduce[1] ? 0 : j, ok = reduce[2] ? 0 : k;
        groups[size_t((oi * o1 + oj) * o2 + ok)].push_back(x[size_t((i * D1 + j) * D2 + k)]);
      }
  std::vector<double> out;
  for (auto& g : groups) {
    double s = 0, m = -INFINITY;
    for (double v : g) s += v, m = std::max(m, v);
    double mu = s / double(g.size()), ss = 0;
    for (double v : g) ss += (v - mu) * (v - mu);
    if (kind == "sum") out.push_back(s);
    if (kind == "mean") out.push_back(mu);
    if (kind == "max") out.push_back(m);
    if (kind == "var") out.push_back(ss / double(g.size() - 1));
  }
  return out;
}

Tensor reduce_op(const std::string& kind, const Tensor& x, std::vector<int64_t> dims, bool keep) {
  if (kind == "sum") return sum(x, dims, keep);
  if (kind == "mean") return mean(x, dims, keep);
  if (kind == "max") return max(x, dims, keep);
  return var(x, dims, keep);
}

const std::vector<std::vector<int64_t>> kDimSets = {{0}, {1}, {2}, {-1}, {0, 2}, {1, 2}, {}};
}  // namespace

TEST_CASE("reductions: forward over every dim set, keepdim and not", "[ops][reduce]") {
  Tensor x = random_tensor(Shape{2, 3, 4}, -2, 2, 11);
  auto xv = x.to_vector<double>();
  for (std::string kind : {"sum", "mean", "max", "var"}) {
    for (const auto& dims : kDimSets) {
      std::array<bool, 3> mask{dims.empty(), dims.empty(), dims.empty()};
      for (int64_t d : dims) mask[size_t((d + 3) % 3)] = true;
      auto ref = reference(xv, mask, kind);
      for (bool keep : {true, false}) {
        INFO(kind << " dims=" << dims.size() << " keepdim=" << keep);
        Tensor y = reduce_op(kind, x, dims, keep);
        int expected_rank = keep ? 3 : 3 - int(dims.empty() ? 3 : dims.size());
        CHECK(y.dim() == expected_rank);
        auto yv = y.to_vector<double>();
        REQUIRE(yv.size() == ref.size());
        for (size_t i = 0; i < ref.size(); ++i) CHECK(std::abs(yv[i] - ref[i]) <= kReduceTol);
      }
    }
  }
}

TEST_CASE("reductions: first- and second-order gradients", "[ops][reduce][grad]") {
  // Distinct values (no ties) so max is differentiable at the test point.
  Tensor x = random_tensor(Shape{2, 3, 4}, -2, 2, 12);
  for (std::string kind : {"sum", "mean", "max", "var"}) {
    for (const auto& dims : {std::vector<int64_t>{1}, std::vector<int64_t>{0, 2},
                             std::vector<int64_t>{}}) {
      for (bool keep : {true, false}) {
        // Multiply by a non-constant so second order is non-trivial for linear reductions.
        auto f = [&](const TensorList& in) {
          return mul(reduce_op(kind, mul(in[0], in[0]), dims, keep),
                     reduce_op(kind, in[0], dims, keep));
        };
        std::string label = kind + (keep ? " keepdim" : "");
        CHECK(check_gradients(label, f, {x}) > 0);
        CHECK(check_second_order(label, f, {x}) > 0);
      }
    }
  }
}

TEST_CASE("max splits the gradient evenly between ties", "[ops][reduce][grad]") {
  Tensor x = from_vector(std::vector<double>{1, 3, 3, 2}, Shape{4}, DType::f64);
  x.set_requires_grad(true);
  Tensor y = max(x);
  CHECK(y.item<double>() == 3);
  auto g = autograd::grad({y}, {x});
  CHECK(g[0].to_vector<double>() == std::vector<double>{0, 0.5, 0.5, 0});
}

TEST_CASE("mean and var over a tensor with an empty kept dim are empty, not refused",
          "[ops][reduce]") {
  // Each output averages 2 elements; there are none (torch returns an empty tensor).
  const Tensor x = zeros(Shape{2, 0}, DType::f64);
  CHECK(mean(x, {0}).shape() == Shape{0});
  CHECK(var(x, {0}).shape() == Shape{0});
  CHECK_THROWS_WITH(mean(x, {1}), Catch::Contains("mean of nothing"));
  CHECK(mean(zeros(Shape{0, 0}, DType::f64), {1}).shape() == Shape{0});  // no outputs at all
  // The count per output is the reduced dims' product, not numel / outputs.
  const Tensor y = from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, Shape{2, 3}, DType::f64);
  CHECK(mean(y, {1}).to_vector<double>() == std::vector<double>{2, 5});
  CHECK(var(y, {0}).to_vector<double>() == std::vector<double>{4.5, 4.5, 4.5});
}

TEST_CASE("sum of f32 accumulates in double", "[ops][reduce]") {
  // 2^24 + 1 ones: an f32 running sum would stop at 2^24.
  const int64_t n = (1 << 24) + 8;
  Tensor x = ones(Shape{n}, DType::f32);
  CHECK(sum(x).item<double>() == double(n));
}

TEST_CASE("reduction errors name the op and the dim", "[ops][reduce][errors]") {
  Tensor x = zeros(Shape{2, 3}, DType::f64);
  CHECK_THROWS_WITH(sum(x, {2}), Catch::Contains("sum") && Catch::Contains("out of range"));
  CHECK_THROWS_WITH(mean(x, {0, 0}), Catch::Contains("appears twice"));
  CHECK_THROWS_WITH(var(zeros(Shape{1, 3}, DType::f64), {0}),
                    Catch::Contains("degrees of freedom"));
}

TEST_CASE("sum_to reduces broadcast dims", "[ops][reduce]") {
  Tensor x = random_tensor(Shape{2, 3, 4}, -1, 1, 13);
  Tensor y = sum_to(x, Shape{3, 1});
  CHECK(y.shape() == Shape{3, 1});
  Tensor ref = sum(sum(x, {0}), {1}, true);
  CHECK(max_abs_diff(y, ref) <= kReduceTol);
  CHECK_THROWS_WITH(sum_to(x, Shape{5, 4}), Catch::Contains("does not broadcast"));
}
