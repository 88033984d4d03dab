// The fused attention kernels (kernels/cuda/flash_attention.cu) against the CPU: the three
// dispatch stubs (forward, backward, double backward) against their CPU loops for every float
// dtype with sentinels around every output, and varlen_attention on CUDA (whose automatic mode
// takes the fused core) against the CPU composite for outputs and first- and second-order
// gradients, rotary on and off. Batches are variable-length with a sample of one key, a sample
// without queries and one without either, and tile/block boundaries crossed. Every case skips,
// with a warning, when no CUDA device is present.
//
// Every GPU comparison runs once per kernel setting (kKernelSettings): the simple kernels (the
// fallback, METATAPE_FLASH_KERNELS=simple), the split-KV kernels with the automatic split count,
// and forced split counts that give splits with no keys, with one key, and key ranges that are
// not a multiple of the tile (kFlashTiles below), so one GPU run says which kernels are right;
// and the mma setting (the tensor-core kernels for bf16/f16 at dh 32, 64, 128 and for f32 as
// 3xTF32 (the double backward up to dh 64), the split kernels elsewhere), automatic and forced to
// 3 and 7 splits.
#include <catch2/catch.hpp>

#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "engine/autograd/engine.h"
#include "engine/core/attention_settings.h"
#include "engine/core/matmul_settings.h"
#include "engine/ops/kernels.h"
#include "support/cuda_compare.h"

#if METATAPE_WITH_CUDA
#include <cuda_runtime.h>
#endif

using namespace mt;
using namespace mt::testing;

