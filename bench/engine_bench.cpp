// metatape-bench-engine: the engine's per-op host overhead and its CPU matmul throughput.
//
// a) Per-op overhead: tiny f32 tensors, so the arithmetic is negligible and what is timed is
//    dispatch, allocation of the result and (with an input that requires grad) recording the op
//    on the tape. Each row times a loop of many calls as a whole; the figure is ns per op.
// b) Matmul GFLOP/s: mt::matmul against the GEMM it runs (OpenBLAS's cblas_sgemm, see
//    engine/cpu/gemm.h) called directly on the same inputs, and against Eigen's row-major GEMM,
//    with the results compared (a wrong result fails the run).
//
// Timing is plain std::chrono: warm-up, then the median of several repeats. The table goes to
// stdout; with --json PATH every figure is also written to PATH (atomically).
#include "engine/autograd/engine.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <Eigen/Core>
#include <cblas.h>
#include <nlohmann/json.hpp>

#include "bench/bench_io.h"
#include "engine/autograd/grad_mode.h"
#include "engine/core/generator.h"
#include "engine/ops.h"

#include "metatape_git_commit.h"  // METATAPE_GIT_COMMIT

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr double kGoalNsPerOp = 1000.0;

// Keeps results observable so no timed work can be dropped.
volatile uintptr_t g_sink = 0;
void consume(const mt::Tensor& t) {
  g_sink = g_sink + reinterpret_cast<uintptr_t>(t.impl());
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon == std::string::npos) break;
      std::string name = line.substr(colon + 1);
      name.erase(0, name.find_first_not_of(" \t"));
      return name;
    }
  }
  return "unknown";
}

std::string compiler() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "gcc " __VERSION__;
#else
  return "unknown";
#endif
}

std::string utc_timestamp() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// a) Per-op overhead

struct OverheadRow {
  std::string key, label, shape;
  int64_t iterations = 0;  // loop trips per repeat
  int ops_per_iteration = 1;
  int repeats = 0;
  double ns_median = 0, ns_min = 0;
};

// Times `body` (which runs ops_per_iteration ops) in a loop of `iterations` trips, after a
// warm-up of a tenth of that, `repeats` times; reports ns per op.
OverheadRow time_overhead(std::string key, std::string label, std::string shape, int64_t iterations,
                          int ops_per_iteration, int repeats, const std::function<void()>& body) {
  for (int64_t i = 0; i < std::max<int64_t>(iterations / 10, 1); ++i) body();
  std::vector<double> ns;
  for (int r = 0; r < repeats; ++r) {
    auto start = Clock::now();
    for (int64_t i = 0; i < iterations; ++i) body();
    ns.push_back(seconds_since(start) * 1e9 / double(iterations * ops_per_iteration));
  }
  OverheadRow row{std::move(key), std::move(label),  std::move(shape),
                  iterations,     ops_per_iteration, repeats};
  row.ns_median = median(ns);
  row.ns_min = *std::min_element(ns.begin(), ns.end());
  return row;
}

