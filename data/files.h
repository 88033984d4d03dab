// File-system helpers shared by the loaders (internal to the data library).
#pragma once

#include <string>
#include <vector>

namespace mt::data::detail {

// Lower-cased extension with the dot (".npz"), "" when none.
std::string extension(const std::string& path);
// Regular files directly in `folder` whose extension (case-insensitive) is one of `extensions`,
// sorted by file name. Throws mt::Error (prefixed with `caller`) when `folder` is missing or is
// not a folder.
std::vector<std::string> list_files(const std::string& folder,
                                    const std::vector<std::string>& extensions,
                                    const std::string& caller);

}  // namespace mt::data::detail
