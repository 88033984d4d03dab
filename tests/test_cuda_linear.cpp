// linear(): the CPU kernel's and composite's gradients (f64 finite differences, first and second order, each
// activation, with and without bias, batched leading dims), and on CUDA the fused cuBLASLt call
// with a bias / ReLU-bias epilogue against the CPU: outputs, first- and second-order gradients
// in f32 and bf16, sentinels around the epilogue GEMM's output, and the epilogue counter so a
// silent fallback to the composite is noticed. The [cuda] cases skip, with a warning, when no
// CUDA device is present.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "engine/autograd/engine.h"
#include "engine/autograd/node.h"
#include "engine/core/matmul_settings.h"
#include "engine/nn/module.h"
#include "support/cuda_compare.h"
#if METATAPE_WITH_CUDA
#include "kernels/cuda/describe.h"
#include "kernels/cuda/stream.h"
#endif

using namespace mt;
using namespace mt::testing;

namespace {

const char* act_name(Activation a) {
  switch (a) {
    case Activation::relu: return "relu";
    case Activation::gelu: return "gelu";
    default: return "none";
  }
}

Tensor apply_act(const Tensor& y, Activation a) {
  return a == Activation::relu ? relu(y) : a == Activation::gelu ? gelu(y) : y;
}

// ---- tolerances of the CUDA comparisons (|cuda - cpu| <= atol + rtol |cpu|) ----
// f32: a GEMM of K <= 64 terms in [-1, 1] in another blocking than Eigen's (K x 2^-24 x sum|ab|
// at worst), then the bias add and the activation in f32; the gradients are two such GEMMs deep
// and the second order three: 1e-4 absolute is far below any wrong term (O(0.1)).
constexpr Tolerance kLinearF32{1e-4, 1e-4};
// bf16: every op's result is rounded to bf16 (2^-8 relative) where the f32 reference is not; a
// second-order gradient passes through about four such roundings of O(1) values summed over
// K <= 64 terms: 4 x 2^-8 relative, 0.1 absolute for the sums.
constexpr Tolerance kLinearBF16{1e-1, 4.0 / 256};

}  // namespace

TEST_CASE("linear: composite gradients of first and second order (f64, CPU)", "[ops][linear]") {
  for (Activation act : {Activation::none, Activation::relu, Activation::gelu}) {
    for (bool with_bias : {false, true}) {
      for (const Shape& xs : {Shape{3, 4}, Shape{2, 3, 4}}) {
        const std::string what =
            fmt::format("linear {} bias={} x {}", act_name(act), with_bias, xs.str());
        INFO(what);
        // Inputs away from relu's kink: pre-activations of these draws are not within 1e-3 of 0.
        Tensor x = random_tensor(xs, -1, 1, 301);
        Tensor w = random_tensor(Shape{5, 4}, -1, 1, 302);
        Tensor b = random_tensor(Shape{5}, -1, 1, 303);
        TensorList inputs{x, w};
        if (with_bias) inputs.push_back(b);
        auto f = [act, with_bias](const TensorList& v) {
          return linear(v[0], v[1], with_bias ? v[2] : Tensor(), act);
        };
        // The CPU's fused kernel (bias broadcast into the output, GEMM accumulated onto it,
        // ReLU in place) against the composite: the same terms summed with the bias first, so
        // equal to rounding (f64, K = 4 products of O(1) values).
        Tensor z = matmul(x, transpose(w, 0, 1));
        if (with_bias) z = add(z, b);
        CHECK(max_abs_diff(f(inputs), apply_act(z, act)) <= 1e-15);
        // One node for the whole layer (its rule is what the gradient checks below exercise).
        Tensor xg = x.detach();
        xg.set_requires_grad(true);
        const Tensor y = linear(xg, w, with_bias ? b : Tensor(), act);
        CHECK(std::string(y.grad_fn()->name()) ==
              (act == Activation::gelu ? "gelu" : xs.size() > 2 ? "reshape" : "linear"));
        CHECK(check_gradients(what, f, inputs) > 0);
        CHECK(check_second_order(what, f, inputs) > 0);
      }
    }
  }
}

