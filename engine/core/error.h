// Error reporting for the whole engine: one exception type and one check macro.
// Messages name what was wrong and how to fix it; the source location is appended so a
// user's bug report points at the check that fired.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace mt {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
[[noreturn]] void fail(const char* file, int line, const std::string& message);
}  // namespace detail

}  // namespace mt

// MT_CHECK(cond, "format {}", args...): throws mt::Error with the formatted message when cond is
// false. The format string is checked at compile time by fmt.
#define MT_CHECK(cond, ...)                                              \
  do {                                                                   \
    if (!(cond)) [[unlikely]] {                                          \
      ::mt::detail::fail(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
    }                                                                    \
  } while (0)

#define MT_FAIL(...) ::mt::detail::fail(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
