// The CUDA sparse row updates (kernels/cuda/embedding_update.cu) against the CPU kernels of
// engine/optim/sparse_rows.cpp: random indices with many duplicates (hot rows hit hundreds of
// times) and untouched rows, several steps, f32 and f64 (16-bit tables against the CPU's f32
// step rounded), sentinel rows around the table and its moments, untouched rows bitwise
// unchanged, the vectorised and the scalar path, and bitwise determinism across two runs. Every
// case skips, with a warning, when no CUDA device is present. (An index outside the table traps
// on the device, as the gather does; a trap ends the CUDA context, so it is not exercised here.)
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "engine/optim/kernels.h"
#include "engine/optim/sparse_rows.h"
#include "support/cuda_compare.h"

using namespace mt;
using namespace mt::testing;

namespace {

// Summed gradients are bitwise the CPU's (same additions in the same order); the update itself
// may differ where the device contracts a multiply-add into an FMA and the host does not: a few
// ulps per step, as the dense optimizer kernels (tests/test_cuda_ops2.cpp), three steps.
constexpr Tolerance kOptimF64{1e-14, 1e-13};
constexpr Tolerance kOptimF32{1e-7, 1e-6};
// SGD rows: a hot row sums ~200 gradients of magnitude up to 1, so a term of its update
// (lr * sum, up to ~20) has an f32 ulp of ~2e-6 while the result may be small after cancelling;
// an FMA on the device against a separate multiply and add on the host differs by up to that ulp
// per step (seen on an H100: 1e-7..2e-7 at lr 0.1), three steps.
constexpr Tolerance kSparseSgdF32{8e-6, 1e-6};

Tolerance update_tol(DType t) {
  switch (t) {
    case DType::f64: return kOptimF64;
    case DType::f16: return kF16;
    case DType::bf16: return kBF16;
    default: return kOptimF32;
  }
}

// n indices into [0, touched) (rows touched..V-1 stay untouched): a third of them go to 8 hot
// rows, so those are hit about n / 24 times each.
std::vector<int64_t> random_indices(int64_t n, int64_t touched, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t& i : idx) {
    const uint64_t r = rng();
    i = int64_t(r % 3 == 0 ? (r / 3) % uint64_t(std::min<int64_t>(8, touched))
                           : (r / 3) % uint64_t(touched));
  }
  return idx;
}

struct Case {
  int64_t V, D, n, touched;
};
// D = 128 and 512 take the 16-byte path; D = 3 and 130 (f32) the scalar one; n = 0 is a no-op.
const std::vector<Case> kCases{{1000, 128, 5000, 900}, {300, 512, 2000, 250}, {37, 3, 1000, 30},
                               {10, 130, 7, 10},       {64, 8, 300, 1},       {5, 8, 0, 5}};

std::string describe(const Case& c, DType t) {
  return fmt::format("V={} D={} n={} touched={} {}", c.V, c.D, c.n, c.touched, dtype_name(t));
}

// The device table inside a buffer with two sentinel rows above and below.
Padded device_table(const Tensor& init) {
  Padded p = padded(init.shape(), init.dtype(), gpu0(), false);
  p.window.copy_(init.to(gpu0()));
  return p;
}

}  // namespace

TEST_CASE("CUDA sparse SGD rows equal the CPU's (duplicates, sentinels, untouched rows)",
          "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (const Case& c : kCases) {
    for (DType t : {DType::f32, DType::f64}) {
      for (double lr : {0.1, 1.0}) {
        for (double weight_decay : {0.0, 0.01}) {
          const std::string what =
              fmt::format("sgd {} lr {} wd {}", describe(c, t), lr, weight_decay);
          INFO(what);
          optim::SGDOptions o;
          o.lr = lr;
          o.weight_decay = weight_decay;
          Tensor w0 = random_tensor(Shape{c.V, c.D}, -1, 1, 401).to(t);
          Tensor cpu = w0.clone();
          Padded gpu = device_table(w0);
          for (uint64_t step = 1; step <= 3; ++step) {
            const std::vector<int64_t> idx = random_indices(c.n, c.touched, 410 + step);
            Tensor indices = from_indices(idx, Shape{c.n});
            Tensor g = random_tensor(Shape{c.n, c.D}, -1, 1, 420 + step).to(t);
            optim::sparse_sgd_rows_(cpu, indices, g, o);
            optim::sparse_sgd_rows_(gpu.window, indices.to(gpu0()), g.to(gpu0()), o);
          }
          // lr = 1, no decay: w + (-1) * g is exact before its one rounding on both sides, FMA or
          // not, so the result shows the summed gradient is bitwise the CPU's.
          const bool exact = lr == 1.0 && weight_decay == 0;
          const Tolerance tol = t == DType::f32 ? kSparseSgdF32 : update_tol(t);
          check_padded(gpu, cpu, exact ? Tolerance{0, 0} : tol, what);
          // Rows never touched: bitwise the initial values.
          if (c.touched < c.V)
            check_equal(gpu.window.narrow(0, c.touched, c.V - c.touched),
                        w0.narrow(0, c.touched, c.V - c.touched), what + " untouched rows");
        }
      }
    }
  }
}