TEST_CASE("linear: the CPU kernel in f32 at sizes that block, with strided weights",
          "[ops][linear]") {
  // (300 x 200) x (200 x 150)^T + b in f32 against the f64 composite: K = 200 products of values
  // in [-1, 1] summed in f32, error <= K 2^-24 sum|x w| ~ 200 x 6e-8 x 200 = 2.4e-3 at worst.
  constexpr double kF32LinearTol = 3e-3;
  // 150 outputs take OpenBLAS, 16 take Eigen's GEMM (engine/cpu/gemm.h), both accumulating onto
  // the broadcast bias.
  for (int64_t outs : {150, 16}) {
  Tensor x = random_tensor(Shape{300, 200}, -1, 1, 311), b = random_tensor(Shape{outs}, -1, 1, 313);
  Tensor w_t = random_tensor(Shape{200, outs}, -1, 1, 312);  // W^T stored: W is a transposed view
  for (Activation act : {Activation::none, Activation::relu}) {
    Tensor ref = matmul(x, w_t);
    ref = apply_act(add(ref, b), act);
    Tensor y = linear(x.to(DType::f32), transpose(w_t.to(DType::f32), 0, 1), b.to(DType::f32), act);
    CHECK(max_abs_diff(y.to(DType::f64), ref) <= kF32LinearTol);
    Tensor y0 = linear(x.to(DType::f32), transpose(w_t.to(DType::f32), 0, 1), Tensor(), act);
    CHECK(max_abs_diff(y0.to(DType::f64), apply_act(matmul(x, w_t), act)) <= kF32LinearTol);
  }
  }
}

TEST_CASE("linear: shape errors name the op and the shapes", "[ops][linear]") {
  Tensor x = zeros(Shape{2, 3}), w = zeros(Shape{4, 3});
  CHECK_THROWS_WITH(linear(x, zeros(Shape{4, 5})), Catch::Contains("linear"));
  CHECK_THROWS_WITH(linear(x, w, zeros(Shape{3})), Catch::Contains("bias"));
  CHECK(linear(x, w).shape() == Shape{2, 4});
  CHECK(linear(zeros(Shape{3}), w).shape() == Shape{4});
}

#if METATAPE_WITH_CUDA

namespace {

// linear(x, w, b, act) on the GPU in dtype t against the CPU in f32 from the same (t-rounded)
// values: output, gradients for a random grad_output (graph kept), and the gradient of
// <gradients, v> (second order). expect_fused: the forward must have run one epilogue call.
void compare_linear(DType t, Activation act, bool with_bias, const Shape& x_shape, int64_t out,
                    bool expect_fused) {
  const int64_t in = x_shape[x_shape.size() - 1];
  const std::string what = fmt::format("linear {} {} bias={} x {} -> {}", dtype_name(t),
                                       act_name(act), with_bias, x_shape.str(), out);
  INFO(what);
  const Tolerance tol = t == DType::bf16 ? kLinearBF16 : kLinearF32;
  // Values on t's grid, so both sides see the same inputs.
  TensorList base{random_tensor(x_shape, -1, 1, 401).to(t),
                  random_tensor(Shape{out, in}, -1, 1, 402).to(t)};
  if (with_bias) base.push_back(random_tensor(Shape{out}, -1, 1, 403).to(t));
  auto run = [&](Device d, DType dt, bool count) {
    TensorList xs;
    // Fresh leaves (to() may return its input when nothing changes).
    for (const Tensor& b : base) xs.push_back(b.to(dt).to(d).clone().detach().set_requires_grad());
    const unsigned long long before = cuda_linear_epilogue_calls();
    Tensor y = linear(xs[0], xs[1], with_bias ? xs[2] : Tensor(), act);
    if (count) CHECK(cuda_linear_epilogue_calls() - before == (expect_fused ? 1u : 0u));
    Tensor gy = random_tensor(y.shape(), -1, 1, 411).to(t).to(dt).to(d);
    TensorList g = autograd::grad({y}, xs, {gy}, std::nullopt, /*create_graph=*/true);
    Tensor dot;
    for (size_t i = 0; i < g.size(); ++i) {
      Tensor v = random_tensor(g[i].shape(), -1, 1, 421 + i).to(t).to(dt).to(d);
      Tensor term = sum(mul(g[i], v));
      dot = dot.defined() ? add(dot, term) : term;
    }
    TensorList gg = autograd::grad({dot}, xs, {}, std::nullopt, false, /*allow_unused=*/true);
    return std::make_tuple(y, g, gg);
  };
  auto [y_cpu, g_cpu, gg_cpu] = run(kCPU, DType::f32, false);
  auto [y_gpu, g_gpu, gg_gpu] = run(gpu0(), t, true);
  REQUIRE(y_gpu.shape() == y_cpu.shape());
  CHECK(y_gpu.dtype() == t);
  check_close(y_gpu.to(DType::f32), y_cpu.detach(), tol, what + ": forward");
  for (size_t i = 0; i < g_cpu.size(); ++i) {
    check_close(g_gpu[i].to(DType::f32), g_cpu[i].detach(), tol,
                fmt::format("{}: grad #{}", what, i));
    REQUIRE(gg_gpu[i].defined() == gg_cpu[i].defined());
    if (gg_cpu[i].defined())
      check_close(gg_gpu[i].to(DType::f32), gg_cpu[i], tol,
                  fmt::format("{}: second order #{}", what, i));
  }
}

}  // namespace

