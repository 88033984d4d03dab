// The CUDA backend against the CPU backend: every op with a CUDA kernel (elementwise, where,
// reductions, copies and conversions, views and joins, in-place writes, host<->device copies)
// gives the CPU's outputs, first-order and second-order gradients. Kernels write into windows of
// sentinel-filled buffers to catch out-of-bounds writes. Every case skips, with a warning, when
// no CUDA device is present.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/autograd/engine.h"
#include "engine/ops/elementwise.h"
#include "support/cuda_compare.h"

using namespace mt;
using namespace mt::testing;

namespace {

// ---- tolerances (|cuda - cpu| <= atol + rtol |cpu|) ----
// f64 elementwise: CUDA's f64 math functions are within 1-2 ulp like glibc's, so the results
// agree to a few ulps (1e-15 relative); 1e-13 leaves margin for composites (gelu, sigmoid).
constexpr Tolerance kF64{1e-13, 1e-13};
// f32 elementwise: CUDA's f32 functions (expf, erff, tanhf, sinf, ...) are within 1-4 ulp
// (2^-23 = 1.2e-7 relative each); composites stack a few of them. 1e-5 relative is ~80 ulp.
constexpr Tolerance kF32{1e-6, 1e-5};
// 16-bit storage: kF16 / kBF16 (support/cuda_compare.h).
// Gradients in f64 (first and second order): a backward pass chains a dozen ops of f64 error
// each; 1e-11 is still far below any wrong term (O(1)).
constexpr Tolerance kGradF64{1e-11, 1e-11};

Tolerance tol_for(DType t) {
  switch (t) {
    case DType::f64: return kF64;
    case DType::f16: return kF16;
    case DType::bf16: return kBF16;
    default: return kF32;
  }
}

// Sums accumulate in f32 on the GPU (f64 on the CPU): the error of adding K terms in any order
// is at most about K * 2^-24 * sum|x| and, for the split-and-tree order of the kernels, grows
// like log K in practice. The bound used: 1e-5 of the L1 mass of the reduced elements.
constexpr double kSumRelToL1F32 = 1e-5;
constexpr double kSumRelToL1F64 = 1e-13;

// Shapes every elementwise op is run at: empty, one element, a length that is not a multiple
// of the vector width, a long vector (grid-stride loop), 2-D and 3-D.
std::vector<Shape> elementwise_shapes() {
  return {Shape{0}, Shape{}, Shape{1}, Shape{7}, Shape{4099}, Shape{3, 129}, Shape{4, 5, 6}};
}

Tensor on_gpu(const Tensor& t) { return t.to(gpu0()); }

struct UnaryCase {
  const char* name;
  std::function<Tensor(const Tensor&)> op;
  const DispatchStub<UnaryKernel>* stub;  // for the sentinel run (nullptr: clamp)
  double lo, hi;                          // input domain
};

std::vector<UnaryCase> unary_cases() {
  return {
      {"neg", [](const Tensor& x) { return neg(x); }, &neg_kernel, -2, 2},
      {"exp", [](const Tensor& x) { return exp(x); }, &exp_kernel, -2, 2},
      {"log", [](const Tensor& x) { return log(x); }, &log_kernel, 0.3, 3},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, &sqrt_kernel, 0.3, 3},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, &rsqrt_kernel, 0.3, 3},
      {"abs", [](const Tensor& x) { return abs(x); }, &abs_kernel, -2, 2},
      {"sign", [](const Tensor& x) { return sign(x); }, &sign_kernel, -2, 2},
      {"tanh", [](const Tensor& x) { return tanh(x); }, &tanh_kernel, -2, 2},
      {"sigmoid", [](const Tensor& x) { return sigmoid(x); }, &sigmoid_kernel, -3, 3},
      {"relu", [](const Tensor& x) { return relu(x); }, &relu_kernel, -2, 2},
      {"erf", [](const Tensor& x) { return erf(x); }, &erf_kernel, -2, 2},
      {"sin", [](const Tensor& x) { return sin(x); }, &sin_kernel, -3, 3},
      {"cos", [](const Tensor& x) { return cos(x); }, &cos_kernel, -3, 3},
      {"gelu", [](const Tensor& x) { return gelu(x); }, &gelu_kernel, -3, 3},
      {"gelu_second_derivative", [](const Tensor& x) { return gelu_second_derivative(x); },
       &gelu_second_derivative_kernel, -3, 3},
      {"clamp", [](const Tensor& x) { return clamp(x, -0.5, 0.7); }, nullptr, -2, 2},
      {"clamp(lower only)", [](const Tensor& x) { return clamp(x, -0.5, std::nullopt); }, nullptr,
       -2, 2},
  };
}

