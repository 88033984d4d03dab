// Sparse SGD and AdamW row updates of an embedding table (sparse_rows.h): the checked entry
// points and the CPU kernels, the reference the CUDA kernels (kernels/cuda/embedding_update.cu)
// are tested against.
#include "engine/optim/sparse_rows.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "engine/autograd/grad_mode.h"
#include "engine/core/backend.h"
#include "engine/ops.h"
#include "engine/optim/adamw_math.h"
#include "engine/optim/kernels.h"

namespace mt::optim {

DispatchStub<SparseSgdRowsKernel> sparse_sgd_rows_kernel("sparse_sgd_rows");
DispatchStub<SparseAdamWRowsKernel> sparse_adamw_rows_kernel("sparse_adamw_rows");

namespace {

// ---- CPU kernels ----

// Positions 0..n-1 stably sorted by index: runs of equal indices in position order (the order
// embedding_backward adds in, and the CUDA kernel's radix sort produces).
std::vector<int64_t> sorted_positions(const Tensor& indices) {
  const int64_t n = indices.numel();
  const int64_t* idx = indices.data_ptr<int64_t>();
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [idx](int64_t a, int64_t b) { return idx[a] < idx[b]; });
  return order;
}

// Calls update(row, g) for every distinct row of `indices`, in increasing row order, with g
// (D values) the sum of its gradient rows in position order.
template <class T, class Update>
void for_each_summed_row(const Tensor& indices, const Tensor& grad_rows, int64_t D,
                         Update&& update) {
  const int64_t n = indices.numel();
  const int64_t* idx = indices.data_ptr<int64_t>();
  const T* g = grad_rows.data_ptr<T>();
  const std::vector<int64_t> order = sorted_positions(indices);
  std::vector<T> sum(static_cast<size_t>(D));
  for (int64_t s = 0; s < n;) {
    const int64_t row = idx[order[size_t(s)]];
    std::fill(sum.begin(), sum.end(), T(0));
    for (; s < n && idx[order[size_t(s)]] == row; ++s) {
      const T* r = g + order[size_t(s)] * D;
      for (int64_t j = 0; j < D; ++j) sum[size_t(j)] += r[j];
    }
    update(row, sum.data());
  }
}

// Per touched element, operation by operation as sgd_cpu with momentum 0.
void sparse_sgd_rows_cpu(Tensor& weight, const Tensor& indices, const Tensor& grad_rows,
                         const SgdHyper& h) {
  const int64_t D = weight.shape()[1];
  dispatch_float(weight.dtype(), "sparse_sgd_rows", [&]<class T>() {
    T* w = weight.data_ptr<T>();
    const bool decay = h.weight_decay != 0;
    const T weight_decay = T(h.weight_decay);
    const T neg_lr = T(-h.lr);
    for_each_summed_row<T>(indices, grad_rows, D, [&](int64_t row, const T* g) {
      T* p = w + row * D;
      for (int64_t j = 0; j < D; ++j) {
        T gj = h.maximize ? -g[j] : g[j];
        if (decay) gj = gj + weight_decay * p[j];
        p[j] = p[j] + neg_lr * gj;
      }
    });
  });
}

// Per touched element, operation by operation as adamw_cpu (amsgrad off): the scalars in double
// as the dense kernel computes them.
void sparse_adamw_rows_cpu(Tensor& weight, Tensor& exp_avg, Tensor& exp_avg_sq,
                           const Tensor& indices, const Tensor& grad_rows, int64_t step,
                           const AdamWHyper& h) {
  const int64_t D = weight.shape()[1];
  dispatch_float(weight.dtype(), "sparse_adamw_rows", [&]<class T>() {
    T* w = weight.data_ptr<T>();
    T* m = exp_avg.data_ptr<T>();
    T* v = exp_avg_sq.data_ptr<T>();
    const AdamWElementStep<T> update(h, step);  // the dense kernel's arithmetic, row by row
    for_each_summed_row<T>(indices, grad_rows, D, [&](int64_t row, const T* g) {
      T* p = w + row * D;
      T* mr = m + row * D;
      T* vr = v + row * D;
      for (int64_t j = 0; j < D; ++j) update(p[j], mr[j], vr[j], nullptr, g[j]);
    });
  });
}

[[maybe_unused]] const bool registered =
    (sparse_sgd_rows_kernel.set(DeviceType::CPU, &sparse_sgd_rows_cpu),
     sparse_adamw_rows_kernel.set(DeviceType::CPU, &sparse_adamw_rows_cpu), true);

// ---- validation shared by both entry points ----

// The operands as the kernels take them: indices (n) and grad_rows (n, D), contiguous.
struct RowOperands {
  Tensor indices, grad_rows;
};

RowOperands check_rows(const char* op, const Tensor& weight, const Tensor& indices,
                       const Tensor& grad_rows) {
  MT_CHECK(weight.defined() && indices.defined() && grad_rows.defined(),
           "{}: weight, indices and grad_rows must all be defined", op);
  MT_CHECK(weight.dim() == 2, "{}: weight must be a (rows, dim) table, got {}", op,
           weight.shape().str());
  MT_CHECK(is_floating(weight.dtype()), "{}: weight must be floating point, got {}", op,
           dtype_name(weight.dtype()));
  MT_CHECK(weight.is_contiguous(),
           "{}: weight {} is not contiguous; the update writes it in place, so pass the table "
           "itself (or a contiguous copy that you copy back)",
           op, weight.str());
  MT_CHECK(indices.dtype() == DType::i64, "{}: indices must be i64, got {}", op,
           dtype_name(indices.dtype()));
  MT_CHECK(indices.device() == weight.device() && grad_rows.device() == weight.device(),
           "{}: weight is on {}, indices on {}, grad_rows on {}; move them to one device", op,
           weight.device().str(), indices.device().str(), grad_rows.device().str());
  MT_CHECK(grad_rows.dtype() == weight.dtype(), "{}: grad_rows is {} but weight is {}", op,
           dtype_name(grad_rows.dtype()), dtype_name(weight.dtype()));
  const int64_t V = weight.shape()[0], D = weight.shape()[1];
  Shape expected = indices.shape();
  expected.push_back(D);
  MT_CHECK(grad_rows.shape() == expected,
           "{}: grad_rows {} does not match indices {} and weight {} (expected indices.shape + "
           "(D,) = {}: the gradient of embedding(weight, indices))",
           op, grad_rows.shape().str(), indices.shape().str(), weight.shape().str(),
           expected.str());
  const int64_t n = indices.numel();
  RowOperands r;
  r.indices = contiguous(indices).reshape(Shape{n});
  r.grad_rows = contiguous(grad_rows).reshape(Shape{n, D});
  if (r.indices.device().is_cpu()) {  // a device kernel checks on the device instead
    const int64_t* p = r.indices.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i)
      MT_CHECK(p[i] >= 0 && p[i] < V,
               "{}: index {} at position {} is out of range for a table of {} rows", op, p[i], i,
               V);
  }
  return r;
}

