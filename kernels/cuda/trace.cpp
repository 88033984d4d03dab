// engine/core/device_trace.h over CUPTI's activity API: concurrent-kernel, memcpy and memset
// records with device timestamps, and external-correlation records that carry the id the
// profiler pushed around the engine kernel call that launched each one. CUPTI hands filled
// buffers to buffer_completed (on its own thread or inside a flush); the records are parsed
// there into `pending` and matched to their ids in drain(), once every buffer has arrived.
// CUPTI is loaded at the first start(), not linked: a program on a machine without libcupti
// runs, and only the device trace refuses (naming what it tried). Without CUPTI's headers at
// build time (METATAPE_WITH_CUPTI undefined) start() says so.
#include "engine/core/device_trace.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "engine/core/backend.h"

#if METATAPE_WITH_CUPTI
#include <cupti.h>
#include <cxxabi.h>
#include <dlfcn.h>

#include "kernels/cuda/allocator.h"
#include "kernels/cuda/stream.h"
#endif

namespace mt::device_trace {

#if METATAPE_WITH_CUPTI
namespace {

constexpr size_t kBufferBytes = size_t(8) << 20;
constexpr size_t kAlign = 8;
constexpr CUpti_ExternalCorrelationKind kOpKind = CUPTI_EXTERNAL_CORRELATION_KIND_CUSTOM0;

struct Raw {
  std::string name;
  uint64_t start = 0, end = 0;
  uint32_t correlation = 0;
};

struct State {
  // `control` orders start/stop; `mutex` guards the records. CUPTI functions are never called
  // with `mutex` held: CUPTI may deliver a buffer (buffer_completed takes `mutex`) from inside
  // any of its calls.
  std::mutex control;
  std::mutex mutex;
  bool callbacks_registered = false;
  bool collecting = false;
  std::vector<Raw> pending;                             // parsed, not yet drained
  std::unordered_map<uint32_t, uint64_t> op_of;         // CUPTI correlation id -> pushed id
  std::unordered_map<const char*, std::string> names;   // demangled kernel names by CUPTI's pointer
  uint64_t dropped = 0;
};

State& state() {
  static State* s = new State();  // never destroyed: CUPTI may call back during exit
  return *s;
}

// The CUPTI functions the trace calls, resolved from the loaded library (types from the
// header it was built with).
struct Cupti {
  decltype(&cuptiGetResultString) get_result_string = nullptr;
  decltype(&cuptiActivityGetNextRecord) get_next_record = nullptr;
  decltype(&cuptiActivityGetNumDroppedRecords) get_num_dropped_records = nullptr;
  decltype(&cuptiActivityRegisterCallbacks) register_callbacks = nullptr;
  decltype(&cuptiActivityEnable) enable = nullptr;
  decltype(&cuptiActivityDisable) disable = nullptr;
  decltype(&cuptiActivityPushExternalCorrelationId) push_external_correlation_id = nullptr;
  decltype(&cuptiActivityPopExternalCorrelationId) pop_external_correlation_id = nullptr;
  decltype(&cuptiActivityFlushAll) flush_all = nullptr;
};

// Opens the library at `path` (a file or a name the dynamic loader searches for) and resolves
// every function; false with the loader's reason otherwise. `keep`: leave it loaded.
bool open_cupti(const std::string& path, Cupti* out, bool keep, std::string* why) {
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* e = dlerror();
    *why = e != nullptr ? e : path + ": not loadable";
    return false;
  }
  Cupti got;
  bool all = true;
  auto resolve = [&](auto* fn, const char* name) {
    using Fn = std::remove_pointer_t<decltype(fn)>;
    *fn = reinterpret_cast<Fn>(dlsym(handle, name));
    if (*fn == nullptr && all) {
      all = false;
      *why = path + " has no " + name + " (not CUPTI, or an older CUPTI than CUPTI_API_VERSION " +
             std::to_string(CUPTI_API_VERSION) + " this build was compiled against)";
    }
  };
  resolve(&got.get_result_string, "cuptiGetResultString");
  resolve(&got.get_next_record, "cuptiActivityGetNextRecord");
  resolve(&got.get_num_dropped_records, "cuptiActivityGetNumDroppedRecords");
  resolve(&got.register_callbacks, "cuptiActivityRegisterCallbacks");
  resolve(&got.enable, "cuptiActivityEnable");
  resolve(&got.disable, "cuptiActivityDisable");
  resolve(&got.push_external_correlation_id, "cuptiActivityPushExternalCorrelationId");
  resolve(&got.pop_external_correlation_id, "cuptiActivityPopExternalCorrelationId");
  resolve(&got.flush_all, "cuptiActivityFlushAll");
  if (!all || !keep) {
    dlclose(handle);
    return all;
  }
  *out = got;
  return true;
}

// Where CUPTI is looked for, in order: METATAPE_CUPTI_LIBRARY alone when set; else the soname
// of the toolkit the build was compiled against (found as the dynamic loader finds a linked
// library: LD_LIBRARY_PATH, the cache, the system folders), then the file CMake found.
std::vector<std::string> cupti_candidates() {
  if (const char* env = std::getenv("METATAPE_CUPTI_LIBRARY"); env != nullptr && *env != '\0')
    return {env};
  std::vector<std::string> c{METATAPE_CUPTI_SONAME};
  if (std::string(METATAPE_CUPTI_PATH) != METATAPE_CUPTI_SONAME) c.emplace_back(METATAPE_CUPTI_PATH);
  return c;
}

// The loaded library's functions, or null where none of the candidates loads (then *why names
// every candidate and its reason). Loaded once, on the first success, and kept.
const Cupti* cupti(std::string* why) {
  static std::mutex mutex;
  static Cupti loaded_api;
  static bool loaded = false;
  std::lock_guard<std::mutex> lock(mutex);
  if (loaded) return &loaded_api;
  std::string tried;
  for (const std::string& path : cupti_candidates()) {
    std::string reason;
    if (open_cupti(path, &loaded_api, /*keep=*/true, &reason)) {
      loaded = true;
      return &loaded_api;
    }
    tried += (tried.empty() ? "" : "; ") + reason;
  }
  if (why != nullptr)
    *why = "CUPTI (the CUDA toolkit's libcupti) could not be loaded, so device times cannot be "
           "traced (" + tried + "); install the toolkit's CUPTI, or set METATAPE_CUPTI_LIBRARY "
           "to the path of libcupti.so";
  return nullptr;
}

// Set (release) by start() before CUPTI can call back or any caller can push an id (both only
// while collecting, which start() begins after loading); read (acquire) by those, on any thread.
std::atomic<const Cupti*> loaded{nullptr};
const Cupti& api() { return *loaded.load(std::memory_order_acquire); }

std::string result_string(CUptiResult r) {
  const char* s = nullptr;
  if (api().get_result_string(r, &s) != CUPTI_SUCCESS || s == nullptr) return "CUPTI error";
  return s;
}

const std::string& kernel_name(State& st, const char* mangled) {
  auto it = st.names.find(mangled);
  if (it != st.names.end()) return it->second;
  std::string name = mangled != nullptr ? mangled : "(unnamed kernel)";
  if (mangled != nullptr) {
    int status = 0;
    char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
    if (status == 0 && d != nullptr) name = d;
    std::free(d);
  }
  return st.names.emplace(mangled, std::move(name)).first->second;
}

const char* copy_name(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "memcpy HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "memcpy DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "memcpy DtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOH: return "memcpy HtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP: return "memcpy PtoP";
    default: return "memcpy";
  }
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(kAlign, kBufferBytes));
  *size = *buffer != nullptr ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

