// The CUDA kernels of matmul (cuBLASLt), softmax, layer_norm, embedding, random draws and the
// optimizer updates against the CPU backend: outputs (every float dtype, 16-bit ones against
// the CPU in f32 rounded to 16 bits), first- and second-order gradients in f64, sentinels around
// outputs written through the stubs, bitwise determinism where the kernels promise it, and the
// same random numbers as the CPU for the same seed and offset. Every case skips, with a
// warning, when no CUDA device is present. The index arithmetic that can be checked without a
// GPU (GEMM layouts, Philox) is replayed on the host in tests/test_cuda_launch.cpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "engine/autograd/engine.h"
#include "engine/core/generator.h"
#include "engine/core/matmul_settings.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"
#include "engine/optim/kernels.h"
#include "support/cuda_compare.h"

using namespace mt;
using namespace mt::testing;

namespace {

// ---- tolerances (|cuda - cpu| <= atol + rtol |cpu|) ----
// Row kernels (softmax, layer_norm) in f64: a row sum of D terms in another order than the
// CPU's, then exp/log/sqrt within 1-2 ulp: a few hundred ulps at most for D <= 5000.
constexpr Tolerance kRowF64{1e-13, 1e-12};
// Row kernels in f32: the GPU accumulates in f32 where the CPU uses f64 (softmax's sum,
// layer_norm's statistics): the sum of D terms carries ~log2(D) x 2^-24 relative error in a
// tree order, and expf within 2 ulp; 2e-5 relative covers D up to 5000 with margin.
constexpr Tolerance kRowF32{1e-6, 2e-5};
// 16-bit storage: kF16 / kBF16 (support/cuda_compare.h).
// GEMM, inputs in [-1, 1], K <= 300: both sides accumulate in the storage precision (f32:
// Eigen's and cuBLAS's blockings differ), error <= K x eps x sum|a||b| ~ 300 x 6e-8 x 300 in
// the worst case, ~sqrt(K) x eps x |c| typically; 1e-4 absolute is far below any wrong term.
constexpr Tolerance kGemmF32{1e-4, 1e-5};
constexpr Tolerance kGemmF64{1e-12, 1e-12};
// 16-bit GEMM: f32 accumulation of exact products of 16-bit inputs, one rounding of the result
// to 16 bits (the reference rounds once too) plus f32 order effects (K x 2^-24 x K).
constexpr Tolerance kGemmF16{1e-2, 2.0 / 1024};
constexpr Tolerance kGemmBF16{4e-2, 2.0 / 128};
// TF32: inputs rounded to 10 mantissa bits (2^-11 relative each), K products: about
// sqrt(K) x 2^-11 x |a||b| -> 1e-2 absolute for K <= 300 and entries of |c| <= 20.
constexpr Tolerance kGemmTF32{3e-2, 1e-2};
// Gradients in f64 through several kernels (first and second order): a dozen f64 roundings.
constexpr Tolerance kGradF64{1e-11, 1e-11};
// Box-Muller normals computed in double on both sides: CUDA's log/cos/sin are within 1-2 ulp of
// glibc's; after rounding to f32 the values are equal but for rare rounding-boundary cases
// (one f32 ulp), and in f64 a few ulps.
constexpr Tolerance kNormalF64{1e-14, 1e-14};
constexpr Tolerance kNormalF32{1e-7, 2.4e-7};
// Optimizer steps in f32/f64: the same operations in the same order; the device may contract a
// multiply-add into an FMA where the host compiler does not (or the other way round): a few
// ulps per step, three steps.
constexpr Tolerance kOptimF64{1e-14, 1e-13};
constexpr Tolerance kOptimF32{1e-7, 1e-6};

const std::vector<DType> kFloatDtypes{DType::f32, DType::f64, DType::f16, DType::bf16};

Tensor on_gpu(const Tensor& t) { return t.to(gpu0()); }

// The CPU reference: in the dtype itself for f32/f64; 16-bit inputs computed in f32 and rounded
// to 16 bits (the CPU backend has no 16-bit kernels).
Tensor cpu_reference(const std::function<Tensor(const TensorList&)>& f, const TensorList& xs,
                     DType dtype) {
  if (dtype == DType::f32 || dtype == DType::f64) return f(xs);
  TensorList wide;
  for (const Tensor& x : xs) wide.push_back(x.to(DType::f32));
  return f(wide).to(dtype);
}

Tolerance row_tol(DType t) {
  switch (t) {
    case DType::f64: return kRowF64;
    case DType::f16: return kF16;
    case DType::bf16: return kBF16;
    default: return kRowF32;
  }
}

Tolerance gemm_tol(DType t) {
  switch (t) {
    case DType::f64: return kGemmF64;
    case DType::f16: return kGemmF16;
    case DType::bf16: return kGemmBF16;
    default: return kGemmF32;
  }
}

// f(inputs) on the CPU and on the GPU from the same f64 values: outputs, the gradient for a
// random grad_output (graph kept), and the gradient of <gradient, v> for a random v (second
// order), compared with kGradF64. create_graph = false runs the fused first-order kernels
// instead (layer_norm_backward) and skips the second order.
void compare_gradients(const std::string& name, const std::function<Tensor(const TensorList&)>& f,
                       const std::vector<Shape>& shapes, double lo, double hi,
                       bool create_graph = true) {
  TensorList xs_cpu, xs_gpu;
  uint64_t seed = 161;
  for (const Shape& s : shapes) {
    Tensor x = random_tensor(s, lo, hi, seed++);
    xs_cpu.push_back(x.clone().set_requires_grad());
    xs_gpu.push_back(x.to(gpu0()).set_requires_grad());
  }
  auto run = [&](const TensorList& xs, Device d) {
    Tensor y = f(xs);
    Tensor gy = random_tensor(y.shape(), -1, 1, 171).to(d);
    TensorList g = autograd::grad({y}, xs, {gy}, std::nullopt, create_graph);
    TensorList gg;
    if (create_graph) {
      Tensor dot;
      for (size_t i = 0; i < g.size(); ++i) {
        Tensor term = sum(mul(g[i], random_tensor(g[i].shape(), -1, 1, 181 + i).to(d)));
        dot = dot.defined() ? add(dot, term) : term;
      }
      gg = autograd::grad({dot}, xs, {}, std::nullopt, false, /*allow_unused=*/true);
    }
    return std::make_tuple(y, g, gg);
  };
  auto [y_cpu, g_cpu, gg_cpu] = run(xs_cpu, kCPU);
  auto [y_gpu, g_gpu, gg_gpu] = run(xs_gpu, gpu0());
  check_close(y_gpu, y_cpu.detach(), kGradF64, name + ": forward");
  for (size_t i = 0; i < g_cpu.size(); ++i) {
    CHECK(g_gpu[i].device() == gpu0());
    check_close(g_gpu[i], g_cpu[i].detach(), kGradF64, fmt::format("{}: grad #{}", name, i));
    if (!create_graph) continue;
    REQUIRE(gg_gpu[i].defined() == gg_cpu[i].defined());
    if (gg_cpu[i].defined())
      check_close(gg_gpu[i], gg_cpu[i], kGradF64, fmt::format("{}: second order #{}", name, i));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// matmul
// ---------------------------------------------------------------------------------------------

TEST_CASE("CUDA matmul: cuBLASLt products match the CPU for every layout and dtype", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  struct Case {
    const char* name;
    Shape a, b;
    std::function<Tensor(const Tensor&)> view_a, view_b;  // applied to the random operands
  };
  auto same = [](const Tensor& t) { return t; };
  auto tr = [](const Tensor& t) { return t.transpose(-1, -2); };
  const std::vector<Case> cases{
      {"(M,K) x (K,N)", Shape{7, 5}, Shape{5, 9}, same, same},
      {"square 128", Shape{128, 128}, Shape{128, 128}, same, same},
      {"tall K=300", Shape{33, 300}, Shape{300, 17}, same, same},
      {"a transposed view", Shape{5, 7}, Shape{5, 9}, tr, same},
      {"b transposed view", Shape{7, 5}, Shape{9, 5}, same, tr},
      {"both transposed", Shape{5, 7}, Shape{9, 5}, tr, tr},
      {"vector x matrix", Shape{5}, Shape{5, 6}, same, same},
      {"matrix x vector", Shape{6, 5}, Shape{5}, same, same},
      {"dot", Shape{11}, Shape{11}, same, same},
      {"batched", Shape{3, 4, 6}, Shape{3, 6, 5}, same, same},
      {"batched x shared matrix", Shape{2, 3, 4, 6}, Shape{6, 5}, same, same},
      {"shared matrix x batched", Shape{4, 6}, Shape{3, 6, 5}, same, same},
      {"broadcast batch dims", Shape{1, 3, 4, 6}, Shape{2, 1, 6, 5}, same, same},
      {"batched transposed", Shape{3, 6, 4}, Shape{3, 5, 6}, tr, tr},
      {"column window (ld > cols)", Shape{7, 12}, Shape{5, 9},
       [](const Tensor& t) { return t.narrow(1, 3, 5); }, same},
      {"expanded rows (stride 0, copied)", Shape{1, 5}, Shape{5, 4},
       [](const Tensor& t) { return t.expand(Shape{6, 5}); }, same},
      {"permuted batch (strided ld)", Shape{4, 3, 6}, Shape{3, 6, 5},
       [](const Tensor& t) { return t.permute({1, 0, 2}); }, same},
      {"broadcast inner batch dim (copied)", Shape{3, 1, 4, 6}, Shape{1, 2, 6, 5}, same, same},
      {"K = 0", Shape{3, 0}, Shape{0, 4}, same, same},
      {"M = 0", Shape{0, 5}, Shape{5, 4}, same, same},
  };
  for (const Case& c : cases) {
    for (DType t : kFloatDtypes) {
      const std::string what = fmt::format("matmul {} {}", c.name, dtype_name(t));
      INFO(what);
      // Values on the 16-bit grid for every dtype, so the reference sees the same inputs.
      Tensor a = random_tensor(c.a, -1, 1, 201).to(t);
      Tensor b = random_tensor(c.b, -1, 1, 202).to(t);
      Tensor ref = cpu_reference(
          [&](const TensorList& v) { return matmul(c.view_a(v[0]), c.view_b(v[1])); }, {a, b}, t);
      Tensor got = matmul(c.view_a(on_gpu(a)), c.view_b(on_gpu(b)));
      REQUIRE(got.shape() == ref.shape());
      CHECK(got.device() == gpu0());
      check_close(got, ref, gemm_tol(t), what);
    }
  }
}

TEST_CASE("CUDA matmul: the stub writes only its output (sentinels)", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (DType t : kFloatDtypes) {
    Tensor a = random_tensor(Shape{2, 5, 7}, -1, 1, 211).to(t);
    Tensor b = random_tensor(Shape{2, 7, 3}, -1, 1, 212).to(t);
    Tensor ref = cpu_reference([](const TensorList& v) { return matmul(v[0], v[1]); }, {a, b}, t);
    // An offset window of a sentinel buffer: contiguous, as the stub requires.
    Padded p = padded(Shape{2, 5, 3}, t, gpu0(), /*pad_all=*/false);
    REQUIRE(p.window.is_contiguous());
    matmul_kernel(gpu0(), on_gpu(a), on_gpu(b), p.window);
    check_padded(p, ref, gemm_tol(t), fmt::format("matmul into a window {}", dtype_name(t)));
  }
}

TEST_CASE("CUDA matmul: TF32 is off by default and a global switch", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  CHECK_FALSE(cuda_matmul_allow_tf32());
  Tensor a = random_tensor(Shape{64, 300}, -1, 1, 221).to(DType::f32);
  Tensor b = random_tensor(Shape{300, 48}, -1, 1, 222).to(DType::f32);
  Tensor ref = matmul(a, b);
  check_close(matmul(on_gpu(a), on_gpu(b)), ref, kGemmF32, "f32 GEMM without TF32");
  set_cuda_matmul_allow_tf32(true);
  Tensor fast = matmul(on_gpu(a), on_gpu(b));
  set_cuda_matmul_allow_tf32(false);
  CHECK_FALSE(cuda_matmul_allow_tf32());
  check_close(fast, ref, kGemmTF32, "f32 GEMM with TF32");
}

TEST_CASE("CUDA matmul and varlen attention: gradients of any order equal the CPU's", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  compare_gradients("matmul", [](const TensorList& v) { return matmul(v[0], v[1]); },
                    {Shape{4, 6}, Shape{6, 3}}, -1, 1);
  compare_gradients("batched broadcast matmul",
                    [](const TensorList& v) { return matmul(mul(v[0], v[0]), v[1]); },
                    {Shape{2, 1, 3, 4}, Shape{3, 4, 5}}, -1, 1);
  compare_gradients("matmul of a transposed view",
                    [](const TensorList& v) { return matmul(v[0].transpose(0, 1), tanh(v[1])); },
                    {Shape{5, 3}, Shape{5, 4}}, -1, 1);
  for (auto mode : {VarlenAttention::Mode::padded, VarlenAttention::Mode::per_sample}) {
    VarlenAttention spec;
    spec.heads = 2;
    spec.q_lengths = {2, 3};
    spec.k_lengths = {4, 1};
    spec.mode = mode;
    compare_gradients(
        mode == VarlenAttention::Mode::padded ? "varlen attention (padded)"
                                              : "varlen attention (per sample)",
        [spec](const TensorList& v) { return varlen_attention(v[0], v[1], v[2], spec); },
        {Shape{5, 8}, Shape{5, 8}, Shape{5, 8}}, -1, 1);
  }
}

// ---------------------------------------------------------------------------------------------
// softmax, layer_norm
// ---------------------------------------------------------------------------------------------

// Row widths around the kernels' switches: register widths 32..1024 (warp per row) and the
// block-per-row kernel past 1024.
std::vector<Shape> row_shapes() {
  return {Shape{0, 5}, Shape{3, 1}, Shape{7, 33}, Shape{5, 128}, Shape{9, 512},
          Shape{4, 1000}, Shape{3, 1024}, Shape{3, 1025}, Shape{2, 5000}, Shape{2, 3, 40}};
}

TEST_CASE("CUDA softmax and log_softmax match the CPU (outputs, sentinels)", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (bool log : {false, true}) {
    for (const Shape& s : row_shapes()) {
      for (DType t : kFloatDtypes) {
        const std::string what = fmt::format("{} {} {}", log ? "log_softmax" : "softmax", s.str(),
                                             dtype_name(t));
        INFO(what);
        Tensor x = random_tensor(s, -4, 4, 231).to(t);
        auto f = [log](const TensorList& v) {
          return log ? log_softmax(v[0], -1) : softmax(v[0], -1);
        };
        Tensor ref = cpu_reference(f, {x}, t);
        check_close(f({on_gpu(x)}), ref, row_tol(t), what);
        Padded p = padded(s, t, gpu0(), /*pad_all=*/false);
        softmax_kernel(gpu0(), on_gpu(x), p.window, log);
        check_padded(p, ref, row_tol(t), what + " into a window");
      }
    }
    // Another dim (moved last and back by the op), and rows holding -inf.
    Tensor x = random_tensor(Shape{6, 7}, -3, 3, 232);
    check_close(log ? log_softmax(on_gpu(x), 0) : softmax(on_gpu(x), 0),
                log ? log_softmax(x, 0) : softmax(x, 0), kRowF64, "over dim 0");
    Tensor y = x.clone();
    y.narrow(0, 2, 1).fill_(-std::numeric_limits<double>::infinity());
    y.narrow(1, 3, 1).fill_(-std::numeric_limits<double>::infinity());
    check_close(log ? log_softmax(on_gpu(y), 1) : softmax(on_gpu(y), 1),
                log ? log_softmax(y, 1) : softmax(y, 1), kRowF64, "rows with -inf");
  }
  // Logits offset by 1e5 (f32), in the warp kernel (512) and the block kernel (5000): the log
  // probabilities keep their digits ((x - m) - log s) and match the CPU's.
  for (const Shape& s : {Shape{3, 512}, Shape{2, 5000}}) {
    INFO("log_softmax, offset 1e5, " << s.str());
    const Tensor x = add(random_tensor(s, -4, 4, 233), 1e5).to(DType::f32);
    check_close(log_softmax(on_gpu(x), -1), log_softmax(x, -1), row_tol(DType::f32),
                "offset log_softmax");
  }
}

TEST_CASE("CUDA layer_norm matches the CPU (affine or not, sentinels)", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (const Shape& s : row_shapes()) {
    const int64_t D = s[s.size() - 1];
    for (DType t : kFloatDtypes) {
      for (int affine = 0; affine < 3; ++affine) {  // none, weight, weight and bias
        const std::string what =
            fmt::format("layer_norm {} {} affine {}", s.str(), dtype_name(t), affine);
        INFO(what);
        Tensor x = random_tensor(s, -2, 3, 241).to(t);
        Tensor w = affine >= 1 ? random_tensor(Shape{D}, 0.5, 1.5, 242).to(t) : Tensor();
        Tensor b = affine == 2 ? random_tensor(Shape{D}, -1, 1, 243).to(t) : Tensor();
        auto f = [affine](const TensorList& v) {
          return layer_norm(v[0], 1, affine >= 1 ? v[1] : Tensor(), affine == 2 ? v[2] : Tensor(),
                            1e-5);
        };
        // (The CPU fills f32 and f64 only: 16-bit placeholders are converted from f32 zeros.)
        TensorList in{x, w.defined() ? w : zeros(Shape{D}).to(t),
                      b.defined() ? b : zeros(Shape{D}).to(t)};
        Tensor ref = cpu_reference(f, in, t);
        TensorList in_gpu;
        for (const Tensor& v : in) in_gpu.push_back(on_gpu(v));
        check_close(f(in_gpu), ref, row_tol(t), what);
        Padded p = padded(s, t, gpu0(), /*pad_all=*/false);
        layer_norm_kernel(gpu0(), on_gpu(x), w.defined() ? on_gpu(w) : Tensor(),
                          b.defined() ? on_gpu(b) : Tensor(), D, 1e-5, p.window);
        check_padded(p, ref, row_tol(t), what + " into a window");
      }
    }
  }
  // Two normalised dims.
  Tensor x = random_tensor(Shape{4, 3, 50}, -1, 1, 244);
  Tensor w = random_tensor(Shape{3, 50}, 0.5, 1.5, 245);
  check_close(layer_norm(on_gpu(x), 2, on_gpu(w), Tensor(), 1e-5),
              layer_norm(x, 2, w, Tensor(), 1e-5), kRowF64, "layer_norm over two dims");
}

TEST_CASE("CUDA layer_norm_backward (fused) matches the CPU's, sentinels included", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (const Shape& s : row_shapes()) {
    const int64_t D = s[s.size() - 1];
    const int64_t rows = D == 0 ? 0 : s.numel() / D;
    for (DType t : kFloatDtypes) {
      const std::string what = fmt::format("layer_norm_backward {} {}", s.str(), dtype_name(t));
      INFO(what);
      Tensor x = random_tensor(Shape{rows, D}, -2, 3, 251).to(t);
      Tensor w = random_tensor(Shape{D}, 0.5, 1.5, 252).to(t);
      Tensor g = random_tensor(Shape{rows, D}, -1, 1, 253).to(t);
      const DType ct = (t == DType::f64) ? DType::f64 : DType::f32;
      Tensor xc = x.to(ct), wc = w.to(ct), gc = g.to(ct);
      Tensor dx = empty(Shape{rows, D}, ct), dw = empty(Shape{D}, ct), db = empty(Shape{D}, ct);
      layer_norm_backward_kernel(kCPU, xc, wc, gc, D, 1e-5, dx, dw, db);
      Padded pdx = padded(Shape{rows, D}, t, gpu0(), false);
      Padded pdw = padded(Shape{D}, t, gpu0(), false);
      Padded pdb = padded(Shape{D}, t, gpu0(), false);
      layer_norm_backward_kernel(gpu0(), on_gpu(x), on_gpu(w), on_gpu(g), D, 1e-5, pdx.window,
                                 pdw.window, pdb.window);
      // dw and db sum `rows` terms: f32 accumulation on the GPU, f64 on the CPU (row_tol is
      // for row-sized sums, the same bound).
      check_padded(pdx, dx.to(t), row_tol(t), what + " dx");
      check_padded(pdw, dw.to(t), row_tol(t), what + " dw");
      check_padded(pdb, db.to(t), row_tol(t), what + " db");
      // Without weight, and dx only.
      Tensor none, dx2 = empty(Shape{rows, D}, t, gpu0()), dx2_ref = empty(Shape{rows, D}, ct);
      layer_norm_backward_kernel(kCPU, xc, none, gc, D, 1e-5, dx2_ref, none, none);
      layer_norm_backward_kernel(gpu0(), on_gpu(x), none, on_gpu(g), D, 1e-5, dx2, none, none);
      check_close(dx2, dx2_ref.to(t), row_tol(t), what + " dx without weight");
    }
  }
}

TEST_CASE("CUDA layer_norm_double_backward (fused) matches the CPU's, sentinels included",
          "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (const Shape& s : row_shapes()) {
    const int64_t D = s[s.size() - 1];
    const int64_t rows = D == 0 ? 0 : s.numel() / D;
    for (DType t : kFloatDtypes) {
      const std::string what = fmt::format("layer_norm_double_backward {} {}", s.str(),
                                           dtype_name(t));
      INFO(what);
      Tensor x = random_tensor(Shape{rows, D}, -2, 3, 254).to(t);
      Tensor w = random_tensor(Shape{D}, 0.5, 1.5, 255).to(t);
      Tensor g = random_tensor(Shape{rows, D}, -1, 1, 256).to(t);
      Tensor v = random_tensor(Shape{rows, D}, -1, 1, 257).to(t);
      const DType ct = (t == DType::f64) ? DType::f64 : DType::f32;
      Tensor xc = x.to(ct), wc = w.to(ct), gc = g.to(ct), vc = v.to(ct);
      Tensor gx = empty(Shape{rows, D}, ct), gw = empty(Shape{D}, ct), gg = empty(Shape{rows, D}, ct);
      layer_norm_double_backward_kernel(kCPU, xc, wc, gc, vc, D, 1e-5, gx, gw, gg);
      Padded pgx = padded(Shape{rows, D}, t, gpu0(), false);
      Padded pgw = padded(Shape{D}, t, gpu0(), false);
      Padded pgg = padded(Shape{rows, D}, t, gpu0(), false);
      layer_norm_double_backward_kernel(gpu0(), on_gpu(x), on_gpu(w), on_gpu(g), on_gpu(v), D,
                                        1e-5, pgx.window, pgw.window, pgg.window);
      // Row sums of a few O(1) terms, and gw over `rows` terms: as layer_norm_backward's.
      check_padded(pgx, gx.to(t), row_tol(t), what + " gx");
      check_padded(pgw, gw.to(t), row_tol(t), what + " gw");
      check_padded(pgg, gg.to(t), row_tol(t), what + " gg");
      // Without weight, gx only.
      Tensor none, gx2 = empty(Shape{rows, D}, t, gpu0()), gx2_ref = empty(Shape{rows, D}, ct);
      layer_norm_double_backward_kernel(kCPU, xc, none, gc, vc, D, 1e-5, gx2_ref, none, none);
      layer_norm_double_backward_kernel(gpu0(), on_gpu(x), none, on_gpu(g), on_gpu(v), D, 1e-5,
                                        gx2, none, none);
      check_close(gx2, gx2_ref.to(t), row_tol(t), what + " gx without weight");
    }
  }
}

TEST_CASE("CUDA softmax and layer_norm: gradients of any order equal the CPU's", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  compare_gradients("softmax", [](const TensorList& v) { return softmax(mul(v[0], v[0]), 1); },
                    {Shape{4, 37}}, -1, 1);
  compare_gradients("log_softmax", [](const TensorList& v) { return log_softmax(v[0], 0); },
                    {Shape{5, 3}}, -2, 2);
  compare_gradients("softmax, wide rows", [](const TensorList& v) { return softmax(v[0], -1); },
                    {Shape{2, 1100}}, -2, 2);
  auto ln = [](const TensorList& v) { return layer_norm(mul(v[0], v[0]), 1, v[1], v[2], 1e-5); };
  // create_graph = true: the composed rule (second order too); false: the fused kernel.
  compare_gradients("layer_norm", ln, {Shape{6, 20}, Shape{20}, Shape{20}}, -1, 1, true);
  compare_gradients("layer_norm (fused backward)", ln, {Shape{6, 20}, Shape{20}, Shape{20}}, -1,
                    1, false);
  compare_gradients("layer_norm wide (fused backward)", ln,
                    {Shape{3, 1500}, Shape{1500}, Shape{1500}}, -1, 1, false);
  // The recorded input gradient; its backward is the fused double backward when not recorded.
  auto ln_dx = [](const TensorList& v) {
    return layer_norm_input_grad(v[0], 1, v[1], mul(v[2], v[2]), 1e-5);
  };
  compare_gradients("layer_norm_input_grad", ln_dx, {Shape{6, 20}, Shape{20}, Shape{6, 20}}, -1,
                    1, true);
  compare_gradients("layer_norm_input_grad (fused double backward)", ln_dx,
                    {Shape{6, 20}, Shape{20}, Shape{6, 20}}, -1, 1, false);
  compare_gradients("layer_norm_input_grad wide (fused double backward)", ln_dx,
                    {Shape{3, 1500}, Shape{1500}, Shape{3, 1500}}, -1, 1, false);
}

TEST_CASE("CUDA rotary (fused rotate_pairs) matches the CPU: values, both signs, gradients",
          "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  const int64_t n = 37, heads = 3, dh = 64;
  const Tensor times = random_tensor(Shape{n}, 0, 50, 201);
  const Tensor x = random_tensor(Shape{n, heads, dh}, -2, 2, 202);
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    // The CPU computes 16-bit inputs in f32 (its kernels take f32 and f64).
    const DType ref_dt = dt == DType::f64 ? DType::f64 : DType::f32;
    const Tolerance tol = dt == DType::bf16 ? kBF16 : dt == DType::f32 ? Tolerance{1e-6, 1e-5} : kGradF64;
    const Tensor inv_freq = rotary_inv_freq(dh, 100.0, DType::f32);
    const RotaryTables tab_ref = rotary_tables(times, inv_freq, ref_dt);
    const RotaryTables tab_dev = rotary_tables(times.to(gpu0()), inv_freq.to(gpu0()), dt);
    const Tensor xr = x.to(dt).to(ref_dt), xd = x.to(dt).to(gpu0());
    for (double sign : {1.0, -1.0})
      check_close(rotary(xd, tab_dev, sign), rotary(xr, tab_ref, sign), tol,
                  fmt::format("rotary {} sign {}", dtype_name(dt), sign));
  }
  // First and second order through the fused op (its backward is the same op, opposite sign).
  const Tensor inv64 = rotary_inv_freq(dh, 100.0, DType::f64);
  compare_gradients(
      "rotary",
      [&](const TensorList& v) {
        const Device d = v[0].device();
        const RotaryTables tab = rotary_tables(times.to(d), inv64.to(d), DType::f64);
        return rotary(mul(v[0], v[0]), tab, 1.0);
      },
      {Shape{n, heads, dh}}, -1, 1);
}

TEST_CASE("CUDA add3 equals two adds (every float dtype, broadcast)", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (DType dt : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    const Tensor a = random_tensor(Shape{33, 70}, -100, 100, 311).to(dt).to(gpu0());
    const Tensor b = random_tensor(Shape{33, 70}, -1, 1, 312).to(dt).to(gpu0());
    const Tensor c = random_tensor(Shape{70}, -100, 100, 313).to(dt).to(gpu0());
    check_equal(add3(a, b, c), add(add(a, b), c), std::string("add3 ") + dtype_name(dt));
  }
}

TEST_CASE("CUDA geglu and its fused derivatives match the CPU (dtypes, layouts, gradients)",
          "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  const Tensor h = random_tensor(Shape{37, 2 * 300}, -3, 3, 191);
  const Tensor g = random_tensor(Shape{37, 300}, -1, 1, 192);
  const Tensor t = random_tensor(Shape{37, 2 * 300}, -1, 1, 193);
  for (DType dt : {DType::f64, DType::f32, DType::bf16}) {
    // The CPU reference computes 16-bit inputs in f32 (its kernels take f32 and f64).
    const DType ref_dt = dt == DType::f64 ? DType::f64 : DType::f32;
    const Tolerance tol = dt == DType::bf16 ? kBF16 : dt == DType::f32 ? Tolerance{1e-5, 1e-5} : kGradF64;
    auto dev = [&](const Tensor& x) { return x.to(dt).to(gpu0()); };
    auto ref = [&](const Tensor& x) { return x.to(dt).to(ref_dt); };
    const std::string name = dtype_name(dt);
    check_close(geglu(dev(h)), geglu(ref(h)), tol, "geglu " + name);
    check_close(geglu_backward(dev(g), dev(h)), geglu_backward(ref(g), ref(h)), tol,
                "geglu_backward " + name);
    check_close(geglu_jvp(dev(h), dev(t)), geglu_jvp(ref(h), ref(t)), tol, "geglu_jvp " + name);
    check_close(geglu_hvp(dev(g), dev(h), dev(t)), geglu_hvp(ref(g), ref(h), ref(t)), tol,
                "geglu_hvp " + name);
  }
  // A non-contiguous h on the device (made contiguous by the op).
  const Tensor ht = transpose(random_tensor(Shape{64, 9}, -3, 3, 194), 0, 1);
  check_close(geglu(ht.to(gpu0())), geglu(ht), kGradF64, "geglu, transposed h");
  // Gradients of the first and second order through a linear layer, against the CPU's.
  compare_gradients("geglu", [](const TensorList& v) { return geglu(linear(v[0], v[1], v[2])); },
                    {Shape{7, 6}, Shape{10, 6}, Shape{10}}, -1, 1);
}

// ---------------------------------------------------------------------------------------------
// embedding
// ---------------------------------------------------------------------------------------------

TEST_CASE("CUDA embedding: gather and a deterministic scatter-add equal the CPU's", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t V, D, n;
  };
  for (const Case& c : {Case{10, 16, 25}, Case{7, 3, 5000}, Case{1, 40, 9}, Case{50, 129, 200},
                        Case{5, 8, 0}}) {
    std::vector<int64_t> idx(static_cast<size_t>(c.n));
    for (int64_t i = 0; i < c.n; ++i) idx[size_t(i)] = (i * 7 + i / 3) % c.V;
    Tensor indices = from_indices(idx, Shape{c.n});
    for (DType t : kFloatDtypes) {
      const std::string what =
          fmt::format("embedding V={} D={} n={} {}", c.V, c.D, c.n, dtype_name(t));
      INFO(what);
      Tensor w = random_tensor(Shape{c.V, c.D}, -1, 1, 261).to(t);
      Tensor ref = cpu_reference([&](const TensorList& v) { return embedding(v[0], indices); },
                                 {w}, t);
      Padded p = padded(Shape{c.n, c.D}, t, gpu0(), false);
      embedding_kernel(gpu0(), on_gpu(w), on_gpu(indices), p.window);
      check_padded(p, ref, Tolerance{0, 0}, what + " gather");
      // The backward: rows summed per index in index order (bitwise the CPU's for f32, f64).
      Tensor rows = random_tensor(Shape{c.n, c.D}, -1, 1, 262).to(t);
      Tensor back_ref = cpu_reference(
          [&](const TensorList& v) { return embedding_backward(v[0], indices, c.V); }, {rows}, t);
      Tensor back = embedding_backward(on_gpu(rows), on_gpu(indices), c.V);
      if (t == DType::f32 || t == DType::f64) {
        check_equal(back, back_ref, what + " scatter-add");
      } else {
        // 16-bit: the GPU sums in f32 and rounds once, the reference too, but up to 5000 terms
        // per row: f32 order effects stay far below a 16-bit ulp; allow two.
        check_close(back, back_ref, t == DType::f16 ? kF16 : kBF16, what + " scatter-add");
      }
      check_equal(embedding_backward(on_gpu(rows), on_gpu(indices), c.V), back,
                  what + " scatter-add run twice (deterministic)");
    }
  }
  compare_gradients("embedding", [](const TensorList& v) {
    Tensor i = from_indices(std::vector<int64_t>{2, 0, 2, 3, 2}, Shape{5}).to(v[0].device());
    Tensor e = embedding(v[0], i);
    return mul(e, e);
  }, {Shape{4, 6}}, -1, 1);
}

