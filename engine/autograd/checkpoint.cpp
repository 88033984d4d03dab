#include "engine/autograd/checkpoint.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "engine/autograd/engine.h"
#include "engine/autograd/node.h"
#include "engine/ops.h"

namespace mt::autograd {

namespace detail {
struct ReadLog {
  struct Read {
    Tensor tensor;
    std::shared_ptr<Node> node;  // where its gradient goes (kept alive: the map's key)
    uint32_t version = 0;        // of its storage when first read
  };
  uint64_t first_node = 0;  // nodes numbered below it were made before the region
  // By the node the tensor's gradient goes to: its grad_fn, or a leaf's accumulator.
  std::unordered_map<const Node*, Read> reads;
  std::vector<const Node*> order;  // the keys in the order of the first reads (deterministic)
};

thread_local constinit ReadLog* read_log = nullptr;
thread_local constinit const AccumulateFilter* accumulate_filter = nullptr;

void log_read(const Tensor& t, const std::shared_ptr<Node>& gradient_node) {
  const Node* fn = t.impl()->grad_fn.get();
  if (gradient_node == nullptr) return;
  if (fn != nullptr && fn->sequence_nr() >= read_log->first_node) return;  // made in the region
  if (read_log->reads.count(gradient_node.get())) return;                   // read before
  read_log->reads.emplace(gradient_node.get(),
                          ReadLog::Read{t, gradient_node, t.storage().version()});
  read_log->order.push_back(gradient_node.get());
}
}  // namespace detail

namespace {
thread_local bool values_only = false;

// Sets detail::read_log to `log` while it lives, restoring the enclosing region's log after.
class ReadLogScope {
 public:
  explicit ReadLogScope(detail::ReadLog* log) : previous_(detail::read_log) {
    detail::read_log = log;
  }
  ~ReadLogScope() { detail::read_log = previous_; }
  ReadLogScope(const ReadLogScope&) = delete;
  ReadLogScope& operator=(const ReadLogScope&) = delete;

 private:
  detail::ReadLog* previous_;
};

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

// A tensor requiring grad that a region read without receiving it in `inputs`: the node its
// gradient flows into, the metadata of the edge that reached it, and, for an op's output made
// before the region, the tensor itself (undefined for a leaf, which its accumulator holds, and for
// an enclosing region's view, which that region's node holds).
struct Captured {
  std::shared_ptr<Node> node;
  InputMeta meta;
  Tensor tensor;
};

// Leaves made to require grad while it lives, on this thread (Tensor::set_requires_grad): a
// region's own new leaves, which are neither captured nor refused, and the only ones backward()
// may accumulate into while it lives (detail::accumulate_filter).
class NewLeafLog final : detail::AccumulateFilter {
 public:
  NewLeafLog() : previous_filter_(detail::accumulate_filter) {
    mt::detail::new_leaf_logs().push_back(&made_);
    detail::accumulate_filter = this;
  }
  ~NewLeafLog() override {
    mt::detail::new_leaf_logs().pop_back();
    detail::accumulate_filter = previous_filter_;
  }
  NewLeafLog(const NewLeafLog&) = delete;
  NewLeafLog& operator=(const NewLeafLog&) = delete;
  const std::vector<const TensorImpl*>& made() const { return made_; }
  bool allows(const TensorImpl* leaf) const override {
    return std::find(made_.begin(), made_.end(), leaf) != made_.end();
  }

