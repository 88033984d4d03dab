// Kernel profiler: wall time and call count of every kernel the engine dispatches, by kernel
// name ("matmul", "mul", "layer_norm_backward", ...). Off by default; while off the cost is one
// relaxed atomic load per dispatch.
//
//   mt::profiler::enable();            // or run with METATAPE_PROFILE=1 (report at exit, stderr)
//   ... forward, backward, optimizer ...
//   std::cout << mt::profiler::report();
//
// Times are inclusive wall times measured around the kernel call on the calling thread. A CPU
// kernel runs to completion inside the call (its OpenMP threads included), so the figure is its
// cost. A CUDA kernel call returns once the kernel is queued: its figure is the host-side launch
// cost, not the GPU time (use Nsight Systems for that). Kernels that call other kernels (a
// composite CPU kernel) count in both.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace mt::profiler {

namespace detail {
inline std::atomic<bool> enabled{false};
// Adds one call of `kernel` (a string literal: the stub's name) lasting `seconds`.
void record(const char* kernel, double seconds);
double now_seconds();
}  // namespace detail

inline bool enabled() { return detail::enabled.load(std::memory_order_relaxed); }
void enable(bool on = true);
void reset();

struct Entry {
  std::string kernel;
  int64_t calls = 0;
  double seconds = 0;
};
// Every kernel called since the last reset, slowest first.
std::vector<Entry> entries();
// A table of entries(): kernel, calls, total ms, share of the total, microseconds per call.
std::string report();

// Times one kernel call when the profiler is on (used by DispatchStub).
class ScopedKernel {
 public:
  explicit ScopedKernel(const char* kernel)
      : kernel_(enabled() ? kernel : nullptr), start_(kernel_ ? detail::now_seconds() : 0) {}
  ~ScopedKernel() {
    if (kernel_) detail::record(kernel_, detail::now_seconds() - start_);
  }
  ScopedKernel(const ScopedKernel&) = delete;
  ScopedKernel& operator=(const ScopedKernel&) = delete;

 private:
  const char* kernel_;
  double start_;
};

}  // namespace mt::profiler
