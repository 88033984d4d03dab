// engine/optim/sparse_rows.h on the CPU (the reference the CUDA kernels are compared with):
// sparse SGD equals the dense SGD step on the scattered gradient, restricted to the touched rows,
// bit for bit; sparse AdamW equals the dense AdamW step when every row is touched, and follows
// the lazy semantics (untouched rows and their moments bitwise unchanged, one step count for the
// table) against a hand computation in f64; duplicate indices are summed; every refused input
// is a clear error.
#include <cmath>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "engine/ops.h"
#include "engine/optim/kernels.h"
#include "engine/optim/sparse_rows.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;
using Catch::Contains;

namespace {

// The hand computation below does AdamW's maths in f64 in the textbook form
// (m = beta1 m + (1 - beta1) g) where the kernel uses torch's lerp form: a few f64 ulps per step
// on values of size ~1, three steps.
constexpr Tolerance kHandF64{1e-14, 1e-13};

// Indices with many duplicates and untouched rows: position i -> (i * 7 + i / 3) % touched.
std::vector<int64_t> dup_indices(int64_t n, int64_t touched) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = (i * 7 + i / 3) % touched;
  return idx;
}

std::vector<bool> touched_rows(const std::vector<int64_t>& idx, int64_t V) {
  std::vector<bool> t(static_cast<size_t>(V), false);
  for (int64_t i : idx) t[size_t(i)] = true;
  return t;
}

// Row r of a (V, D) tensor as doubles.
std::vector<double> row(const Tensor& t, int64_t r) { return t.narrow(0, r, 1).to_vector<double>(); }

// Every row flagged in `which` is bitwise equal in a and b (compared through exact f64 values).
void check_rows_equal(const Tensor& a, const Tensor& b, const std::vector<bool>& which,
                      bool flag, const std::string& what) {
  INFO(what);
  for (int64_t r = 0; r < a.size(0); ++r) {
    if (which[size_t(r)] != flag) continue;
    INFO("row " << r);
    CHECK(row(a, r) == row(b, r));
  }
}

}  // namespace

TEST_CASE("sparse SGD rows: the dense SGD step restricted to the touched rows, bit for bit",
          "[optim][sparse]") {
  const int64_t V = 23, D = 9, n = 40;
  const std::vector<int64_t> idx = dup_indices(n, 17);  // rows 17..22 never touched
  const std::vector<bool> touched = touched_rows(idx, V);
  Tensor indices = from_indices(idx, Shape{n});
  for (DType t : {DType::f32, DType::f64}) {
    for (double weight_decay : {0.0, 0.1}) {
      for (bool maximize : {false, true}) {
        const std::string what = fmt::format("{} wd {} maximize {}", dtype_name(t),
                                             weight_decay, maximize);
        Tensor w0 = random_tensor(Shape{V, D}, -1, 1, 11).to(t);
        Tensor grad_rows = random_tensor(Shape{n, D}, -1, 1, 12).to(t);
        optim::SGDOptions o;
        o.lr = 0.3;
        o.weight_decay = weight_decay;
        o.maximize = maximize;
        Tensor sparse = w0.clone();
        optim::sparse_sgd_rows_(sparse, indices, grad_rows, o);
        // Dense: the full gradient scattered (embedding's own backward), then the SGD kernel.
        Tensor dense = w0.clone(), none;
        const optim::SgdHyper h{o.lr, 0, 0, weight_decay, false, maximize};
        optim::sgd_kernel(kCPU, dense, embedding_backward(grad_rows, indices, V), none, true, h);
        check_rows_equal(sparse, dense, touched, true, what + ": touched rows = dense step");
        check_rows_equal(sparse, w0, touched, false, what + ": untouched rows unchanged");
      }
    }
  }
}

TEST_CASE("sparse SGD rows: duplicate indices are summed in position order first",
          "[optim][sparse]") {
  Tensor w = random_tensor(Shape{5, 3}, -1, 1, 21);
  Tensor g = random_tensor(Shape{4, 3}, -1, 1, 22);
  Tensor indices = from_indices(std::vector<int64_t>{3, 1, 3, 3}, Shape{4});
  Tensor before = w.clone();
  optim::SGDOptions o;
  o.lr = 1;
  optim::sparse_sgd_rows_(w, indices, g, o);
  const std::vector<double> gv = g.to_vector<double>(), b = before.to_vector<double>(),
                            a = w.to_vector<double>();
  for (int64_t j = 0; j < 3; ++j) {
    const double sum3 = ((0.0 + gv[size_t(0 * 3 + j)]) + gv[size_t(2 * 3 + j)]) + gv[size_t(3 * 3 + j)];
    CHECK(a[size_t(3 * 3 + j)] == b[size_t(3 * 3 + j)] + -1.0 * sum3);
    CHECK(a[size_t(1 * 3 + j)] == b[size_t(1 * 3 + j)] + -1.0 * gv[size_t(1 * 3 + j)]);
    for (int64_t r : {0, 2, 4}) CHECK(a[size_t(r * 3 + j)] == b[size_t(r * 3 + j)]);
  }
}

