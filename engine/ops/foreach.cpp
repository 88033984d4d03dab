// Multi-tensor ("foreach") arithmetic: one call for a list of tensors, so that a device backend
// launches a few kernels for dozens of tensors (kernels/cuda/foreach.cu) where the single-tensor
// ops launch one each. What uses it: gradient averaging over a meta-batch, gradient clipping
// (optim::clip_grad_norm_on_device) and, beside it, AdamW's multi-tensor update
// (engine/optim/adamw.cpp). No autograd: these are bookkeeping of gradients and optimizer state.
//
// The CPU kernels loop over the single-tensor kernels: they are the reference, and a device
// backend gives each entry bitwise what its own single-tensor kernels give (the sum of squares
// to rounding: its order of summation is the backend's).
#include <algorithm>
#include <tuple>
#include <vector>

#include "engine/autograd/grad_mode.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"

namespace mt {

DispatchStub<ForeachAddKernel> foreach_add_kernel("foreach_add");
DispatchStub<ForeachScaleKernel> foreach_scale_kernel("foreach_scale");
DispatchStub<ForeachMulKernel> foreach_mul_kernel("foreach_mul");
DispatchStub<ForeachSumSquaresKernel> foreach_sum_squares_kernel("foreach_sum_squares");

namespace {

// ---- CPU kernels: the single-tensor ops, entry by entry ----
void foreach_add_cpu(const TensorList& a, const TensorList& b, const TensorList& out) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (out[i].impl() == a[i].impl()) {
      Tensor t = out[i];
      t.add_(b[i]);
    } else {
      Tensor sum = add(a[i], b[i]);
      Tensor t = out[i];
      t.copy_(sum);
    }
  }
}

void foreach_scale_cpu(const TensorList& a, double factor, const TensorList& out) {
  for (size_t i = 0; i < a.size(); ++i) {
    Tensor t = out[i];
    if (out[i].impl() != a[i].impl()) t.copy_(a[i]);
    t.mul_(factor);
  }
}

void foreach_mul_cpu(const TensorList& a, const Tensor& factor, const TensorList& out) {
  for (size_t i = 0; i < a.size(); ++i) {
    Tensor t = out[i];
    t.copy_(mul(a[i], factor.to(a[i].dtype())));
  }
}

void foreach_sum_squares_cpu(const TensorList& a, Tensor& out) {
  Tensor total = zeros(Shape{}, DType::f64);
  for (const Tensor& x : a) {
    const Tensor x64 = x.dtype() == DType::f64 ? x : x.to(DType::f64);
    total = add(total, sum(mul(x64, x64)));
  }
  out.copy_(total);
}

[[maybe_unused]] const bool foreach_registered =
    (foreach_add_kernel.set(DeviceType::CPU, &foreach_add_cpu),
     foreach_scale_kernel.set(DeviceType::CPU, &foreach_scale_cpu),
     foreach_mul_kernel.set(DeviceType::CPU, &foreach_mul_cpu),
     foreach_sum_squares_kernel.set(DeviceType::CPU, &foreach_sum_squares_cpu), true);

// ---- checks ----
void check_entry(const char* op, const Tensor& t, const Tensor& first, size_t i) {
  MT_CHECK(t.defined(), "{}: entry {} is an undefined tensor", op, i);
  MT_CHECK(is_floating(t.dtype()), "{}: entry {} has dtype {}; foreach ops take float tensors", op,
           i, dtype_name(t.dtype()));
  MT_CHECK(t.device() == first.device(),
           "{}: entry {} is on {} and entry 0 on {}; every tensor of a call must be on one device",
           op, i, t.device().str(), first.device().str());
  MT_CHECK(!(GradMode::is_enabled() && t.requires_grad()),
           "{}: entry {} requires grad; foreach ops are outside autograd: call them under a "
           "NoGradGuard or on detached tensors",
           op, i);
}

// a checked; b (when given) of the same length with matching entries. Returns the device.
void check_lists(const char* op, const TensorList& a, const TensorList* b) {
  if (b != nullptr)
    MT_CHECK(a.size() == b->size(), "{}: the lists have {} and {} tensors; they must be equal", op,
             a.size(), b->size());
  for (size_t i = 0; i < a.size(); ++i) {
    check_entry(op, a[i], a[0], i);
    if (b == nullptr) continue;
    const Tensor& y = (*b)[i];
    check_entry(op, y, a[0], i);
    MT_CHECK(y.shape() == a[i].shape() && y.dtype() == a[i].dtype(),
             "{}: entry {} is {} {} in the first list and {} {} in the second; they must match",
             op, i, dtype_name(a[i].dtype()), a[i].shape().str(), dtype_name(y.dtype()),
             y.shape().str());
  }
}

// [begin, end) byte ranges of the non-empty entries of a list of contiguous tensors, with each
// entry's index, sorted by begin.
std::vector<std::tuple<uintptr_t, uintptr_t, size_t>> sorted_byte_ranges(const TensorList& a) {
  std::vector<std::tuple<uintptr_t, uintptr_t, size_t>> ranges;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].numel() == 0) continue;
    const auto begin = reinterpret_cast<uintptr_t>(a[i].raw_data());
    ranges.emplace_back(begin, begin + size_t(a[i].numel()) * itemsize(a[i].dtype()), i);
  }
  std::sort(ranges.begin(), ranges.end());
  return ranges;
}

