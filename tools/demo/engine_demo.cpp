// metatape-maml-demo: second-order MAML on synthetic sinusoid regression, on the CPU in f32.
//
// Each task is y = a * sin(x + phase) with the amplitude a and the phase drawn per task; a task
// shows K = 10 (x, y) pairs (the support set) and is scored on 10 more (the query set). MAML
// learns an initialisation of a small MLP from which one gradient step on a task's support set
// fits that task. The inner step is recorded on the tape (create_graph), so the meta-gradient
// differentiates through it: fast = p - inner_lr * dL_support/dp, and the outer gradient of the
// query loss at the fast weights w.r.t. p includes the second-order term. The fast weights are
// substituted into the model by name through the ParamMap argument of forward(); the model's
// own parameters are never copied or modified except by the outer optimizer step.
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <numbers>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/core/error.h"
#include "engine/core/generator.h"
#include "engine/nn/module.h"
#include "engine/ops.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr int64_t kShots = 10;   // support points per task (K)
constexpr int64_t kQuery = 10;   // query points per task
constexpr int64_t kHidden = 40;  // units per hidden layer
constexpr double kMinAmp = 0.1, kMaxAmp = 5.0;
constexpr double kMinPhase = 0.0, kMaxPhase = std::numbers::pi;
constexpr double kMinX = -5.0, kMaxX = 5.0;

struct Options {
  int steps = 1000;
  uint64_t seed = 0;
  double inner_lr = 0.01;
  double outer_lr = 0.003;
  int tasks_per_step = 25;
  int inner_steps = 1;
  int eval_tasks = 100;
  int log_every = 50;
};

// A regression task: support and query sets of (x, y) as (n, 1) f32 tensors.
struct Task {
  double amplitude = 0, phase = 0;
  mt::Tensor x_support, y_support, x_query, y_query;
};

Task sample_task(mt::Generator& gen) {
  Task t;
  const std::vector<float> u = mt::uniform(mt::Shape{2}, 0.0, 1.0, gen).to_vector<float>();
  t.amplitude = kMinAmp + (kMaxAmp - kMinAmp) * u[0];
  t.phase = kMinPhase + (kMaxPhase - kMinPhase) * u[1];
  // The engine has no sin op (none is needed for training), so targets are computed on the host.
  auto make = [&](int64_t n, mt::Tensor& x, mt::Tensor& y) {
    x = mt::uniform(mt::Shape{n, 1}, kMinX, kMaxX, gen);
    std::vector<float> ys = x.to_vector<float>();
    for (float& v : ys) v = float(t.amplitude * std::sin(double(v) + t.phase));
    y = mt::from_vector(std::span<const float>(ys), mt::Shape{n, 1});
  };
  make(kShots, t.x_support, t.y_support);
  make(kQuery, t.x_query, t.y_query);
  return t;
}

// 1 -> 40 -> 40 -> 1 with ReLU: the network of the MAML paper's sinusoid experiment.
class SineNet : public mt::nn::Module {
 public:
  explicit SineNet(mt::Generator& gen)
      : fc1_(register_module("fc1", std::make_shared<mt::nn::Linear>(1, kHidden, true, gen))),
        fc2_(register_module("fc2", std::make_shared<mt::nn::Linear>(kHidden, kHidden, true, gen))),
        out_(register_module("out", std::make_shared<mt::nn::Linear>(kHidden, 1, true, gen))) {}

  mt::Tensor forward(const mt::Tensor& x, const mt::nn::ParamMap* overrides = nullptr) const {
    mt::Tensor h = mt::relu(fc1_->forward(x, overrides));
    h = mt::relu(fc2_->forward(h, overrides));
    return out_->forward(h, overrides);
  }

 private:
  std::shared_ptr<mt::nn::Linear> fc1_, fc2_, out_;
};

// Adam on a list of parameters, written with the engine's in-place methods and ops; step() runs
// under a NoGradGuard and so records nothing.
class Adam {
 public:
  Adam(const mt::TensorList& params, double lr) : params_(params), lr_(lr) {
    for (const auto& p : params_) {
      m_.push_back(mt::zeros_like(p));
      v_.push_back(mt::zeros_like(p));
    }
  }
  void step(const mt::TensorList& grads) {
    MT_CHECK(grads.size() == params_.size(), "Adam: {} gradients for {} parameters", grads.size(),
             params_.size());
    mt::NoGradGuard no_grad;
    ++t_;
    const double bc1 = 1.0 - std::pow(kBeta1, double(t_));
    const double bc2 = 1.0 - std::pow(kBeta2, double(t_));
    for (size_t i = 0; i < params_.size(); ++i) {
      const mt::Tensor g = grads[i].detach();
      m_[i].mul_(kBeta1).add_(g, 1.0 - kBeta1);
      v_[i].mul_(kBeta2).add_(mt::mul(g, g), 1.0 - kBeta2);
      const mt::Tensor update = mt::div(m_[i], mt::sqrt(v_[i] / bc2) + kEps);
      mt::Tensor p = params_[i];
      p.add_(update, -lr_ / bc1);
    }
  }

