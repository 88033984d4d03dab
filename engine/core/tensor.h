// Tensor: a reference-counted handle to a TensorImpl (shape, strides, offset into a shared
// Storage, dtype) plus the autograd fields (requires_grad, grad, grad_fn). Copying a Tensor
// copies the handle; views share storage. All maths lives in engine/ops.h.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/core/device.h"
#include "engine/core/dtype.h"
#include "engine/core/shape.h"
#include "engine/core/storage.h"

namespace mt {

namespace autograd {
class Node;
}

struct TensorImpl;
namespace detail {
// Leaves made to require grad on this thread while a checkpointed region runs: set_requires_grad
// adds each to every set on this stack (autograd::checkpoint pushes one per pass of a region, to
// tell a region's own new leaves from the parameters it captures).
std::vector<std::vector<const TensorImpl*>*>& new_leaf_logs();
}  // namespace detail

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;  // in elements
  DType dtype = DType::f32;

  // Autograd. A leaf has no grad_fn; a tensor produced by a recorded op has grad_fn and the
  // index of the node's output it is (always 0: every node has one output).
  bool requires_grad = false;
  std::shared_ptr<autograd::Node> grad_fn;
  std::weak_ptr<autograd::Node> grad_accumulator;  // leaves only, created on first use
  std::shared_ptr<TensorImpl> grad;                // accumulated by backward() on leaves
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  // Metadata. On an undefined tensor (Tensor(): no data) these throw an mt::Error that says so,
  // rather than dereference nothing: every op reads its operands through them.
  const Shape& shape() const { return checked().shape; }
  const Shape& strides() const { return checked().strides; }
  int dim() const { return checked().shape.size(); }
  int64_t size(int64_t d) const { return impl_->shape[wrap_dim(d, dim(), "size")]; }
  int64_t stride(int64_t d) const { return impl_->strides[wrap_dim(d, dim(), "stride")]; }
  int64_t numel() const { return checked().shape.numel(); }
  DType dtype() const { return checked().dtype; }
  Device device() const { return checked().storage->device(); }
  int64_t offset() const { return checked().offset; }
  bool is_contiguous() const;
  Storage& storage() const { return *checked().storage; }
  std::string str() const;  // short description: "Tensor(f32, (2, 3), cpu)"

  template <class T>
  T* data_ptr() const {
    return static_cast<T*>(impl_->storage->data()) + impl_->offset;
  }
  void* raw_data() const {
    return static_cast<char*>(impl_->storage->data()) + impl_->offset * itemsize(dtype());
  }

  // Host reads: explicit points where a device value reaches the host (never on the hot path).
  template <class T>
  T item() const;
  template <class T>
  std::vector<T> to_vector() const;

  // Autograd.
  bool requires_grad() const { return checked().requires_grad; }
  // Only a leaf may change; true on a tensor that already requires grad (an op's output too) does
  // nothing.
  Tensor& set_requires_grad(bool requires_grad = true);
  bool is_leaf() const { return checked().grad_fn == nullptr; }
  const std::shared_ptr<autograd::Node>& grad_fn() const { return checked().grad_fn; }
  Tensor grad() const { return Tensor(checked().grad); }
  // Sets .grad (undefined clears it); a gradient has the tensor's shape, dtype and device.
  void set_grad(const Tensor& g);
  void zero_grad() {
    (void)checked();
    impl_->grad.reset();
  }
  Tensor detach() const;  // same storage, no history
  void backward(const Tensor& grad_output = {}, std::optional<bool> retain_graph = std::nullopt,
                bool create_graph = false) const;

  // Views and copies (see engine/ops/view.cpp).
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;
  Tensor permute(const Shape& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor expand(const Shape& shape) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;  // explicit host<->device copy, differentiable (to_device)

  // In-place writes (not recorded on the tape; refused on tensors that require grad while grad
  // mode is on). Each bumps the storage version.
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  Tensor& add_(const Tensor& other, double alpha = 1.0);
  Tensor& mul_(double value);

 private:
  // The implementation; an mt::Error (not a null dereference) for an undefined tensor.
  const TensorImpl& checked() const {
    if (impl_ == nullptr) [[unlikely]]
      undefined_tensor_error();
    return *impl_;
  }
  [[noreturn]] static void undefined_tensor_error();
  std::shared_ptr<TensorImpl> impl_;
};

using TensorList = std::vector<Tensor>;

// Factories.
Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = kCPU);
Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = kCPU);
Tensor empty_like(const Tensor& t);
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
Tensor scalar_tensor(double value, DType dtype = DType::f32, Device device = kCPU);
Tensor arange(int64_t n, DType dtype = DType::f32, Device device = kCPU);
// Copies host values into a new tensor; values.size() must equal shape.numel().
Tensor from_vector(std::span<const double> values, const Shape& shape, DType dtype = DType::f32);
Tensor from_vector(std::span<const float> values, const Shape& shape);
Tensor from_indices(std::span<const int64_t> values, const Shape& shape);

// A tensor sharing t's storage with other metadata (used by view ops; no autograd recording).
Tensor make_view(const Tensor& t, const Shape& shape, const Shape& strides, int64_t offset);

}  // namespace mt
