// Rotary embedding and variable-length attention against loops written here, and their first-
// and second-order gradients (the composite is the oracle for fused kernels, so it must be right).
#include <catch2/catch.hpp>

#include <cmath>
#include <numbers>

#include "engine/core/profiler.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {
constexpr auto kDense = VarlenAttention::Mode::padded;  // samples gathered into padded blocks
constexpr auto kPerSample = VarlenAttention::Mode::per_sample;
// f64 attention of a few O(1) terms: rounding ~1e-15; the reference sums in another order.
constexpr double kAttnTol = 1e-12;

// Rotates each pair (2k, 2k+1) of every head of row i by times[i] * f[k].
std::vector<double> rotate_ref(std::vector<double> x, int64_t n, int64_t H, int64_t dh,
                               const std::vector<double>& t, const std::vector<double>& f,
                               double sign = 1) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t k = 0; k < dh / 2; ++k) {
        double a = sign * t[size_t(i)] * f[size_t(k)];
        double& x0 = x[size_t((i * H + h) * dh + 2 * k)];
        double& x1 = x[size_t((i * H + h) * dh + 2 * k + 1)];
        double y0 = x0 * std::cos(a) - x1 * std::sin(a), y1 = x1 * std::cos(a) + x0 * std::sin(a);
        x0 = y0;
        x1 = y1;
      }
  return x;
}

// Dense per-sample attention by loops.
std::vector<double> attention_ref(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const VarlenAttention& s) {
  const int64_t H = s.heads, dh = q.size(1) / H, Nq = q.size(0), Nk = k.size(0);
  auto qv = q.to_vector<double>(), kv = k.to_vector<double>(), vv = v.to_vector<double>();
  std::vector<double> tq, tk, f;
  if (s.q_times.defined()) {
    tq = s.q_times.to_vector<double>();
    tk = s.k_times.to_vector<double>();
    f = s.inv_freq.to_vector<double>();
    qv = rotate_ref(qv, Nq, H, dh, tq, f);
    kv = rotate_ref(kv, Nk, H, dh, tk, f);
    if (s.rotate_value) vv = rotate_ref(vv, Nk, H, dh, tk, f);
  }
  std::vector<double> out(size_t(Nq * H * dh), 0.0);
  int64_t q0 = 0, k0 = 0;
  for (size_t b = 0; b < s.q_lengths.size(); ++b) {
    for (int64_t i = q0; i < q0 + s.q_lengths[b]; ++i)
      for (int64_t h = 0; h < H; ++h) {
        std::vector<double> w;
        double m = -INFINITY, z = 0;
        for (int64_t j = k0; j < k0 + s.k_lengths[b]; ++j) {
          double d = 0;
          for (int64_t c = 0; c < dh; ++c)
            d += qv[size_t((i * H + h) * dh + c)] * kv[size_t((j * H + h) * dh + c)];
          w.push_back(d / std::sqrt(double(dh)));
          m = std::max(m, w.back());
        }
        for (double& x : w) z += (x = std::exp(x - m));
        for (int64_t j = k0; j < k0 + s.k_lengths[b]; ++j)
          for (int64_t c = 0; c < dh; ++c)
            out[size_t((i * H + h) * dh + c)] +=
                w[size_t(j - k0)] / z * vv[size_t((j * H + h) * dh + c)];
      }
    q0 += s.q_lengths[b];
    k0 += s.k_lengths[b];
  }
  if (s.rotate_value) out = rotate_ref(out, Nq, H, dh, tq, f, -1);
  return out;
}

VarlenAttention make_spec(bool rotate, bool rotate_value, VarlenAttention::Mode mode) {
  // Samples: 3 queries x 4 keys, 0 queries x 2 keys, 2 queries x 1 key.
  VarlenAttention s;
  s.heads = 2;
  s.q_lengths = {3, 0, 2};
  s.k_lengths = {4, 2, 1};
  if (rotate) {
    s.q_times = random_tensor(Shape{5}, 0, 50, 81);
    s.k_times = random_tensor(Shape{7}, 0, 50, 82);
    s.inv_freq = rotary_inv_freq(8, 100.0, DType::f64);
  }
  s.rotate_value = rotate_value;
  s.mode = mode;
  return s;
}
}  // namespace