// ---------------------------------------------------------------------------------------------
// random
// ---------------------------------------------------------------------------------------------

TEST_CASE("CUDA random: the same numbers as the CPU for the same seed and offset", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  struct Dist {
    Distribution d;
    double a, b;
    const char* name;
  };
  const std::vector<Dist> dists{{Distribution::uniform, -2, 3, "uniform"},
                                {Distribution::normal, 0.5, 2, "normal"},
                                {Distribution::bernoulli, 0.3, 1.0 / 0.7, "bernoulli"}};
  for (const Dist& dist : dists) {
    for (int64_t n : {int64_t(0), int64_t(1), int64_t(3), int64_t(4), int64_t(5), int64_t(1001),
                      int64_t(100003)}) {
      for (uint64_t seed : {uint64_t(0), uint64_t(42), uint64_t(0x123456789abcdefull)}) {
        for (uint64_t first_block : {uint64_t(0), uint64_t(17), uint64_t(1) << 33}) {
          for (DType t : {DType::f32, DType::f64}) {
            const std::string what = fmt::format("{} n={} seed={} block={} {}", dist.name, n,
                                                 seed, first_block, dtype_name(t));
            INFO(what);
            Tensor ref = empty(Shape{n}, t);
            random_kernel(kCPU, ref, dist.d, dist.a, dist.b, seed, first_block);
            Padded p = padded(Shape{n}, t, gpu0(), false);
            random_kernel(gpu0(), p.window, dist.d, dist.a, dist.b, seed, first_block);
            // Uniforms and masks are exact arithmetic on the same bits: equal. Normals go
            // through log/cos/sin (see kNormal*).
            const Tolerance tol = dist.d != Distribution::normal ? Tolerance{0, 0}
                                  : t == DType::f64               ? kNormalF64
                                                                  : kNormalF32;
            check_padded(p, ref, tol, what);
          }
          // 16-bit: the f32 draw rounded (4 values per block, like f32).
          for (DType t : {DType::f16, DType::bf16}) {
            Tensor ref = empty(Shape{n}, DType::f32);
            random_kernel(kCPU, ref, dist.d, dist.a, dist.b, seed, first_block);
            Tensor got = empty(Shape{n}, t, gpu0());
            random_kernel(gpu0(), got, dist.d, dist.a, dist.b, seed, first_block);
            // Uniforms and masks: the same f32 value rounded once on both sides (equal);
            // normals may differ by an f32 ulp, which can straddle a 16-bit rounding boundary.
            const Tolerance tol = dist.d != Distribution::normal ? Tolerance{0, 0}
                                  : t == DType::f16               ? kF16
                                                                  : kBF16;
            check_close(got, ref.to(t), tol,
                        fmt::format("{} n={} {}", dist.name, n, dtype_name(t)));
          }
        }
      }
    }
  }
}

