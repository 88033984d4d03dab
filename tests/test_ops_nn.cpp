// Network ops: matmul (batched, broadcast, 1-D, transposed operands), softmax, log_softmax,
// layer_norm, embedding, mse_loss, dropout and seeded random tensors.
#include <catch2/catch.hpp>

#include <omp.h>

#include <cmath>
#include <limits>

#include "engine/core/generator.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {
// f64 products of K <= 8 terms of size ~1 against a triple loop: rounding ~1e-15.
constexpr double kMatmulTol = 1e-12;
// softmax / layer_norm in f64: a handful of roundings of O(1) values.
constexpr double kNormTol = 1e-12;

// Reference (M, K) x (K, N) in f64 by a triple loop.
std::vector<double> naive_matmul(const std::vector<double>& a, const std::vector<double>& b,
                                 int64_t M, int64_t K, int64_t N) {
  std::vector<double> c(size_t(M * N), 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) c[size_t(i * N + j)] += a[size_t(i * K + k)] * b[size_t(k * N + j)];
  return c;
}
}  // namespace

TEST_CASE("matmul: forward for 2-D, batched, broadcast, transposed and 1-D operands",
          "[ops][matmul]") {
  Tensor a = random_tensor(Shape{3, 4}, -1, 1, 30), b = random_tensor(Shape{4, 5}, -1, 1, 31);
  auto ref = naive_matmul(a.to_vector<double>(), b.to_vector<double>(), 3, 4, 5);
  Tensor c = matmul(a, b);
  REQUIRE(c.shape() == Shape{3, 5});
  auto cv = c.to_vector<double>();
  for (size_t i = 0; i < ref.size(); ++i) CHECK(std::abs(cv[i] - ref[i]) <= kMatmulTol);

  // Transposed views of contiguous buffers (the layouts the backward produces).
  Tensor at = a.transpose(0, 1).contiguous().transpose(0, 1);
  Tensor bt = b.transpose(0, 1).contiguous().transpose(0, 1);
  CHECK_FALSE(at.is_contiguous());
  CHECK(max_abs_diff(matmul(at, bt), c) <= kMatmulTol);
  // A strided view that is neither layout (packed internally).
  Tensor wide = random_tensor(Shape{3, 8}, -1, 1, 32);
  Tensor every_other = wide.reshape(Shape{3, 4, 2}).narrow(2, 0, 1).reshape(Shape{3, 4});
  CHECK(max_abs_diff(matmul(every_other, b), matmul(every_other.contiguous(), b)) <= kMatmulTol);

  // Batched with broadcast batch dims: (2, 1, 3, 4) x (5, 4, 2) -> (2, 5, 3, 2).
  Tensor ba = random_tensor(Shape{2, 1, 3, 4}, -1, 1, 33);
  Tensor bb = random_tensor(Shape{5, 4, 2}, -1, 1, 34);
  Tensor bc = matmul(ba, bb);
  REQUIRE(bc.shape() == Shape{2, 5, 3, 2});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 5; ++j) {
      Tensor expect = matmul(ba.narrow(0, i, 1).reshape(Shape{3, 4}),
                             bb.narrow(0, j, 1).reshape(Shape{4, 2}));
      CHECK(max_abs_diff(bc.narrow(0, i, 1).narrow(1, j, 1).reshape(Shape{3, 2}), expect) <=
            kMatmulTol);
    }

  // 1-D operands as torch.matmul.
  Tensor v = random_tensor(Shape{4}, -1, 1, 35);
  CHECK(matmul(a, v).shape() == Shape{3});
  CHECK(matmul(v, b).shape() == Shape{5});
  CHECK(matmul(v, v).shape() == Shape{});
  CHECK(matmul(v, bb).shape() == Shape{5, 2});
  CHECK(std::abs(matmul(v, v).item<double>() - sum(mul(v, v)).item<double>()) <= kMatmulTol);
  CHECK_THROWS_WITH(matmul(a, a), Catch::Contains("inner dims differ") &&
                                      Catch::Contains("(3, 4)"));
}

