#include "engine/core/error.h"

#include "engine/core/source_path.h"

#include <string_view>

namespace mt::detail {

std::string_view source_path(const char* file) {
  std::string_view path(file);
  // METATAPE_SOURCE_DIR: the repository's folder with a trailing '/', set by the build.
  constexpr std::string_view root = METATAPE_SOURCE_DIR;
  if (path.starts_with(root)) path.remove_prefix(root.size());
  return path;
}

void fail(const char* file, int line, const std::string& message) {
  throw Error(fmt::format("{} [{}:{}]", message, source_path(file), line));
}

}  // namespace mt::detail