void check_moment(const char* op, const char* what, const Tensor& weight, const Tensor& m) {
  MT_CHECK(m.defined(), "{}: {} must be defined (zeros of the weight's shape at the start)", op,
           what);
  MT_CHECK(m.shape() == weight.shape() && m.device() == weight.device(),
           "{}: {} is {} on {} but the weight is {} on {}", op, what, m.shape().str(),
           m.device().str(), weight.shape().str(), weight.device().str());
  const bool wide_ok = (weight.dtype() == DType::f16 || weight.dtype() == DType::bf16) &&
                       m.dtype() == DType::f32;
  MT_CHECK(m.dtype() == weight.dtype() || wide_ok,
           "{}: {} is {} but the weight is {} (moments have the weight's dtype, or f32 for an "
           "f16/bf16 weight)",
           op, what, dtype_name(m.dtype()), dtype_name(weight.dtype()));
  MT_CHECK(m.is_contiguous(), "{}: {} {} is not contiguous; it is updated in place", op, what,
           m.str());
}

}  // namespace

void sparse_sgd_rows_(Tensor& weight, const Tensor& indices, const Tensor& grad_rows,
                      const SGDOptions& o) {
  constexpr const char* op = "sparse_sgd_rows_";
  MT_CHECK(o.lr >= 0, "{}: lr = {} must be >= 0", op, o.lr);
  MT_CHECK(o.weight_decay >= 0, "{}: weight_decay = {} must be >= 0", op, o.weight_decay);
  MT_CHECK(o.momentum == 0 && !o.nesterov,
           "{}: momentum {} (nesterov {}) is not supported by the sparse row update (it keeps "
           "no per-row buffer); use optim::SGD for momentum",
           op, o.momentum, o.nesterov);
  NoGradGuard no_grad;
  RowOperands r = check_rows(op, weight, indices, grad_rows);
  if (r.indices.numel() == 0 || weight.shape()[1] == 0) return;
  const SgdHyper hyper{o.lr, 0.0, o.dampening, o.weight_decay, false, o.maximize};
  sparse_sgd_rows_kernel(weight.device(), weight, r.indices, r.grad_rows, hyper);
  weight.storage().bump_version();
}

