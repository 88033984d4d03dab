// Matrix products. The core op is a batched matmul of (..., M, K) by (..., K, N) with broadcast
// batch dims; matmul() adds torch's handling of 1-D operands as views around it. The CPU kernel
// passes each operand to the GEMM (engine/cpu/gemm.h) without copying when either of its last two
// dims is unit-stride, so the transposed views made by the backward rule cost nothing.
#include "engine/cpu/gemm.h"
#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

// a (..., M, K), b (..., K, N), out (batch..., M, N) contiguous.
using MatmulKernel = void(const Tensor& a, const Tensor& b, Tensor& out);
DispatchStub<MatmulKernel> matmul_kernel("matmul");

namespace {

void matmul_cpu(const Tensor& a, const Tensor& b, Tensor& out) {
  const int r = out.dim();
  const int64_t M = out.shape()[r - 2], N = out.shape()[r - 1], K = a.shape()[a.dim() - 1];
  Shape batch = out.shape();
  batch.resize(r - 2);
  // Batch strides of a and b as seen from the output's batch dims (0 where broadcast).
  auto batch_strides = [&](const Tensor& t) {
    Shape s = Shape::filled(batch.size(), 0);
    int lead = batch.size() - (t.dim() - 2);
    for (int i = 0; i < t.dim() - 2; ++i)
      s[lead + i] = t.shape()[i] == 1 ? 0 : t.strides()[i];
    return s;
  };
  dispatch_float(out.dtype(), "matmul", [&]<class T>() {
    const T* pa = a.data_ptr<T>();
    const T* pb = b.data_ptr<T>();
    T* po = out.data_ptr<T>();
    const int64_t as0 = a.strides()[a.dim() - 2], as1 = a.strides()[a.dim() - 1];
    const int64_t bs0 = b.strides()[b.dim() - 2], bs1 = b.strides()[b.dim() - 1];
    auto one = [&](int64_t index, int64_t a_off, int64_t b_off) {
      T* c = po + index * M * N;
      if (K == 0) {
        std::fill(c, c + M * N, T(0));
      } else {
        cpu::gemm(pa + a_off, as0, as1, pb + b_off, bs0, bs1, c, M, N, K, false);
      }
    };
    if (batch.size() == 0) {
      one(0, 0, 0);  // a single product: the GEMM parallelises it internally when large
      return;
    }
    // The operand offsets of every batch entry (the innermost batch dim is the row of
    // for_each_row), then the products split across threads: attention runs many small products
    // (heads x samples) that one Eigen call each would leave on one core. Inside the parallel
    // region the GEMM runs single-threaded; each output block is written by exactly one thread.
    std::vector<std::array<int64_t, 2>> offsets;
    offsets.reserve(size_t(batch.numel()));
    cpu::for_each_row<2>(batch, {batch_strides(a), batch_strides(b)},
                         [&](const std::array<int64_t, 2>& off, int64_t len,
                             const std::array<int64_t, 2>& step) {
                           for (int64_t j = 0; j < len; ++j)
                             offsets.push_back({off[0] + j * step[0], off[1] + j * step[1]});
                         });
    cpu::parallel_range(int64_t(offsets.size()), M * N * std::max<int64_t>(K, 1),
                        [&](int64_t begin, int64_t end) {
                          for (int64_t i = begin; i < end; ++i)
                            one(i, offsets[size_t(i)][0], offsets[size_t(i)][1]);
                        });
  });
}
[[maybe_unused]] const bool registered = (matmul_kernel.set(DeviceType::CPU, &matmul_cpu), true);

// The batched core: both operands have rank >= 2.
Tensor batched_matmul(const Tensor& a, const Tensor& b) {
  const int64_t K = a.shape()[a.dim() - 1];
  MT_CHECK(b.shape()[b.dim() - 2] == K,
           "matmul: inner dims differ: a is {} and b is {} ({} vs {}); a's last dim must equal "
           "b's second-to-last",
           a.shape().str(), b.shape().str(), K, b.shape()[b.dim() - 2]);
  Shape batch_a = a.shape(), batch_b = b.shape();
  batch_a.resize(a.dim() - 2);
  batch_b.resize(b.dim() - 2);
  Shape shape = broadcast_shapes(batch_a, batch_b, "matmul (batch dims)");
  shape.push_back(a.shape()[a.dim() - 2]);
  shape.push_back(b.shape()[b.dim() - 1]);
  Tensor out = empty(shape, a.dtype(), a.device());
  profiler::add_flops("matmul", 2.0 * double(out.numel()) * double(K));
  matmul_kernel(a.device(), a, b, out);
  if (any_requires_grad(a, b)) {
    auto& node = record("matmul", out, {&a, &b}, [](const Node& n, const Tensor& g) -> TensorList {
      // dL/da = g b^T, dL/db = a^T g; the engine sums broadcast batch dims.
      return {n.needs_input_grad(0) ? batched_matmul(g, transpose(n.saved(1), -1, -2)) : Tensor(),
              n.needs_input_grad(1) ? batched_matmul(transpose(n.saved(0), -1, -2), g)
                                    : Tensor()};
    });
    node.save(a);
    node.save(b);
  }
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_operands("matmul", {&a, &b});
  MT_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: operands must have rank >= 1 (got {} and {})",
           a.shape().str(), b.shape().str());
  if (a.dim() > 2 && b.dim() == 2) {
    // (..., M, K) x (K, N): one GEMM over all rows instead of one per batch entry; the backward
    // then also runs as two large GEMMs (no per-batch products summed afterwards).
    Shape out_shape = a.shape();
    out_shape[a.dim() - 1] = b.size(1);
    return batched_matmul(a.reshape(Shape{-1, a.size(-1)}), b).reshape(out_shape);
  }
  if (a.dim() >= 2 && b.dim() >= 2) return batched_matmul(a, b);
  Tensor a2 = a.dim() == 1 ? unsqueeze(a, 0) : a;
  Tensor b2 = b.dim() == 1 ? unsqueeze(b, -1) : b;
  Tensor out = batched_matmul(a2, b2);
  if (b.dim() == 1) out = squeeze(out, -1);
  if (a.dim() == 1) out = squeeze(out, a2.dim() == 2 && b.dim() == 1 ? 0 : -2);
  return out;
}

}  // namespace mt
