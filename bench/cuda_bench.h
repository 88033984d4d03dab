// Shared by the CUDA benchmarks (cuda_kernels_bench.cu, embedding_update_bench.cu; the error
// check also by flash_attention_bench.cpp): the options they take, the error check that exits
// non-zero, the device description with its theoretical DRAM bandwidth (2 x memory clock x bus
// width), and the timer: 3 warm-up runs, then `repeats` runs, each
// preceded by an L2 flush (a memset of a buffer twice the L2 size) and timed with its own pair
// of CUDA events; the median is reported.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace mt::bench {

// Benchmark-local error check: the message and a non-zero exit, never a silent success.
#define BENCH_CHECK(call)                                                                    \
  do {                                                                                       \
    cudaError_t status_ = (call);                                                            \
    if (status_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,              \
                   cudaGetErrorString(status_));                                             \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

// The options every CUDA benchmark takes: --json FILE, --commit SHA (default: the build's),
// --repeats N (into Bench::repeats), --quick.
struct BenchArgs {
  std::string json_path, commit;
  bool quick = false;
};

struct Bench {
  cudaDeviceProp prop{};
  cudaStream_t stream = nullptr;
  int sms = 0;
  int mem_clock_khz = 0, bus_bits = 0, l2_bytes = 0;
  double peak_gbps = 0;
  void* flush = nullptr;
  size_t flush_bytes = 0;
  int repeats = 20;

  // Device 0: its description, a non-blocking stream and the L2 flush buffer. False (with a
  // message naming `program`) when no CUDA device is present.
  bool open(const char* program) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      std::fprintf(stderr, "%s: no CUDA device (%s); nothing to measure\n", program,
                   count == 0 ? "no GPU or no driver visible"
                              : cudaGetErrorString(cudaGetLastError()));
      return false;
    }
    BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
    BENCH_CHECK(cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, 0));
    BENCH_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0));
    BENCH_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, 0));
    BENCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    peak_gbps = 2.0 * double(mem_clock_khz) * 1e3 * double(bus_bits) / 8.0 / 1e9;
    BENCH_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    flush_bytes = size_t(std::max(l2_bytes, 1 << 20)) * 2;
    BENCH_CHECK(cudaMalloc(&flush, flush_bytes));
    std::printf("device: %s (sm_%d%d, %d SMs), memory %d MHz x %d bit -> peak %.0f GB/s, L2 %d "
                "MiB\n",
                prop.name, prop.major, prop.minor, sms, mem_clock_khz / 1000, bus_bits, peak_gbps,
                l2_bytes >> 20);
    return true;
  }

  // Median time in microseconds of fn() over `repeats` L2-flushed runs.
  double time_us(const std::function<void()>& fn) {
    for (int i = 0; i < 3; ++i) fn();
    cudaEvent_t start, stop;
    BENCH_CHECK(cudaEventCreate(&start));
    BENCH_CHECK(cudaEventCreate(&stop));
    std::vector<double> times;
    for (int i = 0; i < repeats; ++i) {
      BENCH_CHECK(cudaMemsetAsync(flush, i & 0xff, flush_bytes, stream));
      BENCH_CHECK(cudaEventRecord(start, stream));
      fn();
      BENCH_CHECK(cudaEventRecord(stop, stream));
      BENCH_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
      times.push_back(double(ms) * 1e3);
    }
    BENCH_CHECK(cudaEventDestroy(start));
    BENCH_CHECK(cudaEventDestroy(stop));
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }
};

// Parses argv into `args` and b.repeats; false, with the usage line, on anything else.
inline bool parse_args(int argc, char** argv, const char* default_commit, Bench& b,
                       BenchArgs& args) {
  args.commit = default_commit;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) {
      args.json_path = argv[++i];
    } else if (a == "--commit" && i + 1 < argc) {
      args.commit = argv[++i];
    } else if (a == "--repeats" && i + 1 < argc) {
      b.repeats = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--quick") {
      args.quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--json FILE] [--commit SHA] [--repeats N] [--quick]\n",
                   argv[0]);
      return false;
    }
  }
  return true;
}

}  // namespace mt::bench
