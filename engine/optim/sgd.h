// Stochastic gradient descent, exactly as torch.optim.SGD: weight decay (added to the
// gradient), momentum with dampening, Nesterov momentum. State per parameter: momentum_buffer
// (only when momentum != 0).
#pragma once

#include "engine/optim/optimizer.h"

namespace mt::optim {

// torch.optim.SGD's defaults.
struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
  bool maximize = false;
};

class SGD final : public Optimizer {
 public:
  explicit SGD(NamedParams params, SGDOptions options = {});

  void step() override;
  const char* name() const override { return "SGD"; }
  double lr() const override { return options_.lr; }
  void set_lr(double lr) override;
  std::map<std::string, std::string> hyperparameters() const override;
  const SGDOptions& options() const { return options_; }

 protected:
  std::vector<std::string> state_names() const override;

 private:
  SGDOptions options_;
};

}  // namespace mt::optim