struct BinaryCase {
  const char* name;
  std::function<Tensor(const Tensor&, const Tensor&)> op;
  const DispatchStub<BinaryKernel>* stub;
  double lo, hi;
};

std::vector<BinaryCase> binary_cases() {
  return {
      {"add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, &add_kernel, -2, 2},
      {"sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }, &sub_kernel, -2, 2},
      {"mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, &mul_kernel, -2, 2},
      {"div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, &div_kernel, 0.5, 2},
      {"pow", [](const Tensor& a, const Tensor& b) { return pow(a, b); }, &pow_kernel, 0.5, 2},
      {"eq", [](const Tensor& a, const Tensor& b) { return eq(a, b); }, &eq_kernel, -2, 2},
      {"ne", [](const Tensor& a, const Tensor& b) { return ne(a, b); }, &ne_kernel, -2, 2},
      {"lt", [](const Tensor& a, const Tensor& b) { return lt(a, b); }, &lt_kernel, -2, 2},
      {"le", [](const Tensor& a, const Tensor& b) { return le(a, b); }, &le_kernel, -2, 2},
      {"gt", [](const Tensor& a, const Tensor& b) { return gt(a, b); }, &gt_kernel, -2, 2},
      {"ge", [](const Tensor& a, const Tensor& b) { return ge(a, b); }, &ge_kernel, -2, 2},
      {"gelu_backward", [](const Tensor& a, const Tensor& b) { return gelu_backward(a, b); },
       &gelu_backward_kernel, -3, 3},
      {"relu_backward", [](const Tensor& a, const Tensor& b) { return relu_backward(a, b); },
       &relu_backward_kernel, -2, 2},
  };
}

// Pairs of broadcasting shapes (a, b).
std::vector<std::pair<Shape, Shape>> broadcast_pairs() {
  return {{Shape{3, 4}, Shape{3, 4}}, {Shape{4099}, Shape{4099}}, {Shape{3, 4}, Shape{4}},
          {Shape{3, 1}, Shape{1, 4}}, {Shape{}, Shape{5, 6}},     {Shape{1000}, Shape{}},
          {Shape{2, 3, 4}, Shape{3, 1}}, {Shape{0, 3}, Shape{3}}};
}

// The 16-bit reference: the CPU op in f32 on the 16-bit values, rounded to 16 bits.
Tensor cpu_reference(const std::function<Tensor(const TensorList&)>& f, const TensorList& xs,
                     DType dtype) {
  if (dtype == DType::f32 || dtype == DType::f64) return f(xs);
  TensorList wide;
  for (const Tensor& x : xs) wide.push_back(x.to(DType::f32));
  return f(wide).to(dtype);
}

const std::vector<DType> kFloatDtypes{DType::f32, DType::f64, DType::f16, DType::bf16};

}  // namespace

TEST_CASE("CUDA: a missing device is a clear error, not a crash", "[cuda]") {
  if (cuda_is_available()) {
    // The failure path needs a device index past the last one.
    const int past = cuda_device_count();
    CHECK_THROWS_WITH(empty(Shape{2}, DType::f32, cuda(past)),
                      Catch::Contains("does not exist"));
    return;
  }
  if (built_with_cuda()) {
    CHECK_THROWS_WITH(empty(Shape{2}, DType::f32, cuda(0)),
                      Catch::Contains("cuda:0 does not exist") &&
                          Catch::Contains("0 CUDA device(s) are visible"));
  } else {
    CHECK_THROWS_WITH(empty(Shape{2}, DType::f32, cuda(0)), Catch::Contains("without"));
  }
}

TEST_CASE("CUDA: host to device and back is exact for every dtype", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    Tensor x = random_tensor(Shape{37, 5}, -3, 3, 11).to(t);
    Tensor back = x.to(gpu0()).to(kCPU);
    CHECK(back.device() == kCPU);
    check_equal(back, x, fmt::format("round trip {}", dtype_name(t)));
  }
  std::vector<int64_t> idx{0, -5, 1ll << 40, 7};
  Tensor i = from_indices(idx, Shape{4});
  CHECK(i.to(gpu0()).to(kCPU).to_vector<int64_t>() == idx);
  // A non-contiguous source is made contiguous on its own device first.
  Tensor p = random_tensor(Shape{6, 9}, -1, 1, 12).transpose(0, 1);
  check_equal(p.to(gpu0()).to(kCPU), p, "transposed round trip");
  // item() and to_vector() read device tensors directly (explicit host read points).
  CHECK(full(Shape{}, 2.5, DType::f32, gpu0()).item<float>() == 2.5f);
}

TEST_CASE("CUDA: a host tensor may be overwritten as soon as its copy to the device returns", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  // Copies go through pinned staging buffers; a buffer is reused only after its copy is done.
  Tensor host = empty(Shape{100000}, DType::f32);
  TensorList on_device;
  for (int i = 0; i < 20; ++i) {
    host.fill_(double(i));
    on_device.push_back(host.to(gpu0()));
  }
  for (int i = 0; i < 20; ++i)
    check_equal(on_device[size_t(i)], full(Shape{100000}, double(i), DType::f64),
                fmt::format("copy #{}", i));
}

TEST_CASE("CUDA: to(device) is differentiable in both directions", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  Tensor x = random_tensor(Shape{3, 4}, -1, 1, 13).set_requires_grad();
  // cpu -> cuda -> ops on cuda -> cpu: the gradient comes back to the CPU leaf.
  Tensor y = mul(x.to(gpu0()), x.to(gpu0())).to(kCPU);
  Tensor g = autograd::grad({sum(y)}, {x}, {}, std::nullopt, /*create_graph=*/true)[0];
  CHECK(g.device() == kCPU);
  check_close(g, mul(x, 2.0).detach(), kGradF64, "d sum(x^2) / dx through the device");
  Tensor gg = autograd::grad({sum(g)}, {x})[0];
  check_close(gg, full(Shape{3, 4}, 2.0, DType::f64), kGradF64, "second order through to()");
  // A device leaf accumulates its .grad on the device (add_ kernel on the second backward).
  Tensor w = random_tensor(Shape{5}, -1, 1, 14).to(gpu0()).set_requires_grad();
  sum(mul(w, 3.0)).backward();
  sum(mul(w, 3.0)).backward();
  REQUIRE(w.grad().defined());
  CHECK(w.grad().device() == gpu0());
  check_close(w.grad(), full(Shape{5}, 6.0, DType::f64), kF64, "accumulated device grad");
}

TEST_CASE("CUDA: fill, zeros, ones, full and fill_ on strided views", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i64}) {
    for (const Shape& s : elementwise_shapes()) {
      const std::string what = fmt::format("full {} {}", dtype_name(t), s.str());
      Tensor ref = full(s, 3.0, DType::f64);
      check_equal(full(s, 3.0, t, gpu0()), ref, what);
      Padded p = padded(s, t, gpu0(), /*pad_all=*/true);
      p.window.fill_(3.0);
      check_padded(p, ref, Tolerance{0, 0}, what + " into a strided window");
      Padded q = padded(s, t, gpu0(), /*pad_all=*/false);
      q.window.fill_(3.0);
      check_padded(q, ref, Tolerance{0, 0}, what + " into an offset window");
    }
  }
  Tensor z = zeros(Shape{4, 3}, DType::f32, gpu0());
  z.transpose(0, 1).narrow(0, 1, 1).fill_(7.0);  // column 1 of z
  Tensor expect = zeros(Shape{4, 3}, DType::f64);
  expect.narrow(1, 1, 1).fill_(7.0);
  check_equal(z, expect, "fill_ of a transposed narrow");
}

