#include "data/check.h"

#include <string_view>

namespace mt::data::detail {

void fail(const char* file, int line, const std::string& message) {
  std::string_view path(file);
  if (auto pos = path.rfind("data/"); pos != std::string_view::npos) path.remove_prefix(pos);
  throw Error(fmt::format("{} [{}:{}]", message, path, line));
}

}  // namespace mt::data::detail
