// Grad mode: when off, ops record nothing. Thread-local, so data-loading threads and the training
// thread do not interfere. The backward pass runs with grad mode = create_graph.
#pragma once

namespace mt {

class GradMode {
 public:
  static bool is_enabled() { return enabled_; }
  static void set_enabled(bool enabled) { enabled_ = enabled; }

 private:
  static inline thread_local bool enabled_ = true;
};

// Sets grad mode for a scope and restores the previous mode on exit.
class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled) : prev_(GradMode::is_enabled()) {
    GradMode::set_enabled(enabled);
  }
  ~GradModeGuard() { GradMode::set_enabled(prev_); }
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool prev_;
};

class NoGradGuard : public GradModeGuard {
 public:
  NoGradGuard() : GradModeGuard(false) {}
};

// Whether a node saving the output of a cheaply recomputable op (mul, geglu, layer_norm; see
// engine/autograd/node.h SavedTensor) keeps only a link and recomputes the tensor when the
// backward pass reads it (less memory, one elementwise or row-wise pass more per use) or keeps
// the tensor. Measured on the poco-paper E2E-TTT meta-step (CPU, bench/README.md): peak 746 ->
// 515 MiB for about 4% more time. The default recomputes on CUDA devices, where memory is the
// scarce resource and the passes cost microseconds, and keeps on the CPU. Read when a tensor
// is saved; thread-local, like grad mode. A link needs its producer's saved tensors: after a
// backward pass without retain_graph freed them, a later pass that reads the link (through
// another branch) fails with a message saying so, where a kept tensor would have served.
enum class SavedRecomputePolicy { cuda_only, always, never };
class SavedRecompute {
 public:
  static SavedRecomputePolicy policy() { return policy_; }
  static void set_policy(SavedRecomputePolicy p) { policy_ = p; }
  static bool applies_on_cuda(bool is_cuda) {
    return policy_ == SavedRecomputePolicy::always ||
           (policy_ == SavedRecomputePolicy::cuda_only && is_cuda);
  }

 private:
  static inline thread_local SavedRecomputePolicy policy_ = SavedRecomputePolicy::cuda_only;
};

}  // namespace mt