TEST_CASE("CUDA: unary ops match the CPU (outputs, sentinels, every float dtype)", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (const UnaryCase& c : unary_cases()) {
    for (DType t : kFloatDtypes) {
      for (const Shape& s : elementwise_shapes()) {
        const std::string what = fmt::format("{} {} {}", c.name, dtype_name(t), s.str());
        Tensor x = random_tensor(s, c.lo, c.hi, 21).to(t);
        Tensor ref = cpu_reference([&](const TensorList& v) { return c.op(v[0]); }, {x}, t);
        check_close(c.op(on_gpu(x)), ref, tol_for(t), what);
        if (c.stub == nullptr) continue;
        for (bool pad_all : {true, false}) {
          Padded p = padded(s, t, gpu0(), pad_all);
          (*c.stub)(gpu0(), on_gpu(x), p.window);
          check_padded(p, ref, tol_for(t), what + (pad_all ? " strided out" : " offset out"));
        }
      }
      // A non-contiguous input (transposed) and an unaligned one (offset by one element).
      Tensor base = random_tensor(Shape{33, 17}, c.lo, c.hi, 22).to(t);
      Tensor xt = base.transpose(0, 1), xn = base.reshape(Shape{-1}).narrow(0, 1, 500);
      for (const Tensor& x : {xt, xn}) {
        Tensor ref = cpu_reference([&](const TensorList& v) { return c.op(v[0]); }, {x}, t);
        Tensor xg = x.to(gpu0());
        // Rebuild the same view on the device so the kernel sees the strides and offset.
        Tensor bg = base.to(gpu0());
        Tensor xv = x.shape() == xt.shape() ? bg.transpose(0, 1)
                                            : bg.reshape(Shape{-1}).narrow(0, 1, 500);
        check_close(c.op(xv), ref, tol_for(t),
                    fmt::format("{} {} on a view {}", c.name, dtype_name(t), x.shape().str()));
        check_close(c.op(xg), ref, tol_for(t), "contiguous copy of the view");
      }
    }
  }
}

