#include "engine/autograd/engine.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "engine/autograd/node.h"
#include "engine/ops.h"

namespace mt::autograd {

namespace {
std::atomic<uint64_t> g_next_sequence_nr{0};
}

Node::Node() : sequence_nr_(g_next_sequence_nr.fetch_add(1, std::memory_order_relaxed)) {}

uint64_t next_sequence_nr() { return g_next_sequence_nr.load(std::memory_order_relaxed); }

SavedTensor::SavedTensor(const Tensor& t, bool is_output) {
  if (!t.defined()) return;
  saved_version_ = t.storage().version();
  TensorImpl* in = t.impl();
  if (!is_output && in->grad_fn != nullptr &&
      SavedRecompute::applies_on_cuda(t.device().is_cuda()) && in->grad_fn->can_recompute()) {
    // The whole output of a node that can give it again (views have nodes of their own).
    producer_ = in->grad_fn;
    weak_storage_ = in->storage;
    shape_ = in->shape;
    strides_ = in->strides;
    offset_ = in->offset;
    dtype_ = in->dtype;
    return;
  }
  if (!is_output) {
    input_ = t.impl_ptr();
    return;
  }
  TensorImpl* impl = t.impl();
  storage_ = impl->storage;
  grad_fn_ = impl->grad_fn;
  shape_ = impl->shape;
  strides_ = impl->strides;
  offset_ = impl->offset;
  dtype_ = impl->dtype;
}

Tensor SavedTensor::unpack(const Node& owner, size_t index) const {
  if (!defined()) return Tensor();  // an optional input that was not given
  if (producer_ != nullptr) {
    auto impl = std::make_shared<TensorImpl>();
    if (std::shared_ptr<Storage> alive = weak_storage_.lock()) {
      MT_CHECK(alive->version() == saved_version_,
               "{}: tensor #{} saved for the backward pass was modified in place after it was "
               "saved (storage version {} now, {} when saved); clone() it before the in-place "
               "write, or write after the backward pass",
               owner.name(), index, alive->version(), saved_version_);
      impl->storage = std::move(alive);
      impl->shape = shape_;
      impl->strides = strides_;
      impl->offset = offset_;
    } else {
      MT_CHECK(!producer_->released(),
               "{}: saved tensor #{} is the output of {}, kept as a link and recomputed when read "
               "(autograd::SavedRecompute), but an earlier backward pass without retain_graph "
               "freed what {} saved; pass retain_graph=true to that pass, or set SavedRecompute "
               "to never",
               owner.name(), index, producer_->name(), producer_->name());
      Tensor again = producer_->recompute_output();
      MT_CHECK(again.defined() && again.shape() == shape_ && again.dtype() == dtype_,
               "{}: recomputing saved tensor #{} with {} gave {} (internal error)", owner.name(),
               index, producer_->name(), again.defined() ? again.str() : std::string("nothing"));
      TensorImpl* a = again.impl();
      impl->storage = a->storage;
      impl->shape = a->shape;
      impl->strides = a->strides;
      impl->offset = a->offset;
    }
    impl->dtype = dtype_;
    impl->grad_fn = producer_;
    impl->requires_grad = true;
    return Tensor(std::move(impl));
  }
  const Storage& storage = input_ ? *input_->storage : *storage_;
  MT_CHECK(storage.version() == saved_version_,
           "{}: tensor #{} saved for the backward pass was modified in place after it was saved "
           "(storage version {} now, {} when saved); clone() it before the in-place write, or "
           "write after the backward pass",
           owner.name(), index, storage.version(), saved_version_);
  if (input_) return Tensor(input_);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = storage_;
  impl->shape = shape_;
  impl->strides = strides_;
  impl->offset = offset_;
  impl->dtype = dtype_;
  impl->grad_fn = grad_fn_.lock();
  impl->requires_grad = impl->grad_fn != nullptr;
  return Tensor(std::move(impl));
}

Tensor Node::recompute_output() const {
  MT_CHECK(recompute_ != nullptr, "{}: this node cannot recompute its output (internal error)",
           name());
  if (!recomputed_.defined()) {
    NoGradGuard no_grad;
    // The kernel's own operands are not what a checkpointed region reads (the recomputed output
    // is, logged by the saved() that asked for it): no log while it runs.
    struct NoReadLog {
      detail::ReadLog* previous = detail::read_log;
      NoReadLog() { detail::read_log = nullptr; }
      ~NoReadLog() { detail::read_log = previous; }
    } no_read_log;
    recomputed_ = recompute_(*this, recompute_a_, recompute_b_);
  }
  return recomputed_;
}

Tensor Node::saved(size_t i) const {
  MT_CHECK(!released_,
           "{}: trying to backward through the graph a second time (its saved tensors were freed "
           "by the first backward); pass retain_graph=true to the first grad()/backward() call",
           name());
  MT_CHECK(i < saved_.size(), "{}: saved tensor #{} does not exist (internal error)", name(), i);
  Tensor t = saved_[i].unpack(*this, i);
  // A checkpointed region's first pass reads it through a backward rule (its inner gradient,
  // taken without create_graph, records nothing): a read of the region all the same.
  if (detail::read_log != nullptr && t.defined() && t.requires_grad()) [[unlikely]]
    detail::log_read(t, gradient_edge(t));
  return t;
}

TensorList AccumulateGrad::apply(const Tensor& g) {
  MT_CHECK(detail::accumulate_filter == nullptr || detail::accumulate_filter->allows(leaf_.get()),
           "checkpoint: the region calls backward(), which accumulates into the .grad of a leaf "
           "it did not make or of its input (shape {}); each pass of the region (the forward's and the "
           "backward's recomputation) would add to it again. Take that gradient with grad() "
           "inside a checkpointed region",
           leaf_->shape.str());
  // Runs with grad mode = create_graph. The stored gradient is always the leaf's own copy (with
  // create_graph a recorded one): `g` may be another leaf's gradient too (add passes one tensor
  // to both inputs), the caller's grad_output, or a stride-0 view (sum's backward), and a later
  // backward without create_graph adds into the stored gradient in place.
  if (!leaf_->grad) {
    leaf_->grad = GradMode::is_enabled() ? clone(g).impl_ptr() : g.detach().clone().impl_ptr();
  } else if (GradMode::is_enabled()) {
    leaf_->grad = add(Tensor(leaf_->grad), g).impl_ptr();
  } else {
    Tensor(leaf_->grad).add_(g.detach());
  }
  return {};
}

std::shared_ptr<Node> gradient_edge(const Tensor& t) {
  TensorImpl* impl = t.impl();
  if (impl->grad_fn) return impl->grad_fn;
  if (!impl->requires_grad) return nullptr;
  if (auto acc = impl->grad_accumulator.lock()) return acc;
  auto acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
  impl->grad_accumulator = acc;
  return acc;
}

namespace {

struct NodeTask {
  int dependencies = 0;   // edges from nodes still to run
  bool needed = false;    // is, or leads to, a captured input (grad) or a leaf (backward)
  bool propagate = false; // some input edge leads to a needed node
  bool visited = false;
  // The gradients arrived so far for the node's output: their running sum, and one more
  // waiting to be added together with the next (add3: one pass for two additions, the same
  // rounding as two adds). sum() gives the total once every edge has delivered.
  Tensor grad;
  Tensor pending;
  Tensor sum() {
    if (pending.defined()) {
      grad = add(grad, pending);  // differentiable when create_graph (grad mode is on)
      pending = Tensor();
    }
    return std::move(grad);
  }
};

// Checks one gradient against its edge's metadata and reduces a broadcast gradient to the input
// shape. Returns the gradient to pass on.
Tensor conform(const Node& node, size_t i, Tensor g) {
  const InputMeta& meta = node.input_meta(i);
  MT_CHECK(g.dtype() == meta.dtype,
           "backward of {}: gradient for input #{} has dtype {} but the input has dtype {}",
           node.name(), i, dtype_name(g.dtype()), dtype_name(meta.dtype));
  MT_CHECK(g.device() == meta.device,
           "backward of {}: gradient for input #{} is on {} but the input is on {}", node.name(), i,
           g.device().str(), meta.device.str());
  if (!(g.shape() == meta.shape)) g = sum_to(g, meta.shape);
  return g;
}

// Nodes numbered below it keep their saved tensors in passes without retain_graph
// (KeepGraphBefore); 0: none are kept.
thread_local constinit uint64_t keep_graph_before = 0;

class GraphTask {
 public:
  // create_graph reaches the rules through grad mode (set by the caller), not through the task.
  GraphTask(bool retain_graph, bool accumulate)
      : retain_graph_(retain_graph), accumulate_(accumulate) {}