void check_inplace_targets(const char* op, const TensorList& a) {
  for (size_t i = 0; i < a.size(); ++i)
    MT_CHECK(!a[i].storage().read_only(),
             "{}: entry {} is a shared constant (scalar_like); update a clone() of it", op, i);
  for (size_t i = 0; i < a.size(); ++i)
    MT_CHECK(a[i].is_contiguous(),
             "{}: entry {} ({}) is not contiguous; an in-place foreach op needs contiguous "
             "tensors (use the out-of-place form)",
             op, i, a[i].shape().str());
  // Each target is updated once, all of them at the same time on CUDA: two entries that share
  // memory would be updated twice on the CPU and race on a GPU.
  const auto ranges = sorted_byte_ranges(a);
  uintptr_t reach = 0;  // the furthest end so far, and its entry
  size_t reach_entry = 0;
  for (const auto& [begin, end, i] : ranges) {
    MT_CHECK(begin >= reach,
             "{}: entries {} and {} share memory; an in-place foreach op updates each entry "
             "once: pass each tensor once",
             op, std::min(i, reach_entry), std::max(i, reach_entry));
    if (end > reach) {
      reach = end;
      reach_entry = i;
    }
  }
}

// The second list of an in-place op (a[i] op= b[i]) is read while the first is written, all
// entries at once on CUDA: b[j] may be a[j] itself (each element is read and written by one
// thread), but no other overlap (b[j] sharing memory with a[i], i != j, or a shifted window of
// a[j]), which the CPU's sequential loop and a GPU's concurrent chunks would read differently.
// A non-contiguous b[j] is copied before anything is written (contiguous_all), so it cannot
// overlap. check_inplace_targets has made the targets disjoint.
void check_sources_apart(const char* op, const TensorList& a, const TensorList& b) {
  const auto targets = sorted_byte_ranges(a);
  for (size_t j = 0; j < b.size(); ++j) {
    if (b[j].numel() == 0 || !b[j].is_contiguous()) continue;
    const auto begin = reinterpret_cast<uintptr_t>(b[j].raw_data());
    const uintptr_t end = begin + size_t(b[j].numel()) * itemsize(b[j].dtype());
    // The targets that start before b[j] ends, latest first, while they end after it begins.
    auto it = std::upper_bound(targets.begin(), targets.end(),
                               std::make_tuple(end, uintptr_t(0), size_t(0)));
    while (it != targets.begin()) {
      --it;
      const auto& [t_begin, t_end, i] = *it;
      if (t_end <= begin) break;
      MT_CHECK(i == j && t_begin == begin && t_end == end,
               "{}: entry {} of the second list shares memory with entry {} of the first, which "
               "the op writes; pass a copy (clone) of it",
               op, j, i);
    }
  }
}

TensorList contiguous_all(const TensorList& a) {
  TensorList out;
  out.reserve(a.size());
  for (const Tensor& t : a) out.push_back(contiguous_nograd(t));
  return out;
}

TensorList empty_like_all(const TensorList& a) {
  TensorList out;
  out.reserve(a.size());
  for (const Tensor& t : a) out.push_back(empty(t.shape(), t.dtype(), t.device()));
  return out;
}

void bump_versions(const TensorList& a) {
  for (const Tensor& t : a) t.storage().bump_version();
}

}  // namespace

TensorList foreach_add(const TensorList& a, const TensorList& b) {
  check_lists("foreach_add", a, &b);
  if (a.empty()) return {};
  TensorList out = empty_like_all(a);
  foreach_add_kernel(a[0].device(), contiguous_all(a), contiguous_all(b), out);
  return out;
}

void foreach_add_(const TensorList& a, const TensorList& b) {
  check_lists("foreach_add_", a, &b);
  check_inplace_targets("foreach_add_", a);
  check_sources_apart("foreach_add_", a, b);
  if (a.empty()) return;
  TensorList targets;
  for (const Tensor& t : a) targets.push_back(t.detach());
  foreach_add_kernel(a[0].device(), targets, contiguous_all(b), targets);
  bump_versions(a);
}

void foreach_mul_(const TensorList& a, double factor) {
  check_lists("foreach_mul_", a, nullptr);
  check_inplace_targets("foreach_mul_", a);
  if (a.empty()) return;
  TensorList targets;
  for (const Tensor& t : a) targets.push_back(t.detach());
  foreach_scale_kernel(a[0].device(), targets, factor, targets);
  bump_versions(a);
}

TensorList foreach_mul(const TensorList& a, const Tensor& factor) {
  check_lists("foreach_mul", a, nullptr);
  if (a.empty()) return {};
  MT_CHECK(factor.defined() && factor.numel() == 1 && factor.dim() == 0 &&
               factor.dtype() == DType::f64 && factor.device() == a[0].device(),
           "foreach_mul: the factor must be a 0-d f64 tensor on {}, got {}", a[0].device().str(),
           factor.defined() ? factor.str() : std::string("an undefined tensor"));
  TensorList out = empty_like_all(a);
  foreach_mul_kernel(a[0].device(), contiguous_all(a), factor.detach(), out);
  return out;
}

Tensor foreach_sum_squares(const TensorList& a) {
  check_lists("foreach_sum_squares", a, nullptr);
  if (a.empty()) return zeros(Shape{}, DType::f64);
  Tensor out = empty(Shape{}, DType::f64, a[0].device());
  foreach_sum_squares_kernel(a[0].device(), contiguous_all(a), out);
  return out;
}

}  // namespace mt
