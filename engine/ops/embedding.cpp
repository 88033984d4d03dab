// Embedding gather and its scatter-add backward; each is the other's backward, so gradients of
// any order flow through the rows (the indices are data, never differentiated).
#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"

namespace mt {

using autograd::Node;
using autograd::any_requires_grad;
using autograd::record;

DispatchStub<GatherKernel> embedding_kernel("embedding");
DispatchStub<ScatterAddKernel> embedding_backward_kernel("embedding_backward");

namespace {

void embedding_cpu(const Tensor& weight, const Tensor& indices, Tensor& out) {
  const int64_t D = weight.shape()[1], n = indices.numel();
  const int64_t* idx = indices.data_ptr<int64_t>();
  dispatch_float(weight.dtype(), "embedding", [&]<class T>() {
    const T* w = weight.data_ptr<T>();
    T* o = out.data_ptr<T>();
    cpu::parallel_range(n, D, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) std::copy_n(w + idx[i] * D, D, o + i * D);
    });
  });
}

void embedding_backward_cpu(const Tensor& rows, const Tensor& indices, Tensor& out) {
  const int64_t D = out.shape()[1], n = indices.numel();
  const int64_t* idx = indices.data_ptr<int64_t>();
  dispatch_float(rows.dtype(), "embedding_backward", [&]<class T>() {
    const T* r = rows.data_ptr<T>();
    T* o = out.data_ptr<T>();
    // Each thread owns a range of columns and adds the rows in index order: every output
    // element sums its terms in the same order whatever the thread count (deterministic).
    cpu::parallel_range(D, n, [&](int64_t j0, int64_t j1) {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = j0; j < j1; ++j) o[idx[i] * D + j] += r[i * D + j];
    });
  });
}
[[maybe_unused]] const bool registered =
    (embedding_kernel.set(DeviceType::CPU, &embedding_cpu),
     embedding_backward_kernel.set(DeviceType::CPU, &embedding_backward_cpu), true);

// Validates indices against num_rows. On the CPU this reads the indices; a device backend checks
// inside its kernel instead (no host synchronisation).
void check_indices(const Tensor& indices, int64_t num_rows, const char* op) {
  MT_CHECK(indices.dtype() == DType::i64, "{}: indices must be i64, got {}", op,
           dtype_name(indices.dtype()));
  if (!indices.device().is_cpu()) return;
  const int64_t* p = indices.data_ptr<int64_t>();
  for (int64_t i = 0, n = indices.numel(); i < n; ++i)
    MT_CHECK(p[i] >= 0 && p[i] < num_rows,
             "{}: index {} at position {} is out of range for a table of {} rows", op, p[i], i,
             num_rows);
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  MT_CHECK(weight.dim() == 2, "embedding: weight must be (rows, dim), got {}",
           weight.shape().str());
  MT_CHECK(weight.device() == indices.device(),
           "embedding: weight is on {} but indices are on {}", weight.device().str(),
           indices.device().str());
  Tensor idx = contiguous(indices);
  check_indices(idx, weight.shape()[0], "embedding");
  Tensor w;
  {
    NoGradGuard no_grad;
    w = contiguous(weight);
  }
  Shape shape = indices.shape();
  shape.push_back(weight.shape()[1]);
  Tensor out = empty(shape, weight.dtype(), weight.device());
  embedding_kernel(weight.device(), w, idx, out);
  if (any_requires_grad(weight)) {
    const int64_t num_rows = weight.shape()[0];
    auto& node =
        record("embedding", out, {&weight}, [num_rows](const Node& n, const Tensor& g) -> TensorList {
          return {embedding_backward(g, n.saved(0), num_rows)};
        });
    node.save(idx);
  }
  return out;
}

Tensor embedding_backward(const Tensor& rows, const Tensor& indices, int64_t num_rows) {
  check_operands("embedding_backward", {&rows});
  MT_CHECK(num_rows >= 0, "embedding_backward: num_rows is {}; give the table's row count",
           num_rows);
  const int64_t D = rows.dim() == 0 ? 0 : rows.shape()[rows.dim() - 1];
  MT_CHECK(rows.dim() == indices.dim() + 1 && rows.numel() == indices.numel() * D,
           "embedding_backward: rows {} do not match indices {} (expected indices.shape + (D,))",
           rows.shape().str(), indices.shape().str());
  Tensor idx = contiguous(indices);
  check_indices(idx, num_rows, "embedding_backward");
  Tensor r;
  {
    NoGradGuard no_grad;
    r = contiguous(rows);
  }
  Tensor out = zeros(Shape{num_rows, D}, rows.dtype(), rows.device());
  embedding_backward_kernel(rows.device(), r, idx, out);
  if (any_requires_grad(rows)) {
    auto& node = record("embedding_backward", out, {&rows},
                        [](const Node& n, const Tensor& g) -> TensorList {
                          return {embedding(g, n.saved(0))};
                        });
    node.save(idx);
  }
  return out;
}

}  // namespace mt