namespace {

// ---- tolerances (|cuda - cpu| <= atol + rtol |cpu|) ----
// f64 kernels against the CPU loops (also f64, summing in another order): a few hundred terms of
// O(1) per output, a few ulps each.
constexpr Tolerance kFlashF64{1e-11, 1e-10};
// f32 kernels against the CPU loops, which read the same f32 inputs but sum in double: the GPU's
// f32 sums over <= 3000 keys (dot products of dh <= 128) carry ~sqrt(n) 2^-24 relative error
// of the largest terms, and expf 2 ulp; outputs and first-order gradients are O(1).
constexpr Tolerance kFlashF32{2e-5, 2e-4};
// Second order in f32: the row statistic E = t - 2 r D + w cancels terms of O(10) (flash_
// attention.md), so an absolute error of ~10 x the first order's is expected.
constexpr Tolerance kFlashF32Second{2e-4, 2e-3};
// lse in f32: log of an f32 sum, absolute error ~ n 2^-24 relative of the sum -> 1e-5.
constexpr Tolerance kLseF32{1e-5, 1e-5};
// The f32 tensor-core kernels (the mma setting, dh 32/64/128; the double backward up to 64)
// compute each product as three TF32 products (3xTF32): tools/reference/flash_tf32_rounding.py
// simulates that rounding on these shapes and needs at most 2.2e-7 absolute on top of kFlashF32's
// and kFlashF32Second's relative parts, 100x inside their absolute parts, which therefore stay.
// Under cuda_matmul_allow_tf32 they take one TF32 product: every operand of every product
// (q, k, v, dO, a, b, c and the coefficients P, dS, gS, gdP) rounded to 11 significant bits
// (2^-11 relative). The same simulation (8 seeds) needs at most 1.1e-3 absolute with 2e-3
// relative for o, dq, dk, dv (score errors of ~1e-4 move P by as much, relative), 9.1e-4 with
// 1e-2 relative for the second order, and 1.7e-4 with 2e-3 relative for lse: these tolerances
// leave about 2.5x.
constexpr Tolerance kFlashTf32{3e-3, 2e-3};
constexpr Tolerance kFlashTf32Second{3e-3, 1e-2};
constexpr Tolerance kLseTf32{5e-4, 2e-3};
// 16-bit storage: both sides compute in f32 from the same rounded inputs and round the result
// once to 16 bits (kF16 / kBF16, support/cuda_compare.h); f32 order effects are far below. The
// mma forward rounds P to the storage type before P V: each weight moves by <= 2^-9 (bf16) or
// 2^-12 (f16) relative while l stays f32, so o moves by <= 2^-9 max|v| (2^-12): inside the same
// absolute tolerances (1e-2, 1e-3) for the tests' |v| <= 1.
// The mma double backward (16-bit storage) also rounds its pair coefficients dS, gS, gdP, P to
// the storage type (relative error <= u = 2^-9 bf16, 2^-12 f16) before the products with the
// tile vectors: an output row sum_j c_j x_j (|x| <= 1) moves by <= u sum_j |c_j|, and on the
// query side sum_j |c_j| <= max_j |c_j / P_j| (sum_j P_j = 1) = O(10) for these inputs, so
// <= ~2e-2 (bf16) in the worst case; in practice the errors of different keys add like a random
// walk: a float64 simulation of exactly this rounding on the tests' shapes (every sample shape
// below, dh 32/64/128, 3 seeds, the outputs rounded to the dtype on both sides) needed at most
// 1.4e-3 (bf16) / 1.3e-4 (f16) absolute on top of the relative tolerances, 7x inside kBF16 / kF16,
// which therefore stay the tolerances of the mma double backward too.
// Gradients through varlen_attention in f64 on both devices (rotary composite + fused core vs
// the composite throughout): f64 rounding of a few hundred O(1) terms.
constexpr Tolerance kGradF64{1e-10, 1e-10};

Tolerance stub_tol(DType t, bool second_order = false, bool tf32 = false) {
  if (tf32 && t == DType::f32) return second_order ? kFlashTf32Second : kFlashTf32;
  switch (t) {
    case DType::f64: return kFlashF64;
    case DType::f16: return kF16;
    case DType::bf16: return kBF16;
    default: return second_order ? kFlashF32Second : kFlashF32;
  }
}

// The kernel settings every comparison sweeps. With kKLengths and the tiles of 64 keys (32 in the
// double backward), 2 splits give 129 keys as 128 + 1 (96 + 33), 3 give 64 + 64 + 1 and 70 keys
// as 64 + 6 + 0, 7 give four or more empty splits; a sample of one key has one non-empty split.
struct KernelSetting {
  const char* name;
  FlashKernels kernels;
  int splits;  // 0: automatic
};
const std::vector<KernelSetting> kKernelSettings{{"simple", FlashKernels::simple, 0},
                                                 {"split auto", FlashKernels::split, 0},
                                                 {"split 2", FlashKernels::split, 2},
                                                 {"split 3", FlashKernels::split, 3},
                                                 {"split 7", FlashKernels::split, 7},
                                                 {"mma auto", FlashKernels::mma, 0},
                                                 {"mma 3", FlashKernels::mma, 3},
                                                 {"mma 7", FlashKernels::mma, 7}};
// Selects a setting for its lifetime, then restores the previous one. The mma settings turn on
// f32's tensor-core kernels too (cuda_flash_f32_tensor_cores, off by default until verified on
// a GPU), so that they are what these cases test.
struct UseKernels {
  explicit UseKernels(const KernelSetting& s)
      : kernels(cuda_flash_kernels()),
        splits(cuda_flash_kv_splits()),
        f32_tensor_cores(cuda_flash_f32_tensor_cores()) {
    set_cuda_flash_kernels(s.kernels);
    set_cuda_flash_kv_splits(s.splits);
    set_cuda_flash_f32_tensor_cores(s.kernels == FlashKernels::mma);
  }
  ~UseKernels() {
    set_cuda_flash_kernels(kernels);
    set_cuda_flash_kv_splits(splits);
    set_cuda_flash_f32_tensor_cores(f32_tensor_cores);
  }
  UseKernels(const UseKernels&) = delete;
  UseKernels& operator=(const UseKernels&) = delete;
  FlashKernels kernels;
  int splits;
  bool f32_tensor_cores;
};

std::vector<int64_t> offsets_of(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> cu(lengths.size() + 1, 0);
  std::partial_sum(lengths.begin(), lengths.end(), cu.begin() + 1);
  return cu;
}

// 6 samples: a few queries, no queries (3 keys), 17 queries on one key, nothing, 33 queries (three
// 16-row blocks) on 70 keys (two 64-key tiles), 2 queries on 129 keys (three tiles).
const std::vector<int64_t> kQLengths{5, 0, 17, 0, 33, 2};
const std::vector<int64_t> kKLengths{7, 3, 1, 0, 70, 129};

struct Inputs {
  Tensor q, k, v, dO, a, b, c;  // f64 on the CPU
};
Inputs make_inputs(const std::vector<int64_t>& ql, const std::vector<int64_t>& kl, int64_t H,
                   int64_t dh, uint64_t seed, double range = 1.0) {
  const int64_t Nq = std::accumulate(ql.begin(), ql.end(), int64_t(0));
  const int64_t Nk = std::accumulate(kl.begin(), kl.end(), int64_t(0));
  Inputs in;
  in.q = random_tensor(Shape{Nq, H, dh}, -range, range, seed);
  in.k = random_tensor(Shape{Nk, H, dh}, -range, range, seed + 1);
  in.v = random_tensor(Shape{Nk, H, dh}, -1, 1, seed + 2);
  in.dO = random_tensor(Shape{Nq, H, dh}, -1, 1, seed + 3);
  in.a = random_tensor(Shape{Nq, H, dh}, -1, 1, seed + 4);
  in.b = random_tensor(Shape{Nk, H, dh}, -1, 1, seed + 5);
  in.c = random_tensor(Shape{Nk, H, dh}, -1, 1, seed + 6);
  return in;
}

// Sets cuda_matmul_allow_tf32 for its lifetime, then restores it.
struct UseTf32 {
  explicit UseTf32(bool allow) : previous(cuda_matmul_allow_tf32()) {
    set_cuda_matmul_allow_tf32(allow);
  }
  ~UseTf32() { set_cuda_matmul_allow_tf32(previous); }
  UseTf32(const UseTf32&) = delete;
  UseTf32& operator=(const UseTf32&) = delete;
  bool previous;
};

// The stubs on the GPU (outputs into sentinel-padded windows) against the CPU loops, for one
// dtype: the CPU reads the same values (16-bit inputs widened to f32) and its results are
// rounded to the dtype. tf32: with cuda_matmul_allow_tf32 (f32's tensor-core kernels take one
// TF32 product instead of three).
void compare_stubs(const std::vector<int64_t>& ql, const std::vector<int64_t>& kl, int64_t H,
                   int64_t dh, DType t, uint64_t seed, double range = 1.0, bool tf32 = false) {
  const std::string what =
      fmt::format("flash stubs H {} dh {} {}{}", H, dh, dtype_name(t), tf32 ? " tf32" : "");
  INFO(what);
  const UseTf32 use_tf32(tf32);
  const DType ct = t == DType::f64 ? DType::f64 : DType::f32;
  const std::vector<int64_t> cu_q = offsets_of(ql), cu_k = offsets_of(kl);
  const FlashAttentionLayout layout{&cu_q, &cu_k, 1.0 / std::sqrt(double(dh))};
  Inputs in = make_inputs(ql, kl, H, dh, seed, range);
  auto stored = [&](const Tensor& x) { return x.to(t); };             // the dtype's values
  auto wide = [&](const Tensor& x) { return x.to(t).to(ct); };       // those values, for the CPU
  auto dev = [&](const Tensor& x) { return x.to(t).to(gpu0()); };    // those values, on the GPU
  const int64_t Nq = in.q.size(0), Nk = in.k.size(0);
  const Shape qs{Nq, H, dh}, ks{Nk, H, dh};

  // The CPU references. The backward starts from the CPU's o (in the dtype) and lse, so both
  // sides see the same values.
  Tensor o_ref = empty(qs, ct), lse_ref = empty(Shape{Nq, H}, ct);
  flash_attention_kernel(kCPU, wide(in.q), wide(in.k), wide(in.v), layout, o_ref, lse_ref);
  Tensor o_t = stored(o_ref);
  Tensor dq_ref = empty(qs, ct), dk_ref = empty(ks, ct), dv_ref = empty(ks, ct);
  flash_attention_backward_kernel(kCPU, wide(in.q), wide(in.k), wide(in.v), o_t.to(ct),
                                  wide(in.dO), lse_ref, layout, dq_ref, dk_ref, dv_ref);
  Tensor gq_ref = empty(qs, ct), gk_ref = empty(ks, ct), gv_ref = empty(ks, ct),
         gdo_ref = empty(qs, ct);
  flash_attention_double_backward_kernel(kCPU, wide(in.q), wide(in.k), wide(in.v), o_t.to(ct),
                                         wide(in.dO), lse_ref, wide(in.a), wide(in.b),
                                         wide(in.c), layout, gq_ref, gk_ref, gv_ref, gdo_ref);

  for (const KernelSetting& setting : kKernelSettings) {
    const UseKernels use(setting);
    const std::string at = what + " [" + setting.name + "]";
    INFO(at);
    // The tensor-core kernels must run exactly where they are meant to (no silent fallback):
    // 16-bit storage at dh 32, 64, 128; f32 at the same for the forward and backward and at 32
    // and 64 for the double backward.
    const bool mma_setting = setting.kernels == FlashKernels::mma;
    const bool mma_first = mma_setting && t != DType::f64 && (dh == 32 || dh == 64 || dh == 128);
    const bool mma_second = mma_first && (t != DType::f32 || dh <= 64);
    auto mma_calls = [](FlashPass pass) { return cuda_flash_mma_count(pass); };

    // forward
    Padded o = padded(qs, t, gpu0(), false), lse = padded(Shape{Nq, H}, ct, gpu0(), false);
    const long long forward_before = mma_calls(FlashPass::forward);
    flash_attention_kernel(gpu0(), dev(in.q), dev(in.k), dev(in.v), layout, o.window,
                           lse.window);
    CHECK(mma_calls(FlashPass::forward) - forward_before == (mma_first ? 1 : 0));
    const bool tf32_mma = tf32 && t == DType::f32 && setting.kernels == FlashKernels::mma;
    check_padded(o, stored(o_ref), stub_tol(t, false, tf32), at + ": o");
    check_padded(lse, lse_ref, t == DType::f64 ? kFlashF64 : tf32_mma ? kLseTf32 : kLseF32,
                 at + ": lse");

    // backward
    Padded dq = padded(qs, t, gpu0(), false), dk = padded(ks, t, gpu0(), false),
           dv = padded(ks, t, gpu0(), false);
    const long long backward_before = mma_calls(FlashPass::backward);
    flash_attention_backward_kernel(gpu0(), dev(in.q), dev(in.k), dev(in.v), o_t.to(gpu0()),
                                    dev(in.dO), lse_ref.to(gpu0()), layout, dq.window,
                                    dk.window, dv.window);
    CHECK(mma_calls(FlashPass::backward) - backward_before == (mma_first ? 1 : 0));
    check_padded(dq, stored(dq_ref), stub_tol(t, false, tf32), at + ": dq");
    check_padded(dk, stored(dk_ref), stub_tol(t, false, tf32), at + ": dk");
    check_padded(dv, stored(dv_ref), stub_tol(t, false, tf32), at + ": dv");

    // double backward
    Padded gq = padded(qs, t, gpu0(), false), gk = padded(ks, t, gpu0(), false),
           gv = padded(ks, t, gpu0(), false), gdo = padded(qs, t, gpu0(), false);
    const long long double_before = mma_calls(FlashPass::double_backward);
    flash_attention_double_backward_kernel(
        gpu0(), dev(in.q), dev(in.k), dev(in.v), o_t.to(gpu0()), dev(in.dO),
        lse_ref.to(gpu0()), dev(in.a), dev(in.b), dev(in.c), layout, gq.window, gk.window,
        gv.window, gdo.window);
    CHECK(mma_calls(FlashPass::double_backward) - double_before == (mma_second ? 1 : 0));
    const Tolerance tol2 = stub_tol(t, true, tf32);
    check_padded(gq, stored(gq_ref), tol2, at + ": grad q");
    check_padded(gk, stored(gk_ref), tol2, at + ": grad k");
    check_padded(gv, stored(gv_ref), tol2, at + ": grad v");
    check_padded(gdo, stored(gdo_ref), tol2, at + ": grad dO");
  }
}

// varlen_attention on the GPU (automatic: the fused core) against the CPU composite: outputs,
// the gradient for a random grad_output (graph kept), and the gradient of <gradient, z> for a
// random z (second order, through the fused double-backward kernel). Inputs (rows, H*dh).
void compare_varlen(const VarlenAttention& spec_cpu, const std::vector<Shape>& shapes, DType t,
                    Tolerance tol, Tolerance tol2, const std::string& name) {
  INFO(name);
  VarlenAttention spec_gpu = spec_cpu;
  spec_gpu.mode = VarlenAttention::Mode::automatic;
  if (spec_cpu.q_times.defined()) {
    spec_gpu.q_times = spec_cpu.q_times.to(t).to(gpu0());
    spec_gpu.k_times = spec_cpu.k_times.to(t).to(gpu0());
    spec_gpu.inv_freq = spec_cpu.inv_freq.to(t).to(gpu0());
  }
  const DType ct = t == DType::f64 ? DType::f64 : DType::f32;
  VarlenAttention spec_ref = spec_cpu;
  if (spec_cpu.q_times.defined()) {
    spec_ref.q_times = spec_cpu.q_times.to(t).to(ct);
    spec_ref.k_times = spec_cpu.k_times.to(t).to(ct);
    spec_ref.inv_freq = spec_cpu.inv_freq.to(t).to(ct);
  }
  TensorList xs_cpu, xs_gpu;
  uint64_t seed = 401;
  for (const Shape& s : shapes) {
    Tensor x = random_tensor(s, -1.5, 1.5, seed++).to(t);
    xs_cpu.push_back(x.to(ct).detach().set_requires_grad());
    xs_gpu.push_back(x.to(gpu0()).detach().set_requires_grad());
  }
  auto run = [&](const TensorList& xs, const VarlenAttention& spec, Device d, DType dt) {
    Tensor y = varlen_attention(xs[0], xs[1], xs[2], spec);
    Tensor gy = random_tensor(y.shape(), -1, 1, 411).to(dt).to(d);
    TensorList g = autograd::grad({y}, xs, {gy}, std::nullopt, true);
    Tensor dot;
    for (size_t i = 0; i < g.size(); ++i) {
      Tensor term = sum(mul(g[i], random_tensor(g[i].shape(), -1, 1, 421 + i).to(dt).to(d)));
      dot = dot.defined() ? add(dot, term) : term;
    }
    TensorList gg = autograd::grad({dot}, xs, {}, std::nullopt, false, /*allow_unused=*/true);
    return std::make_tuple(y, g, gg);
  };
  auto [y_ref, g_ref, gg_ref] = run(xs_cpu, spec_ref, kCPU, ct);
  auto [y, g, gg] = run(xs_gpu, spec_gpu, gpu0(), t);
  check_close(y, y_ref.detach().to(t), tol, name + ": forward");
  for (size_t i = 0; i < g.size(); ++i) {
    check_close(g[i], g_ref[i].detach().to(t), tol, fmt::format("{}: grad #{}", name, i));
    REQUIRE(gg[i].defined() == gg_ref[i].defined());
    if (gg[i].defined())
      check_close(gg[i], gg_ref[i].to(t), tol2, fmt::format("{}: second order #{}", name, i));
  }
}

VarlenAttention spec_of(const std::vector<int64_t>& ql, const std::vector<int64_t>& kl,
                        int64_t H, int64_t dh, bool rotate, bool rotate_value) {
  VarlenAttention s;
  s.heads = H;
  s.q_lengths = ql;
  s.k_lengths = kl;
  s.mode = VarlenAttention::Mode::per_sample;  // the CPU reference: the composite
  if (rotate) {
    const int64_t Nq = std::accumulate(ql.begin(), ql.end(), int64_t(0));
    const int64_t Nk = std::accumulate(kl.begin(), kl.end(), int64_t(0));
    s.q_times = random_tensor(Shape{Nq}, 0, 5, 431);
    s.k_times = random_tensor(Shape{Nk}, 0, 5, 432);
    s.inv_freq = rotary_inv_freq(dh, 10.0, DType::f64);
  }
  s.rotate_value = rotate_value;
  return s;
}

}  // namespace

