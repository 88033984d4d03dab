#include "engine/core/tensor.h"

#include <Eigen/Core>

#include <cstring>

#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/cpu/loops.h"
#include "engine/ops.h"
#include "engine/ops/elementwise.h"

namespace mt {

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // nothing to lay out (as torch)
  const Shape& s = impl_->shape;
  const Shape& st = impl_->strides;
  int64_t expected = 1;
  for (int i = s.size() - 1; i >= 0; --i) {
    if (s[i] != 1 && st[i] != expected) return false;
    expected *= s[i];
  }
  return true;
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return fmt::format("Tensor({}, {}, {})", dtype_name(dtype()), shape().str(), device().str());
}

template <class T>
T Tensor::item() const {
  MT_CHECK(numel() == 1, "item(): tensor has {} elements (shape {}); item() needs exactly one",
           numel(), shape().str());
  return to_vector<T>()[0];
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  // A device tensor is copied to the host first: this is an explicit read point, so it waits for
  // the device.
  if (!device().is_cpu()) return mt::to_device(detach(), kCPU).to_vector<T>();
  std::vector<T> out(static_cast<size_t>(numel()));
  switch (dtype()) {
    case DType::f32: cpu::copy_strided<T, float>(*this, out.data()); break;
    case DType::f64: cpu::copy_strided<T, double>(*this, out.data()); break;
    case DType::i64: cpu::copy_strided<T, int64_t>(*this, out.data()); break;
    case DType::f16: {
      Tensor f = to(DType::f32);
      cpu::copy_strided<T, float>(f, out.data());
      break;
    }
    case DType::bf16: {
      Tensor f = to(DType::f32);
      cpu::copy_strided<T, float>(f, out.data());
      break;
    }
  }
  return out;
}

template float Tensor::item<float>() const;
template double Tensor::item<double>() const;
template int64_t Tensor::item<int64_t>() const;
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;

Tensor& Tensor::set_requires_grad(bool requires_grad) {
  // Already requiring grad (a leaf, or an op's output): nothing changes, as in torch; a
  // checkpointed region's recomputation, whose inputs are views, runs the same code as its first
  // pass, whose inputs are leaves.
  if (requires_grad && this->requires_grad()) return *this;  // (an undefined tensor throws)
  MT_CHECK(is_leaf(),
           "set_requires_grad() is only for leaf tensors; this one was produced by {} (use "
           "detach() to make a new leaf)",
           impl_->grad_fn ? "an op" : "?");
  MT_CHECK(!requires_grad || !storage().read_only(),
           "set_requires_grad(): the tensor is a shared constant (scalar_like: the scalar "
           "operands of ops, which every graph reading that value shares); make a learnable "
           "scalar from a clone() of it");
  MT_CHECK(!requires_grad || is_floating(dtype()),
           "set_requires_grad(): only floating-point tensors can require grad (this one is {})",
           dtype_name(dtype()));
  impl_->requires_grad = requires_grad;
  // Only a leaf that starts requiring grad here is new (not one made before that already did).
  if (requires_grad)
    for (auto* log : detail::new_leaf_logs()) log->push_back(impl_.get());
  return *this;
}

std::vector<std::vector<const TensorImpl*>*>& detail::new_leaf_logs() {
  thread_local std::vector<std::vector<const TensorImpl*>*> logs;
  return logs;
}

Tensor Tensor::detach() const {
  return make_view(*this, shape(), strides(), offset());
}

void Tensor::backward(const Tensor& grad_output, std::optional<bool> retain_graph,
                      bool create_graph) const {
  autograd::backward({*this}, grad_output.defined() ? TensorList{grad_output} : TensorList{},
                     retain_graph, create_graph);
}

namespace {

// The element count of `shape`, or an error naming `what` where it does not fit in int64.
int64_t checked_numel(const Shape& shape, const char* what) {
  for (int64_t d : shape)
    if (d == 0) return 0;
  int64_t n = 1;
  for (int64_t d : shape)
    MT_CHECK(d >= 0 && !__builtin_mul_overflow(n, d, &n),
             "{}: shape {} has a negative size or more than 2^63 elements", what, shape.str());
  return n;
}

}  // namespace

void Tensor::undefined_tensor_error() {
  MT_FAIL("an undefined tensor (Tensor(), which holds no data) was used where a tensor is "
          "needed; pass a tensor (e.g. zeros(shape)), or test defined() first");
}

