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

namespace {

// Whether `s` is well-formed UTF-8 (session names go into JSON files, which require it).
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    // Continuation bytes after the lead byte, and the range of the first of them (RFC 3629:
    // no overlong forms, no surrogates, nothing past U+10FFFF; JSON writers refuse those too).
    size_t extra = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      extra = 0;
    } else if (c >= 0xC2 && c <= 0xDF) {
      extra = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      extra = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      extra = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (extra > 0 && i + extra >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= extra; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) return false;
    }
    i += extra + 1;
  }
  return true;
}

// The name with bytes outside printable ASCII as \xNN, for messages.
std::string escaped(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    out += c >= 0x20 && c < 0x7F ? std::string(1, ch) : fmt::format("\\x{:02X}", c);
  }
  return out;
}

}  // namespace

std::vector<std::string> list_files(const std::string& folder,
                                    const std::vector<std::string>& extensions,
                                    const std::string& caller) {
  std::error_code ec;
  MT_DATA_CHECK(fs::exists(folder, ec), "{}: {}: no such folder; check the path", caller, folder);
  MT_DATA_CHECK(fs::is_directory(folder, ec), "{}: {}: not a folder", caller, folder);
  std::vector<std::string> files;
  fs::directory_iterator it(folder, ec);
  MT_DATA_CHECK(!ec, "{}: {}: cannot list the folder ({})", caller, folder, ec.message());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    MT_DATA_CHECK(!ec, "{}: {}: cannot list the folder ({})", caller, folder, ec.message());
    const fs::directory_entry& entry = *it;
    const std::string p = entry.path().string();
    const std::string name = entry.path().filename().string();
    // Hidden files (".x.npz", macOS's "._x.npz" resource forks) are not recordings.
    if (name.empty() || name[0] == '.') continue;
    if (std::find(extensions.begin(), extensions.end(), extension(p)) == extensions.end()) continue;
    std::error_code entry_ec;
    const bool regular = entry.is_regular_file(entry_ec);
    if (entry_ec) {
      std::error_code link_ec;
      const bool link = entry.is_symlink(link_ec);
      MT_DATA_CHECK(false, "{}: {}: {} ({}); {}", caller, p,
                    link ? "a symbolic link whose target cannot be read" : "cannot be read",
                    entry_ec.message(), link ? "fix or remove the link" : "check the file");
    }
    if (!regular) continue;  // a folder or a device that happens to end in .npz
    MT_DATA_CHECK(valid_utf8(name),
                  "{}: {}: the file name is not valid UTF-8 (it becomes the session's name, "
                  "which run files store as JSON); rename the file",
                  caller, escaped(p));
    files.push_back(p);
  }
  std::sort(files.begin(), files.end(), [](const std::string& a, const std::string& b) {
    return fs::path(a).filename().string() < fs::path(b).filename().string();
  });
  return files;
}

}  // namespace mt::data::detail
