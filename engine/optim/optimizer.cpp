#include "engine/optim/optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <fmt/ranges.h>

#include "engine/autograd/grad_mode.h"
#include "engine/core/backend.h"
#include "engine/core/error.h"
#include "engine/ops.h"

namespace mt::optim {

namespace {
constexpr const char* kStep = "step";

// Zeros like p. The CPU cannot fill 16-bit tensors, so those are converted from f32 zeros.
Tensor zeros_of(const Tensor& p) {
  if (p.dtype() == DType::f16 || p.dtype() == DType::bf16)
    return zeros(p.shape(), DType::f32, p.device()).to(p.dtype());
  return zeros_like(p);
}
}  // namespace

Optimizer::Optimizer(NamedParams params, const char* kind)
    : kind_(kind), params_(std::move(params)), state_(params_.size()) {
  MT_CHECK(!params_.empty(), "{}: the parameter list is empty; pass module.named_parameters()",
           kind_);
  std::map<const TensorImpl*, std::string> seen;
  std::set<std::string> names;
  for (const auto& [name, p] : params_) {
    MT_CHECK(p.defined(), "{}: parameter '{}' is an undefined tensor", kind_, name);
    MT_CHECK(names.insert(name).second, "{}: the parameter name '{}' is given twice", kind_, name);
    auto [it, fresh] = seen.emplace(p.impl(), name);
    MT_CHECK(fresh, "{}: parameters '{}' and '{}' are the same tensor; pass it once", kind_,
             it->second, name);
    MT_CHECK(is_floating(p.dtype()),
             "{}: parameter '{}' has dtype {}; only floating-point "
             "tensors can be optimized",
             kind_, name, dtype_name(p.dtype()));
    MT_CHECK(p.is_leaf(),
             "{}: parameter '{}' is not a leaf (an op produced it); optimize the "
             "leaf it was computed from, or detach() it",
             kind_, name);
    MT_CHECK(p.is_contiguous(),
             "{}: parameter '{}' ({}) is not contiguous; optimizers update "
             "parameters in place and need contiguous ones",
             kind_, name, p.shape().str());
  }
}

void Optimizer::zero_grad() {
  for (auto& [name, p] : params_) p.zero_grad();
}

void Optimizer::check_state_devices(const char* optimizer, size_t entry, const char* what) {
  for (size_t i = 0; i < params().size(); ++i)
    if (state(i).size() > entry)
      MT_CHECK(state(i)[entry].device() == params()[i].second.device(),
               "{}: the {} of parameter '{}' is on {} and the parameter on {} (the model moved "
               "after the optimizer's first step); bring the state along: "
               "load_state_dict(state_dict()) copies it onto the parameters' devices",
               optimizer, what, params()[i].first, state(i)[entry].device().str(),
               params()[i].second.device().str());
}

std::vector<size_t> Optimizer::captured_parameters(bool needs_state) {
  std::vector<size_t> captured;
  std::vector<std::pair<Device, bool>> devices;  // capture status by device, queried once
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& p = params_[i].second;
    if (!p.device().is_cuda() || !p.grad().defined()) continue;
    auto it = std::find_if(devices.begin(), devices.end(),
                           [&](const auto& d) { return d.first == p.device(); });
    if (it == devices.end())
      it = devices.insert(devices.end(), {p.device(), is_capturing(p.device())});
    if (!it->second) continue;
    MT_CHECK(!needs_state || !state_[i].empty(),
             "{}: the state of parameter '{}' would be created while {} is being captured into a "
             "CUDA graph, and every replay would reset it; take one step before the capture",
             kind_, params_[i].first, p.device().str());
    captured.push_back(i);
  }
  return captured;
}

void Optimizer::init_state(size_t i) {
  const Tensor& p = params_[i].second;
  std::vector<Tensor>& s = state_[i];
  s.clear();
  for (const std::string& n : state_names())
    s.push_back(n == kStep ? zeros(Shape{}, DType::i64).to(step_device(p)) : zeros_of(p));
}

Tensor Optimizer::gradient(size_t i) const {
  const auto& [name, p] = params_[i];
  Tensor g = p.grad();
  if (!g.defined()) return g;
  MT_CHECK(g.shape() == p.shape() && g.dtype() == p.dtype() && g.device() == p.device(),
           "{}: the gradient of parameter '{}' is {} but the parameter is {}; set grads that "
           "match their parameters",
           kind_, name, g.str(), p.str());
  return g.is_contiguous() ? g : g.contiguous();
}