std::vector<OverheadRow> bench_overhead(bool quick) {
  const int64_t iters = quick ? 20000 : 200000;
  const int64_t chain_iters = quick ? 2000 : 20000;
  const int repeats = quick ? 3 : 5;

  mt::Generator gen(1234);
  const mt::Tensor a = mt::uniform(mt::Shape{4}, -1.0, 1.0, gen);
  const mt::Tensor b = mt::uniform(mt::Shape{4}, -1.0, 1.0, gen);
  const mt::Tensor m = mt::uniform(mt::Shape{2, 2}, -1.0, 1.0, gen);
  mt::Tensor ag = a.detach().clone();
  ag.set_requires_grad(true);
  mt::Tensor mg = m.detach().clone();
  mg.set_requires_grad(true);
  const mt::Tensor half = mt::full(mt::Shape{4}, 0.5);

  std::vector<OverheadRow> rows;
  {
    mt::NoGradGuard no_grad;
    rows.push_back(time_overhead("add_nograd", "add, grad mode off", "(4,)", iters, 1, repeats,
                                 [&] { consume(mt::add(a, b)); }));
  }
  rows.push_back(time_overhead("add_record", "add, input requires grad", "(4,)", iters, 1, repeats,
                               [&] { consume(mt::add(ag, b)); }));
  rows.push_back(time_overhead("mul_record", "mul, input requires grad", "(4,)", iters, 1, repeats,
                               [&] { consume(mt::mul(ag, b)); }));
  rows.push_back(time_overhead("exp_record", "exp, input requires grad", "(4,)", iters, 1, repeats,
                               [&] { consume(mt::exp(ag)); }));
  rows.push_back(time_overhead("matmul_record", "matmul, input requires grad", "(2, 2)", iters, 1,
                               repeats, [&] { consume(mt::matmul(mg, m)); }));
  rows.push_back(time_overhead("sum_record", "sum, input requires grad", "(4,)", iters, 1, repeats,
                               [&] { consume(mt::sum(ag)); }));
  // Ten recorded ops, then the backward pass over them (which runs their backward rules).
  rows.push_back(time_overhead("chain10_record_backward", "10-op chain, record + backward", "(4,)",
                               chain_iters, 10, repeats, [&] {
                                 mt::Tensor t = mt::mul(ag, ag);  // 1
                                 t = mt::add(t, ag);              // 2
                                 t = mt::tanh(t);                 // 3
                                 t = mt::mul(t, b);               // 4
                                 t = mt::sub(t, half);            // 5
                                 t = mt::exp(t);                  // 6
                                 t = mt::mul(t, half);            // 7
                                 t = mt::add(t, ag);              // 8
                                 t = mt::sigmoid(t);              // 9
                                 mt::Tensor loss = mt::sum(t);    // 10
                                 consume(mt::autograd::grad({loss}, {ag})[0]);
                               }));
  return rows;
}

// ---------------------------------------------------------------------------------------------
// b) Matmul

struct MatmulRow {
  int64_t n = 0;
  int warmup = 0, repeats = 0;
  double mt_ms = 0, blas_ms = 0, eigen_ms = 0;  // medians
  double mt_gflops = 0, blas_gflops = 0, eigen_gflops = 0;
  double max_abs_diff = 0, tolerance = 0;
};