TEST_CASE("CUDA flash attention: the stubs match the CPU loops (every dtype, sentinels)",
          "[cuda][flash]") {
  MT_SKIP_WITHOUT_CUDA();
  // The f64 kernels stage the largest tiles: 197632 bytes a block for the double backward at
  // head dim 128, 107520 at 64. A Hopper GPU (232448) runs them all; an earlier one refuses
  // those past its limit with the sizes and the fix (f32, bf16 and f16 fit 99 KiB everywhere).
  int shared_limit = 0;
#if METATAPE_WITH_CUDA
  REQUIRE(cudaDeviceGetAttribute(&shared_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) ==
          cudaSuccess);
#endif
  for (DType t : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    auto compare = [&](int64_t H, int64_t dh, uint64_t seed) {
      // Past the limit: the f64 double backward at 128 (197632 bytes), and the f64 kernels of
      // width 64 (head dims 40 and 64: 107520 bytes); those of width 32 fit every GPU.
      const bool may_refuse =
          t == DType::f64 && ((dh == 128 && shared_limit < 197632) ||
                              ((dh == 40 || dh == 64) && shared_limit < 107520));
      if (!may_refuse) return compare_stubs(kQLengths, kKLengths, H, dh, t, seed);
      try {
        compare_stubs(kQLengths, kKLengths, H, dh, t, seed);
        CHECK(dh < 128);  // 193 KiB: past the limit, which may_refuse says
      } catch (const Error& e) {
        CHECK_THAT(e.what(), Catch::Contains("bytes of shared memory per block") &&
                                 Catch::Contains("run this attention in f32"));
      }
    };
    // Head dims on each kernel width (32, 64, 128) and one that is not a multiple of 32.
    compare(3, 64, 441);
    compare(2, 40, 451);
    compare(2, 16, 461);
    compare(2, 128, 471);
  }
  // Large scores (a sharp softmax: the online rescaling matters) and an empty batch.
  compare_stubs(kQLengths, kKLengths, 2, 64, DType::f32, 481, 4.0);
  compare_stubs({0, 0}, {0, 2}, 2, 64, DType::f32, 491);
  // Split-KV edges: one query on one key (every split but the first empty), 65 keys (a split of
  // one key after a full tile), 100 keys under a sharp softmax (the split maxima differ widely,
  // so the combine's rescaling matters).
  compare_stubs({1, 3}, {1, 65}, 1, 32, DType::f32, 493);
  compare_stubs({1, 3}, {1, 65}, 1, 32, DType::bf16, 495);
  compare_stubs({16, 5}, {100, 33}, 2, 64, DType::f32, 497, 4.0);
}