TEST_CASE("CUDA: binary ops and where match the CPU with broadcasting", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (const BinaryCase& c : binary_cases()) {
    for (DType t : kFloatDtypes) {
      for (const auto& [sa, sb] : broadcast_pairs()) {
        const std::string what =
            fmt::format("{} {} {} with {}", c.name, dtype_name(t), sa.str(), sb.str());
        Tensor a = random_tensor(sa, c.lo, c.hi, 31), b = random_tensor(sb, c.lo, c.hi, 32);
        if (sa == sb) b = where(gt(a, scalar_like(a, 0.5)), a, b);  // ties for the comparisons
        a = a.to(t);
        b = b.to(t);
        Tensor ref =
            cpu_reference([&](const TensorList& v) { return c.op(v[0], v[1]); }, {a, b}, t);
        check_close(c.op(on_gpu(a), on_gpu(b)), ref, tol_for(t), what);
        for (bool pad_all : {true, false}) {
          Padded p = padded(ref.shape(), t, gpu0(), pad_all);
          (*c.stub)(gpu0(), on_gpu(a), on_gpu(b), p.window);
          check_padded(p, ref, tol_for(t), what + (pad_all ? " strided out" : " offset out"));
        }
      }
      // A transposed operand against a contiguous one.
      Tensor a = random_tensor(Shape{9, 7}, c.lo, c.hi, 33).to(t);
      Tensor b = random_tensor(Shape{7, 9}, c.lo, c.hi, 34).to(t);
      Tensor ref = cpu_reference([&](const TensorList& v) { return c.op(v[0].transpose(0, 1), v[1]); },
                                 {a, b}, t);
      check_close(c.op(on_gpu(a).transpose(0, 1), on_gpu(b)), ref, tol_for(t),
                  fmt::format("{} {} transposed operand", c.name, dtype_name(t)));
    }
  }
  for (DType t : kFloatDtypes) {
    Tensor m = gt(random_tensor(Shape{5, 1}, -1, 1, 35), scalar_tensor(0.0, DType::f64)).to(t);
    Tensor a = random_tensor(Shape{5, 8}, -1, 1, 36).to(t), b = random_tensor(Shape{8}, -1, 1, 37).to(t);
    Tensor ref = cpu_reference([](const TensorList& v) { return where(v[0], v[1], v[2]); },
                               {m, a, b}, t);
    check_close(where(on_gpu(m), on_gpu(a), on_gpu(b)), ref, Tolerance{0, 0},
                fmt::format("where {}", dtype_name(t)));
    Padded p = padded(ref.shape(), t, gpu0(), true);
    where_kernel(gpu0(), on_gpu(m), on_gpu(a), on_gpu(b), p.window);
    check_padded(p, ref, Tolerance{0, 0}, "where into a window");
  }
}

