#include "tools/cli/common.h"

#include <fmt/ranges.h>
#include <omp.h>

#include <fcntl.h>
#include <sys/resource.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>
#include <sstream>
#include <fstream>
#include <cstdlib>
#include <cmath>
#include <chrono>

#include "data/load.h"
#include "engine/autograd/grad_mode.h"
#include "engine/io/safetensors.h"

namespace mt::cli {

namespace fs = std::filesystem;

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

void make_data_path_absolute(RunConfig& c) {
  if (c.data.path.empty() || fs::path(c.data.path).is_absolute()) return;
  // Not normalised: "link/.." means what the link points to, and stays so.
  c.data.path = fs::absolute(fs::path(c.data.path)).string();
}

void note_default_csv_rate(const RunConfig& c, const Data& d) {
  const data::CsvOptions& csv = c.data.load.csv;
  if (!csv.time_column.empty() || csv.sampling_rate_hz != data::CsvOptions{}.sampling_rate_hz)
    return;
  int64_t timed = 0;
  for (const auto* set : {&d.train, &d.holdout})
    for (const auto& s : set->sessions)
      timed += std::strcmp(data::loader_name(s.source), "csv") == 0 ? 1 : 0;
  if (timed > 0)
    std::fprintf(stderr,
                 "note: %lld CSV recording(s) are timed by data.csv.sampling_rate_hz, %g Hz by "
                 "default (no data.csv.time_column): the frame times of forecasts (t), the "
                 "durations shown and online's time between predictions come from it (the model "
                 "sees frame positions, not times); set it to the recordings' frame rate, e.g. "
                 "--set data.csv.sampling_rate_hz=2.2\n",
                 (long long)timed, csv.sampling_rate_hz);
}

void note_unused_adapt_lr(const RunConfig& c, const std::vector<std::string>& modes) {
  if (c.adapt.train.lr == config_from_json(nlohmann::json::object()).adapt.train.lr) return;
  std::vector<std::string> own;  // the modes' own step sizes, which fine-tuning takes
  for (const auto& mode : modes) {
    const auto it = c.adapt.lr_by_mode.find(mode);
    if (it == c.adapt.lr_by_mode.end()) return;  // this mode takes adapt.train.lr
    own.push_back(fmt::format("{} {}", mode, it->second));
  }
  if (own.empty()) return;
  std::fprintf(stderr,
               "note: adapt.train.lr (%g) is not used: adapt.lr_by_mode sets the step size of "
               "each fine-tuning mode here (%s); set those instead, e.g. --set "
               "adapt.lr_by_mode.%s=%g\n",
               c.adapt.train.lr, fmt::format("{}", fmt::join(own, ", ")).c_str(),
               modes.front().c_str(), c.adapt.train.lr);
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

void print_metrics(const char* title, const meta::Metrics& m, bool zscored) {
  std::printf("%s\n  %-28s %8s %10s %10s %8s %8s\n", title, "session", "windows", "mse", "mae",
              "score", "r2");
  for (const auto& s : m.sessions)
    std::printf("  %s %8lld %10.4f %10.4f %8.4f %8.4f\n", padded(s.name, 28).c_str(),
                (long long)s.windows, s.mse, s.mae, s.score, s.r2);
  std::printf("  %-28s %8s %10.4f %10.4f %8.4f %8.4f\n", "mean over sessions", "", m.mse, m.mae,
              m.score, m.r2);
  std::printf("  (%s, pooled over neurons and forecast frames; score = 1 - mse / mse of the "
              "copy-last forecast; r2 = 1 - SSE / sum over neurons of (y - mean y)^2; the mean "
              "row is the unweighted mean of the sessions' values)\n",
              zscored ? "on z-scored values: each neuron normalised with its training-split mean "
                        "and std, as the model sees it"
                      : "in the recording's units (data.zscore off)");
  for (const auto& s : m.sessions)
    if (!(s.copy_mse > 0))
      std::fprintf(stderr,
                   "note: session '%s': every forecast frame equals the last context frame (a "
                   "flat stretch of the recording?), so the copy-last forecast is exact and the "
                   "score is undefined: shown as 0\n",
                   s.name.c_str());
}

namespace {

// The CPUs this process may run on (sched_getaffinity; empty where it cannot be read).
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return cpus;
  for (int i = 0; i < CPU_SETSIZE; ++i)
    if (CPU_ISSET(i, &set)) cpus.push_back(i);
  return cpus;
}

// Cores of `cpus` in use by other processes over `window`: their busy time from the cpuN lines
// of /proc/stat, less this process's own (getrusage); negative where it cannot be read. A cgroup
// CPU quota is not seen.
double busy_cores(const std::vector<int>& cpus, std::chrono::milliseconds window) {
  auto sample = [&](double& busy, double& total) {
    std::ifstream in("/proc/stat");
    std::string line;
    busy = total = 0;
    size_t seen = 0;
    while (std::getline(in, line)) {
      if (line.rfind("cpu", 0) != 0 || line.size() < 4 ||
          !std::isdigit(static_cast<unsigned char>(line[3])))
        continue;
      std::istringstream fields(line.substr(3));
      int index = -1;
      uint64_t v[8] = {};
      if (!(fields >> index)) return false;
      if (std::find(cpus.begin(), cpus.end(), index) == cpus.end()) continue;
      for (uint64_t& x : v)
        if (!(fields >> x)) return false;
      double t = 0;
      for (uint64_t x : v) t += double(x);
      total += t;
      busy += t - double(v[3]) - double(v[4]);  // idle and iowait: the 4th and 5th fields
      ++seen;
    }
    return seen == cpus.size();
  };
  auto own_seconds = [] {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
  };
  if (cpus.empty()) return -1;
  double b0 = 0, t0 = 0, b1 = 0, t1 = 0;
  const auto start = std::chrono::steady_clock::now();
  const double own0 = own_seconds();
  if (!sample(b0, t0)) return -1;
  std::this_thread::sleep_for(window);
  if (!sample(b1, t1) || t1 <= t0) return -1;
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double all_busy = double(cpus.size()) * (b1 - b0) / (t1 - t0);  // cores in use
  return std::max(0.0, all_busy - (own_seconds() - own0) / wall);
}

}  // namespace

// Threads that share work wait for each other at every parallel op: when other processes keep
// the cores busy, a waiting thread's time slice is lost at each wait. Measured with 50 training
// steps of poco-paper on 2 cores (bench/README.md): 3.5 s alone, 25-37 s each beside a second
// training, 0.62 s per step (9x) beside two compiler processes; with GOMP_SPINCOUNT=10000
// (threads spin shorter before they sleep) 10.6 s beside a second training and 3.7 s alone; with
// threads=1, 6.7 s beside it and 6.5 s alone. Said from the cores in use over a quarter second
// (the load average lags by minutes after a busy spell), or where the threads outnumber the
// cores.
void note_if_busy(const std::string& what) {
  const std::vector<int> cpus = allowed_cpus();
  const int cores = int(cpus.size()), threads = omp_get_max_threads();  // ours to use
  const bool bench = what == "bench";
  // One thread never waits for another: nothing to say outside a benchmark.
  if (!bench && threads <= 1) return;
  const double busy = busy_cores(cpus, std::chrono::milliseconds(250));
  if (busy < 0 || busy + double(threads) <= double(cores) + 0.5) return;
  if (busy < 0.5) {  // idle, but more threads than cores
    std::fprintf(stderr,
                 "note: %d threads on %d core(s): every parallel op waits for threads that wait "
                 "for a core, so %s may run several times slower; use at most one thread per "
                 "core (--set threads=%d)\n",
                 threads, cores, bench ? "the benchmark" : what.c_str(), cores);
    return;
  }
  const std::string load = fmt::format(
      "{:.1f} of {} core(s) in use by other processes (or the hypervisor), {} thread(s) here",
      busy, cores, threads);
  if (bench) {
    std::fprintf(stderr,
                 "note: the machine is busy (%s): timings taken while other processes compete "
                 "for the cores are slower than this machine's, by up to 10x; run the benchmark "
                 "on an idle machine (the JSON records the load average at start and end)\n",
                 load.c_str());
    return;
  }
  const int free_cores = std::max(1, int(std::lround(double(cores) - busy)));
  // The user's own wait settings, which the spin-count advice would replace.
  std::string own;
  for (const char* name : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"})
    if (const char* v = std::getenv(name))
      own += fmt::format("{}{}={}", own.empty() ? ", now " : ", ", name, v);
  std::fprintf(stderr,
               "note: the machine is busy (%s): %s waits at every parallel op for threads that "
               "other work holds up, and may run several times slower; on a machine shared on "
               "purpose, use the free cores only (--set threads=%d), or let waiting threads "
               "sleep sooner (GOMP_SPINCOUNT=10000 in the environment%s; bench/README.md has "
               "the figures)\n",
               load.c_str(), what.c_str(), free_cores, own.c_str());
}

void apply_threads(const RunConfig& c) {
  if (c.threads > 0) omp_set_num_threads(c.threads);
  SavedRecompute::set_policy(c.saved_recompute == "always"  ? SavedRecomputePolicy::always
                             : c.saved_recompute == "never" ? SavedRecomputePolicy::never
                                                            : SavedRecomputePolicy::cuda_only);
}

FolderLock::FolderLock(const std::string& dir, const std::string& file_name,
                       const std::string& flag, const std::string& command, bool reader) {
  const std::string path = dir + "/" + file_name;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  int open_error = fd_ < 0 ? errno : 0;
  // A lock file made read-only (copied from elsewhere) still locks: flock needs no write access.
  if (fd_ < 0 && (open_error == EACCES || open_error == EROFS)) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0 && errno != ENOENT) open_error = errno;
  }
  // A reader goes on without the lock where it cannot take one: a folder it may not write
  // (another user's run, a read-only copy), or one that is not there (read_run then says so).
  if (fd_ < 0 && reader &&
      (open_error == EACCES || open_error == EROFS || open_error == ENOENT))
    return;
  MT_CHECK(fd_ >= 0, "{}: cannot create the folder's lock file ({}); is {} writable?", path,
           std::strerror(open_error), dir);
  if (::flock(fd_, (reader ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    const int err = errno;
    if (err != EWOULDBLOCK && reader) {  // (a file system without flock): as above
      ::close(fd_);
      fd_ = -1;
      return;
    }
    if (err != EWOULDBLOCK) {
      ::close(fd_);
      MT_FAIL("{}: cannot lock the folder ({}); a file system without flock (some network "
              "mounts) cannot hold it: use a local folder",
              path, std::strerror(err));
    }
    // Held by readers only when a shared lock can be taken beside them.
    const bool readers = !reader && ::flock(fd_, LOCK_SH | LOCK_NB) == 0;
    char owner[32] = {};
    const ssize_t got = readers ? 0 : ::pread(fd_, owner, sizeof owner - 1, 0);
    ::close(fd_);
    if (readers)
      MT_FAIL("{} {}: a metatape eval, predict or online is reading this folder; wait for it to "
              "end",
              flag, dir);
    MT_FAIL("{} {}: another {}{} is writing this folder; wait for it to end (a train or bench "
            "stopped by Ctrl-C saves its state for --resume)",
            flag, dir, command,
            got > 0 ? fmt::format(" (process {})", std::string(owner, size_t(got))) : "");
  }
  if (reader) return;
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // The pid is only for messages: the lock holds without it.
  }
  remove_stale_temp_files(dir);
}

bool make_folder(const std::string& dir, const std::string& what) {
  std::error_code ec;
  const bool made = std::filesystem::create_directories(dir, ec);
  MT_CHECK(!ec && std::filesystem::is_directory(dir),
           "{} {}: cannot create the folder ({}); choose a folder you may write to", what, dir,
           ec ? ec.message() : std::string("a file of that name is there"));
  return made;
}

bool left_by_dead_process(const std::string& name, const std::string& before,
                          const std::string& after) {
  if (name.size() <= before.size() + after.size() || name.rfind(before, 0) != 0 ||
      name.compare(name.size() - after.size(), after.size(), after) != 0)
    return false;
  const std::string pid_text =
      name.substr(before.size(), name.size() - before.size() - after.size());
  if (pid_text.size() > 9 || !std::all_of(pid_text.begin(), pid_text.end(), [](unsigned char c) {
        return std::isdigit(c) != 0;
      }))
    return false;
  const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
  // (This process's own pid: an earlier process's leftover, as in a container where each run is
  // process 1; callers ask before they make their own.)
  return pid > 0 && (pid == ::getpid() || (::kill(pid, 0) != 0 && errno == ESRCH));
}

// The temporary files of writes that never finished (.<file>.tmp.<pid>.<n>, written by
// write_file_atomic and save_safetensors) whose process is gone: a killed command's leftovers,
// as large as the model or state they were to become.
void remove_stale_temp_files(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() < 2 || name[0] != '.') continue;
    const size_t counter_dot = name.rfind('.');
    if (counter_dot == std::string::npos || counter_dot == 0) continue;
    const size_t pid_dot = name.rfind('.', counter_dot - 1);
    if (pid_dot == std::string::npos || pid_dot < 5 || name.compare(pid_dot - 4, 4, ".tmp") != 0)
      continue;
    const std::string pid_text = name.substr(pid_dot + 1, counter_dot - pid_dot - 1);
    const std::string counter_text = name.substr(counter_dot + 1);
    auto digits = [](const std::string& t) {
      return !t.empty() && t.size() < 10 &&
             std::all_of(t.begin(), t.end(), [](unsigned char c) { return std::isdigit(c); });
    };
    if (!digits(pid_text) || !digits(counter_text)) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
    // (Taken with the folder's lock, before this process writes there: one of its own pid is an
    // earlier process's leftover.)
    if (pid <= 0 || (pid != ::getpid() && (::kill(pid, 0) == 0 || errno != ESRCH))) continue;
    std::error_code rm;
    std::filesystem::remove(entry.path(), rm);
  }
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace mt::cli