  // Runs the backward pass from roots[i] seeded with root_grads[i]. When `captures` is not
  // empty, records the gradient reaching each capture node (running it only where it leads to
  // another capture; never with stop_at_captures, where nothing past a capture is visited).
  void run(const std::vector<std::shared_ptr<Node>>& roots, const TensorList& root_grads,
           const std::vector<std::shared_ptr<Node>>& captures, TensorList* captured,
           bool stop_at_captures = false, const std::vector<std::shared_ptr<Node>>& stops = {}) {
    // A node may be captured for several inputs (a tensor listed twice): each gets the gradient.
    std::unordered_map<Node*, std::vector<int>> capture_index;
    for (size_t i = 0; i < captures.size(); ++i)
      if (captures[i]) capture_index[captures[i].get()].push_back(int(i));
    std::unordered_set<Node*> stop_set;  // also not crossed, and not needed
    for (const auto& s : stops)
      if (s) stop_set.insert(s.get());

    // Pass 1: dependency counts and which nodes are needed (post-order DFS, no recursion).
    struct Frame {
      Node* node;
      size_t next_child;
    };
    std::vector<Frame> stack;
    for (const auto& r : roots) {
      NodeTask& t = tasks_[r.get()];
      if (t.visited) continue;
      t.visited = true;
      stack.push_back({r.get(), 0});
      while (!stack.empty()) {
        Frame& f = stack.back();
        const bool stop = stop_at_captures &&
                          (capture_index.count(f.node) > 0 || stop_set.count(f.node) > 0);
        if (!stop && f.next_child < f.node->num_inputs()) {
          Node* child = f.node->edge(f.next_child++).fn.get();
          if (!child) continue;
          NodeTask& ct = tasks_[child];
          ct.dependencies++;
          if (!ct.visited) {
            ct.visited = true;
            stack.push_back({child, 0});
          }
          continue;
        }
        NodeTask& nt = tasks_[f.node];
        nt.needed = accumulate_ ? dynamic_cast<AccumulateGrad*>(f.node) != nullptr
                                : capture_index.count(f.node) > 0;
        if (!stop)
          for (size_t i = 0; i < f.node->num_inputs(); ++i)
            if (Node* c = f.node->edge(i).fn.get()) nt.propagate |= tasks_[c].needed;
        nt.needed |= nt.propagate;
        stack.pop_back();
      }
    }

    // Seed the roots, then run nodes in dependency order.
    for (size_t i = 0; i < roots.size(); ++i) add_grad(*roots[i], root_grads[i]);
    std::vector<Node*> ready;
    for (const auto& r : roots) {
      NodeTask& t = tasks_[r.get()];
      if (t.dependencies == 0) ready.push_back(r.get());
    }
    // Deduplicate roots that appear twice.
    std::sort(ready.begin(), ready.end());
    ready.erase(std::unique(ready.begin(), ready.end()), ready.end());

    while (!ready.empty()) {
      Node* node = ready.back();
      ready.pop_back();
      NodeTask& task = tasks_[node];
      // Every node that saves this one's output ran before it: a recomputed output is done with.
      node->drop_recomputed();
      Tensor g = task.sum();
      if (auto it = capture_index.find(node); it != capture_index.end()) {
        for (const int i : it->second) (*captured)[size_t(i)] = g;
        if (stop_at_captures) continue;  // its inputs were not visited
      }
      if (stop_set.count(node)) continue;
      if (!task.needed) continue;
      TensorList input_grads;
      bool is_accumulator = dynamic_cast<AccumulateGrad*>(node) != nullptr;
      if (g.defined() && (is_accumulator ? accumulate_ : task.propagate)) {
        // Only the inputs whose path leads to a needed node get a gradient computed (inputs past
        // the 64th always do; see Node::needs_input_grad).
        uint64_t mask = 0;
        for (size_t i = 0; i < node->num_inputs() && i < 64; ++i)
          if (Node* c = node->edge(i).fn.get(); c && tasks_[c].needed) mask |= uint64_t(1) << i;
        struct MaskGuard {
          Node* node;
          uint64_t previous;
          ~MaskGuard() { node->set_input_mask(previous); }
        } guard{node, node->input_mask()};
        node->set_input_mask(mask);
        input_grads = node->apply(g);
        MT_CHECK(input_grads.size() == node->num_inputs() || is_accumulator,
                 "backward of {} returned {} gradients for {} inputs (internal error)",
                 node->name(), input_grads.size(), node->num_inputs());
        // Only a node that ran frees its saved tensors: a node where the pass only captured a
        // gradient (an intermediate `input` of grad()) still belongs to a graph others may use.
        if (!retain_graph_ && !is_accumulator && node->sequence_nr() >= keep_graph_before)
          node->release_saved();
      }
      for (size_t i = 0; i < node->num_inputs(); ++i) {
        Node* child = node->edge(i).fn.get();
        if (!child) continue;
        NodeTask& ct = tasks_[child];
        if (i < input_grads.size() && input_grads[i].defined() && ct.needed) {
          add_grad(*child, conform(*node, i, std::move(input_grads[i])));
        }
        if (--ct.dependencies == 0) ready.push_back(child);
      }
    }
  }

