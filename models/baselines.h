// Baseline forecasters, all mapping each neuron's context (sum N, Tin) to (sum N, pred_length)
// independently of the other neurons:
// - CopyLast: repeats the last context frame (the reference of POCO's score).
// - NLinear: subtracts the last value, applies Linear(Tin -> pred), adds it back.
// - MlpForecaster: Linear(Tin -> H), ReLU, Linear(H -> pred), shared by all neurons.
#pragma once

#include <memory>

#include "engine/nn/module.h"

namespace mt::models {

Tensor copy_last(const Tensor& context, int64_t pred_length);

class NLinear : public nn::Module {
 public:
  NLinear(int64_t context, int64_t pred_length, Generator& gen, DType dtype = DType::f32);
  Tensor forward(const Tensor& context, const nn::ParamMap* ov = nullptr) const;

 private:
  std::shared_ptr<nn::Linear> proj_;
};

class MlpForecaster : public nn::Module {
 public:
  MlpForecaster(int64_t context, int64_t hidden, int64_t pred_length, Generator& gen,
                DType dtype = DType::f32);
  Tensor forward(const Tensor& context, const nn::ParamMap* ov = nullptr) const;

 private:
  std::shared_ptr<nn::Linear> fc1_, fc2_;
};

}  // namespace mt::models
