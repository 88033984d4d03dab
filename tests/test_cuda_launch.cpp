// The CUDA launchers' host side, checked without a GPU: the iteration spaces built from Tensors
// (coalescing, broadcast strides, the flat/vectorised choice) and the reduction descriptors
// (kept and reduced dims, row or column kernel, splits). Each descriptor is replayed on the host
// over CPU tensors' memory with the same offset functions the kernels use
// (kernels/cuda/indexing.h), and the result compared with the CPU op, so the index arithmetic
// the kernels rely on is tested on every machine. Only in builds with CUDA.
#include <catch2/catch.hpp>

#if METATAPE_WITH_CUDA

#include <vector>

#include "kernels/cuda/describe.h"
#include "kernels/cuda/indexing.h"
#include "support/cuda_compare.h"

using namespace mt;
using namespace mt::testing;
using gpu::Iter;
using gpu::ReduceDesc;

namespace {

// out = a + b computed element by element from the descriptor, as the kernels walk it (flat:
// operand k at i, or at 0 when broadcast; strided: offsets()).
Tensor replay_add(const Tensor& a, const Tensor& b) {
  Tensor out = empty(broadcast_shapes(a.shape(), b.shape(), "test"), DType::f64);
  const Iter it = gpu::describe_elementwise(out, {&a, &b});
  CHECK(it.numel == out.numel());
  double* o = out.data_ptr<double>();
  const double* pa = a.data_ptr<double>();
  const double* pb = b.data_ptr<double>();
  for (int64_t i = 0; i < it.numel; ++i) {
    if (it.flat) {
      const bool sa = it.rank == 0 || it.strides[1][0] == 0, sb = it.rank == 0 || it.strides[2][0] == 0;
      o[i] = pa[sa ? 0 : i] + pb[sb ? 0 : i];
    } else {
      int64_t off[3], off32[3];
      gpu::offsets<3>(it, i, off);
      gpu::offsets<3, int32_t>(it, i, off32);  // the kernels' 32-bit path, where it fits
      if (gpu::fits_int32(it) && (off32[0] != off[0] || off32[1] != off[1] || off32[2] != off[2]))
        FAIL("32-bit offsets differ from 64-bit ones at element " << i);
      o[off[0]] = pa[off[1]] + pb[off[2]];
    }
  }
  return out;
}

// sum of x over dims (keepdim) from the descriptor: every split's partial over its range, the
// partials combined in split order, as reduce.cu does.
Tensor replay_sum(const Tensor& x, const std::vector<int64_t>& dims, ReduceDesc* desc_out) {
  Tensor ref = sum(x, dims, /*keepdim=*/true);
  Tensor out = full(ref.shape(), -1.0, DType::f64);
  const ReduceDesc d = gpu::describe_reduction(x, out);
  *desc_out = d;
  const double* px = x.data_ptr<double>();
  double* po = out.data_ptr<double>();
  for (int64_t m = 0; m < d.outer; ++m) {
    double total = 0;
    for (int s = 0; s < d.splits; ++s) {
      int64_t k0 = 0, k1 = 0;
      gpu::split_range(d, s, k0, k1);
      double partial = 0;
      for (int64_t k = k0; k < k1; ++k) partial += px[gpu::outer_x_offset(d, m) + gpu::inner_offset(d, k)];
      total += partial;
    }
    po[gpu::outer_out_offset(d, m)] = total;
  }
  return out;
}

// Reassociating f64 sums of at most 1e5 values in [-1, 1].
constexpr Tolerance kReorderedSum{1e-9, 0};

}  // namespace

TEST_CASE("CUDA launch: elementwise iteration spaces coalesce and pick the flat path", "[cuda][launch]") {
  Tensor a = random_tensor(Shape{6, 8}, -1, 1, 1), row = random_tensor(Shape{8}, -1, 1, 2);
  Tensor s = random_tensor(Shape{}, -1, 1, 3);
  Tensor out = empty(Shape{6, 8}, DType::f64);
  SECTION("same shape, contiguous: one flat dim") {
    Iter it = gpu::describe_elementwise(out, {&a, &a});
    CHECK(it.flat);
    CHECK(it.rank == 1);
    CHECK(it.sizes[0] == 48);
  }
  SECTION("a 0-d operand is a broadcast element of the flat path") {
    Iter it = gpu::describe_elementwise(out, {&a, &s});
    CHECK(it.flat);
    CHECK(it.strides[2][0] == 0);
  }
  SECTION("a bias row keeps two dims: the strided path") {
    Iter it = gpu::describe_elementwise(out, {&a, &row});
    CHECK_FALSE(it.flat);
    CHECK(it.rank == 2);
    CHECK(it.strides[2][0] == 0);
    CHECK(it.strides[2][1] == 1);
  }
  SECTION("a transposed operand is strided") {
    Tensor t = random_tensor(Shape{8, 6}, -1, 1, 4).transpose(0, 1);
    Iter it = gpu::describe_elementwise(out, {&t, &a});
    CHECK_FALSE(it.flat);
  }
  SECTION("one element: rank 0, flat") {
    Tensor one = empty(Shape{1, 1}, DType::f64);
    Iter it = gpu::describe_elementwise(one, {&s, &s});
    CHECK(it.flat);
    CHECK(it.rank == 0);
  }
}

