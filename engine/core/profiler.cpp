#include "engine/core/profiler.h"

#include <fmt/format.h>

#include "engine/core/device_trace.h"

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
  // Device trace: ids pushed around traced calls (index + 1 into op_names), and what the
  // device ran since the last reset.
  std::unordered_map<const char*, uint64_t> op_ids;
  std::vector<std::string> op_names;
  std::unordered_map<std::string, DeviceKernel> device_kernels;
  std::vector<std::pair<uint64_t, uint64_t>> intervals;  // device [start, end) in ns
  double kernel_seconds = 0;
};

constexpr const char* kOutsideKernels = "(outside kernels)";

// Adds what the device ran since the last drain (t.mutex not held: drain waits for the device).
void collect_device_work(Table& t) {
  if (!detail::device_tracing.load(std::memory_order_relaxed)) return;
  std::vector<device_trace::Activity> got;
  device_trace::drain([&](const device_trace::Activity& a) { got.push_back(a); });
  if (got.empty()) return;
  std::lock_guard<std::mutex> lock(t.mutex);
  for (const device_trace::Activity& a : got) {
    const uint64_t end = std::max(a.end_ns, a.start_ns);
    const double seconds = double(end - a.start_ns) * 1e-9;
    const std::string op = a.op_id >= 1 && a.op_id <= t.op_names.size()
                               ? t.op_names[size_t(a.op_id - 1)]
                               : std::string(kOutsideKernels);
    Entry& e = t.by_kernel[op];
    if (e.kernel.empty()) e.kernel = op;
    e.device_launches += 1;
    e.device_seconds += seconds;
    DeviceKernel& k = t.device_kernels[a.name];
    if (k.name.empty()) k.name = a.name;
    k.count += 1;
    k.seconds += seconds;
    t.intervals.emplace_back(a.start_ns, end);
    t.kernel_seconds += seconds;
  }
}

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
    std::atexit([] {
      try {
        std::fputs(report().c_str(), stderr);
      } catch (const std::exception& e) {  // an exception here would end the process badly
        std::fprintf(stderr, "metatape profiler: no report at exit (%s)\n", e.what());
      }
    });
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

void push_device_op(const char* kernel) {
  Table& t = table();
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(t.mutex);
    auto [it, added] = t.op_ids.try_emplace(kernel, 0);
    if (added) {
      t.op_names.emplace_back(kernel);
      it->second = t.op_names.size();
    }
    id = it->second;
  }
  device_trace::push_op(id);
}

void pop_device_op() { device_trace::pop_op(); }

void record_flops(const char* kernel, double flops) {
  Table& t = table();
  std::lock_guard<std::mutex> lock(t.mutex);
  Entry& e = t.by_kernel[kernel];
  if (e.kernel.empty()) e.kernel = kernel;
  e.flops += flops;
}

}  // namespace detail

void enable(bool on) { detail::enabled.store(on, std::memory_order_relaxed); }

bool enable_device_trace(bool on, std::string* why) {
  if (!on) {
    // What the device ran up to now is still credited (and not left for a later trace).
    collect_device_work(table());
    detail::device_tracing.store(false, std::memory_order_relaxed);
    device_trace::stop();
    return true;
  }
  if (!device_trace::start(why)) return false;
  detail::device_tracing.store(true, std::memory_order_relaxed);
  return true;
}

bool device_trace_enabled() { return detail::device_tracing.load(std::memory_order_relaxed); }

void reset() {
  Table& t = table();
  collect_device_work(t);  // what ran before the reset is dropped with the rest
  std::lock_guard<std::mutex> lock(t.mutex);
  t.by_kernel.clear();
  t.device_kernels.clear();
  t.intervals.clear();
  t.kernel_seconds = 0;
}

DeviceSummary device_summary() {
  Table& t = table();
  collect_device_work(t);
  DeviceSummary s;
  std::vector<std::pair<uint64_t, uint64_t>> iv;
  {
    std::lock_guard<std::mutex> lock(t.mutex);
    iv = t.intervals;
    s.kernel_seconds = t.kernel_seconds;
    for (const auto& [name, k] : t.device_kernels) s.kernels.push_back(k);
  }
  std::sort(s.kernels.begin(), s.kernels.end(), [](const DeviceKernel& a, const DeviceKernel& b) {
    return a.seconds != b.seconds ? a.seconds > b.seconds : a.name < b.name;
  });
  s.activities = int64_t(iv.size());
  if (iv.empty()) return s;
  std::sort(iv.begin(), iv.end());
  uint64_t busy = 0, run_start = iv[0].first, run_end = iv[0].second, last = 0;
  for (const auto& [a, b] : iv) {
    last = std::max(last, b);
    if (a > run_end) {
      busy += run_end - run_start;
      run_start = a;
      run_end = b;
    } else {
      run_end = std::max(run_end, b);
    }
  }
  busy += run_end - run_start;
  s.busy_seconds = double(busy) * 1e-9;
  s.span_seconds = double(last - iv[0].first) * 1e-9;
  return s;
}