TEST_CASE("CUDA flash attention: f32 on TF32 tensor cores under cuda_matmul_allow_tf32",
          "[cuda][flash]") {
  MT_SKIP_WITHOUT_CUDA();
  // Every head dim of the tensor-core kernels (the double backward's f32 limit, 64, and past
  // it), one they do not take (40), and the split edges; the stubs' default (3xTF32) is covered
  // above for every kernel setting.
  for (int64_t dh : {32, 64, 128, 40})
    compare_stubs(kQLengths, kKLengths, 2, dh, DType::f32, 541 + uint64_t(dh), 1.0, true);
  compare_stubs({1, 3}, {1, 65}, 1, 32, DType::f32, 547, 1.0, true);
  compare_stubs({64, 8}, {3000, 2100}, 2, 64, DType::f32, 549, 1.0, true);
  CHECK_FALSE(cuda_matmul_allow_tf32());  // restored
}

TEST_CASE("CUDA flash attention: an infinite value stays non-finite in its own sample",
          "[cuda][flash]") {
  MT_SKIP_WITHOUT_CUDA();
  // An inf in one value row of sample 0 makes that sample's outputs non-finite (P > 0 times
  // inf), as on the CPU; every kernel setting, f32 (3xTF32 on the tensor-core setting, whose
  // split must not turn the inf into a finite number) and f32 with TF32, and bf16. The other
  // samples stay finite and equal the CPU's.
  const std::vector<int64_t> ql{5, 17}, kl{7, 70};
  const std::vector<int64_t> cu_q = offsets_of(ql), cu_k = offsets_of(kl);
  const FlashAttentionLayout layout{&cu_q, &cu_k, 1.0 / std::sqrt(64.0)};
  Inputs in = make_inputs(ql, kl, 2, 64, 561);
  std::vector<double> v = in.v.to_vector<double>();
  v[size_t(3 * 2 * 64 + 64 + 5)] = INFINITY;  // key 3 (sample 0), head 1, column 5
  const Tensor v_inf = from_vector(v, in.v.shape(), DType::f64);
  for (DType t : {DType::f32, DType::bf16})
    for (bool tf32 : {false, true}) {
      if (tf32 && t != DType::f32) continue;
      const UseTf32 use_tf32(tf32);
      const DType ct = DType::f32;
      Tensor o_ref = empty(Shape{22, 2, 64}, ct), lse_ref = empty(Shape{22, 2}, ct);
      flash_attention_kernel(kCPU, in.q.to(t).to(ct), in.k.to(t).to(ct), v_inf.to(t).to(ct),
                             layout, o_ref, lse_ref);
      for (const KernelSetting& setting : kKernelSettings) {
        const UseKernels use(setting);
        const std::string at = fmt::format("{}{} [{}]", dtype_name(t), tf32 ? " tf32" : "",
                                           setting.name);
        INFO(at);
        Tensor o = empty(Shape{22, 2, 64}, t, gpu0()), lse = empty(Shape{22, 2}, ct, gpu0());
        flash_attention_kernel(gpu0(), in.q.to(t).to(gpu0()), in.k.to(t).to(gpu0()),
                               v_inf.to(t).to(gpu0()), layout, o, lse);
        const std::vector<double> got = o.to(DType::f64).to_vector<double>();
        const std::vector<double> ref = o_ref.to(DType::f64).to_vector<double>();
        // Sample 0 (queries 0-4), head 1, column 5: non-finite on both sides.
        for (int64_t i = 0; i < 5; ++i) {
          const size_t at_i = size_t(i * 2 * 64 + 64 + 5);
          CHECK_FALSE(std::isfinite(ref[at_i]));
          CHECK_FALSE(std::isfinite(got[at_i]));
        }
        // Sample 1 (queries 5-21) is untouched.
        const Tensor rows = o.narrow(0, 5, 17), rows_ref = o_ref.narrow(0, 5, 17).to(t);
        check_close(rows, rows_ref, tf32 ? kFlashTf32 : stub_tol(t), at + ": sample 1");
      }
    }
}

