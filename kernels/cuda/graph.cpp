// CudaGraph (engine/core/backend.h) over the CUDA runtime's stream capture: relaxed mode on the
// device's compute stream (the caching allocator may add a segment during the capture), the
// allocator's private pool for the capture's tensors, and the staging code's capture-owned host
// copies; both are released after the graph is destroyed. A graph destroyed while its device's
// stream is capturing another one (a CudaGraph going out of scope inside a captured function)
// is released when that capture ends: waiting for the stream or freeing device memory there
// would invalidate the capture.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_set>
#include <utility>
#include <vector>

#include "engine/core/backend.h"
#include "engine/core/error.h"
#include "engine/core/profiler.h"
#include "engine/core/tensor.h"
#include "kernels/cuda/allocator.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/staging.h"
#include "kernels/cuda/stream.h"

namespace mt {

bool is_capturing(Device device) {
  return device.is_cuda() && gpu::current_capture_id(device.index) != 0;
}

namespace {
// Tensors made outside a capture that its graph reads, by (device, capture id): held until the
// graph is destroyed. Each once, however often the capture reads it (a meta-step reads the same
// few scalar constants thousands of times).
struct Kept {
  std::vector<Tensor> tensors;
  std::unordered_set<const TensorImpl*> held;  // those of `tensors`, which keep them alive
};
std::mutex kept_mutex;
std::map<std::pair<int, unsigned long long>, Kept> kept;
}  // namespace

void keep_alive_while_captured(const Tensor& t) {
  if (!t.defined() || !t.device().is_cuda()) return;
  const unsigned long long id = gpu::current_capture_id(t.device().index);
  if (id == 0) return;
  std::lock_guard<std::mutex> lock(kept_mutex);
  Kept& k = kept[{t.device().index, id}];
  if (k.held.insert(t.impl()).second) k.tensors.push_back(t);
}

namespace {
// What a captured graph holds on its device.
struct GraphResources {
  Device device = kCPU;
  unsigned long long capture_id = 0;
  cudaGraphExec_t exec = nullptr;
};

void release(const GraphResources& r) {
  if (r.exec != nullptr) {
    gpu::DeviceGuard guard(r.device.index);
    // Replays may still be queued: the graph's memory is handed back only once they ran.
    (void)cudaStreamSynchronize(gpu::stream(r.device.index));
    (void)cudaGraphExecDestroy(r.exec);
  }
  if (r.capture_id != 0) {
    std::vector<Tensor> held;  // freed outside the lock
    {
      std::lock_guard<std::mutex> lock(kept_mutex);
      auto it = kept.find({r.device.index, r.capture_id});
      if (it != kept.end()) {
        held = std::move(it->second.tensors);
        kept.erase(it);
      }
    }
    held.clear();
    gpu::release_graph_pool(r.device.index, r.capture_id);
    gpu::release_capture_copies(r.device.index, r.capture_id);
  }
}

// Graphs destroyed during another capture on their device, released when it ends.
std::mutex deferred_mutex;
std::vector<GraphResources> deferred;

bool capturing_now(int device) noexcept {
  try {
    return gpu::current_capture_id(device) != 0;
  } catch (...) {
    return false;  // no such device (any more): nothing captures on it
  }
}

// Releases the deferred graphs of `device` (none may be captured on it now).
void release_deferred(int device) noexcept {
  std::vector<GraphResources> mine;
  {
    std::lock_guard<std::mutex> lock(deferred_mutex);
    for (auto it = deferred.begin(); it != deferred.end();) {
      if (it->device.index == device) {
        mine.push_back(*it);
        it = deferred.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const GraphResources& r : mine) {
    try {
      release(r);
    } catch (...) {  // best effort, as in a destructor
    }
  }
}
}  // namespace

size_t cuda_graphs_awaiting_release() {
  std::lock_guard<std::mutex> lock(deferred_mutex);
  return deferred.size();
}

struct CudaGraph::Impl {
  GraphResources r;

  ~Impl() {
    if (r.exec == nullptr && r.capture_id == 0) return;
    if (capturing_now(r.device.index)) {
      std::lock_guard<std::mutex> lock(deferred_mutex);
      deferred.push_back(r);
      return;
    }
    try {
      release(r);
    } catch (...) {  // destructors do not throw
    }
    release_deferred(r.device.index);
  }
};

CudaGraph::CudaGraph() = default;
CudaGraph::~CudaGraph() = default;
CudaGraph::CudaGraph(CudaGraph&&) noexcept = default;
CudaGraph& CudaGraph::operator=(CudaGraph&&) noexcept = default;

void CudaGraph::capture(Device device, const std::function<void()>& fn) {
  MT_CHECK(device.is_cuda(), "CudaGraph::capture: {} is not a CUDA device", device.str());
  MT_CHECK(cuda_is_available() && device.index < cuda_device_count(),
           "CudaGraph::capture: {} does not exist on this machine ({} CUDA devices)", device.str(),
           cuda_device_count());
  MT_CHECK(!is_capturing(device), "CudaGraph::capture: {} is already capturing a graph",
           device.str());
  reset();
  init_cuda_backend();
  auto impl = std::make_unique<Impl>();
  impl->r.device = device;
  gpu::DeviceGuard guard(device.index);
  cudaStream_t s = gpu::stream(device.index);
  // Work queued before the capture finishes first (nothing of it may be recorded or overlap).
  MT_CUDA_CHECK(cudaStreamSynchronize(s));
  MT_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  auto end_capture = [&](cudaGraph_t* graph) {
    const cudaError_t status = cudaStreamEndCapture(s, graph);
    if (status != cudaSuccess) (void)cudaGetLastError();
    return status;
  };
  try {
    impl->r.capture_id = gpu::current_capture_id(device.index);
    fn();
  } catch (...) {
    cudaGraph_t graph = nullptr;
    end_capture(&graph);
    if (graph != nullptr) (void)cudaGraphDestroy(graph);
    release_deferred(device.index);
    throw;  // impl's destructor releases the pool and the host copies
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t status = end_capture(&graph);
  release_deferred(device.index);  // graphs destroyed inside fn
  MT_CHECK(status == cudaSuccess && graph != nullptr,
           "CudaGraph::capture on {}: the capture was invalidated ({}): the captured function "
           "waited for the device (a host read of a device value, synchronize()) or used "
           "another stream; move host reads after replay()",
           device.str(), cudaGetErrorString(status));
  // Into a local first: what a failed instantiation leaves in its output is not documented, and
  // the destructor would destroy whatever r.exec holds.
  cudaGraphExec_t exec = nullptr;
  const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  MT_CUDA_CHECK(inst);
  impl->r.exec = exec;
  impl_ = std::move(impl);
}

void CudaGraph::replay() {
  MT_CHECK(impl_ != nullptr, "CudaGraph::replay: nothing was captured");
  // Captured into another graph, the launch would become a node of that graph that reads this
  // graph's memory pool, which is released when this graph is destroyed, not when that one is.
  MT_CHECK(gpu::current_capture_id(impl_->r.device.index) == 0,
           "CudaGraph::replay on {} while the device is being captured into another CUDA graph: "
           "that graph would read this one's memory after it is freed; replay outside the "
           "capture, or capture the work of both in one graph",
           impl_->r.device.str());
  gpu::DeviceGuard guard(impl_->r.device.index);
  profiler::ScopedKernel timed("cuda_graph_replay", true);  // the replay's kernels, when traced
  MT_CUDA_CHECK(cudaGraphLaunch(impl_->r.exec, gpu::stream(impl_->r.device.index)));
}

bool CudaGraph::captured() const { return impl_ != nullptr; }
Device CudaGraph::device() const { return impl_ ? impl_->r.device : kCPU; }
int64_t CudaGraph::pool_bytes() const {
  return impl_ ? gpu::graph_pool_bytes(impl_->r.device.index) : 0;
}
void CudaGraph::reset() { impl_.reset(); }

}  // namespace mt
