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
// cost, not the GPU time. Kernels that call other kernels (a composite CPU kernel) count in both.
//
// GPU time: enable_device_trace() (CUDA builds with CUPTI) records what the device itself ran,
// with device timestamps, and credits each kernel, copy and memset to the engine kernel whose
// call launched it (the innermost, when calls nest; "(outside kernels)" for work launched
// elsewhere, e.g. a transfer; a CUDA graph's replay counts as "cuda_graph_replay"). The
// entries then also carry device launches and device time, and device_summary() says how busy
// the device was: the union of the intervals it ran something over the span from the first
// start to the last end. A device busy for much less than its span waits for the host (launch
// bound); one busy throughout is bound by its kernels. Collecting costs host time per launch
// (CUPTI records each API call), so host times taken with the trace on are not comparable with
// those taken without it.
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
void record_flops(const char* kernel, double flops);
double now_seconds();
inline std::atomic<bool> device_tracing{false};
void push_device_op(const char* kernel);
void pop_device_op();
}  // namespace detail

inline bool enabled() { return detail::enabled.load(std::memory_order_relaxed); }
void enable(bool on = true);
void reset();

struct Entry {
  std::string kernel;
  int64_t calls = 0;
  double seconds = 0;          // host wall time inside the calls
  int64_t device_launches = 0; // kernels, copies and memsets the device ran for these calls
  double device_seconds = 0;   // their device time (device trace only)
  double flops = 0;            // arithmetic counted by the op (matrix products: 2 M N K)
};
// Adds `flops` floating-point operations to `kernel`'s entry (a no-op while the profiler is off).
// matmul and linear count theirs (2 M N K per product), so a profile says how much arithmetic a
// step holds and the rate its products ran at.
inline void add_flops(const char* kernel, double flops) {
  if (enabled()) detail::record_flops(kernel, flops);
}

// Every kernel called since the last reset, slowest first.
std::vector<Entry> entries();
// A table of entries(): kernel, calls, total ms, share of the total, microseconds per call;
// with device-trace data also device launches and device ms per kernel, then the summary
// below and the slowest CUDA kernels by name.
std::string report();

// Starts (on = true) or stops collecting device times. False, with the reason in *why, where
// it cannot run: a build without CUDA or CUPTI, no driver or GPU, another profiler attached.
// reset() drops what was collected so far; entries(), report() and device_summary() wait for
// the devices to finish their queued work and collect what they ran (not during a CUDA-graph
// capture: collected later).
bool enable_device_trace(bool on = true, std::string* why = nullptr);

bool device_trace_enabled();

struct DeviceKernel {
  std::string name;  // CUDA kernel (demangled) or "memcpy HtoD", "memset", ...
  int64_t count = 0;
  double seconds = 0;
};
struct DeviceSummary {
  int64_t activities = 0;     // kernels, copies and memsets since the last reset
  double busy_seconds = 0;    // the union of their device intervals
  double span_seconds = 0;    // first start to last end
  double kernel_seconds = 0;  // the sum of their durations (> busy when they overlap)
  std::vector<DeviceKernel> kernels;  // by name, slowest first
};
DeviceSummary device_summary();

// Times one kernel call when the profiler is on (used by DispatchStub); on a CUDA device with
// the device trace on, also tags the device work the call launches with the kernel's name.
class ScopedKernel {
 public:
  explicit ScopedKernel(const char* kernel, bool on_cuda = false)
      : kernel_(enabled() ? kernel : nullptr),
        traced_(kernel_ != nullptr && on_cuda && detail::device_tracing.load(std::memory_order_relaxed)),
        start_(kernel_ ? detail::now_seconds() : 0) {
    if (traced_) detail::push_device_op(kernel_);
  }
  ~ScopedKernel() {
    if (traced_) detail::pop_device_op();
    if (kernel_) detail::record(kernel_, detail::now_seconds() - start_);
  }
  ScopedKernel(const ScopedKernel&) = delete;
  ScopedKernel& operator=(const ScopedKernel&) = delete;

 private:
  const char* kernel_;
  bool traced_;
  double start_;
};

}  // namespace mt::profiler