TEST_CASE("CUDA flash attention: long key sequences (3000 keys per sample)", "[cuda][flash]") {
  MT_SKIP_WITHOUT_CUDA();
  compare_stubs({64, 8}, {3000, 2100}, 2, 64, DType::f32, 501);
  compare_stubs({64, 8}, {3000, 2100}, 2, 64, DType::bf16, 511);
}

TEST_CASE("CUDA flash attention: varlen_attention's gradients equal the CPU composite's",
          "[cuda][flash]") {
  MT_SKIP_WITHOUT_CUDA();
  const int64_t H = 2, dh = 32;
  const int64_t Nq = std::accumulate(kQLengths.begin(), kQLengths.end(), int64_t(0));
  const int64_t Nk = std::accumulate(kKLengths.begin(), kKLengths.end(), int64_t(0));
  const std::vector<Shape> shapes{Shape{Nq, H * dh}, Shape{Nk, H * dh}, Shape{Nk, H * dh}};
  for (const KernelSetting& setting :
       {kKernelSettings[0], kKernelSettings[3], kKernelSettings[5]})
  for (auto [rotate, rotate_value] : {std::pair{false, false}, {true, false}, {true, true}}) {
    const UseKernels use(setting);
    const VarlenAttention s = spec_of(kQLengths, kKLengths, H, dh, rotate, rotate_value);
    const std::string label = fmt::format("varlen rotary {} rotate_value {} [{}]", rotate,
                                          rotate_value, setting.name);
    compare_varlen(s, shapes, DType::f64, kGradF64, kGradF64, label + " f64");
    compare_varlen(s, shapes, DType::f32, kFlashF32, kFlashF32Second, label + " f32");
  }
  // bf16: on the GPU every composite op around the fused core (rotary's cos, sin, products and
  // sums; the test's products and sums of gradients) rounds to bf16, on the CPU it stays in f32:
  // a handful of bf16 roundings (2^-8 relative each) on O(1) values, first and second order.
  constexpr Tolerance kBF16Chain{5e-2, 5e-2};
  compare_varlen(spec_of(kQLengths, kKLengths, H, dh, true, true), shapes, DType::bf16,
                 kBF16Chain, kBF16Chain, "varlen rotary+value bf16");
}