 private:
  void add_grad(Node& node, Tensor g) {
    NodeTask& t = tasks_[&node];
    if (!g.defined()) return;
    if (!t.grad.defined()) {
      t.grad = std::move(g);
    } else if (!t.pending.defined()) {
      t.pending = std::move(g);
    } else {
      // ((grad + pending) + g) in one kernel; differentiable when create_graph (grad mode is
      // on), plain otherwise.
      t.grad = add3(t.grad, t.pending, g);
      t.pending = Tensor();
    }
  }

  bool retain_graph_;
  bool accumulate_;
  std::unordered_map<Node*, NodeTask> tasks_;
};

TensorList make_root_grads(const TensorList& outputs, const TensorList& grad_outputs) {
  MT_CHECK(grad_outputs.empty() || grad_outputs.size() == outputs.size(),
           "grad_outputs has {} entries but there are {} outputs; give one per output or none",
           grad_outputs.size(), outputs.size());
  TensorList roots;
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& out = outputs[i];
    MT_CHECK(out.defined(), "outputs[{}] is an undefined tensor", i);
    MT_CHECK(out.requires_grad(),
             "outputs[{}] does not require grad and has no grad_fn: it was computed from tensors "
             "that do not require grad, under a no-grad guard, or by ops without a gradient "
             "(sign, comparisons, detach()), whose result is a constant",
             i);
    Tensor g = grad_outputs.empty() ? Tensor() : grad_outputs[i];
    if (!g.defined()) {
      MT_CHECK(out.numel() == 1,
               "a gradient can only be created implicitly for a one-element output; outputs[{}] "
               "has shape {}, so pass grad_outputs[{}]",
               i, out.shape().str(), i);
      g = ones_like(out);
    } else {
      MT_CHECK(g.shape() == out.shape(),
               "grad_outputs[{}] has shape {} but outputs[{}] has shape {}; they must match", i,
               g.shape().str(), i, out.shape().str());
      MT_CHECK(g.dtype() == out.dtype(),
               "grad_outputs[{}] has dtype {} but outputs[{}] has dtype {}; they must match", i,
               dtype_name(g.dtype()), i, dtype_name(out.dtype()));
      MT_CHECK(g.device() == out.device(),
               "grad_outputs[{}] is on {} but outputs[{}] is on {}; they must match", i,
               g.device().str(), i, out.device().str());
    }
    roots.push_back(std::move(g));
  }
  return roots;
}

}  // namespace