TEST_CASE("rotary frequencies follow POCO's definition", "[ops][attention]") {
  auto f = rotary_inv_freq(64, 100.0, DType::f64).to_vector<double>();
  REQUIRE(f.size() == 32);
  CHECK(std::abs(f[0] - 2 * std::numbers::pi / 0.1) < 1e-9);  // t_min = t_max / 1000
  CHECK(std::abs(f[15] - 2 * std::numbers::pi / (0.1 * std::pow(1000.0, 30.0 / 32.0))) < 1e-12);
  for (size_t k = 16; k < 32; ++k) CHECK(f[k] == 0.0);  // half of the dims are not rotated
  CHECK_THROWS_WITH(rotary_inv_freq(6, 100.0), Catch::Contains("multiple of 4"));
}

TEST_CASE("rotary: forward against loops, norm preserved, gradients", "[ops][attention]") {
  Tensor x = random_tensor(Shape{3, 2, 8}, -1, 1, 83);
  Tensor t = random_tensor(Shape{3}, 0, 20, 84);
  Tensor f = rotary_inv_freq(8, 10.0, DType::f64);
  auto ref = rotate_ref(x.to_vector<double>(), 3, 2, 8, t.to_vector<double>(),
                        f.to_vector<double>());
  auto y = rotary(x, t, f).to_vector<double>();
  for (size_t i = 0; i < y.size(); ++i) CHECK(std::abs(y[i] - ref[i]) < kAttnTol);
  // A rotation keeps each pair's norm; rotating back by -t restores x.
  CHECK(max_abs_diff(rotary(rotary(x, t, f), neg(t), f), x) < kAttnTol);
  auto fn = [&](const TensorList& in) { return mul(rotary(in[0], t, f), rotary(in[0], t, f)); };
  CHECK(check_gradients("rotary", fn, {x}) > 0);
  CHECK(check_second_order("rotary", fn, {x}) > 0);
}

TEST_CASE("rotary: the fused CPU op, its third order, and gradients for the times",
          "[ops][attention]") {
  Tensor x = random_tensor(Shape{4, 3, 8}, -1, 1, 87);
  Tensor t = random_tensor(Shape{4}, 0, 20, 88);
  Tensor f = rotary_inv_freq(8, 10.0, DType::f64);
  auto ref = rotate_ref(x.to_vector<double>(), 4, 3, 8, t.to_vector<double>(),
                        f.to_vector<double>());
  // The angles are data: one fused kernel, also for a non-contiguous x.
  profiler::reset();
  profiler::enable(true);
  Tensor xt = x.transpose(0, 1).contiguous().transpose(0, 1);
  REQUIRE_FALSE(xt.is_contiguous());
  auto y = rotary(xt, t, f).to_vector<double>();
  profiler::enable(false);
  int64_t fused_calls = 0;
  for (const auto& e : profiler::entries())
    if (e.kernel == "rotate_pairs") fused_calls = e.calls;
  CHECK(fused_calls == 1);
  for (size_t i = 0; i < y.size(); ++i) CHECK(std::abs(y[i] - ref[i]) < kAttnTol);
  // f32: the angle t f (up to ~1e4 rad here) is rounded three times (t, f, their product) at
  // 2^-24 relative each, which moves each output by up to |x0| + |x1| <= 2 times that; cos, sin
  // and the products add a few 1e-7.
  double max_angle = 0;
  for (double tv : t.to_vector<double>())
    for (double fv : f.to_vector<double>()) max_angle = std::max(max_angle, tv * fv);
  const double f32_tol = 2 * 3 * std::ldexp(max_angle, -24) + 1e-6;
  auto y32 = rotary(x.to(DType::f32), t.to(DType::f32), f.to(DType::f32)).to_vector<double>();
  for (size_t i = 0; i < y32.size(); ++i) CHECK(std::abs(y32[i] - ref[i]) < f32_tol);
  // Third order through the fused op (its backward is the same op by the opposite angle): the
  // gradient of sum(d/dx |d cube/dx|^2), cube = sum((R x)^3), against finite differences.
  auto g2_sum = [&](const TensorList& in) {
    Tensor c = sum(mul(mul(rotary(in[0], t, f), rotary(in[0], t, f)), rotary(in[0], t, f)));
    Tensor d1 = autograd::grad({c}, {in[0]}, {}, true, true)[0];
    return sum(autograd::grad({sum(mul(d1, d1))}, {in[0]}, {}, true, true)[0]);
  };
  CHECK(check_gradients("third order through rotary", g2_sum, {x}, kGradGradTol) > 0);
  // Times that require grad take the composite path, which differentiates the angles too.
  auto by_times = [&](const TensorList& in) { return rotary(x, in[0], f); };
  CHECK(check_gradients("rotary w.r.t. times", by_times, {t}) > 0);
  CHECK(check_second_order("rotary w.r.t. times", by_times, {t}) > 0);
}

