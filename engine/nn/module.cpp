#include "engine/nn/module.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "engine/autograd/grad_mode.h"

namespace mt::nn {

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect("", out);
  // One tensor under two names (tied weights) would be counted twice by clipping and the
  // parameter count, saved twice, and a functional override of one name would leave the other
  // at the original: refused, naming both.
  if (out.size() > 1) {
    std::vector<std::pair<const TensorImpl*, size_t>> seen;
    seen.reserve(out.size());
    for (size_t i = 0; i < out.size(); ++i) seen.emplace_back(out[i].second.impl(), i);
    std::sort(seen.begin(), seen.end());
    for (size_t i = 1; i < seen.size(); ++i)
      MT_CHECK(seen[i].first != seen[i - 1].first,
               "parameters '{}' and '{}' are one tensor (tied weights), which metatape does not "
               "support: register it once, in one module, and read it from there in the other",
               out[std::min(seen[i].second, seen[i - 1].second)].first,
               out[std::max(seen[i].second, seen[i - 1].second)].first);
  }
  return out;
}

void Module::collect(const std::string& prefix,
                     std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& [name, t] : params_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

int64_t Module::parameter_bytes(bool with_buffers) const {
  auto bytes_of = [](const std::vector<std::pair<std::string, Tensor>>& named) {
    int64_t bytes = 0;
    for (const auto& [name, t] : named) bytes += t.numel() * int64_t(itemsize(t.dtype()));
    return bytes;
  };
  return bytes_of(named_parameters()) + (with_buffers ? bytes_of(named_buffers()) : 0);
}

std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Tensor>> out;
  collect_buffers("", out);
  return out;
}

void Module::collect_buffers(const std::string& prefix,
                             std::vector<std::pair<std::string, Tensor>>& out) const {
  for (const auto& [name, t] : buffers_) out.emplace_back(prefix + name, t);
  for (const auto& [name, child] : children_) child->collect_buffers(prefix + name + ".", out);
}

namespace {
// Points t's TensorImpl at a copy of its data on `device`. Every handle of the tensor shares
// the impl, so all of them see the move (as torch's `param.data = param.data.to(device)`).
void move_impl(const Tensor& t, Device device) {
  if (!t.defined() || t.device() == device) return;
  const Tensor moved = t.detach().to(device);  // contiguous, no history (under NoGradGuard)
  TensorImpl* impl = t.impl();
  impl->storage = moved.impl()->storage;
  impl->offset = moved.offset();
  impl->strides = moved.strides();
}
}  // namespace

Module& Module::to(Device device) {
  NoGradGuard no_grad;
  for (auto& [name, t] : params_) {
    move_impl(t, device);
    const Tensor g = t.grad();
    if (g.defined() && g.device() != device) t.set_grad(g.detach().to(device));
  }
  for (auto& [name, t] : buffers_) move_impl(t, device);
  for (auto& [name, child] : children_) child->to(device);
  return *this;
}

Device Module::device() const {
  const auto params = named_parameters();
  if (!params.empty()) return params.front().second.device();
  const auto buffers = named_buffers();
  return buffers.empty() ? kCPU : buffers.front().second.device();
}

void Module::set_prefix(const std::string& prefix) {
  prefix_ = prefix;
  for (auto& [name, child] : children_) child->set_prefix(prefix + name + ".");
}

TensorList Module::parameters() const {
  TensorList out;
  for (auto& [name, t] : named_parameters()) out.push_back(t);
  return out;
}

ParamMap Module::parameter_map() const {
  ParamMap out;
  for (auto& [name, t] : named_parameters()) out.emplace(name, t);
  return out;
}

void Module::zero_grad() {
  for (auto& t : parameters()) t.zero_grad();
}

Tensor& Module::register_parameter(const std::string& name, Tensor value) {
  MT_CHECK(name.find('.') == std::string::npos,
           "register_parameter: name '{}' must not contain '.' (dots separate modules)", name);
  for (const auto& [n, t] : params_)
    MT_CHECK(n != name, "register_parameter: '{}' is registered twice", name);
  value.set_requires_grad(true);
  params_.emplace_back(name, std::move(value));
  return params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor value) {
  MT_CHECK(name.find('.') == std::string::npos,
           "register_buffer: name '{}' must not contain '.' (dots separate modules)", name);
  MT_CHECK(value.defined(), "register_buffer: '{}' is an undefined tensor", name);
  for (const auto& [n, t] : buffers_)
    MT_CHECK(n != name, "register_buffer: '{}' is registered twice", name);
  for (const auto& [n, t] : params_)
    MT_CHECK(n != name, "register_buffer: '{}' is already a parameter", name);
  buffers_.emplace_back(name, std::move(value));
  return buffers_.back().second;
}

