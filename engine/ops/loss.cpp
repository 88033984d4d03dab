// Losses, composed from differentiable ops (their gradients of any order come for free).
#include "engine/ops/elementwise.h"

namespace mt {

Tensor mse_loss(const Tensor& prediction, const Tensor& target) {
  check_operands("mse_loss", {&prediction, &target});
  MT_CHECK(prediction.shape() == target.shape(),
           "mse_loss: prediction {} and target {} must have the same shape (broadcasting here is "
           "almost always a bug; expand explicitly if it is meant)",
           prediction.shape().str(), target.shape().str());
  Tensor diff = sub(prediction, target);
  return mean(mul(diff, diff));
}

}  // namespace mt