TEST_CASE("CUDA linear: epilogue GEMM outputs and gradients of any order equal the CPU's",
          "[cuda][linear]") {
  MT_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::bf16}) {
    for (Activation act : {Activation::none, Activation::relu, Activation::gelu}) {
      for (bool with_bias : {false, true}) {
        // Fused: a bias, or a ReLU (gelu keeps the bias epilogue and its own exact kernel).
        const bool fused = with_bias || act == Activation::relu;
        // Aligned sizes (16-byte rows for every dtype): cuBLASLt must take the epilogue here.
        compare_linear(t, act, with_bias, Shape{2, 16, 64}, 32, fused);
        compare_linear(t, act, with_bias, Shape{40, 32}, 48, fused);
      }
    }
  }
}

TEST_CASE("CUDA linear: odd sizes and layouts the epilogue cannot take still give the CPU's result",
          "[cuda][linear]") {
  MT_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::bf16}) {
    INFO(dtype_name(t));
    // Odd sizes: fused or fallen back (cuBLASLt decides), the values must agree either way.
    Tensor x = random_tensor(Shape{3, 7, 5}, -1, 1, 431).to(t);
    Tensor w = random_tensor(Shape{9, 5}, -1, 1, 432).to(t);
    Tensor b = random_tensor(Shape{9}, -1, 1, 433).to(t);
    const Tolerance tol = t == DType::bf16 ? kLinearBF16 : kLinearF32;
    for (Activation act : {Activation::none, Activation::relu, Activation::gelu}) {
      Tensor ref = linear(x.to(DType::f32), w.to(DType::f32), b.to(DType::f32), act);
      check_close(linear(x.to(gpu0()), w.to(gpu0()), b.to(gpu0()), act).to(DType::f32), ref, tol,
                  fmt::format("odd sizes {}", act_name(act)));
    }
    // A non-contiguous x (transposed view) and a bias at an odd offset: the composite runs.
    Tensor xt = random_tensor(Shape{24, 16}, -1, 1, 434).to(t);
    Tensor w2 = random_tensor(Shape{8, 24}, -1, 1, 435).to(t);
    Tensor b2 = random_tensor(Shape{9}, -1, 1, 436).to(t);
    Tensor ref = linear(xt.to(DType::f32).transpose(0, 1), w2.to(DType::f32),
                        b2.to(DType::f32).narrow(0, 1, 8), Activation::relu);
    const unsigned long long before = cuda_linear_epilogue_calls();
    Tensor got = linear(xt.to(gpu0()).transpose(0, 1), w2.to(gpu0()),
                        b2.to(gpu0()).narrow(0, 1, 8), Activation::relu);
    CHECK(cuda_linear_epilogue_calls() == before);  // transposed x, misaligned bias: not fused
    check_close(got.to(DType::f32), ref, tol, "transposed x, misaligned bias");
  }
  // f64 has no epilogue (cuBLAS's f64 GEMM): the composite, to f64 accuracy.
  Tensor x64 = random_tensor(Shape{6, 8}, -1, 1, 437), w64 = random_tensor(Shape{4, 8}, -1, 1, 438),
         b64 = random_tensor(Shape{4}, -1, 1, 439);
  const unsigned long long before = cuda_linear_epilogue_calls();
  check_close(linear(x64.to(gpu0()), w64.to(gpu0()), b64.to(gpu0()), Activation::relu),
              linear(x64, w64, b64, Activation::relu), Tolerance{1e-12, 1e-12}, "f64");
  CHECK(cuda_linear_epilogue_calls() == before);
}