TEST_CASE("matmul: f32 and f64 BLAS products at sizes that block and thread",
          "[ops][matmul]") {
  // Large enough for the BLAS's blocked, multi-threaded path; every operand layout the engine
  // passes (row-major, transposed, a narrowed view whose leading dim exceeds its width, a packed
  // copy), a batch split across threads, and K = 0.
  const int64_t M = 67, K = 129, N = 53;
  Tensor a64 = random_tensor(Shape{M, K}, -1, 1, 40), b64 = random_tensor(Shape{K, N}, -1, 1, 41);
  auto ref = naive_matmul(a64.to_vector<double>(), b64.to_vector<double>(), M, K, N);
  // f32: K = 129 products of magnitude <= 1 summed in f32: error <= K * 2^-24 * sum|a_k b_k|
  // <= 129 * 6e-8 * 129 ~ 1e-3; 2e-3 allows for the inputs' own f32 rounding.
  constexpr double kF32MatmulTol = 2e-3;
  for (DType dt : {DType::f64, DType::f32}) {
    const double tol = dt == DType::f64 ? 1e-12 : kF32MatmulTol;
    Tensor a = a64.to(dt), b = b64.to(dt);
    auto close_to_ref = [&](const Tensor& c) {
      REQUIRE(c.shape() == Shape{M, N});
      auto cv = c.to_vector<double>();
      double worst = 0;
      for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::abs(cv[i] - ref[i]));
      return worst <= tol;
    };
    CHECK(close_to_ref(matmul(a, b)));
    CHECK(close_to_ref(matmul(a.transpose(0, 1).contiguous().transpose(0, 1),
                              b.transpose(0, 1).contiguous().transpose(0, 1))));
    Tensor a_wide = cat({a, a}, 1), b_wide = cat({b, b}, 1);  // (M, 2K), (K, 2N)
    CHECK(close_to_ref(matmul(a_wide.narrow(1, K, K), b_wide.narrow(1, 0, N))));
    Tensor a_every_other = make_view(stack({a, a}, 2), Shape{M, K}, Shape{2 * K, 2}, 0);
    CHECK_FALSE(a_every_other.is_contiguous());
    CHECK(close_to_ref(matmul(a_every_other, b)));
    Tensor batched = matmul(stack({a, a, a, a, a, a}, 0), b);  // (6, M, N)
    for (int64_t i = 0; i < 6; ++i) CHECK(close_to_ref(batched.narrow(0, i, 1).reshape(Shape{M, N})));
    Tensor empty_k = matmul(zeros(Shape{M, 0}, dt), zeros(Shape{0, N}, dt));
    CHECK(max_abs_diff(empty_k, zeros(Shape{M, N}, dt)) == 0);
  }
}

TEST_CASE("matmul: products split into per-thread blocks equal the one-thread product",
          "[ops][matmul]") {
  // engine/cpu/gemm.h cuts products of >= 2^18 multiply-adds into one block per thread: rows
  // of C when M >= N, columns otherwise, in multiples of 16, each block one single-threaded GEMM
  // call; or, for K >= 4 max(M, N), blocks of K whose partial Cs are added in thread order.
  // Against the same product on one thread (one call): row, column and K splits with sizes that
  // are not multiples of 16, strided and transposed operands, OpenBLAS's path and Eigen's
  // (N <= 48), and linear's accumulation onto the bias. Row and column blocks run the same
  // kernels on the same K order; K blocks add ~97 / 16 partial sums in another order: f64
  // rounding of sums of up to 700 products of magnitude <= 1 is ~700 x 1.1e-16 ~ 1e-13, so
  // 1e-12 holds while a wrong block (a missing or doubled row of K) is off by O(1).
  constexpr double kSplitTol = 1e-12;
  const int threads_before = omp_get_max_threads();
  struct Case {
    int64_t M, K, N;
  };
  for (const Case c : {Case{211, 97, 53}, Case{53, 97, 211}, Case{301, 90, 40}, Case{35, 300, 45},
                       Case{24, 700, 40}, Case{40, 1000, 9}}) {
    INFO("M " << c.M << " K " << c.K << " N " << c.N);
    REQUIRE(c.M * c.N * c.K >= (int64_t(1) << 18));
    const Tensor a = random_tensor(Shape{c.M, c.K}, -1, 1, 50);
    const Tensor bt = random_tensor(Shape{c.N, c.K}, -1, 1, 51);  // b = bt^T: a strided view
    const Tensor bias = random_tensor(Shape{c.N}, -1, 1, 52);
    auto products = [&] {
      return std::vector<Tensor>{matmul(a, bt.transpose(0, 1)),
                                 matmul(a.transpose(0, 1).contiguous().transpose(0, 1),
                                        bt.transpose(0, 1).contiguous()),
                                 linear(a, bt, bias)};
    };
    omp_set_num_threads(1);
    const std::vector<Tensor> one = products();
    for (int t : {2, 3, 4}) {
      omp_set_num_threads(t);
      const std::vector<Tensor> split = products();
      for (size_t i = 0; i < one.size(); ++i) {
        INFO(t << " threads, product " << i);
        CHECK(max_abs_diff(split[i], one[i]) <= kSplitTol);
      }
    }
    omp_set_num_threads(threads_before);
  }
}

