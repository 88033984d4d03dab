#include "engine/autograd/checkpoint.h"

#include <unordered_set>

#include "engine/autograd/engine.h"
#include "engine/autograd/node.h"
#include "engine/ops.h"

namespace mt::autograd {

namespace {
thread_local bool values_only = false;

// Sets values_only for a scope and restores the previous value (regions may nest).
class ValuesOnlyScope {
 public:
  explicit ValuesOnlyScope(bool on) : previous_(values_only) { values_only = on; }
  ~ValuesOnlyScope() { values_only = previous_; }
  ValuesOnlyScope(const ValuesOnlyScope&) = delete;
  ValuesOnlyScope& operator=(const ValuesOnlyScope&) = delete;

 private:
  bool previous_;
};

// All outputs flattened into one tensor (nodes have one output), and the shapes to undo it.
Tensor pack(const TensorList& outs, std::vector<Shape>& shapes) {
  TensorList flat;
  shapes.clear();
  for (const Tensor& t : outs) {
    MT_CHECK(t.defined(), "checkpoint: the region returned an undefined tensor");
    shapes.push_back(t.shape());
    flat.push_back(t.reshape(Shape{-1}));
  }
  MT_CHECK(!flat.empty(), "checkpoint: the region returned no tensors");
  return flat.size() == 1 ? flat[0] : cat(flat, 0);
}

// The leaves requiring grad that a region read without receiving them in `inputs` (captured
// parameters), found by walking the first pass's graph from its output down to where it leaves
// the region: the region's own leaves (`own`, the detached inputs), other leaves (captured: their
// gradient is taken in the recomputation like an input's), or a node made before the region
// (`first_node`: sequence numbers below it). Such a node is a captured tensor that is not a leaf;
// its gradient would have to flow through a graph the recomputation cannot reach, so it is
// refused rather than lost.
std::vector<std::shared_ptr<TensorImpl>> captured_leaves(const Tensor& out, const TensorList& own,
                                                         uint64_t first_node) {
  std::vector<std::shared_ptr<TensorImpl>> found;
  if (!out.requires_grad()) return found;
  std::unordered_set<const TensorImpl*> own_leaves, seen_leaves;
  for (const Tensor& t : own) own_leaves.insert(t.impl());
  auto leaf = [&](const std::shared_ptr<TensorImpl>& impl) {
    if (own_leaves.count(impl.get()) == 0 && seen_leaves.insert(impl.get()).second)
      found.push_back(impl);
  };
  if (out.impl()->grad_fn == nullptr) {  // the region returned a leaf itself
    leaf(out.impl_ptr());
    return found;
  }
  std::unordered_set<const Node*> seen{out.impl()->grad_fn.get()};
  std::vector<Node*> stack{out.impl()->grad_fn.get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    if (auto* acc = dynamic_cast<AccumulateGrad*>(n)) {
      leaf(acc->leaf());
      continue;
    }
    MT_CHECK(n->sequence_nr() >= first_node,
             "checkpoint: the region reads a tensor that requires grad, is not one of its inputs "
             "and is not a leaf (the output of {}, computed before the region); its gradient "
             "cannot flow through the recomputation and would be lost. Pass it in `inputs`, or "
             "detach() it if it is a constant (leaves such as parameters may be read directly)",
             n->name());
    for (size_t i = 0; i < n->num_inputs(); ++i) {
      Node* next = n->edge(i).fn.get();
      if (next != nullptr && seen.insert(next).second) stack.push_back(next);
    }
  }
  return found;
}
}  // namespace

bool checkpoint_values_only() { return values_only; }

TensorList checkpoint(const Region& fn, const TensorList& inputs) {
  std::vector<Shape> shapes;
  Tensor packed;
  TensorList captured;  // leaves requiring grad that fn reads directly (parameters)
  {
    // The region runs on detached copies of the inputs (so it may itself take gradients, as an
    // inner optimisation step does) and its result is detached: every intermediate is freed
    // when this block ends; only the inputs are kept, by the node below.
    TensorList leaves;
    for (const Tensor& t : inputs) {
      Tensor d = t.detach();
      if (needs_grad(t)) d.set_requires_grad(true);
      leaves.push_back(d);
    }
    Tensor out;
    const uint64_t first_node = next_sequence_nr();
    {
      ValuesOnlyScope first_pass(true);
      out = pack(fn(leaves), shapes);
    }
    for (auto& impl : captured_leaves(out, leaves, first_node)) captured.emplace_back(impl);
    packed = make_view(out, out.shape(), out.strides(), out.offset());  // a fresh, detached impl
  }
  bool any = !captured.empty();
  for (const Tensor& t : inputs) any |= needs_grad(t);
  if (any && GradMode::is_enabled()) {
    auto node = std::make_shared<FunctionNode<std::function<TensorList(const Node&, const Tensor&)>>>(
        "checkpoint",
        [fn, n = inputs.size(), m = captured.size(), shapes](const Node& self,
                                                              const Tensor& g) -> TensorList {
          TensorList saved;
          for (size_t i = 0; i < n; ++i) saved.push_back(self.saved(i));
          // Recompute from fresh views of the saved inputs: each view is a new node with one edge
          // to its input, so grad() below stops there (the partial derivative for each input,
          // not a total derivative through inputs that depend on each other) while, with
          // create_graph, the gradients stay attached to everything upstream of the inputs.
          const bool create_graph = GradMode::is_enabled();
          std::vector<Shape> shapes_again;
          Tensor again;
          TensorList views(n), wrt;
          std::vector<size_t> index;
          {
            GradModeGuard on(true);
            ValuesOnlyScope recompute(false);
            for (size_t i = 0; i < n; ++i) {
              views[i] = needs_grad(saved[i]) ? saved[i].unsqueeze(0).squeeze(0) : saved[i];
              if (self.needs_input_grad(i)) {
                wrt.push_back(views[i]);
                index.push_back(i);
              }
            }
            // Captured leaves: fn reads them itself; saved here only for the version check (a
            // parameter changed in place since the forward would give other values).
            for (size_t j = n; j < n + m; ++j) {
              Tensor leaf = self.saved(j);
              if (self.needs_input_grad(j)) {
                wrt.push_back(leaf);
                index.push_back(j);
              }
            }
            again = pack(fn(views), shapes_again);
          }
          // A region must compute the same thing twice; other shapes would otherwise surface
          // as a shape error inside grad() that does not name the region.
          auto list = [](const std::vector<Shape>& v) {
            std::string s;
            for (const Shape& x : v) s += (s.empty() ? "" : ", ") + x.str();
            return s;
          };
          MT_CHECK(shapes_again == shapes,
                   "checkpoint: recomputed in the backward, the region returned {} tensor(s) of "
                   "shapes {} where its first run returned {} of shapes {}; a checkpointed region "
                   "must compute the same thing each time it runs (no shapes that depend on "
                   "random draws or on state outside its inputs)",
                   shapes_again.size(), list(shapes_again), shapes.size(), list(shapes));
          TensorList grads(n + m);
          if (!again.requires_grad()) return grads;  // the outputs do not depend on the inputs
          TensorList got = grad({again}, wrt, {g}, /*retain_graph=*/create_graph, create_graph,
                                /*allow_unused=*/true);
          for (size_t k = 0; k < index.size(); ++k) grads[index[k]] = got[k];
          return grads;
        });
    for (const TensorList* list : {&inputs, static_cast<const TensorList*>(&captured)}) {
      for (const Tensor& t : *list) {
        Edge e;
        e.meta = InputMeta{t.shape(), t.dtype(), t.device()};
        if (needs_grad(t)) e.fn = gradient_edge(t);
        node->add_edge(std::move(e));
        node->save(t);
      }
    }
    packed.impl()->requires_grad = true;
    packed.impl()->grad_fn = node;
  }
  TensorList outs;
  int64_t offset = 0;
  for (const Shape& s : shapes) {
    outs.push_back(packed.narrow(0, offset, s.numel()).reshape(s));
    offset += s.numel();
  }
  return outs;
}

}  // namespace mt::autograd
