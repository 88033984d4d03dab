// The device side of the kernel profiler (engine/core/profiler.h): what the GPU itself ran and
// when, as CUPTI's activity records report it (kernels, copies and memsets with device
// timestamps), each tagged with the engine kernel (DispatchStub) whose call launched it.
// Implemented over CUPTI in kernels/cuda/trace.cpp; a build without CUDA or without CUPTI has
// stubs that say so. Used by the profiler only; callers use profiler::enable_device_trace().
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace mt::device_trace {

// One thing the device ran.
struct Activity {
  std::string name;    // CUDA kernel name (demangled), or "memcpy HtoD" / "memcpy DtoH" / ...
  uint64_t start_ns = 0;
  uint64_t end_ns = 0;
  uint64_t op_id = 0;  // the id pushed around the launching call (push_op), 0 when none
};

// Starts collecting activity records. False, with the reason in *why, where it cannot: a build
// without CUDA or without CUPTI, CUPTI not loadable, or CUPTI refused (no driver, another
// profiler attached). CUPTI is loaded at the first start, not linked: METATAPE_CUPTI_LIBRARY
// names its file; otherwise the soname of the build's toolkit, then the file found at configure
// time.
bool start(std::string* why);
// Whether the library at `path` loads and has every CUPTI function the trace calls (the check
// start() makes of each place it looks); the reason in *why otherwise. Nothing stays loaded.
bool library_loads(const std::string& path, std::string* why);
// Stops collecting (records of work already queued are still delivered by drain()).
void stop();
// Tags the device work queued by this thread until the matching pop_op() with `id` (nested:
// the innermost id wins). Only called while collecting.
void push_op(uint64_t id);
void pop_op();
// Waits for every device to finish its queued work, then hands every record completed since
// the last drain to `sink`. Does nothing while a CUDA graph is being captured (a wait would
// break the capture): those records come with a later drain.
void drain(const std::function<void(const Activity&)>& sink);

}  // namespace mt::device_trace
