// Gradient checkpointing: run a region without keeping its intermediates, and recompute it
// during the backward pass. Composes with create_graph: the recomputation runs with grad mode on
// and its gradients are taken with create_graph = the backward's own mode, so a checkpointed
// inner step of a meta-learning loop still gives the exact second-order meta-gradient.
#pragma once

#include <functional>

#include "engine/core/tensor.h"

namespace mt::autograd {

using Region = std::function<TensorList(const TensorList&)>;

// outputs = fn(inputs), with only `inputs` kept for the backward. fn may also read leaves
// requiring grad that it does not receive (captured parameters, as torch.utils.checkpoint
// allows; a nested region also the enclosing region's inputs): the first pass finds them in its
// graph, they become edges of the region's node (a parameter changed in place before the
// backward is refused), and their gradients are taken in the recomputation with the inputs'.
// Each edge gets its partial derivative through the region (the engine adds the paths outside
// it, e.g. an input computed from a captured parameter), to any order. Leaves fn makes itself
// are its own. Refused: a captured tensor that requires grad and is not a leaf (the output of an
// op before the region: pass it in `inputs`, or detach() a constant), and, in the backward, a
// tensor the first pass did not reach because it enters only through a gradient taken without
// create_graph while checkpoint_values_only() is true (pass it in `inputs`). fn must be
// deterministic (dropout: reseed inside) and may call grad() on its inputs (they require grad
// inside fn when they do outside).
TensorList checkpoint(const Region& fn, const TensorList& inputs);

// True while checkpoint() runs a region for its values only: the first pass, whose outputs are
// detached and whose intermediates are dropped. A region that takes gradients inside (an inner
// optimisation step) may then take them without create_graph: the values are the same and no
// graph of the gradient is built only to be freed. False during the recomputation of the
// backward pass and outside regions (nested regions: the innermost pass decides).
bool checkpoint_values_only();

}  // namespace mt::autograd