TensorList grad(const TensorList& outputs, const TensorList& inputs,
                const TensorList& grad_outputs, std::optional<bool> retain_graph,
                bool create_graph, bool allow_unused) {
  TensorList root_grads = make_root_grads(outputs, grad_outputs);
  std::vector<std::shared_ptr<Node>> roots, captures;
  for (const auto& o : outputs) roots.push_back(gradient_edge(o));
  for (size_t i = 0; i < inputs.size(); ++i) {
    MT_CHECK(inputs[i].defined(), "inputs[{}] is an undefined tensor; pass the tensors to "
             "differentiate by", i);
    MT_CHECK(inputs[i].requires_grad(),
             "inputs[{}] does not require grad; call set_requires_grad() on it before the forward "
             "pass",
             i);
    captures.push_back(gradient_edge(inputs[i]));
  }
  TensorList captured(inputs.size());
  {
    GradModeGuard mode(create_graph);
    GraphTask task(retain_graph.value_or(create_graph), /*accumulate=*/false);
    task.run(roots, root_grads, captures, &captured);
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!captured[i].defined()) {
      MT_CHECK(allow_unused,
               "inputs[{}] (shape {}) was not used to compute the outputs, so it has no gradient; "
               "pass allow_unused=true to get an undefined tensor for it",
               i, inputs[i].shape().str());
      continue;
    }
    if (!(captured[i].shape() == inputs[i].shape())) {
      GradModeGuard mode(create_graph);
      captured[i] = sum_to(captured[i], inputs[i].shape());
    }
  }
  return captured;
}

