// Inner loops over a chosen set of test-time parameters, and the meta-gradients of FOMAML and
// second-order E2E-TTT built on them. The model runs functionally: fast weights are a ParamMap
// override, the model itself is never copied or modified.
#pragma once

#include <string>
#include <vector>

#include "engine/autograd/engine.h"
#include "engine/core/generator.h"
#include "meta/forecaster.h"

namespace mt::meta {

struct InnerLoopOptions {
  int64_t steps = 3;        // SGD steps on the support batches (cycled if fewer batches)
  double inner_lr = 1e-3;
  // Name prefixes of the test-time parameters (default: unit and session embeddings; empty =
  // every parameter).
  std::vector<std::string> params = {"unit_emb.", "session_emb."};
  bool create_graph = true;  // keep the inner gradients in the graph (second order)
  // Inner steps whose intermediates are recomputed during the outer backward instead of kept
  // (engine/autograd/checkpoint.h), counted from the first: 0 = none, >= steps = all. The same
  // meta-gradient; each checkpointed step gives up its graph's memory for one more forward and
  // inner backward. The first ones, because the outer backward frees the later steps' graphs
  // before it recomputes the earlier ones: the peak is that of the kept steps or of one
  // recomputed step, not their sum.
  int64_t checkpoint_steps = 0;
  // Dropout in the inner steps' forwards and (fomaml_gradient, e2e_ttt_gradient) the query
  // forward, masks drawn from this generator, which advances as a training step's would; nullptr
  // = no dropout (evaluation, adaptation). Each inner step draws from the generator's state at
  // its start, so a checkpointed step recomputes the masks of its first pass: the meta-gradient
  // is the same with and without checkpointing.
  Generator* dropout = nullptr;
};

struct InnerResult {
  nn::ParamMap fast;         // the adapted test-time parameters, by name
  TensorList inner_losses;   // the support loss before each step
};

// K SGD steps of the selected parameters of `f` (starting from `init`, which maps every
// parameter name to its current tensor) on the support batches.
InnerResult inner_loop(const Forecaster& f, const nn::ParamMap& init,
                       const std::vector<models::PocoBatch>& support, const InnerLoopOptions& opt);

struct MetaGradient {
  Tensor meta_loss;            // what was differentiated
  Tensor query_loss;           // the query loss at the adapted parameters
  std::vector<std::string> names;
  TensorList grads;            // one per name (every parameter of the model), in model order
};

// Second-order E2E-TTT: create_graph through every inner step; meta-loss = query loss +
// (include_inner_losses ? mean of the inner losses : 0); gradients w.r.t. every parameter.
// graph_memory, when given, receives what the graph holds just before the outer backward (its
// peak: autograd::graph_memory).
MetaGradient e2e_ttt_gradient(Forecaster& f, const std::vector<models::PocoBatch>& support,
                              const models::PocoBatch& query, InnerLoopOptions opt,
                              bool include_inner_losses = true,
                              autograd::GraphMemory* graph_memory = nullptr);

// The mean of the meta-gradients of a meta-batch (one per session), by parameter: summed with
// multi-tensor kernels (engine/ops/foreach.cpp: a few launches per session on CUDA instead of
// a few per parameter), bitwise the one-by-one clone, add_ and mul_ of each gradient.
class MetaGradientMean {
 public:
  void add(const MetaGradient& g);  // every MetaGradient of a meta-batch has the same names
  int64_t count() const { return count_; }
  const std::vector<std::string>& names() const { return names_; }
  // The means, in names() order (after at least one add; a meta-batch of one gives its
  // gradients themselves, else fresh tensors).
  TensorList mean();

 private:
  std::vector<std::string> names_;
  TensorList sum_;
  int64_t count_ = 0;
};

// FOMAML: inner gradients without create_graph; the query gradient at the adapted parameters is
// the meta-gradient of the initial ones (test-time parameters take the gradient w.r.t. their fast
// value; the others their plain query gradient).
MetaGradient fomaml_gradient(Forecaster& f, const std::vector<models::PocoBatch>& support,
                             const models::PocoBatch& query, InnerLoopOptions opt);

}  // namespace mt::meta