 private:
  std::vector<const TensorImpl*> made_;
  const detail::AccumulateFilter* previous_filter_;
};

// The view nodes standing for the inputs of the regions being recomputed on this thread (while
// their fn runs): a region nested in one may capture them like leaves (the enclosing region's
// node holds and checks the tensors behind them).
thread_local std::vector<const std::unordered_set<const Node*>*> enclosing_views;

struct Reached {
  std::vector<Captured> captured;  // leaves, tensors the region read, enclosing regions' views
  const Node* foreign = nullptr;   // a node made before the region otherwise (first one)
  InputMeta foreign_meta;
};

// Walks the graph behind `out` (the nodes a region made: sequence number >= first_node) down to
// where it leaves the region. `boundary` holds the nodes standing for the region's inputs (the
// accumulators of the first pass's detached leaves, or the recomputation's views and captured
// nodes): the walk stops there, and at the accumulators of `own_leaves` (leaves the region made).
// Other leaves' accumulators, views of enclosing regions and the nodes of tensors in `reads`
// (those the first pass read from outside) are captured; any other node made before the region
// is foreign.
Reached reached_from(const Tensor& out, const std::unordered_set<const Node*>& boundary,
                     const std::unordered_set<const TensorImpl*>& own_leaves, uint64_t first_node,
                     const detail::ReadLog* reads = nullptr) {
  Reached r;
  if (!out.requires_grad()) return r;
  std::unordered_set<const Node*> seen;
  std::vector<Node*> stack;
  auto enclosing_view = [](const Node* n) {
    for (const auto* views : enclosing_views)
      if (views->count(n)) return true;
    return false;
  };
  auto read_of = [reads](const Node* n) -> const detail::ReadLog::Read* {
    if (reads == nullptr) return nullptr;
    auto it = reads->reads.find(n);
    return it == reads->reads.end() ? nullptr : &it->second;
  };
  auto reach = [&](const std::shared_ptr<Node>& n, const InputMeta& meta) {
    if (n == nullptr || boundary.count(n.get()) || !seen.insert(n.get()).second) return;
    if (const auto* acc = dynamic_cast<const AccumulateGrad*>(n.get())) {
      if (own_leaves.count(acc->leaf().get()) == 0) r.captured.push_back({n, meta, Tensor()});
    } else if (n->sequence_nr() >= first_node) {
      stack.push_back(n.get());
    } else if (enclosing_view(n.get())) {
      r.captured.push_back({n, meta, Tensor()});
    } else if (const detail::ReadLog::Read* read = read_of(n.get())) {
      r.captured.push_back({n, meta, read->tensor});
    } else if (r.foreign == nullptr) {
      r.foreign = n.get();
      r.foreign_meta = meta;
    }
  };
  const InputMeta out_meta{out.shape(), out.dtype(), out.device()};
  if (out.impl()->grad_fn != nullptr) {
    reach(out.impl()->grad_fn, out_meta);
  } else {  // the region returned a leaf itself (pack's reshape of a 1-D leaf is the leaf)
    Tensor leaf = out;
    reach(gradient_edge(leaf), out_meta);
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (size_t i = 0; i < n->num_inputs(); ++i) reach(n->edge(i).fn, n->edge(i).meta);
  }
  return r;
}
}  // namespace

bool checkpoint_values_only() { return values_only; }

TensorList checkpoint(const Region& fn, const TensorList& inputs) {
  std::vector<Shape> shapes;
  Tensor packed;
  std::vector<Captured> captured;
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
    std::unordered_set<const TensorImpl*> own_leaves;
    detail::ReadLog reads;  // tensors requiring grad made before the region that it reads
    reads.first_node = first_node;
    {
      NewLeafLog made_here;
      ReadLogScope log_reads(GradMode::is_enabled() ? &reads : nullptr);
      ValuesOnlyScope first_pass(true);
      // Its inner gradients (without create_graph here) may run nodes of the graph before it,
      // which that graph still needs.
      KeepGraphBefore keep(first_node);
      TensorList result = fn(leaves);
      // A tensor from outside returned as it is was read by no op.
      if (detail::read_log != nullptr)
        for (const Tensor& t : result)
          if (needs_grad(t)) detail::log_read(t, gradient_edge(t));
      out = pack(result, shapes);
      own_leaves.insert(made_here.made().begin(), made_here.made().end());
    }
    // What else the region read that requires grad (captured parameters, tensors computed before
    // it): edges of the node below, so their gradients are taken in the recomputation.
    for (const Tensor& d : leaves) own_leaves.insert(d.impl());
    if (GradMode::is_enabled()) {
      Reached r = reached_from(out, {}, own_leaves, first_node, &reads);
      // Only ops record edges, and record() logs what they read: a node reached otherwise is
      // not the region's doing (an edge built by hand), and its tensor cannot be checked.
      MT_CHECK(r.foreign == nullptr,
               "checkpoint: the region's graph reaches {} (shape {}), made before the region, "
               "through no op the region recorded, so the recomputation could not tell whether "
               "its tensor changed since. Pass that tensor in `inputs`, or detach() it if it is "
               "a constant",
               r.foreign == nullptr ? "" : r.foreign->name(), r.foreign_meta.shape.str());
      captured = std::move(r.captured);
      // Read by the region's ops but not reached from its output: through a gradient the first
      // pass took without create_graph (checkpoint_values_only()), which the recomputation takes
      // with it. Edges as well (a gradient that turns out undefined costs nothing).
      std::unordered_set<const Node*> have;
      for (const Captured& c : captured) have.insert(c.node.get());
      for (const Node* key : reads.order) {
        const detail::ReadLog::Read& read = reads.reads.at(key);
        if (have.count(key) || (read.tensor.is_leaf() && own_leaves.count(read.tensor.impl())))
          continue;
        captured.push_back(
            {read.node, InputMeta{read.tensor.shape(), read.tensor.dtype(), read.tensor.device()},
             read.tensor.is_leaf() ? Tensor() : read.tensor});
      }
      // The recomputation reads a captured tensor again: written in place by the region itself
      // after reading it (under a NoGradGuard, or through a detach()ed alias), it would hold
      // other values then. (Written before the first read: the recomputation finds it.)
      for (const Captured& c : captured) {
        auto it = reads.reads.find(c.node.get());
        if (it == reads.reads.end()) continue;  // an enclosing region's view: that region checks
        const detail::ReadLog::Read& read = it->second;
        MT_CHECK(read.tensor.storage().version() == read.version,
                 "checkpoint: the region writes in place into a tensor it reads from outside "
                 "({}, shape {}); recomputed in the backward, it would read the written values. "
                 "Write into a clone() of it inside the region",
                 c.tensor.defined() ? "the output of " + std::string(c.node->name()) : "a leaf",
                 c.meta.shape.str());
      }
    }
    packed = make_view(out, out.shape(), out.strides(), out.offset());  // a fresh, detached impl
  }
  bool any = !captured.empty();
  for (const Tensor& t : inputs) any |= needs_grad(t);
  if (any && GradMode::is_enabled()) {
    // Edges: the inputs, then the captured tensors. Saved: the inputs, then each captured leaf
    // or tensor computed before the region (only for the check that it was not changed in place
    // before the backward; the region reads it from its closure).
    std::vector<size_t> tensor_saved;  // for each captured entry, its saved index or SIZE_MAX
    std::vector<Tensor> captured_tensors;
    for (const Captured& c : captured) {
      const auto* acc = dynamic_cast<const AccumulateGrad*>(c.node.get());
      const bool kept = acc != nullptr || c.tensor.defined();
      tensor_saved.push_back(kept ? inputs.size() + captured_tensors.size() : SIZE_MAX);
      if (acc) captured_tensors.emplace_back(acc->leaf());
      else if (c.tensor.defined()) captured_tensors.push_back(c.tensor);
    }
    auto node = std::make_shared<FunctionNode<std::function<TensorList(const Node&, const Tensor&)>>>(
        "checkpoint",
        [fn, n = inputs.size(), m = captured.size(), tensor_saved, shapes](
            const Node& self, const Tensor& g) -> TensorList {
          TensorList saved;
          for (size_t i = 0; i < n; ++i) saved.push_back(self.saved(i));
          // A captured tensor changed in place since the forward would give other values.
          TensorList kept = saved;
          for (size_t j = 0; j < m; ++j)
            if (tensor_saved[j] != SIZE_MAX) kept.push_back(self.saved(tensor_saved[j]));
          std::vector<uint32_t> versions;
          for (const Tensor& t : kept) versions.push_back(t.defined() ? t.storage().version() : 0);
          // Recompute from fresh views of the saved inputs: each view is a new node with one
          // edge to its input, and the gradients are taken where the recomputed graph reaches a
          // view or a captured tensor, without crossing it (grad_at_nodes): the partial
          // derivative for each edge of this node (the engine adds the paths between them, e.g.
          // an input computed from a captured parameter), while, with create_graph, the
          // gradients stay attached to everything upstream.
          const bool create_graph = GradMode::is_enabled();
          std::vector<Shape> shapes_again;
          Tensor again;
          TensorList views(n);
          std::vector<std::shared_ptr<Node>> targets, stops;  // stops: not wanted, not crossed
          std::vector<size_t> index;
          std::unordered_set<const Node*> boundary;
          std::unordered_set<const TensorImpl*> made_again;
          uint64_t first_node = 0;
          {
            GradModeGuard on(true);
            ValuesOnlyScope recompute(false);
            for (size_t i = 0; i < n; ++i) {
              views[i] = needs_grad(saved[i]) ? saved[i].unsqueeze(0).squeeze(0) : saved[i];
              if (!needs_grad(saved[i])) continue;
              boundary.insert(views[i].impl()->grad_fn.get());
              if (self.needs_input_grad(i)) {
                targets.push_back(views[i].impl()->grad_fn);
                index.push_back(i);
              } else {
                stops.push_back(views[i].impl()->grad_fn);
              }
            }
            for (size_t j = 0; j < m; ++j) {
              boundary.insert(self.edge(n + j).fn.get());
              if (self.needs_input_grad(n + j)) {
                targets.push_back(self.edge(n + j).fn);
                index.push_back(n + j);
              } else {
                stops.push_back(self.edge(n + j).fn);
              }
            }
            first_node = next_sequence_nr();
            NewLeafLog made_here;
            enclosing_views.push_back(&boundary);  // nested regions may capture the views
            struct Pop {
              ~Pop() { enclosing_views.pop_back(); }
            } pop;
            KeepGraphBefore keep(first_node);  // as in the first pass
            again = pack(fn(views), shapes_again);
            made_again.insert(made_here.made().begin(), made_here.made().end());
          }
          // A region that writes into what it reads from outside (or its inputs) before reading
          // it: the first pass read the written values, and this one wrote again.
          for (size_t k = 0; k < kept.size(); ++k)
            MT_CHECK(!kept[k].defined() || kept[k].storage().version() == versions[k],
                     "checkpoint: recomputed in the backward, the region wrote in place into {} "
                     "(shape {}), which it reads from outside; its two passes read other values. "
                     "Write into a clone() of it inside the region",
                     k < n ? fmt::format("its input #{}", k) : std::string("a tensor"),
                     kept[k].shape().str());
          // A region must compute the same thing twice; other shapes would otherwise surface
          // as a shape error inside the gradient that does not name the region.
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
          // A tensor requiring grad that the recomputation reaches and the first pass did not
          // read (a region keeping state between its passes, or one whose first pass read it
          // only with grad mode off): its gradient has no edge here, so it is refused rather
          // than lost.
          const Reached r = reached_from(again, boundary, made_again, first_node);
          if (!r.captured.empty() || r.foreign != nullptr) {
            const Node* u = r.foreign != nullptr ? r.foreign : r.captured.front().node.get();
            const InputMeta& meta =
                r.foreign != nullptr ? r.foreign_meta : r.captured.front().meta;
            MT_FAIL("checkpoint: recomputed in the backward, the region reads a tensor that "
                    "requires grad ({}, shape {}) that its first pass did not read (with grad "
                    "mode on), so its gradient would be lost; a region must read the same "
                    "tensors in both passes (no state kept between them). Pass it in `inputs`",
                    dynamic_cast<const AccumulateGrad*>(u) ? "a leaf" : u->name(),
                    meta.shape.str());
          }
          TensorList got = grad_at_nodes({again}, targets, {g}, create_graph, stops);
          for (size_t k = 0; k < index.size(); ++k) grads[index[k]] = got[k];
          return grads;
        });
    for (const Tensor& t : inputs) {
      Edge e;
      e.meta = InputMeta{t.shape(), t.dtype(), t.device()};
      if (needs_grad(t)) e.fn = gradient_edge(t);
      node->add_edge(std::move(e));
      node->save(t);
    }
    for (const Captured& c : captured) node->add_edge(Edge{c.node, c.meta});
    for (const Tensor& t : captured_tensors) node->save(t);
    packed.impl()->requires_grad = true;
    packed.impl()->grad_fn = node;
    // Nested in another region's first pass: this node's edges are reads of that region too.
    if (detail::read_log != nullptr) {
      for (size_t i = 0; i < inputs.size(); ++i)
        if (needs_grad(inputs[i])) detail::log_read(inputs[i], node->edge(i).fn);
      for (size_t j = 0; j < captured.size(); ++j)
        if (tensor_saved[j] != SIZE_MAX)
          detail::log_read(captured_tensors[tensor_saved[j] - inputs.size()], captured[j].node);
    }
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
