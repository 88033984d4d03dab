// Tape nodes. A node is created by an op when grad mode is on and an input requires grad; it
// holds one edge per forward input (to the node that produced it, or to the leaf's gradient
// accumulator), the metadata the engine needs to check and reduce incoming gradients, and the
// tensors its backward rule reads. Every node has exactly one output: ops with several results
// (split) are built from single-output ops.
//
// Backward rules are written with the engine's own differentiable ops; the engine runs them with
// grad mode = create_graph, so the same rule gives first-order gradients or records a graph of
// the backward pass for gradients of any order.
#pragma once

#include <cstdint>
#include <memory>

#include "engine/autograd/grad_mode.h"
#include "engine/core/small_vector.h"
#include "engine/core/tensor.h"

namespace mt::autograd {

class Node;

struct InputMeta {
  Shape shape;
  DType dtype = DType::f32;
  Device device;
};

// Where the gradient of a forward input goes.
struct Edge {
  std::shared_ptr<Node> fn;  // null when the input does not require grad
  InputMeta meta;
};

// A tensor kept for the backward pass. Inputs are held by reference (the input's own impl, so
// leaves keep their identity); outputs are held as their raw fields plus a weak link to the
// node, which avoids the cycle output -> node -> output. An input that is the whole output of a
// node able to recompute it cheaply (Node::set_recompute: an elementwise or row-wise op whose
// own saved tensors give its output again) is not kept: only a link to that node and a weak
// link to the storage; unpacking uses the storage while someone else keeps it alive, else runs
// the node's recomputation (the same kernel on the same values: the same bits).
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, bool is_output);
  Tensor unpack(const Node& owner, size_t index) const;
  bool defined() const {
    return input_ != nullptr || storage_ != nullptr || producer_ != nullptr;
  }
  // The storage it keeps alive (null when undefined or recomputed).
  const Storage* storage() const { return input_ ? input_->storage.get() : storage_.get(); }
  Shape shape() const { return input_ ? input_->shape : shape_; }
  bool recomputed() const { return producer_ != nullptr; }

 private:
  std::shared_ptr<TensorImpl> input_;  // is_output == false
  // is_output == true:
  std::shared_ptr<Storage> storage_;
  std::weak_ptr<Node> grad_fn_;
  // A recomputable input: the node whose output it is, and its storage while it lives.
  std::shared_ptr<Node> producer_;
  std::weak_ptr<Storage> weak_storage_;
  Shape shape_, strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::f32;
  uint32_t saved_version_ = 0;
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  Node();
  virtual ~Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  virtual const char* name() const = 0;
  // grad_output = dL/d(output) (output's shape). Returns one entry per forward input: the
  // gradient for it, or undefined when it needs none. An entry may have the output's broadcast
  // shape; the engine sums it down to the input's shape (one place for broadcast reduction).
  virtual TensorList apply(const Tensor& grad_output) = 0;

  size_t num_inputs() const { return edges_.size(); }
  const Edge& edge(size_t i) const { return edges_[i]; }
  // Whether the running backward pass wants the gradient for input i: the input has a gradient
  // path (a grad_fn or a leaf's accumulator) and, during a pass, that path leads to a tensor the
  // pass was asked about. torch.autograd.grad(loss, [embeddings]) thus skips the weight
  // gradients of every layer (the engine sets the mask around apply()).
  bool needs_input_grad(size_t i) const {
    return edges_[i].fn != nullptr && (i >= 64 || ((input_mask_ >> i) & 1u) != 0);
  }
  uint64_t input_mask() const { return input_mask_; }
  void set_input_mask(uint64_t mask) { input_mask_ = mask; }
  const InputMeta& input_meta(size_t i) const { return edges_[i].meta; }
  uint64_t sequence_nr() const { return sequence_nr_; }

  void add_edge(Edge e) { edges_.push_back(std::move(e)); }
  void save(const Tensor& t) { saved_.push_back(SavedTensor(t, false)); }
  void save_output(const Tensor& t) { saved_.push_back(SavedTensor(t, true)); }
  // The i-th saved tensor; throws if it was freed by an earlier backward or modified in place.
  Tensor saved(size_t i) const;

  // A function giving this node's output again from its saved tensors (run without grad mode),
  // set by ops whose output is cheap to recompute (one elementwise or row-wise pass: mul, geglu,
  // layer_norm): a later node that saves that output then keeps no copy of it (SavedTensor).
  // Only one level deep: a node that itself saves a recomputed tensor does not offer it (a
  // chain of recomputations per unpack could cost as much as the forward).
  // A plain function and two scalars (no allocation when an op records): fn(node, a, b).
  using Recompute = Tensor (*)(const Node& node, double a, int64_t b);
  void set_recompute(Recompute fn, double a = 0, int64_t b = 0) {
    recompute_ = fn;
    recompute_a_ = a;
    recompute_b_ = b;
  }
  bool can_recompute() const {
    if (recompute_ == nullptr || released_) return false;
    for (size_t i = 0; i < saved_.size(); ++i)
      if (saved_[i].recomputed()) return false;
    return true;
  }
  // The recomputed output is kept for the other nodes that save it until the backward pass
  // reaches this node (they all come before it) or the node is released.
  Tensor recompute_output() const;
  void drop_recomputed() { recomputed_ = Tensor(); }

  size_t num_saved() const { return saved_.size(); }
  const Storage* saved_storage(size_t i) const { return saved_[i].storage(); }
  Shape saved_shape(size_t i) const { return saved_[i].shape(); }

  bool released() const { return released_; }
  void release_saved() {
    saved_.clear();
    recomputed_ = Tensor();
    released_ = true;
  }

 private:
  SmallVector<Edge, 3> edges_;
  SmallVector<SavedTensor, 3> saved_;
  uint64_t sequence_nr_;
  uint64_t input_mask_ = ~uint64_t(0);  // bit i: input i's gradient is wanted (inputs >= 64: always)
  bool released_ = false;
  Recompute recompute_ = nullptr;
  double recompute_a_ = 0;
  int64_t recompute_b_ = 0;
  mutable Tensor recomputed_;
};

