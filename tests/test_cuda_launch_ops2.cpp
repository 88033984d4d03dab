// The host side of the GEMM, random and layer_norm launchers, checked without a GPU: the cuBLAS
// descriptors built from Tensors (transposed views expressed through the layouts, broadcast
// batch dims as stride 0, copies only where no layout exists) are replayed as a column-major
// GEMM over the CPU tensors' memory and compared with the CPU matmul; the device Philox
// (kernels/cuda/philox.h) is compared word for word with engine/core/generator.h and its
// element-to-block mapping replayed against the CPU draws; the layer_norm_backward row chunks
// cover every row once. Only in builds with CUDA.
#include <catch2/catch.hpp>

#if METATAPE_WITH_CUDA

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/core/generator.h"
#include "engine/ops/kernels.h"
#include "kernels/cuda/describe.h"
#include "kernels/cuda/philox.h"
#include "support/cuda_compare.h"

using namespace mt;
using namespace mt::testing;
using gpu::GemmDesc;
using gpu::GemmPlan;

namespace {

// f64 GEMMs of a few hundred terms in another order than Eigen's.
constexpr Tolerance kReplayGemm{1e-12, 1e-12};

// out = a b from the descriptor, as cuBLAS computes it: C^T (m x n, column-major) = op(A) op(B)
// with cuBLAS's A = the engine's b and B = the engine's a, batch entry i at i * batch_stride.
Tensor replay_matmul(const Tensor& a, const Tensor& b, GemmPlan* plan_out) {
  Tensor ref = matmul(a, b);
  Tensor out = full(ref.shape(), -1.0, DType::f64);
  Tensor a3 = a, b3 = b;  // matmul's views of 1-D operands and folded batches are the op's own
  const GemmPlan plan = gpu::describe_matmul(a3, b3, out);
  *plan_out = plan;
  if (!plan.a_fits || !plan.b_fits) return ref;  // the launcher copies first (checked by flags)
  const GemmDesc& d = plan.desc;
  const double* A = b.data_ptr<double>();
  const double* B = a.data_ptr<double>();
  double* C = out.data_ptr<double>();
  for (int64_t i = 0; i < d.batch; ++i) {
    const double* Ai = A + i * d.a.batch_stride;
    const double* Bi = B + i * d.b.batch_stride;
    double* Ci = C + i * d.batch_stride_c;
    for (int64_t r = 0; r < d.m; ++r) {
      for (int64_t c = 0; c < d.n; ++c) {
        double acc = 0;
        for (int64_t l = 0; l < d.k; ++l) {
          const double av = d.a.trans ? Ai[l + r * d.a.ld] : Ai[r + l * d.a.ld];
          const double bv = d.b.trans ? Bi[c + l * d.b.ld] : Bi[l + c * d.b.ld];
          acc += av * bv;
        }
        Ci[r + c * d.ldc] = acc;
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("CUDA launch: GEMM descriptors express views without copies and replay matmul", "[cuda][launch]") {
  auto same = [](const Tensor& t) { return t; };
  auto tr = [](const Tensor& t) { return t.transpose(-1, -2); };
  struct Case {
    const char* name;
    Shape a, b;
    std::function<Tensor(const Tensor&)> view_a, view_b;
    bool a_fits, b_fits;
  };
  const std::vector<Case> cases{
      {"plain", Shape{7, 5}, Shape{5, 9}, same, same, true, true},
      {"a transposed", Shape{5, 7}, Shape{5, 9}, tr, same, true, true},
      {"b transposed", Shape{7, 5}, Shape{9, 5}, same, tr, true, true},
      {"both transposed", Shape{5, 7}, Shape{9, 5}, tr, tr, true, true},
      {"batched", Shape{3, 4, 6}, Shape{3, 6, 5}, same, same, true, true},
      {"batched transposed", Shape{3, 6, 4}, Shape{3, 5, 6}, tr, tr, true, true},
      {"shared b (stride 0)", Shape{2, 3, 4, 6}, Shape{6, 5}, same, same, true, true},
      {"shared a (stride 0)", Shape{4, 6}, Shape{3, 6, 5}, same, same, true, true},
      {"broadcast in the inner batch dim", Shape{3, 1, 4, 6}, Shape{1, 2, 6, 5}, same, same, false,
       false},
      {"broadcast in the outer batch dim", Shape{1, 3, 4, 6}, Shape{2, 3, 6, 5}, same, same, false,
       true},
      {"stride-0 batch of a broadcast operand", Shape{2, 1, 4, 6}, Shape{2, 3, 6, 5}, same, same,
       false, true},
      {"column window", Shape{7, 12}, Shape{5, 9},
       [](const Tensor& t) { return t.narrow(1, 3, 5); }, same, true, true},
      {"row vector (M = 1)", Shape{1, 5}, Shape{5, 4}, same, same, true, true},
      {"column result (N = 1)", Shape{4, 5}, Shape{5, 1}, same, same, true, true},
      {"transposed column (N = 1)", Shape{4, 5}, Shape{1, 5}, same, tr, true, true},
      {"expanded rows (stride 0)", Shape{1, 5}, Shape{5, 4},
       [](const Tensor& t) { return t.expand(Shape{6, 5}); }, same, false, true},
      {"permuted batch (ld 18, batch stride 6)", Shape{4, 3, 6}, Shape{3, 6, 5},
       [](const Tensor& t) { return t.permute({1, 0, 2}); }, same, true, true},
      {"permuted matrix dims of a 3-D block", Shape{6, 3, 4}, Shape{3, 6, 5},
       [](const Tensor& t) { return t.permute({1, 2, 0}); }, same, true, true},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    Tensor a = c.view_a(random_tensor(c.a, -1, 1, 31));
    Tensor b = c.view_b(random_tensor(c.b, -1, 1, 32));
    GemmPlan plan;
    Tensor got = replay_matmul(a, b, &plan);
    CHECK(plan.a_fits == c.a_fits);
    CHECK(plan.b_fits == c.b_fits);
    check_close(got, matmul(a, b), kReplayGemm, c.name);
    const GemmDesc& d = plan.desc;
    CHECK(d.m == b.size(-1));
    CHECK(d.n == a.size(-2));
    CHECK(d.k == a.size(-1));
    if (plan.b_fits) {  // cuBLAS: ld >= rows of the stored matrix
      CHECK(d.a.ld >= 1);
      CHECK(d.a.ld >= (d.a.trans ? d.k : d.m));
    }
    if (plan.a_fits) {
      CHECK(d.b.ld >= 1);
      CHECK(d.b.ld >= (d.b.trans ? d.n : d.k));
    }
  }
  // Operands that do not fit fit once made contiguous (as the launcher does), or expanded over
  // the batch when their batch dims still have no single stride.
  Tensor a = random_tensor(Shape{3, 1, 4, 6}, -1, 1, 33);
  Tensor b = random_tensor(Shape{1, 2, 6, 5}, -1, 1, 34);
  GemmPlan plan;
  Tensor got = replay_matmul(a.expand(Shape{3, 2, 4, 6}).contiguous(),
                             b.expand(Shape{3, 2, 6, 5}).contiguous(), &plan);
  CHECK(plan.a_fits);
  CHECK(plan.b_fits);
  check_close(got, matmul(a, b), kReplayGemm, "materialised broadcast batch");
}

TEST_CASE("CUDA launch: the device Philox is the CPU generator's, word for word", "[cuda][launch]") {
  // Random123's known answer for Philox4x32-10 with zero key and counter.
  const gpu::Philox4 zero = gpu::philox4x32_10(0, 0);
  CHECK(zero.w[0] == 0x6627e8d5u);
  CHECK(zero.w[1] == 0xe169c58du);
  CHECK(zero.w[2] == 0xbc57ac4cu);
  CHECK(zero.w[3] == 0x9b00dbd8u);
  for (uint64_t seed : {uint64_t(0), uint64_t(1), uint64_t(0xdeadbeefcafef00dull)}) {
    for (uint64_t counter : {uint64_t(0), uint64_t(1), uint64_t(12345), uint64_t(1) << 32,
                             ~uint64_t(0)}) {
      const auto cpu = Generator::philox(seed, counter);
      const gpu::Philox4 dev = gpu::philox4x32_10(seed, counter);
      for (int k = 0; k < 4; ++k) CHECK(dev.w[k] == cpu[size_t(k)]);
      CHECK(gpu::philox_unit(dev.w[0]) == Generator::to_unit(cpu[0]));
      CHECK(gpu::philox_unit53(dev.w[2], dev.w[3]) == Generator::to_unit53(cpu[2], cpu[3]));
    }
  }
}

TEST_CASE("CUDA launch: the random kernel's element-to-block mapping replays the CPU draws", "[cuda][launch]") {
  for (DType t : {DType::f32, DType::f64}) {
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(1001)}) {
      const uint64_t seed = 99, first_block = 5;
      Tensor ref = empty(Shape{n}, t);
      random_kernel(kCPU, ref, Distribution::uniform, -1, 2, seed, first_block);
      // The kernel's loop: thread i takes block first_block + i and writes lanes i*lanes + k.
      const bool wide = t == DType::f64;
      const int64_t lanes = gpu::philox_lanes(wide);
      std::vector<double> got(static_cast<size_t>(n));
      for (int64_t i = 0; i < (n + lanes - 1) / lanes; ++i) {
        double u[4];
        gpu::philox_uniforms(seed, first_block + uint64_t(i), wide, u);
        for (int64_t k = 0; k < lanes && i * lanes + k < n; ++k) {
          const double v = std::fma(3.0, u[k], -1.0);
          got[size_t(i * lanes + k)] = wide ? v : double(float(v));
        }
      }
      check_equal(from_vector(got, Shape{n}, DType::f64), ref,
                  fmt::format("uniform replay n={} {}", n, dtype_name(t)));
      // Normals: Box-Muller on the lane pairs (u[0], u[1]) and (u[2], u[3]) of each block.
      Tensor ref_normal = empty(Shape{n}, t);
      random_kernel(kCPU, ref_normal, Distribution::normal, 0.5, 2, seed, first_block);
      for (int64_t i = 0; i < (n + lanes - 1) / lanes; ++i) {
        double u[4];
        gpu::philox_uniforms(seed, first_block + uint64_t(i), wide, u);
        for (int64_t k = 0; k < lanes && i * lanes + k < n; ++k) {
          const int64_t pair = k - k % 2;
          const double radius = std::sqrt(-2.0 * std::log(u[pair]));
          const double angle = 2.0 * 3.14159265358979323846 * u[pair + 1];
          const double z = radius * (k % 2 == 0 ? std::cos(angle) : std::sin(angle));
          const double v = std::fma(2.0, z, 0.5);
          got[size_t(i * lanes + k)] = wide ? v : double(float(v));
        }
      }
      check_equal(from_vector(got, Shape{n}, DType::f64), ref_normal,
                  fmt::format("normal replay n={} {}", n, dtype_name(t)));
    }
  }
}

TEST_CASE("CUDA launch: layer_norm_backward's row chunks cover every row once", "[cuda][launch]") {
  for (int64_t rows : {int64_t(1), int64_t(511), int64_t(512), int64_t(513), int64_t(100000),
                       int64_t(1000000), int64_t(3000001)}) {
    const int64_t p = gpu::layer_norm_partials(rows);
    const int64_t chunk = (rows + p - 1) / p;
    INFO("rows " << rows << " partials " << p);
    CHECK(p >= 1);
    CHECK(p <= 256);
    CHECK(p * chunk >= rows);         // every row in some chunk
    CHECK((p - 1) * chunk < rows);    // no chunk starts past the end
    CHECK(gpu::layer_norm_backward_workspace(gpu::ScalarType::f32, rows, 128) ==
          size_t(4 * (2 * rows + 2 * p * 128)));
  }
}

#endif  // METATAPE_WITH_CUDA
