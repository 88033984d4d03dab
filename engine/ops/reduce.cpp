// Reductions over dims (sum, max; mean and var composed from them) and sum_to, the one place
// where broadcast gradients are reduced back to an input's shape.
#include <cmath>
#include <limits>
#include <vector>

#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

DispatchStub<ReduceKernel> sum_kernel("sum"), max_kernel("max");

namespace {

// Accumulates x into out (keepdim shape, any strides) with acc(acc_value, x_value);
// accumulators are double so f32 sums of many terms keep f32 accuracy. x is walked in one fixed
// order, so the result is deterministic.
template <class T, class Acc>
void reduce_serial(const Tensor& x, Tensor& out, double init, Acc acc) {
  std::vector<double> buf(static_cast<size_t>(out.numel()), init);
  const T* p = x.data_ptr<T>();
  // Strides of the contiguous accumulator as seen from x (0 on reduced dims).
  Shape acc_strides = contiguous_strides(out.shape());
  for (int d = 0; d < out.dim(); ++d)
    if (out.shape()[d] == 1) acc_strides[d] = 0;
  cpu::for_each_row<2>(x.shape(), {x.strides(), acc_strides},
                       [&](const std::array<int64_t, 2>& off, int64_t len,
                           const std::array<int64_t, 2>& step) {
                         double* a = buf.data() + off[1];
                         const T* v = p + off[0];
                         if (step[0] == 1 && step[1] == 1) {  // a row into a row: vectorises
                           for (int64_t j = 0; j < len; ++j) a[j] = acc(a[j], double(v[j]));
                         } else if (step[1] == 0 && step[0] == 1) {
                           // A contiguous row into one value: 16 partial results (element j
                           // into lane j mod 16, lanes combined in order) so the loop vectorises
                           // and is not one long dependency chain; the order is fixed by the
                           // row length alone.
                           constexpr int64_t kLanes = 16;
                           double part[kLanes];
                           for (double& q : part) q = init;
                           int64_t j = 0;
                           for (; j + kLanes <= len; j += kLanes)
                             for (int64_t l = 0; l < kLanes; ++l)
                               part[l] = acc(part[l], double(v[j + l]));
                           double r = *a;
                           for (double q : part) r = acc(r, q);
                           for (; j < len; ++j) r = acc(r, double(v[j]));
                           *a = r;
                         } else if (step[1] == 0) {  // a strided row into one value
                           double r = *a;
                           for (int64_t j = 0; j < len; ++j) r = acc(r, double(v[j * step[0]]));
                           *a = r;
                         } else {
                           for (int64_t j = 0; j < len; ++j)
                             a[j * step[1]] = acc(a[j * step[1]], double(v[j * step[0]]));
                         }
                       });
  T* o = out.data_ptr<T>();
  size_t i = 0;
  cpu::for_each_row<1>(out.shape(), {out.strides()},
                       [&](const std::array<int64_t, 1>& off, int64_t len,
                           const std::array<int64_t, 1>& step) {
                         for (int64_t j = 0; j < len; ++j) o[off[0] + j * step[0]] = T(buf[i++]);
                       });
}

// Splits the largest kept dim into one slice per thread and reduces the slices independently:
// every output element is still reduced by one thread in the serial order (deterministic).
template <class T, class Acc>
void reduce_cpu(const Tensor& x, Tensor& out, double init, Acc acc) {
  int split = -1;
  for (int d = 0; d < out.dim(); ++d)
    if (out.shape()[d] > 1 && (split < 0 || out.shape()[d] > out.shape()[split])) split = d;
  if (split < 0) {
    reduce_serial<T>(x, out, init, acc);
    return;
  }
  const int64_t n = out.shape()[split];
  cpu::parallel_range(n, x.numel() / n, [&](int64_t begin, int64_t end) {
    if (begin == 0 && end == n) {
      reduce_serial<T>(x, out, init, acc);
      return;
    }
    Shape xshape = x.shape(), oshape = out.shape();
    xshape[split] = oshape[split] = end - begin;
    Tensor xs = make_view(x, xshape, x.strides(), x.offset() + begin * x.strides()[split]);
    Tensor os = make_view(out, oshape, out.strides(), out.offset() + begin * out.strides()[split]);
    reduce_serial<T>(xs, os, init, acc);
  });
}

void sum_cpu(const Tensor& x, Tensor& out) {
  dispatch_float(x.dtype(), "sum", [&]<class T>() {
    reduce_cpu<T>(x, out, 0.0, [](double a, double v) { return a + v; });
  });
}
void max_cpu(const Tensor& x, Tensor& out) {
  dispatch_float(x.dtype(), "max", [&]<class T>() {
    reduce_cpu<T>(x, out, -std::numeric_limits<double>::infinity(),
                  [](double a, double v) { return (v > a || std::isnan(v)) ? v : a; });
  });
}
[[maybe_unused]] const bool registered = (sum_kernel.set(DeviceType::CPU, &sum_cpu),
                                          max_kernel.set(DeviceType::CPU, &max_cpu), true);

// The keepdim shape of reducing `dims` of x (all dims when empty), checked.
Shape reduced_shape(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  Shape out = x.shape();
  if (dims.empty()) {
    for (int d = 0; d < x.dim(); ++d) out[d] = 1;
    return out;
  }
  std::vector<bool> seen(size_t(x.dim()), false);
  for (int64_t d : dims) {
    int w = wrap_dim(d, x.dim(), op);
    MT_CHECK(x.dim() > 0, "{}: cannot reduce over dim {} of a 0-d tensor", op, d);
    MT_CHECK(!seen[size_t(w)], "{}: dim {} appears twice in the reduction dims", op, d);
    seen[size_t(w)] = true;
    out[w] = 1;
  }
  return out;
}

// Drops the reduced dims of a keepdim result (a view).
Tensor drop_dims(const Tensor& y, const Tensor& x, const std::vector<int64_t>& dims) {
  Shape s;
  std::vector<bool> reduced(size_t(x.dim()), dims.empty());
  for (int64_t d : dims) reduced[size_t(wrap_dim(d, x.dim(), "reduce"))] = true;
  for (int d = 0; d < x.dim(); ++d)
    if (!reduced[size_t(d)]) s.push_back(x.shape()[d]);
  return reshape(y, s);
}

Tensor sum_keepdim(const Tensor& x, const Shape& out_shape) {
  check_operands("sum", {&x});
  Tensor y = empty(out_shape, x.dtype(), x.device());
  sum_kernel(x.device(), x, y);
  if (any_requires_grad(x)) {
    Shape in_shape = x.shape();
    record("sum", y, {&x}, [in_shape](const Node&, const Tensor& g) -> TensorList {
      return {expand(g, in_shape)};
    });
  }
  return y;
}

}  // namespace