TEST_CASE("CUDA: dtype conversions and strided copies are exact", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  const std::vector<DType> all{DType::f32, DType::f64, DType::f16, DType::bf16, DType::i64};
  Tensor base = random_tensor(Shape{13, 21}, -300, 300, 41);
  for (DType from : all) {
    for (DType to : all) {
      const std::string what = fmt::format("{} -> {}", dtype_name(from), dtype_name(to));
      Tensor x = base.to(from);
      check_equal(x.to(gpu0()).to(to), x.to(to), what);
      // Strided source (transposed) into a strided destination window, with sentinels.
      Tensor xt = x.transpose(0, 1);
      Padded p = padded(xt.shape(), to, gpu0(), true);
      copy_kernel(gpu0(), on_gpu(x).transpose(0, 1), p.window);
      check_padded(p, xt.to(to), Tolerance{0, 0}, what + " transposed into a window");
    }
  }
  // Floating point -> i64 at NaN, infinities and beyond the range: the CPU's rule (0, saturate).
  const std::vector<double> edge = {NAN, INFINITY, -INFINITY, 1e30, -1e30, 2.5, -2.5,
                                    9223372036854775808.0, -9223372036854775808.0};
  for (DType from : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    Tensor x = from_vector(edge, Shape{int64_t(edge.size())}, DType::f64).to(from);
    CHECK(x.to(gpu0()).to(DType::i64).to(kCPU).to_vector<int64_t>() ==
          x.to(DType::i64).to_vector<int64_t>());
  }
  for (double v : edge) {  // and fill_ of an i64 tensor
    INFO("fill_(" << v << ")");
    CHECK(empty(Shape{5}, DType::i64, gpu0()).fill_(v).to(kCPU).to_vector<int64_t>() ==
          empty(Shape{5}, DType::i64).fill_(v).to_vector<int64_t>());
  }
  // Broadcast source, expanded views, narrow_scatter, cat/stack/split on the device.
  Tensor row = random_tensor(Shape{1, 6}, -1, 1, 42);
  check_equal(on_gpu(row).expand(Shape{4, 6}).contiguous(), row.expand(Shape{4, 6}).contiguous(),
              "expand + contiguous");
  Tensor a = random_tensor(Shape{3, 4, 5}, -1, 1, 43);
  check_equal(on_gpu(a).permute(Shape{2, 0, 1}).contiguous(), a.permute(Shape{2, 0, 1}).contiguous(),
              "permute + contiguous");
  check_equal(narrow_scatter(on_gpu(a), Shape{3, 9, 5}, 1, 2), narrow_scatter(a, Shape{3, 9, 5}, 1, 2),
              "narrow_scatter");
  Tensor b = random_tensor(Shape{3, 2, 5}, -1, 1, 44);
  check_equal(cat({on_gpu(a), on_gpu(b)}, 1), cat({a, b}, 1), "cat");
  check_equal(stack({on_gpu(a), on_gpu(a)}, 0), stack({a, a}, 0), "stack");
  TensorList parts = split(on_gpu(a), 2, 1), ref_parts = split(a, 2, 1);
  REQUIRE(parts.size() == ref_parts.size());
  for (size_t i = 0; i < parts.size(); ++i) check_equal(parts[i].contiguous(), ref_parts[i], "split");
  // copy_ from the CPU into a device view, and in-place add_ / mul_.
  Tensor dst = zeros(Shape{4, 6}, DType::f64, gpu0());
  dst.narrow(0, 1, 2).copy_(row);
  Tensor dref = zeros(Shape{4, 6}, DType::f64);
  dref.narrow(0, 1, 2).copy_(row);
  check_equal(dst, dref, "copy_ across devices into a window");
  dst.add_(on_gpu(row), 0.5);
  dref.add_(row, 0.5);
  dst.mul_(3.0);
  dref.mul_(3.0);
  check_close(dst, dref, kF64, "add_ and mul_");
  Tensor d32 = ones(Shape{7}, DType::f32, gpu0()), r32 = ones(Shape{7}, DType::f32);
  d32.mul_(0.1);
  r32.mul_(0.1);
  check_equal(d32, r32, "mul_ rounds like the CPU (product in double)");
}