NamedParams Optimizer::state_views() const {
  const std::vector<std::string> names = state_names();
  NamedParams out;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (size_t k = 0; k < state_[i].size(); ++k)
      out.emplace_back(params_[i].first + "." + names[k], state_[i][k]);
  }
  return out;
}

NamedParams Optimizer::state_dict() const {
  NoGradGuard no_grad;
  NamedParams out = state_views();
  for (auto& [name, t] : out) t = t.clone();
  return out;
}

namespace {

// What is wrong with the values of a state tensor ("" if nothing): a step below 0, a non-finite
// moment, or a negative second moment. One pass over a host copy (a load is rare).
std::string bad_state_values(const Tensor& t, bool is_step, bool nonnegative) {
  if (is_step) {
    const int64_t step = t.to(kCPU).item<int64_t>();
    return step < 0 ? fmt::format("is {}; a step count is >= 0", step) : "";
  }
  const std::vector<double> v = t.to(kCPU).contiguous().to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i]))
      return fmt::format("holds {} at element {}; an optimizer state is finite", v[i], i);
    if (nonnegative && v[i] < 0)
      return fmt::format("holds {} at element {}; a second moment is >= 0", v[i], i);
  }
  return "";
}

}  // namespace

void Optimizer::load_state_dict(const NamedParams& state) {
  const std::vector<std::string> names = state_names();
  const std::vector<std::string> nonneg_list = nonnegative_state_names();
  const std::set<std::string> nonnegative(nonneg_list.begin(), nonneg_list.end());
  std::map<std::string, const Tensor*> given;
  std::vector<std::string> problems;
  for (const auto& [name, t] : state) {
    if (!given.emplace(name, &t).second)
      problems.push_back(fmt::format("'{}' is given twice", name));
  }
  std::set<std::string> used;
  std::vector<std::vector<Tensor>> next(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [pname, p] = params_[i];
    std::vector<const Tensor*> found;
    std::vector<std::string> absent;
    for (const std::string& n : names) {
      auto it = given.find(pname + "." + n);
      if (it == given.end()) {
        absent.push_back(n);
        continue;
      }
      used.insert(it->first);
      const Tensor& t = *it->second;
      const bool is_step = n == kStep;
      const Shape want_shape = is_step ? Shape{} : p.shape();
      const DType want_dtype = is_step ? DType::i64 : p.dtype();
      if (!t.defined() || !(t.shape() == want_shape) || t.dtype() != want_dtype) {
        problems.push_back(fmt::format("'{}.{}' is {} but must be {} {}", pname, n,
                                       t.defined() ? t.str() : "undefined", dtype_name(want_dtype),
                                       want_shape.str()));
      } else if (std::string bad = bad_state_values(t, is_step, nonnegative.count(n) > 0);
                 !bad.empty()) {
        problems.push_back(fmt::format("'{}.{}' {}", pname, n, bad));
      }
      found.push_back(&t);
    }
    if (!found.empty() && !absent.empty()) {
      problems.push_back(
          fmt::format("parameter '{}' has state but lacks '{}'", pname, fmt::join(absent, "', '")));
    }
    if (absent.empty() && problems.empty()) {
      for (size_t k = 0; k < names.size(); ++k) {
        Tensor s = names[k] == kStep ? empty(Shape{}, DType::i64) : empty_like(p);
        s.copy_(found[k]->detach());  // the saved values (a state records no gradient)
        if (names[k] == kStep) s = s.to(step_device(p));
        next[i].push_back(std::move(s));
      }
    }
  }
  for (const auto& [name, t] : state) {
    if (!used.count(name)) {
      problems.push_back(
          fmt::format("'{}' is not a state of this {} (its states are '{}' per parameter)", name,
                      kind_, fmt::join(names, "', '")));
    }
  }
  MT_CHECK(problems.empty(),
           "{}::load_state_dict: {} problem{}, the state was not changed:\n  - {}\nload a state "
           "saved from an optimizer of the same kind and options over the same parameters",
           kind_, problems.size(), problems.size() == 1 ? "" : "s", fmt::join(problems, "\n  - "));
  state_ = std::move(next);
}