// Elements reduced into each output: the product of the reduced dims' sizes (x's dims whose
// keepdim size is 1 while x's is not; a kept dim of size 0 leaves no output, not 0 per output).
static int64_t elements_per_output(const Tensor& x, const Shape& kept) {
  int64_t count = 1;
  for (int i = 0; i < x.dim(); ++i)
    if (kept[i] != x.shape()[i]) count *= x.shape()[i];
  return count;
}

Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  Tensor y = sum_keepdim(x, reduced_shape(x, dims, "sum"));
  return keepdim ? y : drop_dims(y, x, dims);
}

Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  Shape s = reduced_shape(x, dims, "mean");
  const int64_t count = elements_per_output(x, s);
  MT_CHECK(count > 0 || s.numel() == 0, "mean: reducing {} elements of shape {}; the mean of nothing is undefined",
           count, x.shape().str());
  Tensor y = mul(sum_keepdim(x, s), scalar_like(x, 1.0 / double(count)));
  return keepdim ? y : drop_dims(y, x, dims);
}

Tensor max(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  check_operands("max", {&x});
  MT_CHECK(x.numel() > 0, "max: tensor of shape {} is empty", x.shape().str());
  Tensor y = empty(reduced_shape(x, dims, "max"), x.dtype(), x.device());
  max_kernel(x.device(), x, y);
  if (any_requires_grad(x)) {
    auto& node = record("max", y, {&x}, [dims](const Node& n, const Tensor& g) -> TensorList {
      // Gradient shared evenly by the elements equal to the max (torch.amax's rule).
      Tensor x = n.saved(0), y = n.saved(1);
      Tensor is_max = eq(x, y);
      Tensor count = sum(is_max, dims, /*keepdim=*/true);
      return {mul(g, div(is_max, count))};
    });
    node.save(x);
    node.save_output(y);
  }
  return keepdim ? y : drop_dims(y, x, dims);
}

Tensor var(const Tensor& x, std::vector<int64_t> dims, bool keepdim, int64_t correction) {
  Shape s = reduced_shape(x, dims, "var");
  const int64_t count = elements_per_output(x, s);
  MT_CHECK(count - correction > 0 || s.numel() == 0,
           "var: {} elements per reduction with correction {} leaves no degrees of freedom", count,
           correction);
  Tensor centred = sub(x, mean(x, dims, /*keepdim=*/true));
  Tensor y = mul(sum_keepdim(mul(centred, centred), s),
                 scalar_like(x, 1.0 / double(count - correction)));
  return keepdim ? y : drop_dims(y, x, dims);
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const int lead = x.dim() - shape.size();
  MT_CHECK(lead >= 0, "sum_to: cannot reduce shape {} to the larger rank of {}", x.shape().str(),
           shape.str());
  std::vector<int64_t> dims;
  for (int d = 0; d < x.dim(); ++d) {
    if (d < lead) {
      dims.push_back(d);
    } else if (shape[d - lead] == 1 && x.shape()[d] != 1) {
      dims.push_back(d);
    } else {
      MT_CHECK(shape[d - lead] == x.shape()[d], "sum_to: shape {} does not broadcast to {}",
               shape.str(), x.shape().str());
    }
  }
  if (dims.empty()) return reshape(x, shape);
  return reshape(sum(x, dims, /*keepdim=*/true), shape);
}

}  // namespace mt
