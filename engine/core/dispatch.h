// Per-backend kernel tables. Each op declares one DispatchStub per kernel it needs; the CPU
// backend fills the CPU slot next to the op, the CUDA backend fills the CUDA slot from kernels/.
// Op code calls the stub with the device of its inputs and never branches on the backend. Every
// call is timed by the kernel profiler when it is on (engine/core/profiler.h).
#pragma once

#include <utility>

#include "engine/core/device.h"
#include "engine/core/error.h"
#include "engine/core/profiler.h"

namespace mt {

template <class Fn>
struct DispatchStub;

template <class R, class... Args>
struct DispatchStub<R(Args...)> {
  using Fn = R (*)(Args...);
  const char* name;
  Fn table[kNumDeviceTypes] = {};

  explicit constexpr DispatchStub(const char* n) : name(n) {}

  void set(DeviceType d, Fn fn) { table[int(d)] = fn; }

  template <class... A>
  R operator()(Device d, A&&... args) const {
    Fn fn = table[int(d.type)];
    MT_CHECK(fn != nullptr, "{}: no kernel for device {} (was metatape built with that backend?)",
             name, d.str());
    profiler::ScopedKernel timed(name, d.type == DeviceType::CUDA);
    return fn(std::forward<A>(args)...);
  }
};

}  // namespace mt