TEST_CASE("CUDA flash attention: the backward is deterministic and the op is on the tape",
          "[cuda][flash]") {
  MT_SKIP_WITHOUT_CUDA();
  const std::vector<int64_t> cu_q = offsets_of(kQLengths), cu_k = offsets_of(kKLengths);
  Inputs in = make_inputs(kQLengths, kKLengths, 4, 64, 521);
  Tensor q = in.q.to(DType::f32).to(gpu0()).set_requires_grad();
  Tensor k = in.k.to(DType::f32).to(gpu0()).set_requires_grad();
  Tensor v = in.v.to(DType::f32).to(gpu0()).set_requires_grad();
  Tensor dO = in.dO.to(DType::f32).to(gpu0());
  auto grads = [&]() {
    Tensor o = flash_attention(q, k, v, cu_q, cu_k, 0.125);
    return autograd::grad({o}, {q, k, v}, {dO});
  };
  for (const KernelSetting& setting : kKernelSettings) {
    const UseKernels use(setting);
    TensorList g1 = grads(), g2 = grads();
    for (size_t i = 0; i < 3; ++i)
      check_equal(g1[i], g2[i], fmt::format("run-to-run grad #{} [{}]", i, setting.name));
  }
  // bf16 (the tensor-core kernels under the mma settings).
  Tensor qb = in.q.to(DType::bf16).to(gpu0()).set_requires_grad();
  Tensor kb = in.k.to(DType::bf16).to(gpu0()).set_requires_grad();
  Tensor vb = in.v.to(DType::bf16).to(gpu0()).set_requires_grad();
  Tensor dOb = in.dO.to(DType::bf16).to(gpu0());
  auto grads_bf16 = [&]() {
    Tensor o = flash_attention(qb, kb, vb, cu_q, cu_k, 0.125);
    return autograd::grad({o}, {qb, kb, vb}, {dOb});
  };
  for (const KernelSetting& setting : kKernelSettings) {
    const UseKernels use(setting);
    TensorList g1 = grads_bf16(), g2 = grads_bf16();
    for (size_t i = 0; i < 3; ++i)
      check_equal(g1[i], g2[i], fmt::format("run-to-run bf16 grad #{} [{}]", i, setting.name));
  }
}