TEST_CASE("rotary tables: the same rotation as from the times, reused across calls",
          "[ops][attention]") {
  Tensor x = random_tensor(Shape{4, 2, 8}, -1, 1, 183);
  Tensor t = random_tensor(Shape{4}, 0, 20, 184);
  Tensor f = rotary_inv_freq(8, 10.0, DType::f64);
  const RotaryTables tab = rotary_tables(t, f, DType::f64);
  REQUIRE(tab.cos.shape() == (Shape{4, 4}));
  CHECK(max_abs_diff(rotary(x, tab), rotary(x, t, f)) == 0);
  CHECK(max_abs_diff(rotary(x, tab, -1.0), rotary(x, neg(t), f)) <= kAttnTol);
  CHECK(max_abs_diff(rotary(rotary(x, tab), tab, -1.0), x) <= kAttnTol);  // inverse
  auto by_tables = [&](const TensorList& in) { return rotary(in[0], tab, -1.0); };
  CHECK(check_gradients("rotary by tables", by_tables, {x}) > 0);
  CHECK(check_second_order("rotary by tables", by_tables, {x}) > 0);
  // varlen_attention with the caller's tables equals the one that builds them.
  Tensor q = random_tensor(Shape{5, 16}, -1, 1, 185), k = random_tensor(Shape{7, 16}, -1, 1, 186);
  Tensor v = random_tensor(Shape{7, 16}, -1, 1, 187);
  VarlenAttention s = make_spec(true, true, kDense);
  Tensor plain = varlen_attention(q, k, v, s);
  s.q_tables = rotary_tables(s.q_times, s.inv_freq, DType::f64);
  s.k_tables = rotary_tables(s.k_times, s.inv_freq, DType::f64);
  CHECK(max_abs_diff(varlen_attention(q, k, v, s), plain) == 0);
  Tensor tg = t.clone();
  tg.set_requires_grad(true);
  CHECK_THROWS_WITH(rotary_tables(tg, f, DType::f64), Catch::Contains("must not require grad"));
  CHECK_THROWS_WITH(rotary(x, rotary_tables(t.narrow(0, 0, 3), f, DType::f64)),
                    Catch::Contains("tables must be (n, dh/2) = (4, 4)"));
}

TEST_CASE("varlen attention: forward against dense loops", "[ops][attention]") {
  Tensor q = random_tensor(Shape{5, 16}, -1, 1, 85);
  Tensor k = random_tensor(Shape{7, 16}, -1, 1, 86);
  Tensor v = random_tensor(Shape{7, 16}, -1, 1, 87);
  // Both forms: dense with a block mask (default for small batches) and one attention per sample.
  for (auto limit : {kDense, kPerSample}) {
    for (auto [rotate, rotate_value] : {std::pair{false, false}, {true, false}, {true, true}}) {
      INFO("rotary " << rotate << " rotate_value " << rotate_value << " padded " << (limit == kDense));
      VarlenAttention s = make_spec(rotate, rotate_value, limit);
      Tensor o = varlen_attention(q, k, v, s);
      REQUIRE(o.shape() == Shape{5, 16});
      auto ref = attention_ref(q, k, v, s);
      auto ov = o.to_vector<double>();
      for (size_t i = 0; i < ov.size(); ++i) CHECK(std::abs(ov[i] - ref[i]) < kAttnTol);
    }
  }
  // The last sample has one key: its outputs are exactly that key's value (per head).
  VarlenAttention plain = make_spec(false, false, kDense);
  Tensor o = varlen_attention(q, k, v, plain);
  CHECK(max_abs_diff(o.narrow(0, 3, 2), v.narrow(0, 6, 1).expand(Shape{2, 16})) < kAttnTol);
}