TEST_CASE("sparse AdamW rows: every row touched equals the dense AdamW step bit for bit",
          "[optim][sparse]") {
  const int64_t V = 11, D = 6, n = 30;
  for (DType t : {DType::f32, DType::f64}) {
    for (double weight_decay : {0.0, 0.01}) {
      for (double beta1 : {0.9, 0.2}) {  // lerp's two forms
        const std::string what =
            fmt::format("{} wd {} beta1 {}", dtype_name(t), weight_decay, beta1);
        INFO(what);
        optim::AdamWOptions o;
        o.lr = 1e-2;
        o.beta1 = beta1;
        o.weight_decay = weight_decay;
        const optim::AdamWHyper h{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, false, false};
        Tensor ws = random_tensor(Shape{V, D}, -1, 1, 31).to(t), wd = ws.clone();
        Tensor ms = zeros(Shape{V, D}, t), vs = zeros(Shape{V, D}, t);
        Tensor md = zeros(Shape{V, D}, t), vd = zeros(Shape{V, D}, t), none;
        for (int64_t step = 1; step <= 3; ++step) {
          // Every row once, then n - V duplicates, shifted per step.
          std::vector<int64_t> idx = dup_indices(n - V, V);
          for (int64_t r = 0; r < V; ++r) idx.insert(idx.begin() + r * 2, r);
          for (int64_t& i : idx) i = (i + step) % V;
          REQUIRE(int64_t(idx.size()) == n);
          Tensor indices = from_indices(idx, Shape{n});
          Tensor g = random_tensor(Shape{n, D}, -1, 1, 40 + uint64_t(step)).to(t);
          optim::sparse_adamw_rows_(ws, ms, vs, step, indices, g, o);
          optim::adamw_kernel(kCPU, wd, embedding_backward(g, indices, V), md, vd, none, step, h);
        }
        const std::vector<bool> all(static_cast<size_t>(V), true);
        check_rows_equal(ws, wd, all, true, what + " weight");
        check_rows_equal(ms, md, all, true, what + " exp_avg");
        check_rows_equal(vs, vd, all, true, what + " exp_avg_sq");
      }
    }
  }
}

TEST_CASE("sparse AdamW rows: lazy semantics against a hand computation", "[optim][sparse]") {
  const int64_t V = 8, D = 4;
  optim::AdamWOptions o;
  o.lr = 0.05;
  o.weight_decay = 0.1;
  o.beta1 = 0.8;
  o.beta2 = 0.95;
  o.eps = 1e-6;
  Tensor w = random_tensor(Shape{V, D}, -1, 1, 51);
  Tensor m = zeros(Shape{V, D}, DType::f64), v = zeros(Shape{V, D}, DType::f64);
  std::vector<double> hw = w.to_vector<double>(), hm(size_t(V * D), 0.0), hv(size_t(V * D), 0.0);
  // Step 1 touches rows 1 and 5 (5 twice), step 2 rows 2 and 5, step 3 row 1 only; rows 0, 3,
  // 4, 6, 7 are never touched.
  const std::vector<std::vector<int64_t>> steps{{5, 1, 5}, {2, 5}, {1}};
  std::vector<std::vector<double>> snapshots;
  for (size_t k = 0; k < steps.size(); ++k) {
    const int64_t step = int64_t(k) + 1, n = int64_t(steps[k].size());
    Tensor g = random_tensor(Shape{n, D}, -1, 1, 60 + k);
    const std::vector<double> gv = g.to_vector<double>();
    // Rows not touched at this step must keep weight and moments bit for bit.
    const Tensor w_before = w.clone(), m_before = m.clone(), v_before = v.clone();
    optim::sparse_adamw_rows_(w, m, v, step, from_indices(steps[k], Shape{n}), g, o);
    const std::vector<bool> now = touched_rows(steps[k], V);
    check_rows_equal(w, w_before, now, false, fmt::format("step {} weight untouched", step));
    check_rows_equal(m, m_before, now, false, fmt::format("step {} exp_avg untouched", step));
    check_rows_equal(v, v_before, now, false, fmt::format("step {} exp_avg_sq untouched", step));
    // The hand computation: the table-wide step count in the bias corrections.
    const double bc1 = 1 - std::pow(o.beta1, double(step)), bc2 = 1 - std::pow(o.beta2, double(step));
    for (int64_t r = 0; r < V; ++r) {
      if (!now[size_t(r)]) continue;
      for (int64_t j = 0; j < D; ++j) {
        double gj = 0;
        for (int64_t i = 0; i < n; ++i)
          if (steps[k][size_t(i)] == r) gj += gv[size_t(i * D + j)];
        const size_t e = size_t(r * D + j);
        hm[e] = o.beta1 * hm[e] + (1 - o.beta1) * gj;
        hv[e] = o.beta2 * hv[e] + (1 - o.beta2) * gj * gj;
        hw[e] = hw[e] * (1 - o.lr * o.weight_decay) -
                o.lr / bc1 * hm[e] / (std::sqrt(hv[e]) / std::sqrt(bc2) + o.eps);
      }
    }
  }
  Tensor expect_w = from_vector(hw, Shape{V, D}, DType::f64);
  CHECK(max_abs_diff(w, expect_w) <= kHandF64.atol + kHandF64.rtol * 2);
  CHECK(max_abs_diff(m, from_vector(hm, Shape{V, D}, DType::f64)) <= kHandF64.atol + kHandF64.rtol);
  CHECK(max_abs_diff(v, from_vector(hv, Shape{V, D}, DType::f64)) <= kHandF64.atol + kHandF64.rtol);
  // Never-touched rows: the initial weights and zero moments exactly.
  Tensor w_init = random_tensor(Shape{V, D}, -1, 1, 51);
  for (int64_t r : {0, 3, 4, 6, 7}) {
    CHECK(row(w, r) == row(w_init, r));
    CHECK(row(m, r) == std::vector<double>(size_t(D), 0.0));
    CHECK(row(v, r) == std::vector<double>(size_t(D), 0.0));
  }
}

