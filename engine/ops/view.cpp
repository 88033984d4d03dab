// Views (reshape, permute, narrow, expand and their short forms) share storage with their input;
// copies (contiguous, clone, dtype conversion, narrow_scatter) write a fresh tensor through the
// copy kernel. Each records its backward as another view or copy.
#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <type_traits>

#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

DispatchStub<CopyKernel> copy_kernel("copy");
DispatchStub<CopyKernel> transfer_kernel("to_device");

namespace {

// CPU conversions of the 16-bit storage types go through Eigen's half and bfloat16 (round to
// nearest even), via float.
// Floating point to i64 by to_i64 (engine/core/dtype.h): toward zero, NaN gives 0, saturated
// beyond the range. The CUDA copy kernel (kernels/cuda/copy.cu) converts by the same rule, which
// is also PTX's cvt.
template <class Tdst, class Tsrc>
Tdst convert(Tsrc v) {
  if constexpr (std::is_same_v<Tdst, int64_t> && std::is_floating_point_v<Tsrc>)
    return to_i64(double(v));
  else
    return static_cast<Tdst>(v);
}

template <class Tdst>
void copy_from(const Tensor& src, Tensor& dst) {
  auto to_dst = [](auto v) { return convert<Tdst>(static_cast<float>(v)); };
  auto to_dst_exact = [](auto v) { return convert<Tdst>(v); };
  switch (src.dtype()) {
    case DType::f32: cpu::copy_into<Tdst, float>(src, dst, to_dst_exact); break;
    case DType::f64: cpu::copy_into<Tdst, double>(src, dst, to_dst_exact); break;
    case DType::i64: cpu::copy_into<Tdst, int64_t>(src, dst, to_dst_exact); break;
    case DType::f16: cpu::copy_into<Tdst, Eigen::half>(src, dst, to_dst); break;
    case DType::bf16: cpu::copy_into<Tdst, Eigen::bfloat16>(src, dst, to_dst); break;
  }
}

void copy_cpu(const Tensor& src, Tensor& dst) {
  switch (dst.dtype()) {
    case DType::f32: copy_from<float>(src, dst); break;
    case DType::f64: copy_from<double>(src, dst); break;
    case DType::i64: copy_from<int64_t>(src, dst); break;
    case DType::f16: copy_from<Eigen::half>(src, dst); break;
    case DType::bf16: copy_from<Eigen::bfloat16>(src, dst); break;
  }
}
[[maybe_unused]] const bool registered = (copy_kernel.set(DeviceType::CPU, &copy_cpu), true);

Tensor copy_to_new(const Tensor& x, DType dtype) {
  Tensor out = empty(x.shape(), dtype, x.device());
  copy_kernel(x.device(), x, out);
  return out;
}

// Resolves a -1 in a requested shape against numel.
Shape infer_shape(const Shape& requested, int64_t numel, const Shape& from) {
  Shape s = requested;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      MT_CHECK(infer < 0, "reshape: only one dim may be -1 (shape {})", requested.str());
      infer = i;
    } else {
      MT_CHECK(s[i] >= 0, "reshape: invalid size {} in shape {}", s[i], requested.str());
      known *= s[i];
    }
  }
  if (infer >= 0) {
    MT_CHECK(known > 0 && numel % known == 0, "reshape: cannot reshape {} into {}", from.str(),
             requested.str());
    s[infer] = numel / known;
  }
  MT_CHECK(s.numel() == numel, "reshape: cannot reshape {} ({} elements) into {} ({} elements)",
           from.str(), numel, requested.str(), s.numel());
  return s;
}

}  // namespace

Tensor reshape(const Tensor& x, const Shape& requested) {
  Shape shape = infer_shape(requested, x.numel(), x.shape());
  if (shape == x.shape()) return x;
  Tensor base = x.is_contiguous() ? x : contiguous(x);
  Tensor y = make_view(base, shape, contiguous_strides(shape), base.offset());
  if (any_requires_grad(base)) {
    Shape in_shape = base.shape();
    record("reshape", y, {&base}, [in_shape](const Node&, const Tensor& g) -> TensorList {
      return {reshape(g, in_shape)};
    });
  }
  return y;
}