TEST_CASE("varlen attention: first- and second-order gradients", "[ops][attention][grad]") {
  Tensor q = random_tensor(Shape{5, 16}, -1, 1, 88);
  Tensor k = random_tensor(Shape{7, 16}, -1, 1, 89);
  Tensor v = random_tensor(Shape{7, 16}, -1, 1, 90);
  Tensor w = random_tensor(Shape{5, 16}, -1, 1, 91);
  for (auto limit : {kDense, kPerSample}) {
    for (auto [rotate, rotate_value] : {std::pair{false, false}, {true, true}}) {
      VarlenAttention s = make_spec(rotate, rotate_value, limit);
      auto f = [&](const TensorList& in) {
        return sum(mul(varlen_attention(in[0], in[1], in[2], s), w), {1});
      };
      std::string label = std::string(rotate_value ? "attention rotary+value" : "attention") +
                          (limit == kDense ? " (padded)" : " (per sample)");
      CHECK(check_gradients(label, f, {q, k, v}) > 0);
      CHECK(check_second_order(label, f, {q, k, v}) > 0);
    }
  }
}

TEST_CASE("varlen attention: equal-length samples (blocks without padding)",
          "[ops][attention][grad]") {
  // A batch whose samples all have the same number of queries (or keys) takes the padded path
  // without its gathers and mask: the blocks are the rows reshaped. Both sides equal, and each
  // side equal alone (the other padded), against the loops and finite differences.
  struct Layout {
    std::vector<int64_t> q, k;
  };
  for (const Layout& l : {Layout{{2, 2, 2}, {3, 3, 3}}, Layout{{2, 2, 2}, {3, 1, 2}},
                          Layout{{3, 1, 2}, {2, 2, 2}}}) {
    const int64_t nq = 6, nk = l.k[0] + l.k[1] + l.k[2];
    Tensor q = random_tensor(Shape{nq, 16}, -1, 1, 92);
    Tensor k = random_tensor(Shape{nk, 16}, -1, 1, 93);
    Tensor v = random_tensor(Shape{nk, 16}, -1, 1, 94);
    Tensor w = random_tensor(Shape{nq, 16}, -1, 1, 95);
    for (bool rotate : {false, true}) {
      VarlenAttention s;
      s.heads = 2;
      s.q_lengths = l.q;
      s.k_lengths = l.k;
      s.mode = kDense;
      if (rotate) {
        s.q_times = random_tensor(Shape{nq}, 0, 50, 96);
        s.k_times = random_tensor(Shape{nk}, 0, 50, 97);
        s.inv_freq = rotary_inv_freq(8, 100.0, DType::f64);
        s.rotate_value = true;
      }
      INFO("q lengths " << l.q[0] << "," << l.q[1] << "," << l.q[2] << " k lengths " << l.k[0]
                        << "," << l.k[1] << "," << l.k[2] << " rotary " << rotate);
      auto ref = attention_ref(q, k, v, s);
      auto ov = varlen_attention(q, k, v, s).to_vector<double>();
      REQUIRE(ov.size() == ref.size());
      for (size_t i = 0; i < ov.size(); ++i) CHECK(std::abs(ov[i] - ref[i]) < kAttnTol);
      auto f = [&](const TensorList& in) {
        return sum(mul(varlen_attention(in[0], in[1], in[2], s), w), {1});
      };
      CHECK(check_gradients("equal-length attention", f, {q, k, v}) > 0);
      CHECK(check_second_order("equal-length attention", f, {q, k, v}) > 0);
    }
  }
}

TEST_CASE("varlen attention: errors name the problem", "[ops][attention][errors]") {
  Tensor q = zeros(Shape{3, 8}, DType::f64), k = zeros(Shape{4, 8}, DType::f64);
  VarlenAttention s;
  s.heads = 2;
  s.q_lengths = {3};
  s.k_lengths = {3};
  CHECK_THROWS_WITH(varlen_attention(q, k, k, s), Catch::Contains("k_lengths add up to 3") &&
                                                       Catch::Contains("4 rows"));
  s.k_lengths = {4};
  s.heads = 3;
  CHECK_THROWS_WITH(varlen_attention(q, k, k, s), Catch::Contains("3 heads"));
  s.heads = 2;
  s.q_lengths = {2, 1};
  s.k_lengths = {4, 0};
  CHECK_THROWS_WITH(varlen_attention(q, k, k, s), Catch::Contains("no keys"));
  s.mode = VarlenAttention::Mode::per_sample;
  CHECK_THROWS_WITH(varlen_attention(q, k, k, s), Catch::Contains("no keys"));
}