TEST_CASE("CUDA normal, uniform and bernoulli_mask draw on the device what the CPU draws", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::f64}) {
    Generator g_cpu(77), g_gpu(77);
    // Several draws in a row: the generator's offset advances the same on both.
    for (int i = 0; i < 3; ++i) {
      const Shape s{13, 7 + i};
      Tensor u = uniform(s, -1, 1, g_gpu, t, gpu0());
      CHECK(u.device() == gpu0());
      check_equal(u, uniform(s, -1, 1, g_cpu, t), fmt::format("uniform #{} {}", i, dtype_name(t)));
      check_close(normal(s, 1, 3, g_gpu, t, gpu0()), normal(s, 1, 3, g_cpu, t),
                  t == DType::f64 ? kNormalF64 : kNormalF32,
                  fmt::format("normal #{} {}", i, dtype_name(t)));
      check_equal(bernoulli_mask(s, 0.4, g_gpu, t, gpu0()), bernoulli_mask(s, 0.4, g_cpu, t),
                  fmt::format("bernoulli_mask #{} {}", i, dtype_name(t)));
      CHECK(g_cpu.offset() == g_gpu.offset());
    }
  }
}

TEST_CASE("CUDA dropout: the CPU's mask for the same generator state", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::f64}) {
    Tensor x = random_tensor(Shape{37, 29}, -1, 1, 271).to(t);
    Generator g_cpu(1234), g_gpu(1234);
    g_cpu.advance(5);
    g_gpu.advance(5);
    Tensor ref = dropout(x, 0.25, true, g_cpu);
    Tensor got = dropout(on_gpu(x), 0.25, true, g_gpu);
    CHECK(got.device() == gpu0());
    check_equal(got, ref, fmt::format("dropout {}", dtype_name(t)));
    CHECK(g_cpu.offset() == g_gpu.offset());
    // Its gradient is the same mask.
    Tensor xg = on_gpu(x).set_requires_grad();
    Generator g2(1234), g3(1234);
    g2.advance(5);
    g3.advance(5);
    Tensor gx = autograd::grad({sum(dropout(xg, 0.25, true, g2))}, {xg})[0];
    Tensor scaled_mask = dropout(ones(x.shape(), t), 0.25, true, g3);
    check_equal(gx, scaled_mask, fmt::format("dropout gradient {}", dtype_name(t)));
  }
}

