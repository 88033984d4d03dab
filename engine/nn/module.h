// Modules with named parameters and functional forward passes.
//
// Meta-learning runs one model many times per step with substituted parameters ("fast weights"
// = initial weights - lr * grads, still attached to the graph). So every parameter has a stable
// dotted name ("encoder.0.weight") and every forward takes an optional ParamMap that overrides
// any subset of them by name; the module's own tensors are never copied or modified.
//
// Buffers are named tensors that are data, not parameters (POCO's rotary frequencies): they
// move with the module but are not trained, returned by parameter_map() or checkpointed.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/generator.h"
#include "engine/ops.h"

namespace mt::nn {

// name -> tensor; an ordered map so iteration (and thus checkpoints) is deterministic.
using ParamMap = std::map<std::string, Tensor>;

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter of this module and its children, with full dotted names, in registration
  // order.
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  TensorList parameters() const;
  ParamMap parameter_map() const;
  // Checks that every key of `overrides` names a parameter of this module (forward() looks up
  // only the names it uses, so a misspelt key would otherwise be ignored silently); the error
  // lists the unknown keys.
  void check_overrides(const ParamMap& overrides) const;
  // Every buffer of this module and its children, with full dotted names, in registration order.
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  // Bytes of the parameters' values (numel x itemsize), with the buffers' when `with_buffers`.
  int64_t parameter_bytes(bool with_buffers = false) const;
  void zero_grad();

  // Moves every parameter (and its .grad) and every buffer to `device`, in place, as
  // torch.nn.Module.to: each tensor handle keeps its identity, name and requires_grad, so the
  // module's own fields, optimizers built over named_parameters() and ParamMaps taken before
  // the move see the moved data. Tensors already on `device` are left as they are (to(kCPU) of
  // a CPU module changes nothing). Optimizer state created before the move stays where it was:
  // build (or load) the optimizer after moving. Views of a parameter taken before the move keep
  // the old storage. Runs without recording gradients.
  Module& to(Device device);
  // The device of the first parameter (else the first buffer); the CPU for a module with
  // neither.
  Device device() const;

 protected:
  // Registers a parameter (a leaf that requires grad) under `name`.
  Tensor& register_parameter(const std::string& name, Tensor value);
  // Registers a buffer (data that moves with the module but is not trained) under `name`; the
  // returned handle and the stored one share the tensor, so a move is seen through both.
  Tensor& register_buffer(const std::string& name, Tensor value);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> child) {
    MT_CHECK(name.find('.') == std::string::npos && child != nullptr,
             "register_module: '{}' must be a non-null module with a name without '.'", name);
    children_.emplace_back(name, child);
    child->set_prefix(prefix_ + name + ".");  // re-run for the subtree when this one is adopted
    return child;
  }
  // The tensor a forward pass uses for parameter `own` registered as `name`: the override from
  // `overrides` under this module's full name prefix, if there is one, else `own`.
  const Tensor& param(const ParamMap* overrides, const std::string& name, const Tensor& own) const;
  const std::string& prefix() const { return prefix_; }

 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Tensor>>& out) const;
  void collect_buffers(const std::string& prefix,
                       std::vector<std::pair<std::string, Tensor>>& out) const;
  void set_prefix(const std::string& prefix);

  std::vector<std::pair<std::string, Tensor>> params_;
  std::vector<std::pair<std::string, Tensor>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  std::string prefix_;  // full name of this module followed by '.', empty at the root
};

// y = x W^T + b with W (out, in), b (out): the layout of torch.nn.Linear, so weights exchange
// with PyTorch without transposes. Initialised as torch does: U(-1/sqrt(in), 1/sqrt(in)).
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen,
         DType dtype = DType::f32);
  Tensor forward(const Tensor& x, const ParamMap* overrides = nullptr) const;  // (..., in)
  // activation(forward(x)) as one linear() op (on CUDA one GEMM with a bias/ReLU epilogue).
  Tensor forward(const Tensor& x, Activation activation,
                 const ParamMap* overrides = nullptr) const;

  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  // The parameters a forward with these overrides uses (bias may be undefined).
  const Tensor& weight(const ParamMap* overrides = nullptr) const {
    return param(overrides, "weight", weight_);
  }
  Tensor bias(const ParamMap* overrides = nullptr) const {
    return bias_.defined() ? param(overrides, "bias", bias_) : Tensor();
  }

 private:
  int64_t in_, out_;
  Tensor weight_;  // (out, in)
  Tensor bias_;    // (out) or undefined
};

// LayerNorm over the last dim with affine weight (ones) and bias (zeros), as torch.nn.LayerNorm.
class LayerNorm : public Module {
 public:
  LayerNorm(int64_t dim, double eps = 1e-5, DType dtype = DType::f32);
  Tensor forward(const Tensor& x, const ParamMap* overrides = nullptr) const;  // (..., dim)

 private:
  double eps_;
  Tensor weight_, bias_;  // (dim)
};

// A table of rows gathered by index, initialised N(0, init_std).
class Embedding : public Module {
 public:
  Embedding(int64_t rows, int64_t dim, double init_std, Generator& gen, DType dtype = DType::f32);
  Tensor forward(const Tensor& indices, const ParamMap* overrides = nullptr) const;
  // The table itself (or its override).
  const Tensor& table(const ParamMap* overrides = nullptr) const;

 private:
  Tensor weight_;  // (rows, dim)
};

}  // namespace mt::nn
