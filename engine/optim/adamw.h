// AdamW (Loshchilov & Hutter), exactly as torch.optim.AdamW: decoupled weight decay, bias
// correction, optional AMSGrad (normalising by the running maximum of exp_avg_sq).
// State per parameter: step (0-d i64), exp_avg, exp_avg_sq, and max_exp_avg_sq with amsgrad.
#pragma once

#include "engine/optim/optimizer.h"

namespace mt::optim {

// torch.optim.AdamW's defaults.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
  bool maximize = false;
  // Keep each parameter's step count on its device and compute the bias corrections there
  // (torch's capturable=True), so that a CUDA graph capturing step() (engine/core/backend.h
  // CudaGraph) is right at every replay. The same updates otherwise; the lr and the other
  // options are still read at capture time (a later set_lr does not reach the replays). On the
  // CPU it changes nothing. A step inside a capture without it, or before any eager step (the
  // state would be created in the graph and reset by every replay), is refused.
  bool capturable = false;
  // Update the parameters of each device with one multi-tensor call (torch's foreach=True): on
  // CUDA a few kernels for the whole list instead of one (two when capturable) per parameter.
  // The same arithmetic, bitwise; off: one kernel call per parameter.
  bool foreach = true;
};

class AdamW final : public Optimizer {
 public:
  explicit AdamW(NamedParams params, AdamWOptions options = {});

  void step() override;
  const char* name() const override { return "AdamW"; }
  double lr() const override { return options_.lr; }
  void set_lr(double lr) override;
  std::map<std::string, std::string> hyperparameters() const override;
  const AdamWOptions& options() const { return options_; }

 protected:
  std::vector<std::string> state_names() const override;
  Device step_device(const Tensor& param) const override;
  std::vector<std::string> nonnegative_state_names() const override {
    return {"exp_avg_sq", "max_exp_avg_sq"};
  }

 private:
  AdamWOptions options_;
};

}  // namespace mt::optim