Tensor make_view(const Tensor& t, const Shape& shape, const Shape& strides, int64_t offset) {
  // Every element of the view must lie inside the storage.
  MT_CHECK(shape.size() == strides.size(), "make_view: shape {} and strides {} differ in rank",
           shape.str(), strides.str());
  if (checked_numel(shape, "make_view") > 0) {
    int64_t low = offset, high = offset;
    bool overflow = false;
    for (int i = 0; i < shape.size(); ++i) {
      int64_t reach = 0;
      overflow |= __builtin_mul_overflow(shape[i] - 1, strides[i], &reach);
      overflow |= __builtin_add_overflow(reach < 0 ? low : high, reach, reach < 0 ? &low : &high);
    }
    const int64_t elements = int64_t(t.storage().nbytes() / itemsize(t.dtype()));
    MT_CHECK(!overflow && low >= 0 && high < elements,
             "make_view: shape {} with strides {} at offset {} reaches elements [{}, {}] of a "
             "storage of {} elements",
             shape.str(), strides.str(), offset, low, high, elements);
  }
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.impl()->storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = t.dtype();
  return Tensor(std::move(impl));
}

// ---- in-place writes ----

namespace {
void check_inplace(const Tensor& t, const char* op) {
  MT_CHECK(!t.storage().read_only(),
           "{}: the tensor is a shared constant (scalar_like: the scalar operands of ops, which "
           "every graph reading that value shares); write into a clone() of it",
           op);
  MT_CHECK(!(GradMode::is_enabled() && t.requires_grad()),
           "{}: in-place write to a tensor that requires grad; do it under a NoGradGuard (as an "
           "optimizer step does) or on a detach()ed copy",
           op);
}

// An in-place write records no gradient: a source that requires grad would silently not be
// differentiated through.
void check_source_untracked(const Tensor& src, const char* op) {
  MT_CHECK(!(GradMode::is_enabled() && src.requires_grad()),
           "{}: the source requires grad, and an in-place write records no gradient (what is "
           "computed from the result would not be differentiated through it); build the result "
           "with ops (cat, where, add), or write src.detach() to copy its value on purpose",
           op);
}

// The first and last storage elements a non-empty tensor reaches (strides are >= 0).
std::pair<int64_t, int64_t> reach(const Tensor& t) {
  int64_t last = t.offset();
  for (int i = 0; i < t.dim(); ++i) last += (t.shape()[i] - 1) * t.strides()[i];
  return {t.offset(), last};
}

// An in-place write must reach each element of `dst` once, and read `src` as it was: refused
// where `dst` repeats elements (a stride 0 from expand) or `src` shares memory with `dst` in
// another layout (a shifted or transposed view of it), as torch refuses them. The same layout
// (x.add_(x)) is fine: each element reads itself.
void check_overlap(const Tensor& dst, const Tensor* src, const char* op) {
  if (dst.numel() <= 1) return;
  for (int i = 0; i < dst.dim(); ++i)
    MT_CHECK(dst.shape()[i] <= 1 || dst.strides()[i] != 0,
             "{}: the tensor written to repeats elements (dim {} of {} has stride 0, as expand "
             "makes); write to a copy with its own memory (clone() or contiguous())",
             op, i, dst.shape().str());
  if (src == nullptr || src->numel() == 0 || &src->storage() != &dst.storage()) return;
  if (src->offset() == dst.offset() && src->shape() == dst.shape() &&
      src->strides() == dst.strides())
    return;
  const auto [d0, d1] = reach(dst);
  const auto [s0, s1] = reach(*src);
  MT_CHECK(s1 < d0 || d1 < s0,
           "{}: the source shares memory with the tensor written to, in another layout (a "
           "shifted or transposed view of it), so it would be read after being overwritten; "
           "clone() the source first",
           op);
}

// Applies f(dst_element) -> new value over a strided tensor in place.
template <class T, class F>
void apply_inplace(Tensor& t, F f) {
  T* p = t.data_ptr<T>();
  cpu::for_each_row<1>(t.shape(), {t.strides()},
                       [&](const std::array<int64_t, 1>& off, int64_t len,
                           const std::array<int64_t, 1>& step) {
                         for (int64_t j = 0; j < len; ++j) {
                           T& v = p[off[0] + j * step[0]];
                           v = f(v, j);
                         }
                       });
}

// ---- CPU kernels of the in-place writes ----
void fill_cpu(Tensor& t, double value) {
  if (t.dtype() == DType::i64) {
    apply_inplace<int64_t>(t, [&](int64_t, int64_t) { return to_i64(value); });
  } else {
    dispatch_float(t.dtype(), "fill_", [&]<class T>() {
      apply_inplace<T>(t, [&](T, int64_t) { return T(value); });
    });
  }
}

void add_inplace_cpu(Tensor& t, const Tensor& other, double alpha) {
  Tensor o = mt::expand(other, t.shape()).contiguous();
  dispatch_float(t.dtype(), "add_", [&]<class T>() {
    const T* q = o.data_ptr<T>();
    T a = T(alpha);
    int64_t pos = 0;
    T* p = t.data_ptr<T>();
    cpu::for_each_row<1>(t.shape(), {t.strides()},
                         [&](const std::array<int64_t, 1>& off, int64_t len,
                             const std::array<int64_t, 1>& step) {
                           for (int64_t j = 0; j < len; ++j) p[off[0] + j * step[0]] += a * q[pos + j];
                           pos += len;
                         });
  });
}

void mul_inplace_cpu(Tensor& t, double value) {
  dispatch_float(t.dtype(), "mul_", [&]<class T>() {
    apply_inplace<T>(t, [&](T v, int64_t) { return T(v * value); });
  });
}
}  // namespace