TEST_CASE("matmul: first- and second-order gradients", "[ops][matmul][grad]") {
  struct Case {
    Shape a, b;
  };
  for (const auto& c : {Case{Shape{3, 4}, Shape{4, 2}}, Case{Shape{2, 3, 4}, Shape{4, 2}},
                        Case{Shape{2, 1, 2, 3}, Shape{3, 3, 2}}, Case{Shape{4}, Shape{4, 3}},
                        Case{Shape{3, 4}, Shape{4}}}) {
    Tensor a = random_tensor(c.a, -1, 1, 36), b = random_tensor(c.b, -1, 1, 37);
    auto f = [](const TensorList& in) { return matmul(in[0], in[1]); };
    std::string label = "matmul " + c.a.str() + " x " + c.b.str();
    CHECK(check_gradients(label, f, {a, b}) > 0);
    CHECK(check_second_order(label, f, {a, b}) > 0);
  }
  // Transposed operand inside the graph.
  Tensor a = random_tensor(Shape{4, 3}, -1, 1, 38), b = random_tensor(Shape{4, 2}, -1, 1, 39);
  auto ft = [](const TensorList& in) { return matmul(in[0].transpose(0, 1), tanh(in[1])); };
  CHECK(check_gradients("matmul(a^T, tanh b)", ft, {a, b}) > 0);
  CHECK(check_second_order("matmul(a^T, tanh b)", ft, {a, b}) > 0);
}