TEST_CASE("CUDA: sum, mean and max match the CPU over any dims", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  struct Case {
    Shape shape;
    std::vector<int64_t> dims;
  };
  const std::vector<Case> cases{
      {Shape{1000}, {}},         {Shape{37, 129}, {0}},     {Shape{37, 129}, {1}},
      {Shape{37, 129}, {}},      {Shape{4, 5, 6}, {0, 2}},  {Shape{4, 5, 6}, {1}},
      {Shape{3, 70001}, {1}},    {Shape{70001, 3}, {0}},    {Shape{2, 1000, 3}, {1}},
      {Shape{1, 1, 1}, {1}},     {Shape{}, {}},             {Shape{300000}, {}},
      {Shape{128, 600}, {1}},    {Shape{600, 128}, {0}}};
  for (DType t : kFloatDtypes) {
    for (const Case& c : cases) {
      const std::string what = fmt::format("{} of {} over dims {} ({})", "{}", c.shape.str(),
                                           Shape(c.dims).str(), dtype_name(t));
      Tensor x = random_tensor(c.shape, -1, 1, 51).to(t);
      Tensor xg = on_gpu(x);
      const bool wide = t == DType::f64;
      const double l1 = sum(abs(x.to(DType::f64))).item<double>();
      const double per_sum = wide ? kSumRelToL1F64 : kSumRelToL1F32;
      Tolerance sum_tol{per_sum * std::max(l1, 1.0), t == DType::f16 ? kF16.rtol
                                                     : t == DType::bf16 ? kBF16.rtol : 0.0};
      auto f_sum = [&](const TensorList& v) { return sum(v[0], c.dims); };
      auto f_max = [&](const TensorList& v) { return max(v[0], c.dims); };
      auto f_mean = [&](const TensorList& v) { return mean(v[0], c.dims, true); };
      check_close(sum(xg, c.dims), cpu_reference(f_sum, {x}, t), sum_tol,
                  fmt::format(fmt::runtime(what), "sum"));
      check_close(mean(xg, c.dims, true), cpu_reference(f_mean, {x}, t), sum_tol,
                  fmt::format(fmt::runtime(what), "mean"));
      check_equal(max(xg, c.dims), cpu_reference(f_max, {x}, t),
                  fmt::format(fmt::runtime(what), "max"));
      // Deterministic: the same input gives the same bits.
      check_equal(sum(xg, c.dims), sum(xg, c.dims), fmt::format(fmt::runtime(what), "sum twice"));
    }
  }
  // Reductions of a transposed view, of nothing, and into a window with sentinels.
  Tensor x = random_tensor(Shape{50, 40}, -1, 1, 52);
  check_close(sum(on_gpu(x).transpose(0, 1), {1}), sum(x.transpose(0, 1), {1}),
              Tolerance{1e-12, 0}, "sum over a transposed view");
  check_equal(sum(zeros(Shape{2, 0}, DType::f32, gpu0()), {1}), zeros(Shape{2}, DType::f64),
              "sum of nothing is 0");
  Padded p = padded(Shape{50, 1}, DType::f64, gpu0(), true);
  sum_kernel(gpu0(), on_gpu(x), p.window);
  check_padded(p, sum(x, {1}, true), Tolerance{1e-12, 0}, "sum into a window");
  // NaN propagates through max as on the CPU.
  Tensor with_nan = x.clone();
  with_nan.narrow(0, 3, 1).narrow(1, 5, 1).fill_(std::nan(""));
  check_equal(max(on_gpu(with_nan), {1}), max(with_nan, {1}), "max with a NaN");
}

