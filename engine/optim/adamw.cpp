// AdamW: the optimizer (state, validation, dispatch) and its CPU kernel.
#include "engine/optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>

#include "engine/autograd/grad_mode.h"
#include "engine/core/backend.h"
#include "engine/cpu/loops.h"
#include "engine/optim/adamw_math.h"
#include "engine/optim/kernels.h"

namespace mt::optim {

// ---- CPU kernel ----
DispatchStub<AdamWKernel> adamw_kernel("adamw");
DispatchStub<AdamWDeviceStepKernel> adamw_device_step_kernel("adamw");
DispatchStub<AdamWForeachKernel> adamw_foreach_kernel("adamw_foreach");

namespace {

// The arithmetic follows torch's single-tensor AdamW operation by operation (scalars computed in
// double as Python computes them, elementwise maths at the parameter's precision), so f64 runs
// agree with PyTorch to the last bits; torch's vectorised lerp uses a fused multiply-add, the
// one source of difference.
void adamw_cpu(Tensor& param, const Tensor& grad, Tensor& exp_avg, Tensor& exp_avg_sq,
               Tensor& max_exp_avg_sq, int64_t step, const AdamWHyper& h) {
  dispatch_float(param.dtype(), "adamw", [&]<class T>() {
    T* p = param.data_ptr<T>();
    const T* g = grad.data_ptr<T>();
    T* m = exp_avg.data_ptr<T>();
    T* v = exp_avg_sq.data_ptr<T>();
    T* vmax = h.amsgrad ? max_exp_avg_sq.data_ptr<T>() : nullptr;
    const int64_t n = param.numel();

    const AdamWElementStep<T> update(h, step);
    // Elements are independent: split across threads (same result), with the amsgrad branch
    // outside the loops so they vectorise.
    cpu::parallel_range(n, 16, [&](int64_t begin, int64_t end) {
      if (vmax != nullptr) {
        for (int64_t i = begin; i < end; ++i) update(p[i], m[i], v[i], &vmax[i], g[i]);
      } else {
        for (int64_t i = begin; i < end; ++i) update(p[i], m[i], v[i], nullptr, g[i]);
      }
    });
  });
}

void adamw_device_step_cpu(Tensor& param, const Tensor& grad, Tensor& exp_avg,
                           Tensor& exp_avg_sq, Tensor& max_exp_avg_sq, Tensor& step,
                           const AdamWHyper& h) {
  int64_t& count = step.data_ptr<int64_t>()[0];
  ++count;
  adamw_cpu(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, count, h);
}

// The list, one parameter after the other: the reference of every backend's multi-tensor update.
void adamw_foreach_cpu(std::vector<AdamWEntry>& entries, const AdamWHyper& h) {
  for (AdamWEntry& e : entries) {
    if (e.device_step.defined())
      adamw_device_step_cpu(e.param, e.grad, e.exp_avg, e.exp_avg_sq, e.max_exp_avg_sq,
                            e.device_step, h);
    else
      adamw_cpu(e.param, e.grad, e.exp_avg, e.exp_avg_sq, e.max_exp_avg_sq, e.step, h);
  }
}

[[maybe_unused]] const bool adamw_registered =
    (adamw_kernel.set(DeviceType::CPU, &adamw_cpu),
     adamw_device_step_kernel.set(DeviceType::CPU, &adamw_device_step_cpu),
     adamw_foreach_kernel.set(DeviceType::CPU, &adamw_foreach_cpu), true);

}  // namespace

// ---- optimizer ----
AdamW::AdamW(NamedParams params, AdamWOptions options)
    : Optimizer(std::move(params), "AdamW"), options_(options) {
  const AdamWOptions& o = options_;
  MT_CHECK(o.lr >= 0, "AdamW: lr = {} must be >= 0", o.lr);
  MT_CHECK(o.eps >= 0, "AdamW: eps = {} must be >= 0", o.eps);
  MT_CHECK(o.beta1 >= 0 && o.beta1 < 1, "AdamW: beta1 = {} must be in [0, 1)", o.beta1);
  MT_CHECK(o.beta2 >= 0 && o.beta2 < 1, "AdamW: beta2 = {} must be in [0, 1)", o.beta2);
  MT_CHECK(o.weight_decay >= 0, "AdamW: weight_decay = {} must be >= 0", o.weight_decay);
}

Device AdamW::step_device(const Tensor& param) const {
  return options_.capturable ? param.device() : kCPU;
}

void AdamW::set_lr(double lr) {
  MT_CHECK(lr >= 0, "AdamW: lr = {} must be >= 0", lr);
  options_.lr = lr;
}

std::vector<std::string> AdamW::state_names() const {
  std::vector<std::string> names{"step", "exp_avg", "exp_avg_sq"};
  if (options_.amsgrad) names.push_back("max_exp_avg_sq");
  return names;
}

std::map<std::string, std::string> AdamW::hyperparameters() const {
  const AdamWOptions& o = options_;
  return {{"lr", fmt::format("{}", o.lr)},
          {"beta1", fmt::format("{}", o.beta1)},
          {"beta2", fmt::format("{}", o.beta2)},
          {"eps", fmt::format("{}", o.eps)},
          {"weight_decay", fmt::format("{}", o.weight_decay)},
          {"amsgrad", o.amsgrad ? "true" : "false"},
          {"maximize", o.maximize ? "true" : "false"},
          {"capturable", o.capturable ? "true" : "false"},
          {"foreach", o.foreach ? "true" : "false"}};
}

void AdamW::step() {
  NoGradGuard no_grad;
  const AdamWOptions& o = options_;
  const AdamWHyper hyper{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.amsgrad, o.maximize};
  Tensor none;
  // Inside a CUDA-graph capture only what every replay repeats correctly is taken, refused
  // before any count moves: the state must exist, and a count on the host would freeze the bias
  // corrections at the capture's step.
  for (size_t i : captured_parameters(/*needs_state=*/true))
    MT_CHECK(state(i)[0].device() != kCPU,
             "adamw on {} while its stream is being captured into a CUDA graph, with the step "
             "count of parameter '{}' on the host: every replay would repeat the bias "
             "corrections of the capture's step; set AdamWOptions::capturable (the count and "
             "the corrections on the device)",
             params()[i].second.device().str(), params()[i].first);
  check_state_devices("adamw", 1, "state");  // (exp_avg; the step count may be on the host)
  // foreach: the parameters of each device in one call (a few kernels on CUDA), in order.
  std::vector<std::pair<Device, std::vector<AdamWEntry>>> lists;
  for (size_t i = 0; i < params().size(); ++i) {
    const Tensor g = gradient(i);
    if (!g.defined()) continue;
    if (state(i).empty()) init_state(i);
    std::vector<Tensor>& s = state(i);
    Tensor p = params()[i].second;
    const bool device_count = s[0].device() != kCPU;  // capturable: the count on the device
    if (o.foreach) {
      AdamWEntry e{p, g, s[1], s[2], o.amsgrad ? s[3] : none, device_count ? s[0] : none, 0};
      if (!device_count) e.step = ++s[0].data_ptr<int64_t>()[0];
      auto it = std::find_if(lists.begin(), lists.end(),
                             [&](const auto& l) { return l.first == p.device(); });
      if (it == lists.end()) it = lists.insert(lists.end(), {p.device(), {}});
      it->second.push_back(std::move(e));
    } else if (device_count) {
      adamw_device_step_kernel(p.device(), p, g, s[1], s[2], o.amsgrad ? s[3] : none, s[0],
                               hyper);
    } else {
      int64_t& count = s[0].data_ptr<int64_t>()[0];  // a CPU scalar, as torch keeps it
      ++count;
      adamw_kernel(p.device(), p, g, s[1], s[2], o.amsgrad ? s[3] : none, count, hyper);
    }
    p.storage().bump_version();
  }
  for (auto& [device, entries] : lists) {
    adamw_foreach_kernel(device, entries, hyper);
    for (AdamWEntry& e : entries)
      if (e.device_step.defined()) e.device_step.storage().bump_version();
  }
}

}  // namespace mt::optim