TEST_CASE("softmax and log_softmax: forward, stability, gradients", "[ops][softmax]") {
  Tensor x = random_tensor(Shape{3, 4}, -2, 2, 40);
  for (int64_t dim : {0, 1, -1}) {
    INFO("dim " << dim);
    Tensor s = softmax(x, dim);
    Tensor ls = log_softmax(x, dim);
    Tensor e = exp(x);
    Tensor ref = div(e, sum(e, {dim}, true));
    CHECK(max_abs_diff(s, ref) <= kNormTol);
    CHECK(max_abs_diff(ls, log(ref)) <= kNormTol);
    CHECK(max_abs_diff(sum(s, {dim}), ones(sum(s, {dim}).shape(), DType::f64)) <= kNormTol);
    Tensor w = random_tensor(Shape{3, 4}, -1, 1, 41);
    auto fs = [&](const TensorList& in) { return mul(softmax(in[0], dim), w); };
    auto fl = [&](const TensorList& in) { return mul(log_softmax(in[0], dim), w); };
    CHECK(check_gradients("softmax", fs, {x}) == 144);
    CHECK(check_second_order("softmax", fs, {x}) > 0);
    CHECK(check_gradients("log_softmax", fl, {x}) == 144);
    CHECK(check_second_order("log_softmax", fl, {x}) > 0);
  }
  // Large logits must not overflow (max subtraction); f32 on purpose.
  Tensor big = from_vector(std::vector<float>{1000.f, 1001.f, 1002.f}, Shape{3});
  auto p = softmax(big, 0).to_vector<double>();
  CHECK(std::abs(p[2] - 0.6652409557748219) < 1e-6);
  auto lp = log_softmax(big, 0).to_vector<double>();
  CHECK(std::isfinite(lp[0]));
  // f32 rows (the vectorised path) against f64, with masked (-inf) entries and a fully masked
  // row (NaN in both paths, as in torch: 0 / 0). f32 exp is within a few ulps: 1e-6 on
  // probabilities <= 1, 1e-5 on log-probabilities of size <= 10.
  const float ninf = -std::numeric_limits<float>::infinity();
  Tensor rows = random_tensor(Shape{5, 37}, -6, 6, 45).to(DType::f32);
  Tensor masked = cat({rows, from_vector(std::vector<float>(37, ninf), Shape{1, 37})}, 0);
  std::vector<float> part(37, 0.5f);
  for (size_t j = 0; j < 37; j += 3) part[j] = ninf;
  masked = cat({masked, from_vector(part, Shape{1, 37})}, 0);  // (7, 37)
  Tensor m64 = masked.to(DType::f64);
  auto close = [](const Tensor& a, const Tensor& b, double tol) {
    auto av = a.to_vector<double>(), bv = b.to_vector<double>();
    for (size_t i = 0; i < av.size(); ++i)
      if (!(av[i] == bv[i] || std::abs(av[i] - bv[i]) <= tol ||
            (std::isnan(av[i]) && std::isnan(bv[i]))))
        return false;
    return true;
  };
  CHECK(close(softmax(masked, 1), softmax(m64, 1), 1e-6));
  CHECK(close(log_softmax(masked, 1), log_softmax(m64, 1), 1e-5));
  // Large logits keep their log-probabilities' digits: (x - m) - log s, not x - (m + log s),
  // whose rounding at 1e5 was 1.3e-3 in f32. Against the same logits without the offset (the
  // result does not depend on it): within 2 f32 ulps of the values (<= 2.25), 5e-7.
  const std::vector<float> base = {0.f, 0.5f, -1.25f};
  const auto reference = log_softmax(from_vector(base, Shape{3}), 0).to_vector<double>();
  for (const float offset : {1e4f, 1e5f}) {
    INFO("offset " << offset);
    std::vector<float> shifted = base;
    for (float& v : shifted) v += offset;
    const auto got = log_softmax(from_vector(shifted, Shape{3}), 0).to_vector<double>();
    for (size_t i = 0; i < 3; ++i) CHECK(std::abs(got[i] - reference[i]) <= 5e-7);
  }
  // A 0-d tensor: softmax 1, log_softmax 0, gradients 0 (the backward reduced over dim 0).
  Tensor scalar = scalar_tensor(0.7, DType::f64).set_requires_grad(true);
  CHECK(softmax(scalar, 0).item<double>() == 1.0);
  CHECK(autograd::grad({softmax(scalar, 0)}, {scalar})[0].item<double>() == 0.0);
  CHECK(autograd::grad({log_softmax(scalar, 0)}, {scalar})[0].item<double>() == 0.0);
}

TEST_CASE("layer_norm: forward and gradients with and without affine", "[ops][layer_norm]") {
  Tensor x = random_tensor(Shape{2, 3, 4}, -2, 2, 42);
  Tensor w = random_tensor(Shape{4}, 0.5, 1.5, 43), b = random_tensor(Shape{4}, -0.5, 0.5, 44);
  const double eps = 1e-5;
  Tensor y = layer_norm(x, 1, w, b, eps);
  // Reference from composed ops (biased variance, as torch).
  Tensor mu = mean(x, {-1}, true);
  Tensor v = mean(mul(sub(x, mu), sub(x, mu)), {-1}, true);
  Tensor ref = add(mul(div(sub(x, mu), sqrt(add(v, scalar_like(v, eps)))), w), b);
  CHECK(max_abs_diff(y, ref) <= kNormTol);

  Tensor wout = random_tensor(Shape{2, 3, 4}, -1, 1, 45);  // non-uniform output weighting
  auto f_affine = [&](const TensorList& in) {
    return mul(layer_norm(in[0], 1, in[1], in[2], eps), wout);
  };
  CHECK(check_gradients("layer_norm affine", f_affine, {x, w, b}) > 0);
  CHECK(check_second_order("layer_norm affine", f_affine, {x, w, b}) > 0);

  auto f_plain = [&](const TensorList& in) {
    return mul(layer_norm(in[0], 2, Tensor(), Tensor(), eps), wout);
  };
  CHECK(check_gradients("layer_norm over 2 dims", f_plain, {x}) > 0);
  CHECK(check_second_order("layer_norm over 2 dims", f_plain, {x}) > 0);

  CHECK_THROWS_WITH(layer_norm(x, 1, random_tensor(Shape{3}, 0, 1, 1), Tensor()),
                    Catch::Contains("weight has shape (3,)") && Catch::Contains("(4,)"));
}