namespace {

void check_max_norm(double max_norm) {
  MT_CHECK(std::isfinite(max_norm) && max_norm >= 0,
           "clip_grad_norm: max_norm must be a finite number >= 0 (the largest total gradient "
           "norm), got {}",
           max_norm);
}

void check_total(double total, bool error_if_nonfinite) {
  MT_CHECK(!error_if_nonfinite || std::isfinite(total),
           "clip_grad_norm: the total gradient norm is {}: a gradient holds NaN or inf (a "
           "diverged step; lower the learning rate or check the data); no gradient was changed",
           total);
}

// The device clipping of clip_grad_norm_on_device; with `error_if_nonfinite`, the total is read
// (one synchronisation) and checked before any gradient changes.
Tensor clip_on_device(const TensorList& params, double max_norm, bool error_if_nonfinite) {
  check_max_norm(max_norm);
  NoGradGuard no_grad;
  TensorList grads;
  std::vector<Tensor> with_grad;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    grads.push_back(g);
    with_grad.push_back(p);
  }
  // No gradient: a zero on the parameters' device (a fill, so a captured step stays capturable).
  if (grads.empty()) return zeros(Shape{}, DType::f64, params.empty() ? kCPU : params[0].device());
  // The norm of the per-gradient norms (torch's definition) is the root of the summed squares,
  // summed over every gradient in one multi-tensor pass (engine/ops/foreach.cpp; the host path's
  // rounding differs by ~1e-16 relative).
  const Tensor total = sqrt(foreach_sum_squares(grads));  // 0-d f64
  if (error_if_nonfinite) check_total(total.item<double>(), true);
  // torch multiplies by clamp(coef, max=1); a factor of exactly 1 changes nothing.
  const Tensor coef = clamp(div(scalar_like(total, max_norm), add(total, 1e-6)), std::nullopt, 1.0);
  // New gradients (a gradient may be a broadcast view, or shared): each g * coef.to(g.dtype()).
  TensorList scaled = foreach_mul(grads, coef);
  for (size_t i = 0; i < with_grad.size(); ++i) with_grad[i].set_grad(scaled[i]);
  return total;
}

}  // namespace

Tensor clip_grad_norm_on_device(const TensorList& params, double max_norm) {
  return clip_on_device(params, max_norm, /*error_if_nonfinite=*/false);
}

double clip_grad_norm(const TensorList& params, double max_norm, bool error_if_nonfinite) {
  check_max_norm(max_norm);
  for (const Tensor& p : params) {
    const Tensor g = p.grad();
    if (g.defined() && !g.device().is_cpu())
      return clip_on_device(params, max_norm, error_if_nonfinite).item<double>();
  }
  NoGradGuard no_grad;
  std::vector<Tensor> with_grad;
  double total_sq = 0;
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    const Tensor g64 = g.dtype() == DType::f64 ? g : g.to(DType::f64);
    // Per-gradient norms first, then the norm of the norms, as torch computes it.
    const double norm = std::sqrt(sum(mul(g64, g64)).item<double>());
    total_sq += norm * norm;
    with_grad.push_back(p);
  }
  const double total = std::sqrt(total_sq);
  check_total(total, error_if_nonfinite);
  const double coef = max_norm / (total + 1e-6);
  // torch multiplies by min(coef, 1); a factor of exactly 1 changes nothing, so it is skipped.
  if (coef < 1.0 || std::isnan(coef)) {
    for (Tensor& p : with_grad) {
      Tensor g = p.grad();
      if (g.is_contiguous()) {
        g.mul_(coef);
      } else {
        p.set_grad(mul(g, coef));  // a broadcast view must not be scaled in place
      }
    }
  }
  return total;
}

double clip_grad_norm(const NamedParams& params, double max_norm, bool error_if_nonfinite) {
  TensorList list;
  for (const auto& [name, p] : params) list.push_back(p);
  return clip_grad_norm(list, max_norm, error_if_nonfinite);
}

Tensor clip_grad_norm_on_device(const NamedParams& params, double max_norm) {
  TensorList list;
  for (const auto& [name, p] : params) list.push_back(p);
  return clip_grad_norm_on_device(list, max_norm);
}

}  // namespace mt::optim
