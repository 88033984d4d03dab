// The fused attention core (flash_attention, its backward op and the double backward) on the
// CPU, in f64: the forward against the composite varlen_attention, first, second and third
// order against finite differences, the closed-form double backward (the derivation the CUDA
// kernel implements, kernels/cuda/flash_attention.md) against autodiff of the composite taken
// twice, and the fused double-backward kernel against that closed form.
#include <catch2/catch.hpp>

#include <cmath>
#include <numeric>

#include "engine/autograd/engine.h"
#include "engine/ops/kernels.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {

// f64 through a few dozen O(1) terms in another order than the reference: ~1e-15 each.
constexpr double kFlashTol = 1e-12;

std::vector<int64_t> offsets_of(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> cu(lengths.size() + 1, 0);
  std::partial_sum(lengths.begin(), lengths.end(), cu.begin() + 1);
  return cu;
}

// Samples: 3 queries x 4 keys, 0 queries x 2 keys, 2 queries x 1 key, 0 x 0, 1 x 3.
VarlenAttention make_spec(bool rotate, bool rotate_value, VarlenAttention::Mode mode) {
  VarlenAttention s;
  s.heads = 2;
  s.q_lengths = {3, 0, 2, 0, 1};
  s.k_lengths = {4, 2, 1, 0, 3};
  if (rotate) {
    s.q_times = random_tensor(Shape{6}, 0, 50, 301);
    s.k_times = random_tensor(Shape{10}, 0, 50, 302);
    s.inv_freq = rotary_inv_freq(8, 100.0, DType::f64);
  }
  s.rotate_value = rotate_value;
  s.mode = mode;
  return s;
}

struct Batch {
  Tensor q, k, v;  // (Nq, H, dh), (Nk, H, dh)
  std::vector<int64_t> cu_q, cu_k;
  double scale;
};
Batch make_batch(uint64_t seed, double range = 1.0) {
  Batch b;
  const VarlenAttention s = make_spec(false, false, VarlenAttention::Mode::fused);
  b.cu_q = offsets_of(s.q_lengths);
  b.cu_k = offsets_of(s.k_lengths);
  b.q = random_tensor(Shape{6, 2, 8}, -range, range, seed);
  b.k = random_tensor(Shape{10, 2, 8}, -range, range, seed + 1);
  b.v = random_tensor(Shape{10, 2, 8}, -range, range, seed + 2);
  b.scale = 1.0 / std::sqrt(8.0);
  return b;
}

double max_diff(const TensorList& a, const TensorList& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, max_abs_diff(a[i], b[i]));
  return m;
}

}  // namespace

TEST_CASE("flash attention: forward and lse against the composite", "[ops][attention][flash]") {
  Tensor q = random_tensor(Shape{6, 16}, -1, 1, 311);
  Tensor k = random_tensor(Shape{10, 16}, -1, 1, 312);
  Tensor v = random_tensor(Shape{10, 16}, -1, 1, 313);
  for (auto [rotate, rotate_value] : {std::pair{false, false}, {true, false}, {true, true}}) {
    INFO("rotary " << rotate << " rotate_value " << rotate_value);
    Tensor fused = varlen_attention(q, k, v, make_spec(rotate, rotate_value,
                                                       VarlenAttention::Mode::fused));
    Tensor ref = varlen_attention(q, k, v, make_spec(rotate, rotate_value,
                                                     VarlenAttention::Mode::per_sample));
    CHECK(max_abs_diff(fused, ref) < kFlashTol);
  }
  // lse = log sum_j exp(scale q.k_j) per row and head, by loops.
  Batch b = make_batch(314, 3.0);
  Tensor lse;
  flash_attention(b.q, b.k, b.v, b.cu_q, b.cu_k, b.scale, &lse);
  REQUIRE(lse.shape() == Shape{6, 2});
  auto qv = b.q.to_vector<double>(), kv = b.k.to_vector<double>(), lv = lse.to_vector<double>();
  for (size_t s = 0; s + 1 < b.cu_q.size(); ++s)
    for (int64_t i = b.cu_q[s]; i < b.cu_q[s + 1]; ++i)
      for (int64_t h = 0; h < 2; ++h) {
        double z = 0;
        for (int64_t j = b.cu_k[s]; j < b.cu_k[s + 1]; ++j) {
          double d = 0;
          for (int64_t c = 0; c < 8; ++c)
            d += qv[size_t((i * 2 + h) * 8 + c)] * kv[size_t((j * 2 + h) * 8 + c)];
          z += std::exp(b.scale * d);
        }
        CHECK(std::abs(lv[size_t(i * 2 + h)] - std::log(z)) < kFlashTol);
      }
}