TEST_CASE("layer_norm_input_grad: the fused input gradient, differentiable to third order",
          "[ops][layer_norm][grad]") {
  Tensor x = random_tensor(Shape{3, 5}, -2, 2, 142);
  Tensor w = random_tensor(Shape{5}, 0.5, 1.5, 143);
  Tensor g = random_tensor(Shape{3, 5}, -1, 1, 144);
  Tensor b = random_tensor(Shape{5}, -0.5, 0.5, 145);
  const double eps = 1e-5;
  // Its value is layer_norm's gradient with respect to x for the output gradient g.
  Tensor leaf = x.detach().clone();
  leaf.set_requires_grad(true);
  Tensor ref = autograd::grad({sum(mul(layer_norm(leaf, 1, w, b, eps), g))}, {leaf})[0];
  CHECK(max_abs_diff(layer_norm_input_grad(x, 1, w, g, eps), ref) <= kNormTol);
  // First, second and third order with respect to x, the weight and the output gradient, with a
  // non-uniform weighting of the output; over one and over two normalized dims, no weight.
  Tensor wout = random_tensor(Shape{3, 5}, -1, 1, 146);
  auto f = [&](const TensorList& in) {
    return mul(layer_norm_input_grad(in[0], 1, in[1], in[2], eps), wout);
  };
  CHECK(check_gradients("layer_norm_input_grad", f, {x, w, g}) > 0);
  CHECK(check_second_order("layer_norm_input_grad", f, {x, w, g}) > 0);
  // Third order, as rotary's test does it: the gradient of sum(d2), d2 = the gradient of
  // |d1|^2, d1 = the gradient of sum(f^2), against finite differences.
  auto third = [&](const TensorList& in) {
    Tensor s = sum(mul(f(in), f(in)));
    TensorList d1 = autograd::grad({s}, in, {}, true, true);
    Tensor n1 = add(add(sum(mul(d1[0], d1[0])), sum(mul(d1[1], d1[1]))), sum(mul(d1[2], d1[2])));
    TensorList d2 = autograd::grad({n1}, in, {}, true, true);
    return add(add(sum(d2[0]), sum(d2[1])), sum(d2[2]));
  };
  CHECK(check_gradients("layer_norm_input_grad, third order", third, {x, w, g}, kGradGradTol) > 0);
  Tensor x2 = random_tensor(Shape{2, 2, 3}, -2, 2, 147), g2 = random_tensor(Shape{2, 2, 3}, -1, 1, 148);
  auto f2 = [&](const TensorList& in) {
    return tanh(layer_norm_input_grad(in[0], 2, Tensor(), in[1], eps));
  };
  CHECK(check_gradients("layer_norm_input_grad over 2 dims", f2, {x2, g2}) > 0);
  CHECK(check_second_order("layer_norm_input_grad over 2 dims", f2, {x2, g2}) > 0);
  // Third order of layer_norm itself, which now reaches this op's backward.
  auto ln3 = [&](const TensorList& in) {
    Tensor y = mul(layer_norm(in[0], 1, in[1], Tensor(), eps), wout);
    TensorList d1 = autograd::grad({sum(mul(y, y))}, in, {}, true, true);
    Tensor n1 = add(sum(mul(d1[0], d1[0])), sum(mul(d1[1], d1[1])));
    TensorList d2 = autograd::grad({n1}, in, {}, true, true);
    return add(sum(d2[0]), sum(d2[1]));
  };
  CHECK(check_gradients("layer_norm third order", ln3, {x, w}, kGradGradTol) > 0);
  CHECK_THROWS_WITH(layer_norm_input_grad(x, 1, w, random_tensor(Shape{3, 4}, -1, 1, 1)),
                    Catch::Contains("input's shape"));
}

