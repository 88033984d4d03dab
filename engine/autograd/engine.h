// The backward engine: autograd::grad and autograd::backward, in the spirit of
// torch.autograd.grad / torch.autograd.backward.
#pragma once

#include <optional>

#include "engine/core/tensor.h"

namespace mt::autograd {

// Gradients of sum_i <outputs[i], grad_outputs[i]> with respect to each of `inputs`.
// - grad_outputs: empty (each output must then have one element and gets 1) or one per output
//   (an undefined entry means "ones" for a one-element output).
// - retain_graph: keep saved tensors for another backward; defaults to create_graph.
// - create_graph: record the backward pass so the results can be differentiated again.
// - allow_unused: return an undefined tensor for an input not reached from the outputs instead
//   of throwing.
// Does not touch any tensor's .grad.
TensorList grad(const TensorList& outputs, const TensorList& inputs,
                const TensorList& grad_outputs = {}, std::optional<bool> retain_graph = std::nullopt,
                bool create_graph = false, bool allow_unused = false);

// Accumulates gradients into the .grad of every leaf reached from `outputs`.
void backward(const TensorList& outputs, const TensorList& grad_outputs = {},
              std::optional<bool> retain_graph = std::nullopt, bool create_graph = false);

}  // namespace mt::autograd
