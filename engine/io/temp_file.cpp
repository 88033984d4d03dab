#include "engine/io/temp_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include <fmt/format.h>

namespace mt::io {

int create_temp_beside(const std::filesystem::path& target, std::string& tmp_path) {
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  static std::atomic<uint64_t> counter{0};
  int fd = -1;
  for (int attempt = 0; attempt < 1000 && fd < 0; ++attempt) {
    tmp_path = (dir / fmt::format(".{}.tmp.{}.{}", target.filename().string(), ::getpid(),
                                  counter++))
                   .string();
    fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  return fd;
}

bool sync_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  const int error = errno;
  ::close(fd);
  errno = error;
  return ok;
}

void sync_folder_of(const std::filesystem::path& target) {
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    [[maybe_unused]] const int r = ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace mt::io