TEST_CASE("layer_norm_input_grad: the fused CPU double backward equals the composite",
          "[ops][layer_norm][grad]") {
  // Not recorded (create_graph = false) the CPU runs one fused pass; recorded it runs the
  // composite of differentiable ops (itself checked against finite differences above). Same
  // values in f64 up to summation order (1e-12), for every subset of wanted gradients, with and
  // without a weight, over one and two normalized dims; and in f32 against the f64 composite
  // (rows of O(1) values, sums of 5-12 terms: 1e-5 covers f32 rounding with margin).
  const double eps = 1e-5;
  struct Case {
    Shape shape;
    int rank;
    bool weighted;
  };
  for (const Case& c : {Case{Shape{4, 6}, 1, true}, Case{Shape{4, 6}, 1, false},
                        Case{Shape{2, 3, 4}, 2, true}}) {
    Shape norm = c.rank == 1 ? Shape{c.shape[c.shape.size() - 1]}
                             : Shape{c.shape[c.shape.size() - 2], c.shape[c.shape.size() - 1]};
    Tensor x = random_tensor(c.shape, -2, 2, 150), g = random_tensor(c.shape, -1, 1, 151);
    Tensor v = random_tensor(c.shape, -1, 1, 152);
    Tensor w = c.weighted ? random_tensor(norm, 0.5, 1.5, 153) : Tensor();
    TensorList all = c.weighted ? TensorList{x, w, g} : TensorList{x, g};
    for (auto& t : all) t.set_requires_grad(true);
    auto grads = [&](const TensorList& wrt, bool create_graph, DType dtype) {
      Tensor xd = x.to(dtype), gd = g.to(dtype), wd = w.defined() ? w.to(dtype) : w;
      Tensor out = layer_norm_input_grad(xd, c.rank, wd, gd, eps);
      return autograd::grad({out}, wrt, {v.to(dtype)}, true, create_graph);
    };
    INFO("rank " << c.rank << " weighted " << c.weighted);
    for (size_t k = 0; k < all.size(); ++k) {
      const TensorList wrt{all[k]};
      auto fused = grads(wrt, false, DType::f64), composite = grads(wrt, true, DType::f64);
      for (size_t i = 0; i < wrt.size(); ++i) CHECK(max_abs_diff(fused[i], composite[i]) <= 1e-12);
    }
    auto fused = grads(all, false, DType::f64), composite = grads(all, true, DType::f64);
    auto fused32 = grads(all, false, DType::f32);
    for (size_t i = 0; i < all.size(); ++i) {
      CHECK(max_abs_diff(fused[i], composite[i]) <= 1e-12);
      CHECK(max_abs_diff(fused32[i].to(DType::f64), composite[i]) <= 1e-5);
    }
  }
}

TEST_CASE("embedding: gather, scatter-add backward, second order", "[ops][embedding]") {
  Tensor table = random_tensor(Shape{5, 3}, -1, 1, 46);
  Tensor idx = from_indices(std::vector<int64_t>{4, 0, 4, 2, 1, 4}, Shape{2, 3});
  Tensor rows = embedding(table, idx);
  REQUIRE(rows.shape() == Shape{2, 3, 3});
  auto tv = table.to_vector<double>(), rv = rows.to_vector<double>();
  for (int j = 0; j < 3; ++j) CHECK(rv[size_t(j)] == tv[size_t(4 * 3 + j)]);
  // Repeated index 4 accumulates three rows of gradient.
  Tensor leaf = table.detach().clone();
  leaf.set_requires_grad(true);
  auto g = autograd::grad({sum(embedding(leaf, idx))}, {leaf});
  CHECK(g[0].to_vector<double>() ==
        std::vector<double>{1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 3, 3, 3});
  auto f = [&](const TensorList& in) { return tanh(embedding(in[0], idx)); };
  CHECK(check_gradients("embedding", f, {table}) > 0);
  CHECK(check_second_order("embedding", f, {table}) > 0);
  auto fb = [&](const TensorList& in) { return tanh(embedding_backward(in[0], idx, 5)); };
  CHECK(check_gradients("embedding_backward", fb, {rows}) > 0);
  CHECK(check_second_order("embedding_backward", fb, {rows}) > 0);
  CHECK_THROWS_WITH(embedding(table, from_indices(std::vector<int64_t>{5}, Shape{1})),
                    Catch::Contains("index 5") && Catch::Contains("5 rows"));
}