 private:
  static constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
  mt::TensorList params_, m_, v_;
  double lr_;
  int64_t t_ = 0;
};

// Fast weights after one gradient step from `weights` (name -> tensor) on `loss`. With
// create_graph the step is recorded, so the result stays differentiable w.r.t. `weights`;
// without it the fast weights are new leaves (evaluation).
mt::nn::ParamMap inner_step(const mt::nn::ParamMap& weights, const mt::Tensor& loss,
                            double inner_lr, bool create_graph) {
  mt::TensorList inputs;
  for (const auto& [name, w] : weights) inputs.push_back(w);
  const mt::TensorList grads = mt::autograd::grad({loss}, inputs, {}, std::nullopt, create_graph);
  mt::nn::ParamMap fast;
  size_t i = 0;
  for (const auto& [name, w] : weights) {
    if (create_graph) {
      fast.emplace(name, mt::sub(w, mt::mul(grads[i], mt::scalar_like(w, inner_lr))));
    } else {
      mt::Tensor next;
      {
        mt::NoGradGuard no_grad;
        next = mt::sub(w, mt::mul(grads[i], mt::scalar_like(w, inner_lr)));
      }
      next.set_requires_grad(true);
      fast.emplace(name, next);
    }
    ++i;
  }
  return fast;
}

double query_mse(const SineNet& net, const Task& task, const mt::nn::ParamMap* weights) {
  mt::NoGradGuard no_grad;
  return mt::mse_loss(net.forward(task.x_query, weights), task.y_query).item<float>();
}

void meta_train(SineNet& net, const Options& opt, mt::Generator& task_gen) {
  const mt::nn::ParamMap params = net.parameter_map();
  mt::TensorList param_list;
  for (const auto& [name, p] : params) param_list.push_back(p);
  Adam adam(param_list, opt.outer_lr);

  std::printf(
      "meta-training: %d steps x %d tasks, K=%lld support / %lld query points, "
      "%d inner step(s) at lr %g, Adam at lr %g\n",
      opt.steps, opt.tasks_per_step, static_cast<long long>(kShots), static_cast<long long>(kQuery),
      opt.inner_steps, opt.inner_lr, opt.outer_lr);
  std::printf("%8s %18s %18s %12s\n", "step", "query MSE pre", "query MSE post", "ms/step");

  double window_pre = 0, window_post = 0, window_seconds = 0;
  int window_steps = 0;
  for (int step = 1; step <= opt.steps; ++step) {
    const auto start = Clock::now();
    mt::Tensor meta_loss;
    double pre_sum = 0, post_sum = 0;
    for (int t = 0; t < opt.tasks_per_step; ++t) {
      const Task task = sample_task(task_gen);
      pre_sum += query_mse(net, task, nullptr);
      // Inner loop, recorded on the tape: fast weights as functions of the parameters.
      mt::nn::ParamMap fast = params;
      for (int k = 0; k < opt.inner_steps; ++k) {
        const mt::Tensor support_loss =
            mt::mse_loss(net.forward(task.x_support, &fast), task.y_support);
        fast = inner_step(fast, support_loss, opt.inner_lr, /*create_graph=*/true);
      }
      const mt::Tensor query_loss = mt::mse_loss(net.forward(task.x_query, &fast), task.y_query);
      post_sum += query_loss.item<float>();
      meta_loss = meta_loss.defined() ? mt::add(meta_loss, query_loss) : query_loss;
    }
    meta_loss = mt::div(meta_loss, mt::scalar_like(meta_loss, double(opt.tasks_per_step)));
    // Second order: differentiates through the recorded inner steps back to the parameters.
    const mt::TensorList meta_grads = mt::autograd::grad({meta_loss}, param_list);
    adam.step(meta_grads);

    window_seconds += std::chrono::duration<double>(Clock::now() - start).count();
    window_pre += pre_sum / opt.tasks_per_step;
    window_post += post_sum / opt.tasks_per_step;
    ++window_steps;
    if (step % opt.log_every == 0 || step == opt.steps) {
      std::printf("%8d %18.4f %18.4f %12.2f\n", step, window_pre / window_steps,
                  window_post / window_steps, 1e3 * window_seconds / window_steps);
      std::fflush(stdout);
      window_pre = window_post = window_seconds = 0;
      window_steps = 0;
    }
  }
}