void Module::check_overrides(const ParamMap& overrides) const {
  const auto named = named_parameters();
  std::vector<std::string> unknown;
  for (const auto& [key, t] : overrides) {
    bool found = false;
    for (const auto& [name, p] : named) found |= name == key;
    if (!found) unknown.push_back(key);
  }
  MT_CHECK(unknown.empty(),
           "parameter overrides name {} parameter(s) the model does not have: {}; keys are the "
           "dotted names of named_parameters(), e.g. '{}'",
           unknown.size(), fmt::join(unknown, ", "), named.empty() ? "" : named.front().first);
}

const Tensor& Module::param(const ParamMap* overrides, const std::string& name,
                            const Tensor& own) const {
  if (overrides) {
    auto it = overrides->find(prefix_ + name);
    if (it != overrides->end()) {
      MT_CHECK(it->second.defined(), "override for parameter '{}' is an undefined tensor",
               it->first);
      MT_CHECK(it->second.shape() == own.shape() && it->second.dtype() == own.dtype(),
               "override for parameter '{}' has {} {} but the parameter is {} {}", it->first,
               dtype_name(it->second.dtype()), it->second.shape().str(), dtype_name(own.dtype()),
               own.shape().str());
      return it->second;
    }
    // Not overridden: `name` must still be one of this module's own (a misspelt name in a
    // forward would silently ignore every override of that parameter).
    MT_CHECK(std::any_of(params_.begin(), params_.end(),
                         [&](const auto& p) { return p.first == name; }),
             "param(): '{}' is not a parameter of this module ({}); name it as it was registered",
             name,
             prefix_.empty() ? std::string("the top-level module")
                             : "'" + prefix_.substr(0, prefix_.size() - 1) + "'");
  }
  return own;
}

Linear::Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen, DType dtype)
    : in_(in_features), out_(out_features) {
  MT_CHECK(in_features > 0 && out_features > 0, "Linear: features must be positive, got {} -> {}",
           in_features, out_features);
  const double bound = 1.0 / std::sqrt(double(in_features));
  weight_ = register_parameter("weight", uniform(Shape{out_, in_}, -bound, bound, gen, dtype));
  if (bias) bias_ = register_parameter("bias", uniform(Shape{out_}, -bound, bound, gen, dtype));
}

Tensor Linear::forward(const Tensor& x, const ParamMap* overrides) const {
  MT_CHECK(x.dim() >= 1 && x.size(-1) == in_,
           "Linear '{}': input {} must end in {} features", prefix(), x.shape().str(), in_);
  return forward(x, Activation::none, overrides);
}

Tensor Linear::forward(const Tensor& x, Activation activation, const ParamMap* overrides) const {
  MT_CHECK(x.dim() >= 1 && x.size(-1) == in_,
           "Linear '{}': input {} must end in {} features", prefix(), x.shape().str(), in_);
  return linear(x, weight(overrides), bias(overrides), activation);
}

LayerNorm::LayerNorm(int64_t dim, double eps, DType dtype) : eps_(eps) {
  weight_ = register_parameter("weight", ones(Shape{dim}, dtype));
  bias_ = register_parameter("bias", zeros(Shape{dim}, dtype));
}

Tensor LayerNorm::forward(const Tensor& x, const ParamMap* overrides) const {
  return layer_norm(x, 1, param(overrides, "weight", weight_), param(overrides, "bias", bias_),
                    eps_);
}

Embedding::Embedding(int64_t rows, int64_t dim, double init_std, Generator& gen, DType dtype) {
  weight_ = register_parameter("weight", normal(Shape{rows, dim}, 0.0, init_std, gen, dtype));
}

const Tensor& Embedding::table(const ParamMap* overrides) const {
  return param(overrides, "weight", weight_);
}

Tensor Embedding::forward(const Tensor& indices, const ParamMap* overrides) const {
  return embedding(table(overrides), indices);
}

}  // namespace mt::nn