void sparse_adamw_rows_(Tensor& weight, Tensor& exp_avg, Tensor& exp_avg_sq, int64_t step,
                        const Tensor& indices, const Tensor& grad_rows, const AdamWOptions& o) {
  constexpr const char* op = "sparse_adamw_rows_";
  MT_CHECK(o.lr >= 0, "{}: lr = {} must be >= 0", op, o.lr);
  MT_CHECK(o.eps >= 0, "{}: eps = {} must be >= 0", op, o.eps);
  MT_CHECK(o.beta1 >= 0 && o.beta1 < 1, "{}: beta1 = {} must be in [0, 1)", op, o.beta1);
  MT_CHECK(o.beta2 >= 0 && o.beta2 < 1, "{}: beta2 = {} must be in [0, 1)", op, o.beta2);
  MT_CHECK(o.weight_decay >= 0, "{}: weight_decay = {} must be >= 0", op, o.weight_decay);
  MT_CHECK(!o.amsgrad, "{}: amsgrad is not supported by the sparse row update; use optim::AdamW",
           op);
  MT_CHECK(step >= 1, "{}: step = {} must be >= 1 (the table's step count including this update)",
           op, step);
  // `step` is a kernel argument: every replay of a capture would repeat its bias corrections.
  MT_CHECK(!is_capturing(weight.device()),
           "{} on {} while its stream is being captured into a CUDA graph: the step count is "
           "fixed at capture, and every replay would repeat the bias corrections of that step; "
           "run the row update outside the capture",
           op, weight.device().str());
  NoGradGuard no_grad;
  RowOperands r = check_rows(op, weight, indices, grad_rows);
  check_moment(op, "exp_avg", weight, exp_avg);
  check_moment(op, "exp_avg_sq", weight, exp_avg_sq);
  MT_CHECK(exp_avg.dtype() == exp_avg_sq.dtype(), "{}: exp_avg is {} but exp_avg_sq is {}", op,
           dtype_name(exp_avg.dtype()), dtype_name(exp_avg_sq.dtype()));
  if (r.indices.numel() == 0 || weight.shape()[1] == 0) return;
  const AdamWHyper hyper{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, false, o.maximize};
  sparse_adamw_rows_kernel(weight.device(), weight, exp_avg, exp_avg_sq, r.indices, r.grad_rows,
                           step, hyper);
  weight.storage().bump_version();
  exp_avg.storage().bump_version();
  exp_avg_sq.storage().bump_version();
}

}  // namespace mt::optim
