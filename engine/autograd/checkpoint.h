// Gradient checkpointing: run a region without keeping its intermediates, and recompute it
// during the backward pass. Composes with create_graph: the recomputation runs with grad mode on
// and its gradients are taken with create_graph = the backward's own mode, so a checkpointed
// inner step of a meta-learning loop still gives the exact second-order meta-gradient.
#pragma once

#include <functional>

#include "engine/core/tensor.h"

namespace mt::autograd {

using Region = std::function<TensorList(const TensorList&)>;

// outputs = fn(inputs), with only `inputs` kept for the backward. fn may also read tensors
// requiring grad that it does not receive: leaves (captured parameters, as
// torch.utils.checkpoint allows), outputs of ops run before the region (the fast weights of an
// inner loop, a conditioning vector) and, in a nested region, the enclosing region's inputs and
// intermediates. The first pass logs what its ops and backward rules read from outside it
// (record(), Node::saved()); each such tensor, reached from the outputs or only through an inner
// gradient taken without create_graph, becomes an edge of the region's node, which holds it to refuse the backward if
// it was changed in place since, and its gradient is taken in the recomputation with the
// inputs'. Each edge gets its partial derivative through the region (the engine adds the paths
// outside it, e.g. an input computed from a captured parameter), to any order. Leaves fn makes
// itself are its own. While either pass runs, a backward inside it without retain_graph keeps
// the saved tensors of the graph before the region (KeepGraphBefore: the outer backward may
// need them; they live as long as that graph, where a plain run that needed none of them would
// free them at once). Refused: backward() inside a region into a leaf it did not make (each
// pass would accumulate again: use grad()), a region that
// writes in place into a tensor it reads from outside (in the forward when it writes after
// reading, in the backward when before: write into a clone()), and, in the backward, a tensor
// the recomputation reads that the first pass did not (state kept between the passes). fn must
// be deterministic (dropout: reseed inside) and may call grad() on its inputs (they require
// grad inside fn when they do outside).
TensorList checkpoint(const Region& fn, const TensorList& inputs);

// True while checkpoint() runs a region for its values only: the first pass, whose outputs are
// detached and whose intermediates are dropped. A region that takes gradients inside (an inner
// optimisation step) may then take them without create_graph: the values are the same and no
// graph of the gradient is built only to be freed. False during the recomputation of the
// backward pass and outside regions (nested regions: the innermost pass decides).
bool checkpoint_values_only();

}  // namespace mt::autograd
