// SGD: the optimizer (state, validation, dispatch) and its CPU kernel.
#include "engine/optim/sgd.h"

#include <fmt/format.h>

#include "engine/autograd/grad_mode.h"
#include "engine/cpu/loops.h"
#include "engine/optim/kernels.h"

namespace mt::optim {

// ---- CPU kernel ----
DispatchStub<SgdKernel> sgd_kernel("sgd");

namespace {

// Operation by operation as torch's single-tensor SGD (scalars in double, elementwise maths at
// the parameter's precision).
void sgd_cpu(Tensor& param, const Tensor& grad, Tensor& momentum_buffer, bool first,
             const SgdHyper& h) {
  dispatch_float(param.dtype(), "sgd", [&]<class T>() {
    T* p = param.data_ptr<T>();
    const T* g = grad.data_ptr<T>();
    T* buf = h.momentum != 0 ? momentum_buffer.data_ptr<T>() : nullptr;
    const int64_t n = param.numel();
    const bool decay = h.weight_decay != 0;
    const T weight_decay = T(h.weight_decay);
    const T momentum = T(h.momentum);
    const T one_minus_dampening = T(1 - h.dampening);
    const T neg_lr = T(-h.lr);
    // Elements are independent: split across threads (same result).
    cpu::parallel_range(n, 4, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T gi = h.maximize ? -g[i] : g[i];
        if (decay) gi = gi + weight_decay * p[i];
        if (buf) {
          buf[i] = first ? gi : buf[i] * momentum + one_minus_dampening * gi;
          gi = h.nesterov ? gi + momentum * buf[i] : buf[i];
        }
        p[i] = p[i] + neg_lr * gi;
      }
    });
  });
}

[[maybe_unused]] const bool sgd_registered = (sgd_kernel.set(DeviceType::CPU, &sgd_cpu), true);

}  // namespace

// ---- optimizer ----
SGD::SGD(NamedParams params, SGDOptions options)
    : Optimizer(std::move(params), "SGD"), options_(options) {
  const SGDOptions& o = options_;
  MT_CHECK(o.lr >= 0, "SGD: lr = {} must be >= 0", o.lr);
  MT_CHECK(o.momentum >= 0, "SGD: momentum = {} must be >= 0", o.momentum);
  MT_CHECK(o.weight_decay >= 0, "SGD: weight_decay = {} must be >= 0", o.weight_decay);
  MT_CHECK(!o.nesterov || (o.momentum > 0 && o.dampening == 0),
           "SGD: Nesterov momentum needs momentum > 0 and dampening = 0 (got momentum {}, "
           "dampening {})",
           o.momentum, o.dampening);
}

void SGD::set_lr(double lr) {
  MT_CHECK(lr >= 0, "SGD: lr = {} must be >= 0", lr);
  options_.lr = lr;
}

std::vector<std::string> SGD::state_names() const {
  if (options_.momentum == 0) return {};
  return {"momentum_buffer"};
}

std::map<std::string, std::string> SGD::hyperparameters() const {
  const SGDOptions& o = options_;
  return {{"lr", fmt::format("{}", o.lr)},
          {"momentum", fmt::format("{}", o.momentum)},
          {"dampening", fmt::format("{}", o.dampening)},
          {"weight_decay", fmt::format("{}", o.weight_decay)},
          {"nesterov", o.nesterov ? "true" : "false"},
          {"maximize", o.maximize ? "true" : "false"}};
}

void SGD::step() {
  NoGradGuard no_grad;
  const SGDOptions& o = options_;
  const SgdHyper hyper{o.lr, o.momentum, o.dampening, o.weight_decay, o.nesterov, o.maximize};
  Tensor none;
  const bool has_buffer = o.momentum != 0;
  // In a CUDA-graph capture: the momentum buffers must exist (refused before any update).
  (void)captured_parameters(/*needs_state=*/has_buffer);
  check_state_devices("sgd", 0, "momentum");
  for (size_t i = 0; i < params().size(); ++i) {
    const Tensor g = gradient(i);
    if (!g.defined()) continue;
    const bool first = has_buffer && state(i).empty();
    if (first) init_state(i);
    Tensor p = params()[i].second;
    sgd_kernel(p.device(), p, g, has_buffer ? state(i)[0] : none, first, hyper);
    p.storage().bump_version();
  }
}

}  // namespace mt::optim