using RowMajorF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Returns false (after printing why) when metatape's result differs from Eigen's.
bool bench_matmul(int64_t n, int warmup, int repeats, MatmulRow& row) {
  mt::Generator gen(42 + uint64_t(n));
  const mt::Tensor a = mt::uniform(mt::Shape{n, n}, -1.0, 1.0, gen);
  const mt::Tensor b = mt::uniform(mt::Shape{n, n}, -1.0, 1.0, gen);
  if (!a.is_contiguous() || !b.is_contiguous())
    throw std::runtime_error("matmul bench: uniform() returned a non-contiguous tensor");
  const RowMajorF A = Eigen::Map<const RowMajorF>(a.data_ptr<float>(), n, n);
  const RowMajorF B = Eigen::Map<const RowMajorF>(b.data_ptr<float>(), n, n);
  RowMajorF C(n, n), C_blas(n, n);

  mt::NoGradGuard no_grad;
  mt::Tensor c;
  auto run_mt = [&] { c = mt::matmul(a, b); };
  auto run_blas = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(n), blasint(n), blasint(n),
                1.0f, a.data_ptr<float>(), blasint(n), b.data_ptr<float>(), blasint(n), 0.0f,
                C_blas.data(), blasint(n));
  };
  auto run_eigen = [&] { C.noalias() = A * B; };
  // The two are timed alternately, repeat by repeat, so drift in the machine's speed (other
  // load, frequency) affects both medians alike.
  auto time_once_ms = [](const std::function<void()>& f) {
    auto start = Clock::now();
    f();
    return seconds_since(start) * 1e3;
  };
  for (int i = 0; i < warmup; ++i) {
    run_mt();
    run_blas();
    run_eigen();
  }
  std::vector<double> mt_ms, blas_ms, eigen_ms;
  for (int r = 0; r < repeats; ++r) {
    mt_ms.push_back(time_once_ms(run_mt));
    blas_ms.push_back(time_once_ms(run_blas));
    eigen_ms.push_back(time_once_ms(run_eigen));
  }
  row.n = n;
  row.warmup = warmup;
  row.repeats = repeats;
  row.mt_ms = median(mt_ms);
  row.blas_ms = median(blas_ms);
  row.eigen_ms = median(eigen_ms);
  const double flops = 2.0 * double(n) * double(n) * double(n);
  row.mt_gflops = flops / (row.mt_ms * 1e-3) / 1e9;
  row.blas_gflops = flops / (row.blas_ms * 1e-3) / 1e9;
  row.eigen_gflops = flops / (row.eigen_ms * 1e-3) / 1e9;

  // Correctness: metatape's product against Eigen's, elementwise.
  if (!(c.shape() == mt::Shape{n, n}) || c.dtype() != mt::DType::f32) {
    std::cerr << "error: matmul " << n << "x" << n << ": metatape returned " << c.str()
              << ", expected f32 (" << n << ", " << n << ")\n";
    return false;
  }
  const mt::Tensor cc = c.contiguous();
  const float* pc = cc.data_ptr<float>();
  double max_diff = 0;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const double d = std::abs(double(pc[i * n + j]) - double(C(i, j)));
      if (!std::isfinite(d)) finite = false;
      max_diff = std::max(max_diff, d);
    }
  row.max_abs_diff = max_diff;
  row.tolerance = 1e-3 * double(n);
  if (!finite || !(max_diff < row.tolerance)) {
    std::cerr << "error: matmul " << n << "x" << n << ": metatape result differs from Eigen's "
              << "(max abs difference " << max_diff << ", tolerance " << row.tolerance
              << (finite ? "" : ", non-finite values") << ")\n";
    return false;
  }
  return true;
}