// ---------------------------------------------------------------------------------------------
// optimizers
// ---------------------------------------------------------------------------------------------

TEST_CASE("CUDA AdamW and SGD: fused updates equal the CPU kernels over several steps", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  const Shape shape{1000, 3};
  for (DType t : {DType::f32, DType::f64}) {
    const Tolerance tol = t == DType::f64 ? kOptimF64 : kOptimF32;
    for (bool amsgrad : {false, true}) {
      for (bool maximize : {false, true}) {
        for (double weight_decay : {0.0, 0.01}) {
          for (double beta1 : {0.9, 0.2}) {  // lerp's two forms (small and large weight)
            const optim::AdamWHyper h{1e-2, beta1, 0.999, 1e-8, weight_decay, amsgrad, maximize};
            const std::string what =
                fmt::format("adamw {} amsgrad {} maximize {} wd {} beta1 {}", dtype_name(t),
                            amsgrad, maximize, weight_decay, beta1);
            INFO(what);
            TensorList cpu{random_tensor(shape, -1, 1, 281).to(t), zeros(shape, t), zeros(shape, t),
                           zeros(shape, t)};
            TensorList gpu;
            for (const Tensor& v : cpu) gpu.push_back(on_gpu(v));
            for (int64_t step = 1; step <= 3; ++step) {
              Tensor g = random_tensor(shape, -1, 1, 290 + uint64_t(step)).to(t);
              Tensor g_gpu = on_gpu(g);
              Tensor none;
              optim::adamw_kernel(kCPU, cpu[0], g, cpu[1], cpu[2], amsgrad ? cpu[3] : none, step,
                                  h);
              optim::adamw_kernel(gpu0(), gpu[0], g_gpu, gpu[1], gpu[2], amsgrad ? gpu[3] : none,
                                  step, h);
            }
            const char* names[] = {"param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
            for (size_t i = 0; i < 4; ++i)
              check_close(gpu[i], cpu[i], tol, what + " " + names[i]);
          }
        }
      }
    }
    for (double momentum : {0.0, 0.9}) {
      for (bool nesterov : {false, true}) {
        if (nesterov && momentum == 0) continue;
        for (bool maximize : {false, true}) {
          const optim::SgdHyper h{0.1, momentum, nesterov ? 0.0 : 0.1, 0.01, nesterov, maximize};
          const std::string what = fmt::format("sgd {} momentum {} nesterov {} maximize {}",
                                               dtype_name(t), momentum, nesterov, maximize);
          INFO(what);
          Tensor p = random_tensor(shape, -1, 1, 301).to(t), buf = zeros(shape, t);
          Tensor p_gpu = on_gpu(p), buf_gpu = on_gpu(buf), none;
          for (int step = 1; step <= 3; ++step) {
            Tensor g = random_tensor(shape, -1, 1, 310 + uint64_t(step)).to(t);
            Tensor g_gpu = on_gpu(g);
            optim::sgd_kernel(kCPU, p, g, momentum != 0 ? buf : none, step == 1, h);
            optim::sgd_kernel(gpu0(), p_gpu, g_gpu, momentum != 0 ? buf_gpu : none, step == 1, h);
          }
          check_close(p_gpu, p, tol, what + " param");
          if (momentum != 0) check_close(buf_gpu, buf, tol, what + " momentum buffer");
        }
      }
    }
  }
  // 16-bit parameters (no CPU kernel): one step against the f32 CPU step rounded.
  for (DType t : {DType::f16, DType::bf16}) {
    const optim::AdamWHyper h{1e-2, 0.9, 0.999, 1e-8, 0.01, false, false};
    Tensor p = random_tensor(shape, -1, 1, 321).to(t), g = random_tensor(shape, -1, 1, 322).to(t);
    Tensor p32 = p.to(DType::f32), m32 = zeros(shape, DType::f32), v32 = zeros(shape, DType::f32);
    Tensor none;
    optim::adamw_kernel(kCPU, p32, g.to(DType::f32), m32, v32, none, 1, h);
    Tensor pg = on_gpu(p), mg = zeros(shape, t, gpu0()), vg = zeros(shape, t, gpu0());
    optim::adamw_kernel(gpu0(), pg, on_gpu(g), mg, vg, none, 1, h);
    check_close(pg, p32.to(t), t == DType::f16 ? kF16 : kBF16,
                fmt::format("adamw {} param", dtype_name(t)));
  }
}