bool timed(uint64_t start, uint64_t end) { return start != 0 && end >= start; }

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  State& st = state();
  {
    std::lock_guard<std::mutex> lock(st.mutex);
    CUpti_Activity* record = nullptr;
    while (api().get_next_record(buffer, valid, &record) == CUPTI_SUCCESS) {
      switch (record->kind) {
        // A record without complete timestamps (work of a stream nobody waited for, handed over
        // by a forced flush) is left out: it has no duration to credit.
        case CUPTI_ACTIVITY_KIND_KERNEL:
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
          const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
          if (timed(k->start, k->end))
            st.pending.push_back({kernel_name(st, k->name), k->start, k->end, k->correlationId});
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
          const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
          if (timed(m->start, m->end))
            st.pending.push_back({copy_name(m->copyKind), m->start, m->end, m->correlationId});
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY2: {  // between two devices
          const auto* m = reinterpret_cast<const CUpti_ActivityMemcpyPtoP4*>(record);
          if (timed(m->start, m->end))
            st.pending.push_back({"memcpy PtoP", m->start, m->end, m->correlationId});
          break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
          const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
          if (timed(m->start, m->end))
            st.pending.push_back({"memset", m->start, m->end, m->correlationId});
          break;
        }
        case CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION: {
          const auto* e = reinterpret_cast<const CUpti_ActivityExternalCorrelation*>(record);
          if (e->externalKind == kOpKind) st.op_of[e->correlationId] = e->externalId;
          break;
        }
        default: break;
      }
    }
  }
  std::free(buffer);
  size_t dropped = 0;
  if (api().get_num_dropped_records(nullptr, 0, &dropped) == CUPTI_SUCCESS && dropped > 0) {
    std::lock_guard<std::mutex> lock(st.mutex);
    if (st.dropped == 0)
      std::fprintf(stderr, "metatape profiler: CUPTI dropped %zu activity records (its buffers "
                   "filled faster than they were delivered); device times are incomplete\n",
                   dropped);
    st.dropped += dropped;
  }
}

