#include "models/baselines.h"

namespace mt::models {

namespace {
Tensor last_frame(const Tensor& context) {
  MT_CHECK(context.dim() == 2 && context.size(1) > 0,
           "baseline: context must be (neurons, frames) with frames > 0, got {}",
           context.shape().str());
  return context.narrow(1, context.size(1) - 1, 1);  // (N, 1)
}
}  // namespace

Tensor copy_last(const Tensor& context, int64_t pred_length) {
  MT_CHECK(pred_length > 0, "copy_last: pred_length must be positive, got {}", pred_length);
  return last_frame(context).expand(Shape{context.size(0), pred_length}).contiguous();
}

NLinear::NLinear(int64_t context, int64_t pred_length, Generator& gen, DType dtype) {
  proj_ = register_module("proj", std::make_shared<nn::Linear>(context, pred_length, true, gen, dtype));
}

Tensor NLinear::forward(const Tensor& context, const nn::ParamMap* ov) const {
  Tensor last = last_frame(context);
  return add(proj_->forward(sub(context, last), ov), last);
}

MlpForecaster::MlpForecaster(int64_t context, int64_t hidden, int64_t pred_length, Generator& gen,
                             DType dtype) {
  fc1_ = register_module("fc1", std::make_shared<nn::Linear>(context, hidden, true, gen, dtype));
  fc2_ = register_module("fc2", std::make_shared<nn::Linear>(hidden, pred_length, true, gen, dtype));
}

Tensor MlpForecaster::forward(const Tensor& context, const nn::ParamMap* ov) const {
  return fc2_->forward(fc1_->forward(context, Activation::relu, ov), ov);
}

}  // namespace mt::models