TEST_CASE("sparse row updates: any index shape, strided gradients, empty index tensors",
          "[optim][sparse]") {
  const int64_t V = 7, D = 5;
  Tensor w0 = random_tensor(Shape{V, D}, -1, 1, 71);
  optim::SGDOptions so;
  so.lr = 0.1;
  optim::AdamWOptions ao;
  SECTION("indices (2, 3) with grad_rows (2, 3, D) are the flattened update") {
    const std::vector<int64_t> idx{4, 0, 4, 6, 2, 0};
    Tensor g = random_tensor(Shape{2, 3, D}, -1, 1, 72);
    Tensor a = w0.clone(), b = w0.clone();
    optim::sparse_sgd_rows_(a, from_indices(idx, Shape{2, 3}), g, so);
    optim::sparse_sgd_rows_(b, from_indices(idx, Shape{6}), g.reshape(Shape{6, D}), so);
    CHECK(a.to_vector<double>() == b.to_vector<double>());
  }
  SECTION("a non-contiguous grad_rows gives the contiguous one's result") {
    const std::vector<int64_t> idx{1, 3, 1};
    Tensor gt = random_tensor(Shape{D, 3}, -1, 1, 73);
    Tensor a = w0.clone(), b = w0.clone();
    Tensor ma = zeros(Shape{V, D}, DType::f64), va = zeros(Shape{V, D}, DType::f64);
    Tensor mb = zeros(Shape{V, D}, DType::f64), vb = zeros(Shape{V, D}, DType::f64);
    optim::sparse_adamw_rows_(a, ma, va, 1, from_indices(idx, Shape{3}), gt.transpose(0, 1), ao);
    optim::sparse_adamw_rows_(b, mb, vb, 1, from_indices(idx, Shape{3}),
                              contiguous(gt.transpose(0, 1)), ao);
    CHECK(a.to_vector<double>() == b.to_vector<double>());
    CHECK(ma.to_vector<double>() == mb.to_vector<double>());
  }
  SECTION("an empty index tensor changes nothing") {
    Tensor a = w0.clone();
    Tensor m = zeros(Shape{V, D}, DType::f64), v = zeros(Shape{V, D}, DType::f64);
    Tensor none_idx = from_indices(std::vector<int64_t>{}, Shape{0});
    optim::sparse_sgd_rows_(a, none_idx, zeros(Shape{0, D}, DType::f64), so);
    optim::sparse_adamw_rows_(a, m, v, 1, none_idx, zeros(Shape{0, D}, DType::f64), ao);
    CHECK(a.to_vector<double>() == w0.to_vector<double>());
    CHECK(m.to_vector<double>() == std::vector<double>(size_t(V * D), 0.0));
  }
  SECTION("the update bumps the written tensors' versions") {
    Tensor a = w0.clone();
    const auto before = a.storage().version();
    optim::sparse_sgd_rows_(a, from_indices(std::vector<int64_t>{2}, Shape{1}),
                            random_tensor(Shape{1, D}, -1, 1, 74), so);
    CHECK(a.storage().version() == before + 1);
  }
}

