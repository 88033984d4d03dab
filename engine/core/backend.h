// Which backends this build has and which devices are present. Safe to call on machines without
// a GPU or driver: the counts are then zero, never an error.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "engine/core/device.h"

namespace mt {

class Tensor;

bool built_with_cuda();
int cuda_device_count();
inline bool cuda_is_available() { return cuda_device_count() > 0; }
// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"; empty when the device does not exist.
std::string cuda_device_description(int index);

// Registers the CUDA caching allocator and the CUDA kernels in the dispatch tables, once; called
// on first use of a CUDA device (allocator_for(DeviceType::CUDA)). Kernels are registered from
// this explicit call, not by static initialisation, because the linker drops unreferenced
// objects of a static library. Does nothing in a build without CUDA.
void init_cuda_backend();

// Waits until everything queued on `device` has run (its compute stream); nothing to wait for on
// the CPU. An explicit host synchronisation point, for timing and for host reads of many
// values at once; the engine itself never calls it on the hot path.
void synchronize(Device device);

// Whether work queued for `device` is being captured into a CUDA graph right now (always false
// for the CPU). Code that caches device tensors across calls must not cache what it makes during
// a capture: the capture records kernels without running them, so such a tensor holds nothing
// until the graph is replayed.
bool is_capturing(Device device);
// Inside a capture on t's device: keeps t alive until the graph of that capture is destroyed, for
// a cached eager tensor (a constant) the captured kernels read, which the cache may drop later.
// Otherwise nothing.
void keep_alive_while_captured(const Tensor& t);

// A CUDA graph of the work one host function queues on a device's compute stream, replayed as
// one launch. The pattern (as for torch.cuda.graphs): run the function eagerly first (the
// allocator's segments, cuBLAS plans, optimizer state and every per-layout cache are then in
// place), capture it once, then replay it; inputs are fed by copying new values into the tensors
// the function read during the capture, outputs read from the tensors it produced.
//
//   CudaGraph g;
//   g.capture(cuda(0), [&] { loss = step(batch); });   // records, runs nothing
//   for (...) { x.copy_(next); g.replay(); use(loss); }
//
// During the capture: tensors come from a private memory pool that stays reserved until the
// graph is destroyed (replays write the same addresses); host-to-device copies read host buffers
// the graph owns (replays copy the values of capture time); reading a device value on the host,
// synchronize() and random draws (dropout: a replay would repeat the capture's numbers) are
// errors (the capture is abandoned, the stream left usable, and the error names the cause). Host-side logic runs only at capture time: a replay repeats the kernels with
// the shapes, scalars and branches of that one run (an optimizer whose scalars change per step
// must keep them on the device, e.g. AdamWOptions::capturable).
class CudaGraph {
 public:
  CudaGraph();
  // Frees the graph, then its memory pool and host buffers; while the device is capturing
  // another graph, once that capture ends (cuda_graphs_awaiting_release counts them until then).
  ~CudaGraph();
  CudaGraph(CudaGraph&&) noexcept;
  CudaGraph& operator=(CudaGraph&&) noexcept;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Captures what fn queues on device's compute stream (replacing an earlier capture). fn runs
  // once, on the host; the kernels it queues do not run until replay(). If fn throws, the
  // capture is abandoned and the exception passes on.
  void capture(Device device, const std::function<void()>& fn);
  // Queues the captured work on the device's compute stream (no wait; synchronize() to wait).
  // Refused while the device is capturing (a graph inside another graph is not supported).
  void replay();
  bool captured() const;
  Device device() const;
  // Bytes reserved by the private memory pools of captures not yet released, on this graph's
  // device (the memory its tensors live in).
  int64_t pool_bytes() const;
  void reset();  // destroys the graph, as the destructor does

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Graphs destroyed while their device was capturing another graph, held until that capture
// ends (then released); 0 without CUDA.
size_t cuda_graphs_awaiting_release();

}  // namespace mt

