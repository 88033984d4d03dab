// Error reporting inside the data library: the engine's mt::Error, with the source location
// given relative to the repository (data/...) so messages read the same on every machine.
// Messages name the file and the session, say what was wrong and how to fix it.
#pragma once

#include <string>

#include <fmt/format.h>

#include "engine/core/error.h"

namespace mt::data::detail {
[[noreturn]] void fail(const char* file, int line, const std::string& message);

// This machine's physical memory in bytes (0 if unknown).
double physical_memory_bytes();
// Refuses, before allocating, what would not fit in memory: `bytes` (a double, so a product of
// huge sizes cannot wrap) against the physical memory; the message is "`what` needs about
// X GiB, but this machine has Y GiB; `fix`".
void check_fits_in_memory(double bytes, const std::string& what, const std::string& fix);
}  // namespace mt::data::detail

#define MT_DATA_CHECK(cond, ...)                                                \
  do {                                                                          \
    if (!(cond)) [[unlikely]] {                                                 \
      ::mt::data::detail::fail(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
    }                                                                           \
  } while (0)

#define MT_DATA_FAIL(...) ::mt::data::detail::fail(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