// A node whose backward rule is a callable: TensorList rule(const Node& self, const Tensor& g).
// The callable may capture plain values (dims, shapes, scalars); tensors go through save().
template <class Rule>
class FunctionNode final : public Node {
 public:
  FunctionNode(const char* name, Rule rule) : name_(name), rule_(std::move(rule)) {}
  const char* name() const override { return name_; }
  TensorList apply(const Tensor& grad_output) override { return rule_(*this, grad_output); }

 private:
  const char* name_;
  Rule rule_;
};

// The node that receives the gradient of a leaf tensor (accumulates into .grad in backward()).
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {}
  const char* name() const override { return "AccumulateGrad"; }
  TensorList apply(const Tensor& grad_output) override;
  const std::shared_ptr<TensorImpl>& leaf() const { return leaf_; }

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

// The sequence number the next node will get: nodes numbered at or above a value read before a
// computation were created after it began (single-threaded; checkpoint() uses it to tell its
// region's nodes from the graph before it).
uint64_t next_sequence_nr();

// The node a gradient for t flows into: t's grad_fn, its accumulator (leaf), or null.
std::shared_ptr<Node> gradient_edge(const Tensor& t);

inline bool needs_grad(const Tensor& t) { return t.defined() && t.requires_grad(); }

namespace detail {
// The tensors a checkpointed region's first pass reads from outside it (checkpoint.cpp): while
// one is set on this thread, record() passes each input requiring grad, with the node its
// gradient goes to, to log_read, which keeps the leaves and the tensors made before the region
// with their storage versions: the region's node holds a non-leaf where its graph only links to
// the tensor's node, and a read tensor written in place during the region is refused.
struct ReadLog;
extern thread_local constinit ReadLog* read_log;
void log_read(const Tensor& t, const std::shared_ptr<Node>& gradient_node);  // while read_log is set

// While a checkpointed region's pass runs on this thread: the leaves backward() may accumulate
// into (those the pass made itself; AccumulateGrad refuses others, whose .grad each pass of the
// region would add to again).
struct AccumulateFilter {
  virtual bool allows(const TensorImpl* leaf) const = 0;
  virtual ~AccumulateFilter() = default;
};
extern thread_local constinit const AccumulateFilter* accumulate_filter;
}  // namespace detail
template <class... Ts>
bool any_requires_grad(const Ts&... ts) {
  return GradMode::is_enabled() && (needs_grad(ts) || ...);
}

// Creates the node for `output` with one edge per input and attaches it as output's history.
// Returns the node so the op can save what its rule reads.
template <class Rule>
Node& record(const char* name, Tensor& output, std::initializer_list<const Tensor*> inputs,
             Rule rule) {
  auto node = std::make_shared<FunctionNode<Rule>>(name, std::move(rule));
  for (const Tensor* in : inputs) {
    Edge e;
    if (in->defined()) {
      e.meta = InputMeta{in->shape(), in->dtype(), in->device()};
      if (in->requires_grad()) {
        e.fn = gradient_edge(*in);
        if (detail::read_log != nullptr) [[unlikely]]
          detail::log_read(*in, e.fn);
      }
    }
    node->add_edge(std::move(e));
  }
  TensorImpl* out = output.impl();
  out->requires_grad = true;
  out->grad_fn = node;
  return *node;
}

// The same for a variable number of inputs (cat, stack).
template <class Rule>
Node& record_list(const char* name, Tensor& output, const TensorList& inputs, Rule rule) {
  auto node = std::make_shared<FunctionNode<Rule>>(name, std::move(rule));
  for (const Tensor& in : inputs) {
    Edge e;
    e.meta = InputMeta{in.shape(), in.dtype(), in.device()};
    if (in.requires_grad()) {
      e.fn = gradient_edge(in);
      if (detail::read_log != nullptr) [[unlikely]]
        detail::log_read(in, e.fn);
    }
    node->add_edge(std::move(e));
  }
  output.impl()->requires_grad = true;
  output.impl()->grad_fn = node;
  return *node;
}

}  // namespace mt::autograd
