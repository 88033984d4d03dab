#include "meta/maml.h"

#include <memory>

#include "engine/autograd/checkpoint.h"
#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"

namespace mt::meta {

InnerResult inner_loop(const Forecaster& f, const nn::ParamMap& init,
                       const std::vector<models::PocoBatch>& support, const InnerLoopOptions& opt) {
  MT_CHECK(opt.steps >= 0 && opt.inner_lr > 0,
           "inner loop: steps ({}) must be >= 0 and inner_lr ({}) positive", opt.steps,
           opt.inner_lr);
  MT_CHECK(opt.steps == 0 || !support.empty(), "inner loop: no support batches");
  MT_CHECK(opt.checkpoint_steps >= 0, "inner loop: checkpoint_steps ({}) must be >= 0",
           opt.checkpoint_steps);
  InnerResult r;
  std::vector<std::string> names;
  for (const auto& [name, t] : init)
    if (matches_prefixes(name, opt.params)) {
      names.push_back(name);
      r.fast[name] = t;
    }
  MT_CHECK(!names.empty(), "inner loop: no parameter matches the test-time prefixes");
  nn::ParamMap current = init;
  // The support batches, each with a PocoReuse: the model computes what does not depend on the
  // test-time parameters (the head's input layer, the rotary times) once per batch instead of
  // once per step. Checkpointed steps use copies that keep the rotary times and tables only
  // (constants): their regions must not keep intermediates, nor read differentiable tensors
  // they were not given.
  std::vector<models::PocoBatch> batches = support, checkpoint_batches;
  for (auto& b : batches)
    if (b.reuse == nullptr) b.reuse = std::make_shared<models::PocoReuse>();
  if (opt.checkpoint_steps > 0 && opt.create_graph) {
    checkpoint_batches = support;
    for (auto& b : checkpoint_batches) {
      b.reuse = std::make_shared<models::PocoReuse>();  // not the caller's: it may hold more
      b.reuse->layout_only = true;
    }
  }
  // Every parameter, in a fixed order: the inputs of a checkpointed step.
  std::vector<std::string> all;
  for (const auto& [name, t] : init) all.push_back(name);
  for (int64_t step = 0; step < opt.steps; ++step) {
    const bool checkpointed = step < opt.checkpoint_steps && opt.create_graph;
    const models::PocoBatch& b =
        (checkpointed ? checkpoint_batches : batches)[size_t(step) % batches.size()];
    // One SGD step: (every parameter, with the current fast values) -> (new fast values, loss).
    // Captures by value: a checkpointed step runs it again during the outer backward, after
    // this function has returned.
    const Forecaster* model = &f;
    const double lr = opt.inner_lr;
    // Dropout: the step's masks come from a copy of the generator at the step's start (every
    // pass of a checkpointed step draws the same ones); where the copy ends, the generator goes.
    const bool dropout = opt.dropout != nullptr;
    const uint64_t seed = dropout ? opt.dropout->seed() : 0;
    const uint64_t offset = dropout ? opt.dropout->offset() : 0;
    auto offset_after = std::make_shared<uint64_t>(offset);
    auto one_step = [model, b, names, lr, dropout, seed, offset, offset_after](
                        const nn::ParamMap& at, bool create_graph) {
      Generator masks(seed);
      masks.set_state(seed, offset);
      Tensor loss = mse_loss(model->predict(b, &at, dropout ? &masks : nullptr), b.target);
      *offset_after = masks.offset();
      TensorList params;
      for (const auto& n : names) params.push_back(at.at(n));
      TensorList g = autograd::grad({loss}, params, {}, std::nullopt, create_graph,
                                    /*allow_unused=*/true);
      TensorList next;
      for (size_t i = 0; i < names.size(); ++i) {
        // Without create_graph the step is taken on detached values: first order.
        next.push_back(!g[i].defined()
                           ? params[i]
                           : sub(params[i], mul(create_graph ? g[i] : g[i].detach(), lr)));
      }
      next.push_back(loss);
      return next;
    };
    TensorList next;
    if (checkpointed) {
      TensorList in;
      for (const auto& n : all) in.push_back(current.at(n));
      next = autograd::checkpoint(
          [one_step, all](const TensorList& xs) {
            nn::ParamMap at;
            for (size_t i = 0; i < all.size(); ++i) at[all[i]] = xs[i];
            // The first pass only gives the step's values: no graph of its gradient then.
            return one_step(at, /*create_graph=*/!autograd::checkpoint_values_only());
          },
          in);
    } else {
      next = one_step(current, opt.create_graph);
    }
    if (dropout) opt.dropout->set_state(seed, *offset_after);
    for (size_t i = 0; i < names.size(); ++i) {
      r.fast[names[i]] = next[i];
      current[names[i]] = next[i];
    }
    r.inner_losses.push_back(next.back());
  }
  return r;
}

namespace {
nn::ParamMap current_params(Forecaster& f, std::vector<std::string>& names, TensorList& tensors) {
  MT_CHECK(f.module() != nullptr, "meta-learning needs a forecaster with parameters");
  nn::ParamMap map;
  for (auto& [name, t] : f.module()->named_parameters()) {
    names.push_back(name);
    tensors.push_back(t);
    map[name] = t;
  }
  return map;
}
}  // namespace

MetaGradient e2e_ttt_gradient(Forecaster& f, const std::vector<models::PocoBatch>& support,
                              const models::PocoBatch& query, InnerLoopOptions opt,
                              bool include_inner_losses, autograd::GraphMemory* graph_memory) {
  opt.create_graph = true;
  MetaGradient m;
  TensorList params;
  nn::ParamMap init = current_params(f, m.names, params);
  InnerResult inner = inner_loop(f, init, support, opt);
  nn::ParamMap adapted = init;
  for (auto& [name, t] : inner.fast) adapted[name] = t;
  m.query_loss = mse_loss(f.predict(query, &adapted, opt.dropout), query.target);
  m.meta_loss = m.query_loss;
  if (include_inner_losses && !inner.inner_losses.empty()) {
    Tensor inner_sum = inner.inner_losses[0];
    for (size_t i = 1; i < inner.inner_losses.size(); ++i)
      inner_sum = add(inner_sum, inner.inner_losses[i]);
    m.meta_loss = add(m.meta_loss, div(inner_sum, double(inner.inner_losses.size())));
  }
  if (graph_memory != nullptr) *graph_memory = autograd::graph_memory({m.meta_loss});
  m.grads = autograd::grad({m.meta_loss}, params, {}, std::nullopt, false, /*allow_unused=*/true);
  for (size_t i = 0; i < params.size(); ++i)
    if (!m.grads[i].defined()) m.grads[i] = zeros_like(params[i]);
  return m;
}

void MetaGradientMean::add(const MetaGradient& g) {
  NoGradGuard no_grad;
  TensorList grads;
  for (const Tensor& t : g.grads) grads.push_back(t.detach());
  if (count_ == 0) {
    names_ = g.names;
    sum_ = grads;  // not written to: they may be shared between parameters, or held elsewhere
  } else {
    MT_CHECK(g.names == names_,
             "meta-gradient mean: the sessions' meta-gradients name different parameters");
    if (count_ == 1)
      sum_ = foreach_add(sum_, grads);  // fresh tensors, summed into from here on
    else
      foreach_add_(sum_, grads);
  }
  ++count_;
}

TensorList MetaGradientMean::mean() {
  MT_CHECK(count_ > 0, "meta-gradient mean: no meta-gradient was added");
  NoGradGuard no_grad;
  if (count_ > 1) foreach_mul_(sum_, 1.0 / double(count_));
  count_ = 0;
  return std::move(sum_);
}

MetaGradient fomaml_gradient(Forecaster& f, const std::vector<models::PocoBatch>& support,
                             const models::PocoBatch& query, InnerLoopOptions opt) {
  opt.create_graph = false;
  MetaGradient m;
  TensorList params;
  nn::ParamMap init = current_params(f, m.names, params);
  InnerResult inner = inner_loop(f, init, support, opt);
  // The adapted values become leaves of the query pass: the gradient stops there.
  nn::ParamMap adapted = init;
  TensorList wrt;
  for (size_t i = 0; i < m.names.size(); ++i) {
    auto it = inner.fast.find(m.names[i]);
    if (it != inner.fast.end()) {
      Tensor leaf = it->second.detach();
      leaf.set_requires_grad(true);
      adapted[m.names[i]] = leaf;
      wrt.push_back(leaf);
    } else {
      wrt.push_back(params[i]);
    }
  }
  m.query_loss = mse_loss(f.predict(query, &adapted, opt.dropout), query.target);
  m.meta_loss = m.query_loss;
  m.grads = autograd::grad({m.query_loss}, wrt, {}, std::nullopt, false, /*allow_unused=*/true);
  for (size_t i = 0; i < wrt.size(); ++i)
    if (!m.grads[i].defined()) m.grads[i] = zeros_like(params[i]);
  return m;
}

}  // namespace mt::meta