TEST_CASE("CUDA: first- and second-order gradients equal the CPU's", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  using F = std::function<Tensor(const TensorList&)>;
  struct Case {
    const char* name;
    F f;
    std::vector<Shape> shapes;
    double lo, hi;
  };
  const std::vector<Case> cases{
      {"unary chain", [](const TensorList& v) {
         const Tensor& x = v[0];
         return add(add(mul(exp(x), sin(x)), mul(tanh(x), gelu(x))),
                    add(mul(sigmoid(x), erf(x)), mul(sqrt(abs(x)), rsqrt(add(x, 3.0)))));
       }, {Shape{4, 7}}, 0.2, 1.5},
      {"log, cos, relu, clamp, neg", [](const TensorList& v) {
         const Tensor& x = v[0];
         return sub(mul(log(x), cos(x)), mul(relu(x), clamp(neg(x), -1.0, -0.3)));
       }, {Shape{11}}, 0.35, 1.8},
      {"broadcast binary", [](const TensorList& v) {
         return add(div(mul(v[0], v[1]), add(v[1], 2.0)), pow(v[0], v[1]));
       }, {Shape{3, 4}, Shape{4}}, 0.5, 1.5},
      {"where and comparisons", [](const TensorList& v) {
         return mul(where(gt(v[0], v[1]), mul(v[0], v[0]), mul(v[1], v[0])), v[1]);
       }, {Shape{5, 3}, Shape{5, 3}}, -1, 1},
      {"reductions", [](const TensorList& v) {
         const Tensor& x = v[0];
         return add(mul(sum(mul(x, x), {1}, true), mean(x, {0}, true)),
                    mul(max(mul(x, x), {1}, true), var(x, {1}, true)));
       }, {Shape{6, 5}}, -1, 1},
      {"views and joins", [](const TensorList& v) {
         Tensor y = cat({v[0].transpose(0, 1), v[1]}, 0);            // (4 + 2, 3)
         Tensor z = y.narrow(0, 1, 4).reshape(Shape{2, 6}).expand(Shape{3, 2, 6});
         TensorList parts = split(mul(z, z), 3, 2);
         return mul(stack({parts[0], parts[1]}, 0), sum(v[1]));
       }, {Shape{3, 4}, Shape{2, 3}}, -1, 1},
      {"dtype round trip", [](const TensorList& v) {
         return mul(v[0].to(DType::f32).to(DType::f64), v[0]);
       }, {Shape{8}}, -1, 1},
  };
  for (const Case& c : cases) {
    TensorList xs_cpu, xs_gpu;
    uint64_t seed = 61;
    for (const Shape& s : c.shapes) {
      Tensor x = random_tensor(s, c.lo, c.hi, seed++);
      xs_cpu.push_back(x.clone().set_requires_grad());
      xs_gpu.push_back(x.to(gpu0()).set_requires_grad());
    }
    // First order against a random grad_output, with the graph kept for the second order.
    auto run = [&](const TensorList& xs, Device d) {
      Tensor y = c.f(xs);
      Tensor gy = random_tensor(y.shape(), -1, 1, 71).to(d);
      TensorList g = autograd::grad({y}, xs, {gy}, std::nullopt, /*create_graph=*/true);
      // Second order: the gradient of <g, v> for a random v, with respect to the inputs.
      Tensor dot;
      for (size_t i = 0; i < g.size(); ++i) {
        Tensor term = sum(mul(g[i], random_tensor(g[i].shape(), -1, 1, 81 + i).to(d)));
        dot = dot.defined() ? add(dot, term) : term;
      }
      TensorList gg = autograd::grad({dot}, xs, {}, std::nullopt, false, /*allow_unused=*/true);
      return std::make_tuple(y, g, gg);
    };
    auto [y_cpu, g_cpu, gg_cpu] = run(xs_cpu, kCPU);
    auto [y_gpu, g_gpu, gg_gpu] = run(xs_gpu, gpu0());
    check_close(y_gpu, y_cpu.detach(), kGradF64, fmt::format("{}: forward", c.name));
    for (size_t i = 0; i < g_cpu.size(); ++i) {
      CHECK(g_gpu[i].device() == gpu0());
      check_close(g_gpu[i], g_cpu[i].detach(), kGradF64, fmt::format("{}: grad #{}", c.name, i));
      REQUIRE(gg_gpu[i].defined() == gg_cpu[i].defined());
      if (gg_cpu[i].defined())
        check_close(gg_gpu[i], gg_cpu[i], kGradF64, fmt::format("{}: second order #{}", c.name, i));
    }
  }
}
