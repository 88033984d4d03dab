// Optimizers over a list of named parameters, and gradient clipping.
//
// An optimizer holds the parameters' handles (the same tensors as the model's, so updates are
// seen by every holder) and a per-parameter state, created on a parameter's first update. step()
// updates every parameter that has a gradient, in place under a NoGradGuard, through a
// per-parameter kernel behind a DispatchStub (engine/optim/kernels.h); parameters without a
// gradient are skipped and keep their state. Same inputs give bitwise the same results.
//
// State as named tensors: state_dict() returns "<parameter name>.<state name>" tensors (e.g.
// "fc1.weight.exp_avg"); a state called "step" is a 0-d i64 CPU tensor, every other state has
// its parameter's shape, dtype and device. Saved with io::save_safetensors and loaded back with
// load_state_dict(), a run resumes bitwise, given the same hyperparameters: they are not part of
// the state (construct the optimizer with the same options; hyperparameters() gives them as text
// for the checkpoint's metadata). A model moved to another device after the first step needs its
// state moved too (load_state_dict(state_dict()) copies it onto the parameters' devices).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"

namespace mt::optim {

// (name, parameter) pairs, e.g. nn::Module::named_parameters().
using NamedParams = std::vector<std::pair<std::string, Tensor>>;

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient.
  virtual void step() = 0;
  // Drops every parameter's gradient, so the next backward() starts from none (torch's
  // zero_grad(set_to_none=True)).
  void zero_grad();

  virtual const char* name() const = 0;  // "AdamW", "SGD"
  virtual double lr() const = 0;
  virtual void set_lr(double lr) = 0;  // for learning-rate schedules
  // The hyperparameters as text (shortest round-trip form), for checkpoint metadata and logs.
  virtual std::map<std::string, std::string> hyperparameters() const = 0;

  const NamedParams& params() const { return params_; }

  // Copies of the state of every parameter updated at least once, in parameter order.
  NamedParams state_dict() const;
  // The same entries without copying: the live state tensors, valid until the next step() or
  // load_state_dict() (for saving them straight to a file with no device copy).
  NamedParams state_views() const;
  // Replaces the whole state with copies of `state` (as returned by state_dict()). A parameter
  // has all of its state entries or none (none = not updated yet). Shapes, dtypes, names and
  // values (finite; a step >= 0; second moments >= 0) are checked first; the error lists every
  // problem and nothing is changed.
  void load_state_dict(const NamedParams& state);

 protected:
  // Checks the list: defined, floating-point leaves under distinct names, each tensor once.
  Optimizer(NamedParams params, const char* kind);

  // The names of the per-parameter state tensors, in the order state(i) holds them.
  virtual std::vector<std::string> state_names() const = 0;
  // Where a parameter's "step" count lives: the CPU (as torch keeps it), or the parameter's
  // device for an optimizer whose kernels count on the device (AdamWOptions::capturable).
  virtual Device step_device(const Tensor& /*param*/) const { return kCPU; }
  // The states that are never negative (second-moment estimates): load_state_dict refuses a
  // negative value there (its square root would be NaN at the next step).
  virtual std::vector<std::string> nonnegative_state_names() const { return {}; }

  // The state of parameter i: empty until its first update, else one tensor per state_names()
  // entry. init_state() creates it: "step" = 0, everything else zeros (a step() calls
  // captured_parameters() first, which refuses creating it inside a CUDA-graph capture).
  std::vector<Tensor>& state(size_t i) { return state_[i]; }
  void init_state(size_t i);

  // For a step() inside a CUDA-graph capture, called before anything moves: the parameters with a
  // gradient on a capturing device. With `needs_state`, each must already have its state (taken
  // one step before the capture): created in the capture, the zero-fill would be a kernel of the
  // graph and every replay would reset the state. One capture query per device.
  std::vector<size_t> captured_parameters(bool needs_state);
  // Refuses state entry `entry` (named `what`) on another device than its parameter (a model
  // moved after the first step), before step() updates anything; `optimizer` names the caller.
  void check_state_devices(const char* optimizer, size_t entry, const char* what);

  // The gradient of parameter i to update it with: undefined when it has none, else checked
  // against the parameter (shape, dtype, device) and contiguous.
  Tensor gradient(size_t i) const;

 private:
  const char* kind_;
  NamedParams params_;
  std::vector<std::vector<Tensor>> state_;
};

// Clips gradients by their global L2 norm, as torch.nn.utils.clip_grad_norm_: the total norm
// is sqrt(sum_i ||g_i||^2) over the parameters that have a gradient (norms computed in f64);
// when max_norm / (total + 1e-6) < 1 every gradient is multiplied by that factor, in place.
// Returns the total norm before clipping (read on the host: one synchronisation on a device).
// With gradients on a device the norm is computed there and read once (the function below plus
// item()); on the CPU the norms are computed one gradient at a time, as before. max_norm must
// be finite and >= 0. A NaN or inf gradient makes the total non-finite and, as in torch, every
// gradient NaN after clipping; with `error_if_nonfinite` that is an error instead, before any
// gradient is changed (torch's error_if_nonfinite).
double clip_grad_norm(const TensorList& params, double max_norm, bool error_if_nonfinite = false);
double clip_grad_norm(const NamedParams& params, double max_norm, bool error_if_nonfinite = false);

// The same clipping without any host read, for a step that must not wait for the device:
// the norms, the factor min(1, max_norm / (total + 1e-6)) and the products all stay on the
// gradients' device (each gradient is replaced by a scaled copy). Returns the total norm before
// clipping as a 0-d f64 tensor there (a 0-d zero on the first parameter's device when no
// parameter has a gradient; on the CPU for an empty list). All gradients must be on one device.
Tensor clip_grad_norm_on_device(const TensorList& params, double max_norm);
Tensor clip_grad_norm_on_device(const NamedParams& params, double max_norm);

}  // namespace mt::optim