std::vector<Entry> entries() {
  Table& t = table();
  collect_device_work(t);
  std::vector<Entry> out;
  {
    std::lock_guard<std::mutex> lock(t.mutex);
    for (const auto& [name, e] : t.by_kernel) out.push_back(e);
  }
  // Slowest first: by device time when the device trace has any (a CUDA call's host time is
  // its launch cost only), else by host time.
  const bool by_device = std::any_of(out.begin(), out.end(),
                                     [](const Entry& e) { return e.device_launches > 0; });
  std::sort(out.begin(), out.end(), [by_device](const Entry& a, const Entry& b) {
    const double ka = by_device ? a.device_seconds : a.seconds;
    const double kb = by_device ? b.device_seconds : b.seconds;
    if (ka != kb) return ka > kb;
    return a.seconds != b.seconds ? a.seconds > b.seconds : a.kernel < b.kernel;
  });
  return out;
}

std::string report() {
  const std::vector<Entry> all = entries();
  double total = 0, device_total = 0;
  int64_t calls = 0, launches = 0;
  for (const Entry& e : all) {
    total += e.seconds;
    calls += e.calls;
    device_total += e.device_seconds;
    launches += e.device_launches;
  }
  const bool device = launches > 0;
  double flops = 0, flop_seconds = 0, flop_device_seconds = 0;
  for (const Entry& e : all)
    if (e.flops > 0) {
      flops += e.flops;
      flop_seconds += e.seconds;
      flop_device_seconds += e.device_seconds;
    }
  std::string s = fmt::format("metatape kernel profile: {} kernels, {} calls, {:.1f} ms\n",
                              all.size(), calls, total * 1e3);
  s += fmt::format("  {:<32} {:>9} {:>11} {:>7} {:>11}", "kernel", "calls", "total ms", "share",
                   "us/call");
  s += device ? fmt::format(" {:>9} {:>11} {:>7}\n", "launches", "device ms", "share") : "\n";
  for (const Entry& e : all) {
    s += fmt::format("  {:<32} {:>9} {:>11.2f} {:>6.1f}% {:>11.2f}", e.kernel, e.calls,
                     e.seconds * 1e3, total > 0 ? 100.0 * e.seconds / total : 0.0,
                     e.calls > 0 ? e.seconds * 1e6 / double(e.calls) : 0.0);
    s += device ? fmt::format(" {:>9} {:>11.2f} {:>6.1f}%\n", e.device_launches,
                              e.device_seconds * 1e3,
                              device_total > 0 ? 100.0 * e.device_seconds / device_total : 0.0)
                : "\n";
  }
  if (flops > 0) {
    s += fmt::format("arithmetic counted by the ops: {:.1f} GFLOP", flops * 1e-9);
    for (const Entry& e : all)
      if (e.flops > 0) s += fmt::format(", {} {:.1f}", e.kernel, e.flops * 1e-9);
    s += fmt::format("; {:.1f} GFLOP/s over their host time", flops * 1e-9 / flop_seconds);
    if (device && flop_device_seconds > 0)
      s += fmt::format(", {:.1f} over their device time", flops * 1e-9 / flop_device_seconds);
    s += "\n";
  }
  if (!device) return s;
  const DeviceSummary d = device_summary();
  s += fmt::format(
      "device: {} kernels/copies/memsets, busy {:.2f} ms of a {:.2f} ms span ({:.1f}%), "
      "{:.2f} ms summed over them\n",
      d.activities, d.busy_seconds * 1e3, d.span_seconds * 1e3,
      d.span_seconds > 0 ? 100.0 * d.busy_seconds / d.span_seconds : 0.0, d.kernel_seconds * 1e3);
  s += fmt::format("  {:<72} {:>8} {:>11} {:>9}\n", "device kernel", "count", "device ms", "us/each");
  constexpr size_t kShown = 30;
  for (size_t i = 0; i < d.kernels.size() && i < kShown; ++i) {
    const DeviceKernel& k = d.kernels[i];
    std::string name = k.name.size() > 72 ? k.name.substr(0, 69) + "..." : k.name;
    s += fmt::format("  {:<72} {:>8} {:>11.2f} {:>9.2f}\n", name, k.count, k.seconds * 1e3,
                     k.count > 0 ? k.seconds * 1e6 / double(k.count) : 0.0);
  }
  if (d.kernels.size() > kShown)
    s += fmt::format("  ... {} more device kernels\n", d.kernels.size() - kShown);
  return s;
}

}  // namespace mt::profiler