TEST_CASE("sparse row updates: refused inputs are clear errors", "[optim][sparse]") {
  const int64_t V = 6, D = 4;
  Tensor w = random_tensor(Shape{V, D}, -1, 1, 81);
  Tensor m = zeros(Shape{V, D}, DType::f64), v = zeros(Shape{V, D}, DType::f64);
  Tensor g = random_tensor(Shape{2, D}, -1, 1, 82);
  Tensor ok = from_indices(std::vector<int64_t>{1, 2}, Shape{2});
  optim::SGDOptions so;
  optim::AdamWOptions ao;
  const std::vector<double> w_before = w.to_vector<double>();

  CHECK_THROWS_WITH(
      optim::sparse_sgd_rows_(w, from_indices(std::vector<int64_t>{1, 6}, Shape{2}), g, so),
      Contains("index 6 at position 1 is out of range for a table of 6 rows"));
  CHECK_THROWS_WITH(optim::sparse_adamw_rows_(
                        w, m, v, 1, from_indices(std::vector<int64_t>{-1, 2}, Shape{2}), g, ao),
                    Contains("index -1 at position 0 is out of range"));
  CHECK(w.to_vector<double>() == w_before);  // nothing written before the error
  CHECK_THROWS_WITH(optim::sparse_sgd_rows_(w, ok, random_tensor(Shape{3, D}, 0, 1, 1), so),
                    Contains("does not match indices"));
  CHECK_THROWS_WITH(optim::sparse_sgd_rows_(w, ok, random_tensor(Shape{2, D + 1}, 0, 1, 1), so),
                    Contains("does not match indices"));
  CHECK_THROWS_WITH(optim::sparse_sgd_rows_(w, ok, g.to(DType::f32), so),
                    Contains("grad_rows is f32 but weight is f64"));
  CHECK_THROWS_WITH(optim::sparse_sgd_rows_(w, ok.to(DType::f64), g, so),
                    Contains("indices must be i64"));
  Tensor wt = random_tensor(Shape{D, V}, -1, 1, 83);
  Tensor strided = wt.transpose(0, 1);
  CHECK_THROWS_WITH(optim::sparse_sgd_rows_(strided, ok, g, so), Contains("not contiguous"));
  Tensor flat = random_tensor(Shape{V * D}, -1, 1, 84);
  CHECK_THROWS_WITH(optim::sparse_sgd_rows_(flat, ok, g, so), Contains("(rows, dim) table"));
  Tensor w16 = w.to(DType::f16);
  CHECK_THROWS_WITH(optim::sparse_sgd_rows_(w16, ok, g.to(DType::f16), so),
                    Contains("dtype f16 is not supported on this backend"));
  so.momentum = 0.9;
  CHECK_THROWS_WITH(optim::sparse_sgd_rows_(w, ok, g, so), Contains("momentum"));

  Tensor m_small = zeros(Shape{V - 1, D}, DType::f64);
  CHECK_THROWS_WITH(optim::sparse_adamw_rows_(w, m_small, v, 1, ok, g, ao),
                    Contains("exp_avg is (5, 4)"));
  Tensor m32 = zeros(Shape{V, D}, DType::f32);
  CHECK_THROWS_WITH(optim::sparse_adamw_rows_(w, m32, v, 1, ok, g, ao),
                    Contains("exp_avg is f32 but the weight is f64"));
  Tensor mt_ = zeros(Shape{D, V}, DType::f64).transpose(0, 1);
  CHECK_THROWS_WITH(optim::sparse_adamw_rows_(w, m, mt_, 1, ok, g, ao),
                    Contains("exp_avg_sq") && Contains("not contiguous"));
  CHECK_THROWS_WITH(optim::sparse_adamw_rows_(w, m, v, 0, ok, g, ao), Contains("step = 0"));
  ao.amsgrad = true;
  CHECK_THROWS_WITH(optim::sparse_adamw_rows_(w, m, v, 1, ok, g, ao), Contains("amsgrad"));
  ao.amsgrad = false;
  ao.beta2 = 1;
  CHECK_THROWS_WITH(optim::sparse_adamw_rows_(w, m, v, 1, ok, g, ao), Contains("beta2"));
  CHECK(w.to_vector<double>() == w_before);
  CHECK(m.to_vector<double>() == std::vector<double>(size_t(V * D), 0.0));
}