int run(int argc, char** argv) {
  CLI::App app{"metatape engine benchmark: per-op overhead and matmul GFLOP/s on the CPU"};
  std::string json_path;
  bool quick = false;
  int threads_option = 0;
  app.add_option("--json", json_path, "also write every figure as JSON to this path");
  app.add_flag("--quick", quick, "fewer iterations and smaller matrices (a smoke run)");
  app.add_option("--threads", threads_option,
                 "OpenMP threads for the GEMMs (mt::matmul, OpenBLAS and Eigen called directly; "
                 "default: OMP_NUM_THREADS, else one per core)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (threads_option < 0) {
    std::cerr << "metatape-bench-engine: --threads must be >= 1, or 0 for the OpenMP default (got "
              << threads_option << ")\n";
    return 2;
  }
  if (threads_option > 0) omp_set_num_threads(threads_option);

  const std::string model = cpu_model();
  const int threads = Eigen::nbThreads();
  std::printf("metatape engine benchmark%s\n", quick ? " (--quick)" : "");
  std::printf("device: cpu (%s), threads: %d, commit: %s, compiler: %s\n\n", model.c_str(), threads,
              METATAPE_GIT_COMMIT, compiler().c_str());

  // a) Per-op overhead.
  std::printf("a) per-op overhead, f32, tiny tensors\n");
  std::printf("   goal <= %.0f ns per op (dispatch + tape record)\n", kGoalNsPerOp);
  std::printf("   %-34s %-7s %12s %12s %10s  %s\n", "op", "shape", "ns/op med", "ns/op min",
              "iters", "goal");
  std::fflush(stdout);
  const auto overhead = bench_overhead(quick);
  for (const auto& r : overhead) {
    std::printf("   %-34s %-7s %12.1f %12.1f %10lld  %s\n", r.label.c_str(), r.shape.c_str(),
                r.ns_median, r.ns_min, static_cast<long long>(r.iterations),
                r.ns_median <= kGoalNsPerOp ? "PASS" : "MISS");
  }

  // b) Matmul.
  std::printf("\nb) matmul f32, square, C = A B (GFLOP/s = 2 n^3 / median time)\n");
  std::printf("   %6s %12s %12s %12s %14s %14s %11s %12s %12s\n", "n", "metatape ms",
              "OpenBLAS ms", "Eigen ms", "metatape GF/s", "OpenBLAS GF/s", "Eigen GF/s",
              "mt/OpenBLAS", "max |diff|");
  std::fflush(stdout);
  struct Size {
    int64_t n;
    int warmup, repeats;
  };
  const std::vector<Size> sizes = quick ? std::vector<Size>{{256, 1, 3}, {1024, 1, 2}}
                                        : std::vector<Size>{{512, 2, 9}, {2048, 1, 7}};
  std::vector<MatmulRow> matmul_rows;
  for (const auto& s : sizes) {
    MatmulRow row;
    if (!bench_matmul(s.n, s.warmup, s.repeats, row)) return 1;
    std::printf("   %6lld %12.3f %12.3f %12.3f %14.2f %14.2f %11.2f %12.3f %12.3g\n",
                static_cast<long long>(row.n), row.mt_ms, row.blas_ms, row.eigen_ms,
                row.mt_gflops, row.blas_gflops, row.eigen_gflops,
                row.mt_gflops / row.blas_gflops, row.max_abs_diff);
    std::fflush(stdout);
    matmul_rows.push_back(row);
  }

  if (!json_path.empty()) {
    json j;
    j["benchmark"] = "metatape-bench-engine";
    j["device"] = "cpu (" + model + ")";
    j["cpu_model"] = model;
    j["commit"] = METATAPE_GIT_COMMIT;
    j["compiler"] = compiler();
#ifdef NDEBUG
    j["assertions"] = false;
#else
    j["assertions"] = true;
#endif
    j["threads"] = threads;
    j["quick"] = quick;
    j["timestamp_utc"] = utc_timestamp();
    json ov = json::array();
    for (const auto& r : overhead) {
      ov.push_back({{"key", r.key},
                    {"op", r.label},
                    {"shape", r.shape},
                    {"dtype", "f32"},
                    {"iterations", r.iterations},
                    {"ops_per_iteration", r.ops_per_iteration},
                    {"repeats", r.repeats},
                    {"ns_per_op_median", r.ns_median},
                    {"ns_per_op_min", r.ns_min},
                    {"goal_met", r.ns_median <= kGoalNsPerOp}});
    }
    j["per_op_overhead"] = {{"goal_ns_per_op", kGoalNsPerOp}, {"rows", ov}};
    json mm = json::array();
    for (const auto& r : matmul_rows) {
      mm.push_back({{"n", r.n},
                    {"dtype", "f32"},
                    {"warmup", r.warmup},
                    {"repeats", r.repeats},
                    {"metatape_ms_median", r.mt_ms},
                    {"openblas_ms_median", r.blas_ms},
                    {"eigen_ms_median", r.eigen_ms},
                    {"metatape_gflops", r.mt_gflops},
                    {"openblas_gflops", r.blas_gflops},
                    {"eigen_gflops", r.eigen_gflops},
                    {"ratio_metatape_over_openblas", r.mt_gflops / r.blas_gflops},
                    {"ratio_metatape_over_eigen", r.mt_gflops / r.eigen_gflops},
                    {"max_abs_diff", r.max_abs_diff},
                    {"tolerance", r.tolerance}});
    }
    j["matmul"] = mm;
    bench::write_atomically(json_path, j.dump(2) + "\n");
    std::printf("\nwrote %s\n", json_path.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "metatape-bench-engine: error: " << e.what() << "\n";
    return 1;
  } catch (...) {
    std::cerr << "metatape-bench-engine: error: unknown exception\n";
    return 1;
  }
}