TEST_CASE("mse_loss: value and gradients", "[ops][loss]") {
  Tensor p = random_tensor(Shape{4, 3}, -1, 1, 47), t = random_tensor(Shape{4, 3}, -1, 1, 48);
  auto pv = p.to_vector<double>(), tv = t.to_vector<double>();
  double ref = 0;
  for (size_t i = 0; i < pv.size(); ++i) ref += (pv[i] - tv[i]) * (pv[i] - tv[i]);
  CHECK(std::abs(mse_loss(p, t).item<double>() - ref / 12) <= kNormTol);
  auto f = [](const TensorList& in) { return mse_loss(tanh(in[0]), in[1]); };
  CHECK(check_gradients("mse_loss", f, {p, t}) == 24);
  CHECK(check_second_order("mse_loss", f, {p, t}) > 0);
  CHECK_THROWS_WITH(mse_loss(p, t.reshape(Shape{12})), Catch::Contains("same shape"));
}

TEST_CASE("Philox4x32-10 matches the published known-answer vectors", "[random]") {
  // Random123 kat_vectors: philox4x32_10 with counter 0 and key 0.
  auto r = Generator::philox(0, 0);
  CHECK(r[0] == 0x6627e8d5u);
  CHECK(r[1] == 0xe169c58du);
  CHECK(r[2] == 0xbc57ac4cu);
  CHECK(r[3] == 0x9b00dbd8u);
}

TEST_CASE("seeded random tensors: reproducible, right moments", "[random]") {
  Generator g1(7), g2(7);
  Tensor a = normal(Shape{20000}, 1.0, 2.0, g1);
  Tensor b = normal(Shape{20000}, 1.0, 2.0, g2);
  CHECK(max_abs_diff(a, b) == 0);
  // Mean and std of 20000 draws: standard errors 2/sqrt(20000) = 0.014 and ~0.01; 5 sigma.
  CHECK(std::abs(mean(a).item<double>() - 1.0) < 0.07);
  CHECK(std::abs(std::sqrt(var(a).item<double>()) - 2.0) < 0.05);
  Tensor c = normal(Shape{20000}, 1.0, 2.0, g1);  // the generator advanced: a new draw
  CHECK(max_abs_diff(a, c) > 0.1);
  Tensor u = uniform(Shape{20000}, -1.0, 3.0, g1, DType::f64);
  CHECK(max(u).item<double>() < 3.0);
  CHECK(-max(neg(u)).item<double>() >= -1.0);
  CHECK(std::abs(mean(u).item<double>() - 1.0) < 0.06);  // std 4/sqrt(12)/sqrt(20000) = 0.008
}

TEST_CASE("dropout: seeded mask, scaling, gradient through the mask", "[ops][dropout]") {
  Tensor x = random_tensor(Shape{1000}, 1, 2, 49);
  Generator g1(3), g2(3);
  Tensor y1 = dropout(x, 0.25, true, g1);
  Tensor y2 = dropout(x, 0.25, true, g2);
  CHECK(max_abs_diff(y1, y2) == 0);
  auto xv = x.to_vector<double>(), yv = y1.to_vector<double>();
  int64_t kept = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    if (yv[i] != 0) {
      ++kept;
      CHECK(std::abs(yv[i] - xv[i] / 0.75) < 1e-12);
    }
  }
  // Binomial(1000, 0.75): std 13.7; 5 sigma.
  CHECK(std::abs(double(kept) - 750.0) < 70);
  CHECK(max_abs_diff(dropout(x, 0.25, false, g1), x) == 0);
  // Fixed mask per evaluation (fresh generator with the same seed each call).
  auto f = [](const TensorList& in) {
    Generator g(11);
    return dropout(mul(in[0], in[0]), 0.5, true, g);
  };
  Tensor small = random_tensor(Shape{6}, -1, 1, 50);
  CHECK(check_gradients("dropout", f, {small}) == 36);
  CHECK(check_second_order("dropout", f, {small}) > 0);
  CHECK_THROWS_WITH(dropout(x, 1.0, true, g1), Catch::Contains("[0, 1)"));
}