TEST_CASE("CUDA launch: replayed elementwise descriptors give the CPU's results", "[cuda][launch]") {
  struct Case {
    Tensor a, b;
    const char* name;
  };
  Tensor base = random_tensor(Shape{5, 6, 7}, -1, 1, 11);
  const std::vector<Case> cases{
      {base, base, "same shape"},
      {base, random_tensor(Shape{7}, -1, 1, 12), "trailing broadcast"},
      {base, random_tensor(Shape{5, 1, 7}, -1, 1, 13), "middle broadcast"},
      {random_tensor(Shape{5, 1, 1}, -1, 1, 14), random_tensor(Shape{1, 6, 7}, -1, 1, 15),
       "both broadcast"},
      {base.permute(Shape{2, 0, 1}), random_tensor(Shape{7, 5, 6}, -1, 1, 16), "permuted"},
      {base.narrow(1, 2, 3), base.narrow(1, 0, 3), "narrowed (offsets)"},
      {random_tensor(Shape{}, -1, 1, 17), base, "0-d and 3-d"},
      {base.narrow(2, 1, 1).expand(Shape{5, 6, 4}), random_tensor(Shape{4}, -1, 1, 18),
       "expanded view"},
  };
  for (const Case& c : cases)
    check_equal(replay_add(c.a, c.b), add(c.a, c.b), c.name);
}

TEST_CASE("CUDA launch: 32-bit indexing only where every offset fits", "[cuda][launch]") {
  Iter it;
  it.rank = 2;
  it.num_operands = 2;
  it.sizes[0] = 1000;
  it.sizes[1] = 1000;
  it.numel = 1000000;
  it.strides[0][0] = 1000;
  it.strides[0][1] = 1;
  it.strides[1][0] = 0;
  it.strides[1][1] = 1;
  CHECK(gpu::fits_int32(it));
  it.strides[1][0] = int64_t(1) << 22;  // 999 * 2^22 > 2^31
  CHECK_FALSE(gpu::fits_int32(it));
  it.strides[1][0] = 0;
  it.sizes[0] = int64_t(1) << 22;  // 2^32 elements
  it.numel = it.sizes[0] * 1000;
  CHECK_FALSE(gpu::fits_int32(it));
}

TEST_CASE("CUDA launch: replayed reduction descriptors give the CPU's sums", "[cuda][launch]") {
  struct Case {
    Shape shape;
    std::vector<int64_t> dims;
    bool transpose;
    bool rows;  // expected kernel: row (reduced dims hold the unit stride) or column
  };
  const std::vector<Case> cases{
      {Shape{37, 129}, {1}, false, true},   {Shape{37, 129}, {0}, false, false},
      {Shape{37, 129}, {1}, true, false},   {Shape{37, 129}, {0}, true, true},
      {Shape{4, 5, 6}, {0, 2}, false, true}, {Shape{4, 5, 6}, {1}, false, false},
      {Shape{100000}, {}, false, true},     {Shape{3, 30001}, {1}, false, true},
      {Shape{30001, 3}, {0}, false, false}, {Shape{2, 1, 3}, {1}, false, false},
      {Shape{}, {}, false, false}};
  for (const Case& c : cases) {
    Tensor x = random_tensor(c.shape, -1, 1, 21);
    if (c.transpose) x = random_tensor(Shape{c.shape[1], c.shape[0]}, -1, 1, 22).transpose(0, 1);
    ReduceDesc d;
    const std::string what = fmt::format("sum of {}{} over {}", c.shape.str(),
                                         c.transpose ? " (transposed)" : "", Shape(c.dims).str());
    check_close(replay_sum(x, c.dims, &d), sum(x, c.dims, true), kReorderedSum, what);
    INFO(what);
    CHECK(d.rows == c.rows);
    CHECK(d.outer * d.inner == x.numel());
    CHECK(d.splits >= 1);
    CHECK(d.splits <= 1024);
  }
  // Long reductions into few outputs are split across blocks (and combined in order).
  ReduceDesc d;
  replay_sum(random_tensor(Shape{100000}, -1, 1, 23), {}, &d);
  CHECK(d.splits > 1);
  replay_sum(random_tensor(Shape{30001, 3}, -1, 1, 24), {0}, &d);
  CHECK(d.splits > 1);
  replay_sum(random_tensor(Shape{1000, 128}, -1, 1, 25), {1}, &d);
  CHECK(d.splits == 1);  // enough outputs to fill the device on their own
}

#endif  // METATAPE_WITH_CUDA
