#include "engine/core/profiler.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <unordered_map>

namespace mt::profiler {

namespace {

struct Table {
  std::mutex mutex;
  std::unordered_map<std::string, Entry> by_kernel;
};

Table& table() {
  static Table t;
  return t;
}

// METATAPE_PROFILE=1 (any value but "" and "0"): on from the start, report on stderr at exit.
struct FromEnvironment {
  FromEnvironment() {
    const char* env = std::getenv("METATAPE_PROFILE");
    if (env == nullptr || *env == '\0' || std::string(env) == "0") return;
    table();  // constructed before this object, so still alive in the atexit handler
    enable(true);
    std::atexit([] { std::fputs(report().c_str(), stderr); });
  }
};
const FromEnvironment from_environment;

}  // namespace

namespace detail {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void record(const char* kernel, double seconds) {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mutex);
  Entry& e = t.by_kernel[kernel];
  if (e.kernel.empty()) e.kernel = kernel;
  e.calls += 1;
  e.seconds += seconds;
}

}  // namespace detail

void enable(bool on) { detail::enabled.store(on, std::memory_order_relaxed); }

void reset() {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mutex);
  t.by_kernel.clear();
}

std::vector<Entry> entries() {
  Table& t = table();
  std::vector<Entry> out;
  {
    std::lock_guard<std::mutex> lock(t.mutex);
    for (const auto& [name, e] : t.by_kernel) out.push_back(e);
  }
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) {
    return a.seconds != b.seconds ? a.seconds > b.seconds : a.kernel < b.kernel;
  });
  return out;
}

std::string report() {
  const std::vector<Entry> all = entries();
  double total = 0;
  int64_t calls = 0;
  for (const Entry& e : all) {
    total += e.seconds;
    calls += e.calls;
  }
  std::string s = fmt::format("metatape kernel profile: {} kernels, {} calls, {:.1f} ms\n",
                              all.size(), calls, total * 1e3);
  s += fmt::format("  {:<32} {:>9} {:>11} {:>7} {:>11}\n", "kernel", "calls", "total ms", "share",
                   "us/call");
  for (const Entry& e : all)
    s += fmt::format("  {:<32} {:>9} {:>11.2f} {:>6.1f}% {:>11.2f}\n", e.kernel, e.calls,
                     e.seconds * 1e3, total > 0 ? 100.0 * e.seconds / total : 0.0,
                     e.calls > 0 ? e.seconds * 1e6 / double(e.calls) : 0.0);
  return s;
}

}  // namespace mt::profiler