TensorList grad_at_nodes(const TensorList& outputs,
                         const std::vector<std::shared_ptr<Node>>& targets,
                         const TensorList& grad_outputs, bool create_graph,
                         const std::vector<std::shared_ptr<Node>>& stops) {
  TensorList root_grads = make_root_grads(outputs, grad_outputs);
  std::vector<std::shared_ptr<Node>> roots;
  for (const auto& o : outputs) roots.push_back(gradient_edge(o));
  TensorList captured(targets.size());
  GradModeGuard mode(create_graph);
  GraphTask task(/*retain_graph=*/create_graph, /*accumulate=*/false);
  task.run(roots, root_grads, targets, &captured, /*stop_at_captures=*/true, stops);
  return captured;
}

KeepGraphBefore::KeepGraphBefore(uint64_t first_kept) : previous_(keep_graph_before) {
  keep_graph_before = std::max(previous_, first_kept);
}
KeepGraphBefore::~KeepGraphBefore() { keep_graph_before = previous_; }

void backward(const TensorList& outputs, const TensorList& grad_outputs,
              std::optional<bool> retain_graph, bool create_graph) {
  TensorList root_grads = make_root_grads(outputs, grad_outputs);
  std::vector<std::shared_ptr<Node>> roots;
  for (const auto& o : outputs) roots.push_back(gradient_edge(o));
  GradModeGuard mode(create_graph);
  GraphTask task(retain_graph.value_or(create_graph), /*accumulate=*/true);
  task.run(roots, root_grads, {}, nullptr);
}

GraphMemory graph_memory(const TensorList& roots) {
  GraphMemory m;
  std::unordered_set<const Node*> seen;
  std::unordered_set<const Storage*> counted;
  std::map<std::string, GraphMemoryRow> by_name;
  std::vector<const Node*> stack;
  for (const Tensor& r : roots)
    if (r.defined() && r.impl()->grad_fn) stack.push_back(r.impl()->grad_fn.get());
  while (!stack.empty()) {
    const Node* n = stack.back();
    stack.pop_back();
    if (!seen.insert(n).second) continue;
    GraphMemoryRow& row = by_name[n->name()];
    row.node = n->name();
    ++row.nodes;
    ++m.nodes;
    for (size_t i = 0; i < n->num_saved(); ++i) {
      const Storage* s = n->saved_storage(i);
      if (s == nullptr || !counted.insert(s).second) continue;
      ++row.tensors;
      row.bytes += int64_t(s->nbytes());
      m.largest.push_back({n->name(), n->saved_shape(i).str(), int64_t(s->nbytes())});
    }
    for (size_t i = 0; i < n->num_inputs(); ++i)
      if (const Node* c = n->edge(i).fn.get(); c != nullptr && !seen.count(c)) stack.push_back(c);
  }
  for (auto& [name, row] : by_name) {
    m.tensors += row.tensors;
    m.bytes += row.bytes;
    m.rows.push_back(row);
  }
  std::sort(m.largest.begin(), m.largest.end(),
            [](const auto& a, const auto& b) { return a.bytes > b.bytes; });
  if (m.largest.size() > 20) m.largest.resize(20);
  std::sort(m.rows.begin(), m.rows.end(), [](const GraphMemoryRow& a, const GraphMemoryRow& b) {
    return a.bytes != b.bytes ? a.bytes > b.bytes : a.node < b.node;
  });
  return m;
}

std::string GraphMemory::table(size_t max_rows) const {
  std::string out = fmt::format("graph memory: {} nodes, {} saved storages, {:.1f} MiB\n", nodes,
                                tensors, double(bytes) / (1 << 20));
  out += fmt::format("  {:<32} {:>7} {:>8} {:>10} {:>6}\n", "node", "nodes", "tensors", "MiB",
                     "share");
  for (size_t i = 0; i < rows.size() && i < max_rows; ++i) {
    const GraphMemoryRow& r = rows[i];
    out += fmt::format("  {:<32} {:>7} {:>8} {:>10.1f} {:>5.1f}%\n", r.node, r.nodes, r.tensors,
                       double(r.bytes) / (1 << 20),
                       bytes > 0 ? 100.0 * double(r.bytes) / double(bytes) : 0.0);
  }
  if (rows.size() > max_rows) out += fmt::format("  ... {} more\n", rows.size() - max_rows);
  out += "  largest saved storages:\n";
  for (const Largest& l : largest)
    out += fmt::format("    {:>8.1f} MiB  {:<28} {}\n", double(l.bytes) / (1 << 20), l.node,
                       l.shape);
  return out;
}

}  // namespace mt::autograd
