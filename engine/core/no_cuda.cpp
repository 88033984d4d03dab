// Backend queries of a build configured without CUDA (METATAPE_CUDA=OFF).
#include "engine/core/backend.h"
#include "engine/core/device_trace.h"
#include "engine/core/error.h"
#include "engine/core/matmul_settings.h"

namespace mt {
bool built_with_cuda() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_description(int) { return {}; }
void init_cuda_backend() {}
void synchronize(Device device) {
  MT_CHECK(device.is_cpu(), "synchronize: {} needs the CUDA backend (this build has METATAPE_CUDA=OFF)",
           device.str());
}
bool is_capturing(Device) { return false; }
void keep_alive_while_captured(const Tensor&) {}

struct CudaGraph::Impl {};
CudaGraph::CudaGraph() = default;
CudaGraph::~CudaGraph() = default;
CudaGraph::CudaGraph(CudaGraph&&) noexcept = default;
CudaGraph& CudaGraph::operator=(CudaGraph&&) noexcept = default;
void CudaGraph::capture(Device device, const std::function<void()>&) {
  MT_FAIL("CudaGraph::capture on {}: CUDA graphs need the CUDA backend (this build has "
          "METATAPE_CUDA=OFF)",
          device.str());
}
void CudaGraph::replay() {
  MT_FAIL("CudaGraph::replay: nothing was captured (this build has METATAPE_CUDA=OFF)");
}
bool CudaGraph::captured() const { return false; }
Device CudaGraph::device() const { return kCPU; }
int64_t CudaGraph::pool_bytes() const { return 0; }
void CudaGraph::reset() {}
size_t cuda_graphs_awaiting_release() { return 0; }

namespace {
bool allow_tf32 = false;
}
void set_cuda_matmul_allow_tf32(bool allow) { allow_tf32 = allow; }
bool cuda_matmul_allow_tf32() { return allow_tf32; }
unsigned long long cuda_linear_epilogue_calls() { return 0; }

namespace device_trace {
bool start(std::string* why) {
  if (why != nullptr)
    *why = "device times need the CUDA backend (this build has METATAPE_CUDA=OFF)";
  return false;
}
bool library_loads(const std::string&, std::string* why) {
  if (why != nullptr) *why = "CUPTI needs the CUDA backend (this build has METATAPE_CUDA=OFF)";
  return false;
}
void stop() {}
void push_op(uint64_t) {}
void pop_op() {}
void drain(const std::function<void(const Activity&)>&) {}
}  // namespace device_trace
}  // namespace mt