void evaluate(const SineNet& net, const Options& opt, mt::Generator& eval_gen) {
  constexpr int kMaxEvalSteps = 5;
  const mt::nn::ParamMap params = net.parameter_map();
  double zero = 0, pre = 0, after1 = 0, after5 = 0;
  for (int t = 0; t < opt.eval_tasks; ++t) {
    const Task task = sample_task(eval_gen);
    {
      mt::NoGradGuard no_grad;
      zero += mt::mean(mt::mul(task.y_query, task.y_query)).item<float>();
    }
    pre += query_mse(net, task, nullptr);
    mt::nn::ParamMap fast = params;
    for (int k = 1; k <= kMaxEvalSteps; ++k) {
      const mt::Tensor support_loss =
          mt::mse_loss(net.forward(task.x_support, &fast), task.y_support);
      fast = inner_step(fast, support_loss, opt.inner_lr, /*create_graph=*/false);
      if (k == 1) after1 += query_mse(net, task, &fast);
      if (k == kMaxEvalSteps) after5 += query_mse(net, task, &fast);
    }
  }
  const double n = opt.eval_tasks;
  std::printf("\nevaluation on %d fresh tasks (K=%lld, inner lr %g), mean query MSE:\n",
              opt.eval_tasks, static_cast<long long>(kShots), opt.inner_lr);
  std::printf("  predicting 0 (reference)       %10.4f\n", zero / n);
  std::printf("  meta-learned init, no steps    %10.4f\n", pre / n);
  std::printf("  after 1 inner step             %10.4f\n", after1 / n);
  std::printf("  after %d inner steps            %10.4f\n", kMaxEvalSteps, after5 / n);
  std::printf("adaptation %s: %.4f -> %.4f (1 step) -> %.4f (%d steps)\n",
              after1 < pre && after5 < pre ? "helps" : "does NOT help", pre / n, after1 / n,
              after5 / n, kMaxEvalSteps);
}

// Returns an error message for invalid options, or an empty string.
std::string validate(const Options& opt) {
  auto positive_finite = [](double v) { return std::isfinite(v) && v > 0; };
  auto positive_int = [](const char* name, int v) {
    return v > 0 ? std::string() : fmt::format("{} must be positive (got {})", name, v);
  };
  for (auto [name, value] :
       {std::pair{"--steps", opt.steps}, std::pair{"--tasks-per-step", opt.tasks_per_step},
        std::pair{"--inner-steps", opt.inner_steps}, std::pair{"--eval-tasks", opt.eval_tasks},
        std::pair{"--log-every", opt.log_every}}) {
    if (std::string error = positive_int(name, value); !error.empty()) return error;
  }
  if (!positive_finite(opt.inner_lr))
    return fmt::format("--inner-lr must be a positive finite number (got {})", opt.inner_lr);
  if (!positive_finite(opt.outer_lr))
    return fmt::format("--outer-lr must be a positive finite number (got {})", opt.outer_lr);
  return "";
}

int run(int argc, char** argv) {
  Options opt;
  CLI::App app{
      "metatape demo: second-order MAML on sinusoid regression tasks y = a sin(x + phase), "
      "a in [0.1, 5], phase in [0, pi], x in [-5, 5]; CPU, f32"};
  app.add_option("--steps", opt.steps, "outer (meta-training) steps")->capture_default_str();
  app.add_option("--seed", opt.seed, "seed for the model and the tasks")->capture_default_str();
  app.add_option("--inner-lr", opt.inner_lr, "inner-loop (adaptation) learning rate")
      ->capture_default_str();
  app.add_option("--outer-lr", opt.outer_lr, "outer-loop Adam learning rate")
      ->capture_default_str();
  app.add_option("--tasks-per-step", opt.tasks_per_step, "tasks per outer step (meta-batch)")
      ->capture_default_str();
  app.add_option("--inner-steps", opt.inner_steps, "inner steps during meta-training")
      ->capture_default_str();
  app.add_option("--eval-tasks", opt.eval_tasks, "fresh tasks for the final evaluation")
      ->capture_default_str();
  app.add_option("--log-every", opt.log_every, "print progress every this many steps")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (std::string error = validate(opt); !error.empty()) {
    std::cerr << "metatape-maml-demo: " << error << "\n";
    return 2;
  }

  // Separate streams for the model, the training tasks and the evaluation tasks.
  mt::Generator model_gen(opt.seed);
  mt::Generator task_gen(opt.seed + 1);
  mt::Generator eval_gen(opt.seed + 2);
  SineNet net(model_gen);

  const auto start = Clock::now();
  meta_train(net, opt, task_gen);
  evaluate(net, opt, eval_gen);
  std::printf("total %.1f s\n", std::chrono::duration<double>(Clock::now() - start).count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const mt::Error& e) {
    std::cerr << "metatape-maml-demo: engine error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "metatape-maml-demo: error: " << e.what() << "\n";
    return 1;
  }
}