TEST_CASE("CUDA sparse AdamW rows equal the CPU's over several steps (lazy moments, sentinels)",
          "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (const Case& c : kCases) {
    for (DType t : {DType::f32, DType::f64}) {
      for (double weight_decay : {0.0, 0.01}) {
        for (bool maximize : {false, true}) {
          const std::string what = fmt::format("adamw {} wd {} maximize {}", describe(c, t),
                                               weight_decay, maximize);
          INFO(what);
          optim::AdamWOptions o;
          o.lr = 1e-2;
          o.weight_decay = weight_decay;
          o.maximize = maximize;
          Tensor w0 = random_tensor(Shape{c.V, c.D}, -1, 1, 501).to(t);
          Tensor zero = zeros(Shape{c.V, c.D}, t);
          Tensor cpu_w = w0.clone(), cpu_m = zero.clone(), cpu_v = zero.clone();
          Padded w = device_table(w0), m = device_table(zero), v = device_table(zero);
          for (int64_t step = 1; step <= 3; ++step) {
            const std::vector<int64_t> idx = random_indices(c.n, c.touched, 510 + uint64_t(step));
            Tensor indices = from_indices(idx, Shape{c.n});
            Tensor g = random_tensor(Shape{c.n, c.D}, -1, 1, 520 + uint64_t(step)).to(t);
            optim::sparse_adamw_rows_(cpu_w, cpu_m, cpu_v, step, indices, g, o);
            optim::sparse_adamw_rows_(w.window, m.window, v.window, step, indices.to(gpu0()),
                                      g.to(gpu0()), o);
          }
          check_padded(w, cpu_w, update_tol(t), what + " weight");
          check_padded(m, cpu_m, update_tol(t), what + " exp_avg");
          check_padded(v, cpu_v, update_tol(t), what + " exp_avg_sq");
          if (c.touched < c.V) {
            const int64_t k = c.V - c.touched;
            check_equal(w.window.narrow(0, c.touched, k), w0.narrow(0, c.touched, k),
                        what + " untouched weight rows");
            check_equal(m.window.narrow(0, c.touched, k), zero.narrow(0, c.touched, k),
                        what + " untouched exp_avg rows");
          }
        }
      }
    }
  }
}

TEST_CASE("CUDA sparse row updates are bitwise deterministic across runs", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  // Many duplicates: 200000 indices into 1000 rows, hot rows hit ~8000 times.
  const int64_t V = 1000, D = 128, n = 200000;
  const std::vector<int64_t> idx = random_indices(n, V, 601);
  for (DType t : {DType::f32, DType::bf16}) {
    INFO(dtype_name(t));
    Tensor indices = from_indices(idx, Shape{n}).to(gpu0());
    Tensor g = random_tensor(Shape{n, D}, -1, 1, 602).to(t).to(gpu0());
    Tensor w0 = random_tensor(Shape{V, D}, -1, 1, 603).to(t).to(gpu0());
    optim::AdamWOptions ao;
    optim::SGDOptions so;
    so.lr = 0.01;
    TensorList runs;
    for (int run = 0; run < 2; ++run) {
      Tensor w = w0.clone(), m = zeros(Shape{V, D}, DType::f32, gpu0()),
             v = zeros(Shape{V, D}, DType::f32, gpu0());
      Tensor ws = w0.clone();
      optim::sparse_adamw_rows_(w, m, v, 1, indices, g, ao);  // bf16: f32 moments
      optim::sparse_sgd_rows_(ws, indices, g, so);
      runs.push_back(w);
      runs.push_back(m);
      runs.push_back(ws);
    }
    check_equal(runs[3], runs[0], "adamw weight, run twice");
    check_equal(runs[4], runs[1], "adamw exp_avg, run twice");
    check_equal(runs[5], runs[2], "sgd weight, run twice");
  }
}

