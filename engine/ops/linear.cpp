// The linear layer as one op: activation(x W^T + b). A backend's fused kernel gets one node whose
// backward rule is made of differentiable ops, so the gradient of the gradient works as for the
// composite: on CUDA one cuBLASLt call with a bias or ReLU-bias epilogue (kernels/cuda/ops.cpp);
// on the CPU (f32, f64) the bias is broadcast into the output and the GEMM accumulates onto it
// (beta = 1: no separate bias pass, no zeroing pass), then ReLU in place. Other dtypes and
// operands a kernel does not take compute the composite matmul + add + activation.
#include "engine/autograd/grad_mode.h"
#include "engine/cpu/gemm.h"
#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

namespace {
// x (rows, in) contiguous, w (out, in) any strides, bias (out) or undefined.
Tensor linear_cpu(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act) {
  if (x.dtype() != DType::f32 && x.dtype() != DType::f64) return Tensor();
  const int64_t rows = x.size(0), in = x.size(1), out = w.size(0);
  Tensor y = empty(Shape{rows, out}, x.dtype(), x.device());
  dispatch_float(x.dtype(), "linear", [&]<class T>() {
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      T* py = y.data_ptr<T>();
      const Tensor b = bias.defined() ? bias.contiguous() : Tensor();
      if (b.defined()) {
        const T* pb = b.data_ptr<T>();
        cpu::parallel_range(rows, out, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) std::copy(pb, pb + out, py + i * out);
        });
      }
      if (in == 0) {
        if (!b.defined()) std::fill(py, py + rows * out, T(0));
      } else {
        // y (rows, out) = x (rows, in) W^T (in, out) [+ y]
        cpu::gemm(x.data_ptr<T>(), in, int64_t(1), w.data_ptr<T>(), w.stride(1), w.stride(0), py,
                  rows, out, in, b.defined());
      }
      if (act == Activation::relu) {
        cpu::parallel_range(rows * out, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) py[i] = py[i] <= T(0) ? T(0) : py[i];
        });
      }
    }
  });
  return y;
}
}  // namespace

DispatchStub<LinearKernel> linear_kernel("linear");
[[maybe_unused]] const bool linear_registered =
    (linear_kernel.set(DeviceType::CPU, &linear_cpu), true);

namespace {

Tensor composite(const Tensor& x, const Tensor& weight, const Tensor& bias, Activation act) {
  Tensor y = matmul(x, transpose(weight, 0, 1));
  if (bias.defined()) y = add(y, bias);
  return act == Activation::relu ? relu(y) : y;
}

// The fused kernel's node over y2 = act(x2 W^T + b), x2 (rows, in) the graph's view of x:
//   dz = g (none) or g * step(y2) (relu: y2 > 0 exactly where the pre-activation is, and the
//   mask has zero derivative, as in relu's own rule), dx = dz W, dW = dz^T x, db = sum_rows dz.
void record_fused(const Tensor& x2, const Tensor& weight, const Tensor& bias, Activation act,
                  Tensor& y2) {
  const bool relu_mask = act == Activation::relu;
  auto& node = record("linear", y2, {&x2, &weight, &bias},
                      [relu_mask](const Node& n, const Tensor& g) -> TensorList {
                        Tensor dz = g;
                        if (relu_mask) {
                          dz = relu_backward(g, n.saved(2));
                        }
                        return {n.needs_input_grad(0) ? matmul(dz, n.saved(1)) : Tensor(),
                                n.needs_input_grad(1) ? matmul(transpose(dz, 0, 1), n.saved(0))
                                                      : Tensor(),
                                n.needs_input_grad(2) ? sum(dz, {0}) : Tensor()};
                      });
  node.save(x2);
  node.save(weight);
  if (relu_mask) node.save_output(y2);
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, Activation activation) {
  check_operands("linear", {&x, &weight});
  MT_CHECK(weight.dim() == 2, "linear: weight must be (out, in), got {}", weight.shape().str());
  MT_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1),
           "linear: input {} must end in weight {}'s in-features {}", x.shape().str(),
           weight.shape().str(), weight.size(1));
  if (bias.defined()) {
    check_operands("linear", {&x, &bias});
    MT_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0),
             "linear: bias {} must be (out) = ({}) for weight {}", bias.shape().str(),
             weight.size(0), weight.shape().str());
  }
  if (activation == Activation::gelu) return gelu(linear(x, weight, bias, Activation::none));
  // Rows of x as one (rows, in) matrix: a view of a contiguous x (2-D-collapsible). The kernel
  // sees a view made without recording; the graph gets its own reshape only when fused.
  if (x.dim() >= 2 && x.is_contiguous()) {
    const Shape rows_in{-1, x.size(-1)};
    Tensor flat = x;
    if (x.dim() > 2) {
      NoGradGuard no_grad;
      flat = x.reshape(rows_in);
    }
    Tensor y = linear_kernel(x.device(), flat, weight, bias, activation);
    if (y.defined()) {
      profiler::add_flops("linear", 2.0 * double(y.numel()) * double(weight.size(1)));
      if (any_requires_grad(x, weight, bias))
        record_fused(x.dim() > 2 ? x.reshape(rows_in) : x, weight, bias, activation, y);
      if (x.dim() == 2) return y;
      Shape shape = x.shape();
      shape[x.dim() - 1] = weight.size(0);
      return y.reshape(shape);
    }
  }
  return composite(x, weight, bias, activation);
}

}  // namespace mt