DispatchStub<FillKernel> fill_kernel("fill_");
DispatchStub<AddInplaceKernel> add_inplace_kernel("add_");
DispatchStub<MulInplaceKernel> mul_inplace_kernel("mul_");
[[maybe_unused]] static const bool inplace_registered =
    (fill_kernel.set(DeviceType::CPU, &fill_cpu),
     add_inplace_kernel.set(DeviceType::CPU, &add_inplace_cpu),
     mul_inplace_kernel.set(DeviceType::CPU, &mul_inplace_cpu), true);

void Tensor::set_grad(const Tensor& g) {
  const TensorImpl& self = checked();
  MT_CHECK(!g.defined() || (g.shape() == self.shape && g.dtype() == self.dtype &&
                            g.device() == device()),
           "set_grad: the gradient is {} but the tensor is {}; a gradient has the tensor's "
           "shape, dtype and device",
           g.str(), str());
  impl_->grad = g.impl_;
}

Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace(*this, "copy_");
  check_source_untracked(src, "copy_");
  check_overlap(*this, &src, "copy_");
  MT_CHECK(broadcast_shapes(src.shape(), shape(), "copy_") == shape(),
           "copy_: source shape {} does not broadcast to destination shape {}", src.shape().str(),
           shape().str());
  // A source on another device is transferred first (an explicit copy between devices).
  copy_into(src.device() == device() ? src : mt::to_device(src.detach(), device()), *this);
  storage().bump_version();
  return *this;
}

Tensor& Tensor::fill_(double value) {
  check_inplace(*this, "fill_");
  fill_kernel(device(), *this, value);
  storage().bump_version();
  return *this;
}

Tensor& Tensor::add_(const Tensor& other, double alpha) {
  check_inplace(*this, "add_");
  check_source_untracked(other, "add_");
  MT_CHECK(other.dtype() == dtype(), "add_: dtype {} added to {}; convert with .to()",
           dtype_name(other.dtype()), dtype_name(dtype()));
  MT_CHECK(other.device() == device(), "add_: a tensor on {} added to one on {}; copy it first",
           other.device().str(), device().str());
  MT_CHECK(broadcast_shapes(other.shape(), shape(), "add_") == shape(),
           "add_: shape {} does not broadcast to {}", other.shape().str(), shape().str());
  check_overlap(*this, &other, "add_");
  add_inplace_kernel(device(), *this, other.detach(), alpha);
  storage().bump_version();
  return *this;
}

Tensor& Tensor::mul_(double value) {
  check_inplace(*this, "mul_");
  check_overlap(*this, nullptr, "mul_");
  mul_inplace_kernel(device(), *this, value);
  storage().bump_version();
  return *this;
}

