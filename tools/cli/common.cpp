#include "tools/cli/common.h"

#include <fmt/ranges.h>
#include <omp.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "data/load.h"
#include "engine/autograd/grad_mode.h"
#include "engine/io/safetensors.h"

namespace mt::cli {

Data load_data(const RunConfig& c, const LoadDataOptions& options) {
  data::Dataset all = c.data.path.empty() ? data::synthesize(c.data.synthetic)
                                          : data::load_folder(c.data.path, c.data.load);
  if (c.data.path.empty())  // said, so an empty data.path is not taken for a folder by mistake
    std::fprintf(stderr, "data: %lld synthetic sessions (data.path is empty; data.synthetic.* "
                         "sets them)\n",
                 (long long)all.size());
  data::validate(all);
  Data d;
  for (const auto& name : c.data.holdout)
    MT_CHECK(!options.need_holdout || all.find(name) >= 0,
             "data.holdout names session '{}', which is not in the data ({})", name,
             fmt::join(all.names(), ", "));
  for (auto& s : all.sessions) {
    bool held = std::find(c.data.holdout.begin(), c.data.holdout.end(), s.name) != c.data.holdout.end();
    (held ? d.holdout : d.train).sessions.push_back(std::move(s));
  }
  MT_CHECK(!options.need_training || !d.train.empty(),
           "no training sessions left after data.holdout");
  return d;
}

std::vector<int64_t> sizes_of(const data::Dataset& d) {
  std::vector<int64_t> v;
  for (const auto& s : d.sessions) v.push_back(s.num_neurons);
  return v;
}

std::string recording_crc32(const data::Session& s) {
  uint32_t c = io::crc32_of_bytes(s.activity.data(), s.activity.size() * sizeof(float));
  c = io::crc32_of_bytes(s.timestamps.data(), s.timestamps.size() * sizeof(double), c);
  return fmt::format("{:08x}", c);
}

nlohmann::json session_json(const data::Dataset& d) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& s : d.sessions)
    j.push_back({{"name", s.name},
                 {"neurons", s.num_neurons},
                 {"frames", s.num_frames},
                 {"crc32", recording_crc32(s)}});
  return j;
}

size_t text_width(const std::string& text) {
  // Every byte that does not continue a multi-byte sequence (10xxxxxx) starts a character.
  return size_t(std::count_if(text.begin(), text.end(),
                              [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string padded(const std::string& text, size_t width) {
  const size_t w = text_width(text);
  return w >= width ? text : text + std::string(width - w, ' ');
}

void print_metrics(const char* title, const meta::Metrics& m) {
  std::printf("%s\n  %-28s %8s %10s %10s %8s %8s\n", title, "session", "windows", "mse", "mae",
              "score", "r2");
  for (const auto& s : m.sessions)
    std::printf("  %s %8lld %10.4f %10.4f %8.4f %8.4f\n", padded(s.name, 28).c_str(),
                (long long)s.windows, s.mse, s.mae, s.score, s.r2);
  std::printf("  %-28s %8s %10.4f %10.4f %8.4f %8.4f\n", "mean over sessions", "", m.mse, m.mae,
              m.score, m.r2);
}

void apply_threads(const RunConfig& c) {
  if (c.threads > 0) omp_set_num_threads(c.threads);
  SavedRecompute::set_policy(c.saved_recompute == "always"  ? SavedRecomputePolicy::always
                             : c.saved_recompute == "never" ? SavedRecomputePolicy::never
                                                            : SavedRecomputePolicy::cuda_only);
}

FolderLock::FolderLock(const std::string& dir, const std::string& file_name,
                       const std::string& flag, const std::string& command) {
  const std::string path = dir + "/" + file_name;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  MT_CHECK(fd_ >= 0, "{}: cannot create the folder's lock file ({})", path, std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err != EWOULDBLOCK) {
      ::close(fd_);
      MT_FAIL("{}: cannot lock the folder ({}); a file system without flock (some network "
              "mounts) cannot hold it: use a local folder",
              path, std::strerror(err));
    }
    char owner[32] = {};
    const ssize_t got = ::pread(fd_, owner, sizeof owner - 1, 0);
    ::close(fd_);
    MT_FAIL("{} {}: another {}{} is writing this folder; wait for it to end (a train or bench "
            "stopped by Ctrl-C saves its state for --resume)",
            flag, dir, command,
            got > 0 ? fmt::format(" (process {})", std::string(owner, size_t(got))) : "");
  }
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // The pid is only for messages: the lock holds without it.
  }
}

FolderLock::~FolderLock() { ::close(fd_); }

}  // namespace mt::cli