Tensor permute(const Tensor& x, const Shape& dims) {
  MT_CHECK(dims.size() == x.dim(), "permute: {} dims given for a tensor of rank {}", dims.size(),
           x.dim());
  Shape shape = x.shape(), strides = x.strides(), inverse = Shape::filled(x.dim(), -1);
  for (int i = 0; i < dims.size(); ++i) {
    int d = wrap_dim(dims[i], x.dim(), "permute");
    MT_CHECK(inverse[d] == -1, "permute: dim {} appears twice in {}", d, dims.str());
    inverse[d] = i;
    shape[i] = x.shape()[d];
    strides[i] = x.strides()[d];
  }
  Tensor y = make_view(x, shape, strides, x.offset());
  if (any_requires_grad(x)) {
    record("permute", y, {&x}, [inverse](const Node&, const Tensor& g) -> TensorList {
      return {permute(g, inverse)};
    });
  }
  return y;
}

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  Shape dims = Shape::filled(x.dim(), 0);
  for (int i = 0; i < x.dim(); ++i) dims[i] = i;
  std::swap(dims[wrap_dim(d0, x.dim(), "transpose")], dims[wrap_dim(d1, x.dim(), "transpose")]);
  return permute(x, dims);
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  int d = wrap_dim(dim, x.dim(), "narrow");
  MT_CHECK(x.dim() > 0, "narrow: cannot narrow a 0-d tensor");
  MT_CHECK(start >= 0 && length >= 0 && start <= x.shape()[d] && length <= x.shape()[d] - start,
           "narrow: start {} and length {} leave dim {} of size {}", start, length, d,
           x.shape()[d]);
  Shape shape = x.shape();
  shape[d] = length;
  Tensor y = make_view(x, shape, x.strides(), x.offset() + start * x.strides()[d]);
  if (any_requires_grad(x)) {
    Shape in_shape = x.shape();
    record("narrow", y, {&x}, [in_shape, d, start](const Node&, const Tensor& g) -> TensorList {
      return {narrow_scatter(g, in_shape, d, start)};
    });
  }
  return y;
}

Tensor narrow_scatter(const Tensor& x, const Shape& shape, int64_t dim, int64_t start) {
  int d = wrap_dim(dim, int(shape.size()), "narrow_scatter");
  MT_CHECK(x.dim() == shape.size() && start >= 0 && start + x.shape()[d] <= shape[d],
           "narrow_scatter: a {} slice at {} does not fit in {}", x.shape().str(), start,
           shape.str());
  Tensor out = zeros(shape, x.dtype(), x.device());
  Tensor window = make_view(out, x.shape(), out.strides(), start * out.strides()[d]);
  copy_kernel(x.device(), x, window);
  if (any_requires_grad(x)) {
    int64_t length = x.shape()[d];
    record("narrow_scatter", out, {&x},
           [d, start, length](const Node&, const Tensor& g) -> TensorList {
             return {narrow(g, d, start, length)};
           });
  }
  return out;
}

Tensor expand(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const int lead = shape.size() - x.dim();
  MT_CHECK(lead >= 0, "expand: cannot expand shape {} to the smaller rank of {}", x.shape().str(),
           shape.str());
  Shape strides = Shape::filled(shape.size(), 0);
  for (int i = 0; i < x.dim(); ++i) {
    int64_t have = x.shape()[i], want = shape[lead + i];
    MT_CHECK(have == want || have == 1, "expand: shape {} cannot be expanded to {} (dim {})",
             x.shape().str(), shape.str(), i);
    strides[lead + i] = have == want ? x.strides()[i] : 0;
  }
  Tensor y = make_view(x, shape, strides, x.offset());
  if (any_requires_grad(x)) {
    // The engine sums the gradient back to the input's shape.
    record("expand", y, {&x}, [](const Node&, const Tensor& g) -> TensorList { return {g}; });
  }
  return y;
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  Shape s = x.shape();
  s.insert(wrap_dim(dim, x.dim() + 1, "unsqueeze"), 1);
  return reshape(x, s);
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  int d = wrap_dim(dim, x.dim(), "squeeze");
  MT_CHECK(x.dim() > 0 && x.shape()[d] == 1, "squeeze: dim {} of shape {} is not 1", dim,
           x.shape().str());
  Shape s = x.shape();
  s.erase(d);
  return reshape(x, s);
}

Tensor clone(const Tensor& x) {
  Tensor y = copy_to_new(x, x.dtype());
  if (any_requires_grad(x)) {
    record("clone", y, {&x}, [](const Node&, const Tensor& g) -> TensorList { return {g}; });
  }
  return y;
}

Tensor contiguous(const Tensor& x) { return x.is_contiguous() ? x : clone(x); }

Tensor contiguous_nograd(const Tensor& t) {
  NoGradGuard no_grad;
  return contiguous(t.detach());
}

Tensor to_dtype(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor y = copy_to_new(x, dtype);
  if (any_requires_grad(x) && is_floating(dtype)) {
    DType from = x.dtype();
    record("to_dtype", y, {&x}, [from](const Node&, const Tensor& g) -> TensorList {
      return {to_dtype(g, from)};
    });
  }
  return y;
}

Tensor to_device(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  Tensor src = x.contiguous();
  Tensor y = empty(x.shape(), x.dtype(), device);
  // The non-CPU side owns the copy (a CPU-to-CPU copy between devices does not exist).
  const Device side = device.is_cpu() ? src.device() : device;
  if (src.numel() > 0) transfer_kernel(side, src, y);
  if (any_requires_grad(x)) {
    Device from = x.device();
    record("to_device", y, {&x}, [from](const Node&, const Tensor& g) -> TensorList {
      return {to_device(g, from)};
    });
  }
  return y;
}

}  // namespace mt

namespace mt {
void copy_into(const Tensor& src, Tensor& dst) { copy_kernel(dst.device(), src, dst); }
}  // namespace mt
