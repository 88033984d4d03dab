// Source locations in error messages: __FILE__ relative to the repository.
#pragma once

#include <string_view>

namespace mt::detail {

// `file` (a __FILE__) relative to the repository ("tools/cli/main.cpp"), so that messages are
// the same on every machine and in every build folder; a path outside it is returned whole.
std::string_view source_path(const char* file);

}  // namespace mt::detail