TEST_CASE("flash attention: first and second order against finite differences",
          "[ops][attention][flash][grad]") {
  Tensor q = random_tensor(Shape{6, 16}, -1, 1, 321);
  Tensor k = random_tensor(Shape{10, 16}, -1, 1, 322);
  Tensor v = random_tensor(Shape{10, 16}, -1, 1, 323);
  Tensor w = random_tensor(Shape{6, 16}, -1, 1, 324);
  for (auto [rotate, rotate_value] : {std::pair{false, false}, {true, true}}) {
    VarlenAttention s = make_spec(rotate, rotate_value, VarlenAttention::Mode::fused);
    auto f = [&](const TensorList& in) {
      return sum(mul(varlen_attention(in[0], in[1], in[2], s), w), {1});
    };
    const std::string label = rotate_value ? "fused attention rotary+value" : "fused attention";
    CHECK(check_gradients(label, f, {q, k, v}) > 0);
    // The second-order check differentiates the recorded flash_attention_backward op without
    // recording again: the fused double-backward kernel (its CPU loops here).
    CHECK(check_second_order(label, f, {q, k, v}) > 0);
  }
}

TEST_CASE("flash attention: third order (the composite fallback) against finite differences",
          "[ops][attention][flash][grad]") {
  Batch b = make_batch(331);
  Tensor w = random_tensor(Shape{6, 2, 8}, -1, 1, 334);
  Tensor u = random_tensor(Shape{6, 2, 8}, -1, 1, 335);
  // f = <grad_q <o, w>, u>: its second order is the attention's third.
  auto f = [&](const TensorList& in) {
    // The finite-difference evaluations pass plain tensors: take the inner gradient of a copy.
    GradModeGuard on(true);
    Tensor q = in[0].requires_grad() ? in[0] : in[0].detach().set_requires_grad();
    Tensor o = flash_attention(q, in[1], in[2], b.cu_q, b.cu_k, b.scale);
    TensorList g = autograd::grad({sum(mul(o, w))}, {q}, {}, std::nullopt, true);
    return sum(mul(g[0], u), {1, 2});
  };
  CHECK(check_second_order("fused attention, third order", f, {b.q, b.k, b.v}) > 0);
}

TEST_CASE("flash attention: gradients of every order equal the composite's",
          "[ops][attention][flash][grad]") {
  Tensor q = random_tensor(Shape{6, 16}, -1.5, 1.5, 341).set_requires_grad();
  Tensor k = random_tensor(Shape{10, 16}, -1.5, 1.5, 342).set_requires_grad();
  Tensor v = random_tensor(Shape{10, 16}, -1.5, 1.5, 343).set_requires_grad();
  Tensor w = random_tensor(Shape{6, 16}, -1, 1, 344);
  Tensor z1 = random_tensor(Shape{6, 16}, -1, 1, 345), z2 = random_tensor(Shape{10, 16}, -1, 1, 346),
         z3 = random_tensor(Shape{10, 16}, -1, 1, 347);
  auto orders = [&](VarlenAttention::Mode mode) {
    VarlenAttention s = make_spec(true, true, mode);
    Tensor o = varlen_attention(q, k, v, s);
    TensorList g1 = autograd::grad({sum(mul(o, w))}, {q, k, v}, {}, std::nullopt, true);
    Tensor l2 = add(add(sum(mul(g1[0], z1)), sum(mul(g1[1], z2))), sum(mul(g1[2], z3)));
    TensorList g2 = autograd::grad({l2}, {q, k, v}, {}, std::nullopt, true);
    Tensor l3 = sum(mul(g2[0], g2[0]));
    TensorList g3 = autograd::grad({l3}, {q, k, v});
    return std::vector<TensorList>{{o}, g1, g2, g3};
  };
  auto fused = orders(VarlenAttention::Mode::fused);
  auto ref = orders(VarlenAttention::Mode::per_sample);
  for (size_t order = 0; order < 4; ++order) {
    INFO("order " << order);
    CHECK(max_diff(fused[order], ref[order]) < 1e-10);
  }
}

