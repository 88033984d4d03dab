// The backward engine: autograd::grad and autograd::backward, in the spirit of
// torch.autograd.grad / torch.autograd.backward.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

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

class Node;

// The gradient reaching each of `targets` (nodes of the graph behind `outputs`; the gradient
// with respect to a node's output), where the pass stops: nothing past a target runs, so each
// result is the partial derivative through the paths that do not cross another target (grad()
// gives total derivatives). Undefined where a target is not reached. Checkpointing uses it to
// take a recomputed region's gradients at its boundary. retain_graph = create_graph. The pass
// also stops at `stops` (boundary nodes whose gradient is not wanted) without computing
// anything for them.
TensorList grad_at_nodes(const TensorList& outputs,
                         const std::vector<std::shared_ptr<Node>>& targets,
                         const TensorList& grad_outputs, bool create_graph,
                         const std::vector<std::shared_ptr<Node>>& stops = {});

// While it lives on this thread, backward passes without retain_graph keep the saved tensors of
// nodes numbered below `first_kept` (made before it): a checkpointed region's passes, whose
// inner gradients (taken without create_graph in the first pass) may run nodes of the graph
// before the region, which that graph still needs. Nests (the higher floor holds inside).
class KeepGraphBefore {
 public:
  explicit KeepGraphBefore(uint64_t first_kept);
  ~KeepGraphBefore();
  KeepGraphBefore(const KeepGraphBefore&) = delete;
  KeepGraphBefore& operator=(const KeepGraphBefore&) = delete;

 private:
  uint64_t previous_;
};

// What the graph behind `roots` keeps for its backward pass: the storages its nodes saved, each
// counted once and credited to the first node that saves it (walking from the roots, newest
// first), summed by node name. The memory a create_graph meta-gradient holds before its outer
// backward is mostly this; `table()` lists it, largest first.
struct GraphMemoryRow {
  std::string node;
  int64_t nodes = 0;    // nodes of that name
  int64_t tensors = 0;  // distinct storages credited to them
  int64_t bytes = 0;
};
struct GraphMemory {
  int64_t nodes = 0, tensors = 0, bytes = 0;
  std::vector<GraphMemoryRow> rows;  // by bytes, largest first
  // The largest storages: (node that saves it, the saved tensor's shape, bytes), largest first.
  struct Largest {
    std::string node, shape;
    int64_t bytes = 0;
  };
  std::vector<Largest> largest;
  std::string table(size_t max_rows = 25) const;
};
GraphMemory graph_memory(const TensorList& roots);

// Accumulates gradients into the .grad of every leaf reached from `outputs`.
void backward(const TensorList& outputs, const TensorList& grad_outputs = {},
              std::optional<bool> retain_graph = std::nullopt, bool create_graph = false);

}  // namespace mt::autograd
