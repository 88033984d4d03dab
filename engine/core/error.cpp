#include "engine/core/error.h"

#include <string_view>

namespace mt::detail {

void fail(const char* file, int line, const std::string& message) {
  // Keep the path relative to the repository so messages are the same on every machine.
  std::string_view path(file);
  if (auto pos = path.rfind("engine/"); pos != std::string_view::npos) path.remove_prefix(pos);
  throw Error(fmt::format("{} [{}:{}]", message, path, line));
}

}  // namespace mt::detail
