// Calls of one engine kernel counted by the kernel profiler while a function runs (the
// profiler's state is restored after; its table is reset before).
#pragma once

#include <cstdint>
#include <utility>

#include "engine/core/profiler.h"

namespace mt::testing {

template <class Fn>
int64_t kernel_calls(const char* kernel, Fn&& fn) {
  const bool was_on = profiler::enabled();
  profiler::reset();
  profiler::enable(true);
  std::forward<Fn>(fn)();
  profiler::enable(was_on);
  for (const auto& e : profiler::entries())
    if (e.kernel == kernel) return e.calls;
  return 0;
}

}  // namespace mt::testing