TEST_CASE("CUDA sparse AdamW rows of 16-bit tables (16-bit or f32 moments) match the CPU in f32",
          "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  for (DType t : {DType::f16, DType::bf16}) {
    for (DType moment_t : {t, DType::f32}) {
      for (int64_t D : {int64_t(128), int64_t(12)}) {  // 16-byte path and scalar path
        const int64_t V = 200, n = 3000;
        const std::string what =
            fmt::format("{} table, {} moments, D {}", dtype_name(t), dtype_name(moment_t), D);
        INFO(what);
        optim::AdamWOptions o;
        o.lr = 1e-2;
        o.weight_decay = 0.01;
        const std::vector<int64_t> idx = random_indices(n, 150, 701);
        Tensor indices = from_indices(idx, Shape{n});
        Tensor w0 = random_tensor(Shape{V, D}, -1, 1, 702).to(t);
        Tensor g = random_tensor(Shape{n, D}, -1, 1, 703).to(t);
        // Reference: the same 16-bit values widened to f32, one step, rounded back once.
        Tensor rw = w0.to(DType::f32), rm = zeros(Shape{V, D}, DType::f32),
               rv = zeros(Shape{V, D}, DType::f32);
        optim::sparse_adamw_rows_(rw, rm, rv, 1, indices, g.to(DType::f32), o);
        // (The CPU fills f32 and f64 only: 16-bit zeros are converted from f32 ones.)
        Padded w = device_table(w0), m = device_table(zeros(Shape{V, D}).to(moment_t)),
               v = device_table(zeros(Shape{V, D}).to(moment_t));
        optim::sparse_adamw_rows_(w.window, m.window, v.window, 1, indices.to(gpu0()),
                                  g.to(gpu0()), o);
        check_padded(w, rw.to(t), update_tol(t), what + " weight");
        const Tolerance mtol = moment_t == DType::f32 ? kOptimF32 : update_tol(t);
        check_padded(m, rm.to(moment_t), mtol, what + " exp_avg");
        check_padded(v, rv.to(moment_t), mtol, what + " exp_avg_sq");
      }
    }
  }
}

TEST_CASE("CUDA sparse row updates: misaligned tables take the scalar path", "[cuda]") {
  MT_SKIP_WITHOUT_CUDA();
  // A table starting one element into its buffer: D = 8 divides the vector width, but the
  // rows are not 16-byte aligned.
  const int64_t V = 50, D = 8, n = 400;
  const std::vector<int64_t> idx = random_indices(n, 40, 801);
  Tensor indices = from_indices(idx, Shape{n});
  Tensor w0 = random_tensor(Shape{V, D}, -1, 1, 802).to(DType::f32);
  Tensor g = random_tensor(Shape{n, D}, -1, 1, 803).to(DType::f32);
  optim::AdamWOptions o;
  Tensor cw = w0.clone(), cm = zeros(Shape{V, D}), cv = zeros(Shape{V, D});
  optim::sparse_adamw_rows_(cw, cm, cv, 1, indices, g, o);
  auto offset_table = [&](const Tensor& init) {
    Tensor buf = full(Shape{V * D + 2}, kSentinel, DType::f32, gpu0());
    Tensor t = buf.narrow(0, 1, V * D).reshape(Shape{V, D});
    t.copy_(init.to(gpu0()));
    return std::make_pair(buf, t);
  };
  auto [wb, w] = offset_table(w0);
  auto [mb, m] = offset_table(zeros(Shape{V, D}));
  auto [vb, v] = offset_table(zeros(Shape{V, D}));
  optim::sparse_adamw_rows_(w, m, v, 1, indices.to(gpu0()), g.to(gpu0()), o);
  check_close(w, cw, kOptimF32, "misaligned adamw weight");
  check_close(m, cm, kOptimF32, "misaligned adamw exp_avg");
  for (const Tensor& b : {wb, mb, vb}) {
    const std::vector<double> h = b.to_vector<double>();
    CHECK(h.front() == kSentinel);
    CHECK(h.back() == kSentinel);
  }
}
