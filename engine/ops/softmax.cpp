// softmax and log_softmax along one dim. The CPU kernel works on rows of the last dim (other dims
// are moved there and back), rows split across threads, f32 rows through Eigen's vectorised exp;
// the backward rules read the saved output:
//   softmax:     dx = y * (g - sum(g * y))
//   log_softmax: dx = g - exp(y) * sum(g)
#include <cmath>
#include <limits>
#include <type_traits>

#include "engine/cpu/vectorized.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

DispatchStub<SoftmaxKernel> softmax_kernel("softmax");

namespace {

void softmax_cpu(const Tensor& x, Tensor& out, bool log) {
  const int64_t D = x.dim() == 0 ? 1 : x.shape()[x.dim() - 1];
  const int64_t rows = D == 0 ? 0 : x.numel() / D;
  dispatch_float(x.dtype(), "softmax", [&]<class T>() {
    const T* px = x.data_ptr<T>();
    T* py = out.data_ptr<T>();
    cpu::parallel_range(rows, 8 * D, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * D;
        T* yr = py + r * D;
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < D; ++j) m = std::max(m, xr[j]);
        // A row of -inf stays finite-free: exp(-inf - -inf) would be NaN, so shift by 0 instead.
        if (std::isinf(m) && m < 0) m = 0;
        if constexpr (std::is_same_v<T, float>) {
          // f32: exp(x - m) by Eigen's vectorised exp into the output row, summed in double.
          cpu::ArrayMap<float> y(yr, D);
          y = (cpu::ConstArrayMap<float>(xr, D) - m).exp();
          double s = 0;
          for (int64_t j = 0; j < D; ++j) s += double(yr[j]);
          if (log) {
            // (x - m) - log s, not x - (m + log s): the rounding of m + log s would land in
            // every output (large logits lost digits; torch's order).
            const float log_s = float(std::log(s));
            for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] - m) - log_s;
          } else {
            y *= float(1.0 / s);
          }
        } else {
          double s = 0;
          for (int64_t j = 0; j < D; ++j) s += std::exp(double(xr[j] - m));
          if (log) {
            const T log_s = T(std::log(s));  // (x - m) - log s, as for f32
            for (int64_t j = 0; j < D; ++j) yr[j] = (xr[j] - m) - log_s;
          } else {
            const T inv = T(1.0 / s);
            for (int64_t j = 0; j < D; ++j) yr[j] = T(std::exp(xr[j] - m)) * inv;
          }
        }
      }
    });
  });
}
[[maybe_unused]] const bool registered =
    (softmax_kernel.set(DeviceType::CPU, &softmax_cpu), true);

Tensor softmax_impl(const Tensor& x, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  check_operands(name, {&x});
  const int d = wrap_dim(dim, x.dim(), name);
  const int last = std::max(x.dim() - 1, 0);
  // Run on a contiguous tensor whose last dim is `d`, without recording (the op records itself).
  Tensor xd;
  {
    NoGradGuard no_grad;
    xd = d == last ? contiguous(x) : contiguous(transpose(x, d, last));
  }
  Tensor y = empty(xd.shape(), x.dtype(), x.device());
  softmax_kernel(x.device(), xd, y, log);
  if (d != last) {
    NoGradGuard no_grad;
    y = contiguous(transpose(y, d, last));
  }
  if (any_requires_grad(x)) {
    // Over dim d (a 0-d tensor has none: {} reduces its one element).
    const std::vector<int64_t> over =
        x.dim() == 0 ? std::vector<int64_t>{} : std::vector<int64_t>{int64_t(d)};
    auto& node = record(name, y, {&x}, [over, log](const Node& n, const Tensor& g) -> TensorList {
      Tensor y = n.saved(0);
      if (log) return {sub(g, mul(exp(y), sum(g, over, /*keepdim=*/true)))};
      return {mul(y, sub(g, sum(mul(g, y), over, /*keepdim=*/true)))};
    });
    node.save_output(y);
  }
  return y;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(x, dim, true); }

}  // namespace mt
