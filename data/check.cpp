#include "data/check.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>

#include "engine/core/source_path.h"

namespace mt::data::detail {

void fail(const char* file, int line, const std::string& message) {
  throw Error(fmt::format("{} [{}:{}]", message, ::mt::detail::source_path(file), line));
}

double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  double bytes = pages > 0 && page > 0 ? double(pages) * double(page) : 0.0;
  // A container's limit (cgroup v2), where one is set, is what the process may really use.
  std::ifstream limit("/sys/fs/cgroup/memory.max");
  std::string text;
  if (limit >> text && text != "max") {
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (end != text.c_str() && v > 0 && (bytes == 0 || v < bytes)) bytes = v;
  }
  return bytes;
}

void check_fits_in_memory(double bytes, const std::string& what, const std::string& fix) {
  const double have = physical_memory_bytes();
  if (have <= 0 || bytes <= have) return;
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  throw Error(fmt::format("{} needs about {:.3g} GiB, but this machine has {:.3g} GiB; {}", what,
                          bytes / kGiB, have / kGiB, fix));
}

}  // namespace mt::data::detail