TEST_CASE("CUDA linear: nn::Linear's ReLU forward takes the epilogue", "[cuda][linear]") {
  MT_SKIP_WITHOUT_CUDA();
  Generator gen(7);
  nn::Linear layer(32, 16, true, gen);
  Tensor x = random_tensor(Shape{4, 8, 32}, -1, 1, 441).to(DType::f32);
  Tensor ref = relu(layer.forward(x));
  layer.to(gpu0());
  const unsigned long long before = cuda_linear_epilogue_calls();
  Tensor got = layer.forward(x.to(gpu0()), Activation::relu);
  CHECK(cuda_linear_epilogue_calls() - before == 1u);
  check_close(got, ref, kLinearF32, "nn::Linear relu");
}

TEST_CASE("CUDA linear: the epilogue GEMM writes only its output (sentinels, ldc > m)",
          "[cuda][linear]") {
  MT_SKIP_WITHOUT_CUDA();
  using namespace mt::gpu;
  for (DType t : {DType::f32, DType::f16, DType::bf16}) {
    for (GemmEpilogue e : {GemmEpilogue::bias, GemmEpilogue::relu, GemmEpilogue::relu_bias}) {
      const std::string what = fmt::format("gemm_epilogue {} {}", dtype_name(t), int(e));
      INFO(what);
      const int64_t rows = 24, in = 32, out = 16;
      Tensor x = random_tensor(Shape{rows, in}, -1, 1, 451).to(t);
      Tensor w = random_tensor(Shape{out, in}, -1, 1, 452).to(t);
      Tensor b = random_tensor(Shape{out}, -1, 1, 453).to(t);
      const bool with_bias = e != GemmEpilogue::relu;
      Tensor ref = linear(x.to(DType::f32), w.to(DType::f32),
                          with_bias ? b.to(DType::f32) : Tensor(),
                          e == GemmEpilogue::bias ? Activation::none : Activation::relu)
                       .to(t);
      Tensor xg = x.to(gpu0()), wg = w.to(gpu0()), bg = b.to(gpu0());
      Tensor ws = empty(Shape{int64_t(kGemmWorkspaceBytes / 8)}, DType::i64, gpu0());
      // A window inside a sentinel buffer: padded rows only (contiguous, 16-byte aligned: the
      // epilogue must run), then padded on every dim (rows of the output strided, cuBLAS's
      // ldc > m, and the window only 4-byte aligned for 16-bit types: Lt may decline).
      for (bool pad_all : {false, true}) {
        Padded p = padded(Shape{rows, out}, t, gpu0(), pad_all);
        GemmPlan plan = describe_matmul(xg, wg.transpose(0, 1), p.window);
        REQUIRE(plan.a_fits);
        REQUIRE(plan.b_fits);
        plan.desc.epilogue = e;
        plan.desc.ldc = p.window.strides()[0];
        plan.desc.batch_stride_c = rows * plan.desc.ldc;
        const bool ran = gemm_epilogue(plan.desc, wg.raw_data(), xg.raw_data(),
                                       with_bias ? bg.raw_data() : nullptr, p.window.raw_data(),
                                       false, ws.raw_data(), kGemmWorkspaceBytes, 0, stream(0));
        if (!pad_all) REQUIRE(ran);
        if (!ran) {
          WARN(what << ": cuBLASLt offers no algorithm for a strided output; not checked");
          continue;
        }
        check_padded(p, ref, t == DType::f32 ? kLinearF32 : kBF16,
                     what + (pad_all ? " (ldc > m)" : " (row padding)"));
      }
    }
  }
}

#endif  // METATAPE_WITH_CUDA