// ---- view methods forward to the ops ----
Tensor Tensor::view(const Shape& s) const {
  MT_CHECK(is_contiguous(), "view(): tensor of shape {} is not contiguous; use reshape()",
           shape().str());
  return mt::reshape(*this, s);
}
Tensor Tensor::reshape(const Shape& s) const { return mt::reshape(*this, s); }
Tensor Tensor::permute(const Shape& d) const { return mt::permute(*this, d); }
Tensor Tensor::transpose(int64_t d0, int64_t d1) const { return mt::transpose(*this, d0, d1); }
Tensor Tensor::narrow(int64_t d, int64_t s, int64_t l) const { return mt::narrow(*this, d, s, l); }
Tensor Tensor::expand(const Shape& s) const { return mt::expand(*this, s); }
Tensor Tensor::unsqueeze(int64_t d) const { return mt::unsqueeze(*this, d); }
Tensor Tensor::squeeze(int64_t d) const { return mt::squeeze(*this, d); }
Tensor Tensor::contiguous() const { return mt::contiguous(*this); }
Tensor Tensor::clone() const { return mt::clone(*this); }
Tensor Tensor::to(DType t) const { return mt::to_dtype(*this, t); }
Tensor Tensor::to(Device d) const { return mt::to_device(*this, d); }

// ---- factories ----
Tensor empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape)
    MT_CHECK(d >= 0, "empty(): negative dimension in shape {}", shape.str());
  int64_t bytes = 0;
  MT_CHECK(!__builtin_mul_overflow(checked_numel(shape, "empty()"), int64_t(itemsize(dtype)),
                                   &bytes),
           "empty(): shape {} of {} needs more than 2^63 bytes", shape.str(), dtype_name(dtype));
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(size_t(bytes), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  NoGradGuard no_grad;
  t.fill_(value);
  return t;
}
Tensor zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}
Tensor ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}
Tensor empty_like(const Tensor& t) { return empty(t.shape(), t.dtype(), t.device()); }
Tensor zeros_like(const Tensor& t) { return zeros(t.shape(), t.dtype(), t.device()); }
Tensor ones_like(const Tensor& t) { return ones(t.shape(), t.dtype(), t.device()); }
Tensor full_like(const Tensor& t, double v) { return full(t.shape(), v, t.dtype(), t.device()); }
Tensor scalar_tensor(double value, DType dtype, Device device) {
  return full(Shape{}, value, dtype, device);
}

Tensor arange(int64_t n, DType dtype, Device device) {
  MT_CHECK(device.is_cpu(), "arange(): only the CPU is supported here; create then copy");
  Tensor t = empty(Shape{n}, dtype, device);
  if (dtype == DType::i64) {
    for (int64_t i = 0; i < n; ++i) t.data_ptr<int64_t>()[i] = i;
  } else {
    dispatch_float(dtype, "arange", [&]<class T>() {
      for (int64_t i = 0; i < n; ++i) t.data_ptr<T>()[i] = T(i);
    });
  }
  return t;
}

Tensor from_vector(std::span<const double> values, const Shape& shape, DType dtype) {
  MT_CHECK(int64_t(values.size()) == shape.numel(),
           "from_vector(): {} values given for shape {} ({} elements)", values.size(),
           shape.str(), shape.numel());
  Tensor t = empty(shape, dtype);
  dispatch_float(dtype, "from_vector", [&]<class T>() {
    for (size_t i = 0; i < values.size(); ++i) t.data_ptr<T>()[i] = T(values[i]);
  });
  return t;
}

Tensor from_vector(std::span<const float> values, const Shape& shape) {
  MT_CHECK(int64_t(values.size()) == shape.numel(),
           "from_vector(): {} values given for shape {} ({} elements)", values.size(),
           shape.str(), shape.numel());
  Tensor t = empty(shape, DType::f32);
  std::memcpy(t.data_ptr<float>(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor from_indices(std::span<const int64_t> values, const Shape& shape) {
  MT_CHECK(int64_t(values.size()) == shape.numel(),
           "from_indices(): {} values given for shape {} ({} elements)", values.size(),
           shape.str(), shape.numel());
  Tensor t = empty(shape, DType::i64);
  std::memcpy(t.data_ptr<int64_t>(), values.data(), values.size() * sizeof(int64_t));
  return t;
}

}  // namespace mt