TEST_CASE("flash attention: the closed-form double backward equals autodiff of the composite",
          "[ops][attention][flash][grad]") {
  Batch b = make_batch(351, 1.5);
  Tensor dO = random_tensor(Shape{6, 2, 8}, -1, 1, 354).set_requires_grad();
  Tensor a = random_tensor(Shape{6, 2, 8}, -1, 1, 355);
  Tensor bb = random_tensor(Shape{10, 2, 8}, -1, 1, 356);
  Tensor c = random_tensor(Shape{10, 2, 8}, -1, 1, 357);
  Tensor q = b.q.clone().set_requires_grad(), k = b.k.clone().set_requires_grad(),
         v = b.v.clone().set_requires_grad();
  // Autodiff of the composite, twice.
  VarlenAttention s = make_spec(false, false, VarlenAttention::Mode::per_sample);
  auto flat = [](const Tensor& t) { return t.reshape(Shape{t.size(0), -1}); };
  Tensor o = varlen_attention(flat(q), flat(k), flat(v), s).reshape(Shape{6, 2, 8});
  TensorList g1 = autograd::grad({o}, {q, k, v}, {dO}, std::nullopt, true);
  Tensor l2 = add(add(sum(mul(g1[0], a)), sum(mul(g1[1], bb))), sum(mul(g1[2], c)));
  TensorList auto2 = autograd::grad({l2}, {q, k, v, dO});
  // The closed form, and the fused kernel (CPU loops) from the forward's o and lse.
  TensorList closed = flash_attention_double_backward_composite(b.q, b.k, b.v, dO.detach(), a, bb,
                                                                c, b.cu_q, b.cu_k, b.scale);
  CHECK(max_diff(closed, auto2) < kFlashTol);
  Tensor lse;
  Tensor of = flash_attention(b.q, b.k, b.v, b.cu_q, b.cu_k, b.scale, &lse);
  Tensor gq = empty_like(b.q), gk = empty_like(b.k), gv = empty_like(b.k), gdO = empty_like(b.q);
  const FlashAttentionLayout layout{&b.cu_q, &b.cu_k, b.scale};
  flash_attention_double_backward_kernel(kCPU, b.q, b.k, b.v, of, dO.detach(), lse, a, bb, c,
                                         layout, gq, gk, gv, gdO);
  CHECK(max_diff({gq, gk, gv, gdO}, auto2) < kFlashTol);
  // The first-order op against autodiff too.
  TensorList d1 = flash_attention_backward(b.q, b.k, b.v, of, dO.detach(), lse, b.cu_q, b.cu_k,
                                           b.scale);
  CHECK(max_diff(d1, {g1[0].detach(), g1[1].detach(), g1[2].detach()}) < kFlashTol);
}

TEST_CASE("flash attention: errors name the problem", "[ops][attention][flash][errors]") {
  Tensor q = zeros(Shape{3, 2, 4}, DType::f64), k = zeros(Shape{4, 2, 4}, DType::f64);
  CHECK_THROWS_WITH(flash_attention(q, k, k, {0, 3}, {0, 3}, 1.0),
                    Catch::Contains("offsets must run from 0"));
  CHECK_THROWS_WITH(flash_attention(q, k, k, {0, 2, 3}, {0, 4, 4}, 1.0),
                    Catch::Contains("sample 1 has 1 queries but no keys"));
  CHECK_THROWS_WITH(flash_attention(q, zeros(Shape{4, 2, 2}, DType::f64), k, {0, 3}, {0, 4}, 1.0),
                    Catch::Contains("(Nq, heads, dh)"));
  CHECK_THROWS_WITH(flash_attention(q, k, k.to(DType::f32), {0, 3}, {0, 4}, 1.0),
                    Catch::Contains("dtype mismatch"));
}