// The API kinds are enabled only because an external-correlation record is made for each API
// record (the runtime's launches, and the driver's: cuBLASLt launches through the driver API);
// their own records are skipped.
constexpr CUpti_ActivityKind kKinds[] = {
    CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
    CUPTI_ACTIVITY_KIND_MEMCPY2,           CUPTI_ACTIVITY_KIND_MEMSET,
    CUPTI_ACTIVITY_KIND_RUNTIME,           CUPTI_ACTIVITY_KIND_DRIVER,
    CUPTI_ACTIVITY_KIND_EXTERNAL_CORRELATION};

}  // namespace

bool start(std::string* why) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.control);
  if (st.collecting) return true;
  auto fail = [&](const std::string& what) {
    if (why != nullptr) *why = what;
    return false;
  };
  if (loaded.load(std::memory_order_acquire) == nullptr) {
    const Cupti* found = cupti(why);
    if (found == nullptr) return false;
    loaded.store(found, std::memory_order_release);
  }
  if (!st.callbacks_registered) {
    const CUptiResult r = api().register_callbacks(buffer_requested, buffer_completed);
    if (r != CUPTI_SUCCESS)
      return fail("CUPTI refused to register its activity buffers (" + result_string(r) +
                  "): is another profiler (Nsight Systems, ncu) attached?");
    st.callbacks_registered = true;
  }
  for (size_t i = 0; i < std::size(kKinds); ++i) {
    const CUptiResult r = api().enable(kKinds[i]);
    if (r != CUPTI_SUCCESS) {
      for (size_t j = 0; j < i; ++j) (void)api().disable(kKinds[j]);
      return fail("CUPTI could not enable activity tracing (" + result_string(r) +
                  "); a CUDA driver and a GPU are needed");
    }
  }
  st.collecting = true;
  return true;
}

void stop() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.control);
  if (!st.collecting) return;
  for (CUpti_ActivityKind k : kKinds) (void)api().disable(k);
  st.collecting = false;
}

bool library_loads(const std::string& path, std::string* why) {
  Cupti unused;
  std::string reason;
  const bool ok = open_cupti(path, &unused, /*keep=*/false, &reason);
  if (!ok && why != nullptr) *why = reason;
  return ok;
}

void push_op(uint64_t id) { (void)api().push_external_correlation_id(kOpKind, id); }

void pop_op() {
  uint64_t last = 0;
  (void)api().pop_external_correlation_id(kOpKind, &last);
}

void drain(const std::function<void(const Activity&)>& sink) {
  if (loaded.load(std::memory_order_acquire) == nullptr) return;  // never started
  // Devices the engine has used (a stream exists): none may be capturing (a wait now would
  // invalidate the capture); then everything queued on them has run, and every buffer with a
  // record in it is delivered. The query does not throw: drain also runs from an exit handler,
  // possibly after the CUDA runtime has shut down (then there is nothing to wait for).
  const int devices = cuda_device_count();
  for (int d = 0; d < devices; ++d) {
    if (!gpu::stream_created(d)) continue;
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(gpu::stream(d), &status) != cudaSuccess ||
        status != cudaStreamCaptureStatusNone)
      return;
  }
  for (int d = 0; d < devices; ++d)
    if (gpu::stream_created(d)) {
      gpu::DeviceGuard guard(d);
      (void)cudaStreamSynchronize(gpu::stream(d));
    }
  (void)api().flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::vector<Raw> raw;
  std::unordered_map<uint32_t, uint64_t> op_of;
  {
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    raw.swap(st.pending);
    op_of.swap(st.op_of);
  }
  for (const Raw& r : raw) {
    auto it = op_of.find(r.correlation);
    sink(Activity{r.name, r.start, r.end, it != op_of.end() ? it->second : 0});
  }
}

#else  // built without CUPTI

bool start(std::string* why) {
  if (why != nullptr)
    *why = "this build has no CUPTI (the CUDA toolkit's libcupti was not found at configure "
           "time), so device times cannot be traced";
  return false;
}
bool library_loads(const std::string&, std::string* why) {
  if (why != nullptr) *why = "this build has no CUPTI";
  return false;
}
void stop() {}
void push_op(uint64_t) {}
void pop_op() {}
void drain(const std::function<void(const Activity&)>&) {}

#endif

}  // namespace mt::device_trace
