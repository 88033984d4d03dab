#include "data/files.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "data/check.h"

namespace mt::data::detail {

namespace fs = std::filesystem;

std::string extension(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

std::vector<std::string> list_files(const std::string& folder,
                                    const std::vector<std::string>& extensions,
                                    const std::string& caller) {
  std::error_code ec;
  MT_DATA_CHECK(fs::exists(folder, ec), "{}: {}: no such folder; check the path", caller, folder);
  MT_DATA_CHECK(fs::is_directory(folder, ec), "{}: {}: not a folder", caller, folder);
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    if (!entry.is_regular_file(ec)) continue;
    const std::string p = entry.path().string();
    if (std::find(extensions.begin(), extensions.end(), extension(p)) != extensions.end())
      files.push_back(p);
  }
  MT_DATA_CHECK(!ec, "{}: {}: cannot list the folder ({})", caller, folder, ec.message());
  std::sort(files.begin(), files.end(), [](const std::string& a, const std::string& b) {
    return fs::path(a).filename().string() < fs::path(b).filename().string();
  });
  return files;
}

}  // namespace mt::data::detail
