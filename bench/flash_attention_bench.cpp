// metatape-bench-flash-attention: the fused variable-length attention core (flash_attention,
// kernels/cuda/flash_attention.cu) against the engine's composite attention on CUDA (the padded
// path: batched cuBLAS GEMMs and softmax), at POCO's shapes:
//   seed:  32 samples, 64 latent queries, 100..160 neurons x 3 tokens = 300..480 keys each
//   paper: the same with 8 latent queries
//   long:  8 samples, 64 queries, 3000 keys each
// heads 8 and 16, head dim 64, f32 and bf16. Three measurements per configuration:
//   fwd        the output only (no grad)
//   fwd_bwd    output, then dq, dk, dv for a random dO
//   double_bwd the first-order gradients with create_graph, <grads, z>, then its gradient with
//              respect to q, k, v (the meta-gradient's pattern: the fused double backward)
// Each is timed with CUDA events on the engine's compute stream after 3 warm-ups (median of
// --repeats), and its peak memory above the inputs is read from the caching allocator's stats.
// The fused forward and gradients are checked against the composite first; a mismatch fails the
// run. Ratios composite / fused are printed. --json writes every figure with device and commit.
// Memory: "MiB" columns and *_peak_bytes are the step's own need, the allocator's peak during one
// run minus what was allocated before it (the inputs); the JSON also keeps the baseline and the
// absolute peak (*_baseline_bytes, *_peak_total_bytes). --peer FILE (the JSON of
// tools/reference/attention_peer.py, same GPU) prints, per configuration, metatape fused against
// PyTorch with ratios (torch ms / fused ms: > 1 means metatape is faster; fused MiB / torch MiB).
// The fused kernels are the default ones (tensor cores for 16-bit, split-KV SIMT otherwise) unless
// METATAPE_FLASH_KERNELS=split or =simple (METATAPE_FLASH_KV_SPLITS=n forces n key splits); the
// JSON records which, and the header line prints it.
//
// Usage: metatape-bench-flash-attention [--json FILE] [--commit SHA] [--repeats N] [--quick]
//                                       [--peer FILE]
// Exits with status 2 when no CUDA device is present.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench/bench_io.h"
#include "bench/cuda_bench.h"
#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/core/attention_settings.h"
#include "engine/core/backend.h"
#include "engine/core/generator.h"
#include "engine/core/matmul_settings.h"
#include "engine/core/storage.h"
#include "engine/ops.h"
#include "kernels/cuda/stream.h"

#include "metatape_git_commit.h"  // METATAPE_GIT_COMMIT

namespace {

using namespace mt;

const char* flash_kernels_name() {
  switch (cuda_flash_kernels()) {
    case FlashKernels::simple: return "simple";
    case FlashKernels::mma: return "mma";
    default: return "split";
  }
}

struct Config {
  std::string name;
  int64_t samples, queries, keys_lo, keys_hi, heads, dh;
};

struct Problem {
  Tensor q, k, v, dO, zq, zk;  // (N, H*dh) on the device
  VarlenAttention fused, composite;
  double pairs = 0;  // sum over samples and heads of nq * nk
};

Problem make_problem(const Config& c, DType dtype, Generator& gen) {
  Problem p;
  std::vector<int64_t> ql, kl;
  uint64_t state = 12345;
  for (int64_t b = 0; b < c.samples; ++b) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const int64_t span = c.keys_hi - c.keys_lo;
    // POCO's keys are 3 tokens per neuron: round to a multiple of 3 when the range allows.
    int64_t nk = c.keys_lo + (span > 0 ? int64_t((state >> 33) % uint64_t(span + 1)) : 0);
    if (span > 0) nk -= nk % 3;
    ql.push_back(c.queries);
    kl.push_back(std::max<int64_t>(nk, 1));
    p.pairs += double(c.queries) * double(kl.back()) * double(c.heads);
  }
  const int64_t Nq = c.samples * c.queries, Nk = std::accumulate(kl.begin(), kl.end(), int64_t(0));
  const int64_t F = c.heads * c.dh;
  const Device d = cuda(0);
  p.q = normal(Shape{Nq, F}, 0, 1, gen, DType::f32, d).to(dtype);
  p.k = normal(Shape{Nk, F}, 0, 1, gen, DType::f32, d).to(dtype);
  p.v = normal(Shape{Nk, F}, 0, 1, gen, DType::f32, d).to(dtype);
  p.dO = normal(Shape{Nq, F}, 0, 1, gen, DType::f32, d).to(dtype);
  p.zq = normal(Shape{Nq, F}, 0, 1, gen, DType::f32, d).to(dtype);
  p.zk = normal(Shape{Nk, F}, 0, 1, gen, DType::f32, d).to(dtype);
  p.fused.heads = p.composite.heads = c.heads;
  p.fused.q_lengths = p.composite.q_lengths = ql;
  p.fused.k_lengths = p.composite.k_lengths = kl;
  p.fused.mode = VarlenAttention::Mode::fused;
  p.composite.mode = VarlenAttention::Mode::padded;
  return p;
}

enum class Kind { fwd, fwd_bwd, double_bwd };
const char* kind_name(Kind k) {
  return k == Kind::fwd ? "fwd" : k == Kind::fwd_bwd ? "fwd_bwd" : "double_bwd";
}

// One measured step; returns the tensors a correctness check compares.
TensorList step(const Problem& p, const VarlenAttention& spec, Kind kind) {
  if (kind == Kind::fwd) {
    NoGradGuard no_grad;
    return {varlen_attention(p.q, p.k, p.v, spec)};
  }
  Tensor q = p.q.detach().set_requires_grad(), k = p.k.detach().set_requires_grad(),
         v = p.v.detach().set_requires_grad();
  Tensor o = varlen_attention(q, k, v, spec);
  if (kind == Kind::fwd_bwd) return autograd::grad({o}, {q, k, v}, {p.dO});
  TensorList g = autograd::grad({o}, {q, k, v}, {p.dO}, std::nullopt, /*create_graph=*/true);
  Tensor l2 = add(add(sum(mul(g[0], p.zq)), sum(mul(g[1], p.zk))), sum(mul(g[2], p.zk)));
  return autograd::grad({l2}, {q, k, v});
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct Timing {
  double median_ms = 0;
  int64_t peak_bytes = 0;      // peak during one run minus the baseline: the step's own need
  int64_t baseline_bytes = 0;  // allocated before the run (the inputs)
  int64_t peak_total_bytes = 0;
};

Timing measure(const std::function<void()>& fn, int repeats) {
  cudaStream_t s = gpu::stream(0);
  for (int i = 0; i < 3; ++i) fn();
  gpu::synchronize(0);
  Timing t;
  // Peak memory of one run above what is live before it (the inputs).
  const int64_t before = memory_stats(cuda(0)).allocated_bytes;
  reset_peak_memory_stats(cuda(0));
  fn();
  gpu::synchronize(0);
  t.peak_total_bytes = memory_stats(cuda(0)).peak_allocated_bytes;
  t.baseline_bytes = before;
  t.peak_bytes = t.peak_total_bytes - before;
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    BENCH_CHECK(cudaEventRecord(start, s));
    fn();
    BENCH_CHECK(cudaEventRecord(stop, s));
    BENCH_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(double(ms));
  }
  BENCH_CHECK(cudaEventDestroy(start));
  BENCH_CHECK(cudaEventDestroy(stop));
  t.median_ms = median(times);
  return t;
}

// max |a - b| / (1 + max |b|) over a list, on the host in f64.
double rel_error(const TensorList& a, const TensorList& b) {
  double err = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const auto x = a[i].detach().to(DType::f64).to_vector<double>();
    const auto y = b[i].detach().to(DType::f64).to_vector<double>();
    double m = 0, s = 0;
    for (size_t j = 0; j < x.size(); ++j) {
      m = std::max(m, std::abs(x[j] - y[j]));
      s = std::max(s, std::abs(y[j]));
    }
    err = std::max(err, m / (1 + s));
  }
  return err;
}

// Metatape fused against the PyTorch peer's figures (same config, dtype and step).
void print_peer(const nlohmann::json& results, const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "metatape-bench-flash-attention: cannot read --peer %s\n", path.c_str());
    std::exit(1);
  }
  const nlohmann::json peer = nlohmann::json::parse(in);
  std::printf("\nmetatape fused vs PyTorch (%s, torch %s)\n",
              peer.value("device", std::string("?")).c_str(),
              peer.value("torch", std::string("?")).c_str());
  std::printf("%-10s %-5s %-10s %10s %10s %8s %10s %10s %8s\n", "config", "dtype", "step",
              "fused ms", "torch ms", "speedup", "fused MiB", "torch MiB", "mem x");
  for (const auto& r : results) {
    for (const auto& p : peer.at("results")) {
      if (p.at("config") != r.at("config") || p.at("dtype") != r.at("dtype") ||
          p.at("step") != r.at("step"))
        continue;
      const double fms = r.at("fused_ms").get<double>(), tms = p.at("ms").get<double>();
      const double fmb = r.at("fused_peak_bytes").get<double>() / 1048576.0;
      const double tmb = p.at("peak_bytes").get<double>() / 1048576.0;
      std::printf("%-10s %-5s %-10s %10.3f %10.3f %8.2f %10.1f %10.1f %8.3f\n",
                  r.at("config").get<std::string>().c_str(),
                  r.at("dtype").get<std::string>().c_str(), r.at("step").get<std::string>().c_str(),
                  fms, tms, tms / std::max(fms, 1e-9), fmb, tmb, fmb / std::max(tmb, 1e-9));
      break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"metatape fused attention benchmark: fused vs composite on CUDA"};
  std::string json_path, commit = METATAPE_GIT_COMMIT;
  int repeats = 20;
  bool quick = false, tf32 = false;
  std::string peer_path;
  app.add_option("--json", json_path, "write every figure as JSON to this path");
  app.add_option("--peer", peer_path,
                 "JSON of tools/reference/attention_peer.py: print fused vs PyTorch per config");
  app.add_option("--commit", commit, "commit recorded in the JSON (default: configure time)");
  app.add_option("--repeats", repeats, "timed runs per measurement (median reported)");
  app.add_flag("--quick", quick, "fewer configurations and repeats (a smoke run)");
  app.add_flag("--tf32", tf32,
               "TF32 GEMMs in the composite (default: f32), and one TF32 product instead of three "
               "(3xTF32) in the fused f32 tensor-core kernels");
  CLI11_PARSE(app, argc, argv);
  set_cuda_matmul_allow_tf32(tf32);
  if (!cuda_is_available()) {
    std::fprintf(stderr, "metatape-bench-flash-attention: no CUDA device\n");
    return 2;
  }
  if (quick) repeats = std::min(repeats, 5);
  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));

  std::vector<Config> configs{
      {"seed_h8", 32, 64, 300, 480, 8, 64},  {"seed_h16", 32, 64, 300, 480, 16, 64},
      {"paper_h8", 32, 8, 300, 480, 8, 64},  {"paper_h16", 32, 8, 300, 480, 16, 64},
      {"long_h8", 8, 64, 3000, 3000, 8, 64},
  };
  if (quick) configs = {configs[0], configs[4]};
  // Relative error allowed between the fused and composite paths: f32 accumulations in
  // different orders (1e-4; the fused 3xTF32 products are within ~2^-21 relative); under --tf32
  // both sides round the products' inputs to 11 bits (1e-2); bf16 rounds every composite op to
  // 8 bits (5e-2).
  auto allowed = [&](DType t) { return t == DType::f32 ? (tf32 ? 1e-2 : 1e-4) : 5e-2; };

  nlohmann::json results = nlohmann::json::array();
  bool ok = true;
  Generator gen(2024);
  std::printf("flash kernels: %s, kv splits: %d (0: automatic), f32 on tensor cores: %s (%s)\n",
              flash_kernels_name(), cuda_flash_kv_splits(),
              cuda_flash_f32_tensor_cores() ? "yes" : "no, timed beside",
              tf32 ? "TF32" : "3xTF32");
  std::printf("%-10s %-5s %-10s %12s %12s %7s %12s %12s %9s\n", "config", "dtype", "step",
              "fused ms", "composite ms", "ratio", "fused MiB", "compos. MiB", "rel err");
  for (const Config& c : configs) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      Problem p = make_problem(c, dtype, gen);
      for (Kind kind : {Kind::fwd, Kind::fwd_bwd, Kind::double_bwd}) {
        const double err =
            rel_error(step(p, p.fused, kind), step(p, p.composite, kind));
        const bool pass = err <= allowed(dtype);
        ok = ok && pass;
        const Timing f = measure([&] { step(p, p.fused, kind); }, repeats);
        const Timing m = measure([&] { step(p, p.composite, kind); }, repeats);
        // f32 under the mma setting: both of its kernels on the same problem, the split (SIMT)
        // ones and the tensor-core ones (cuda_flash_f32_tensor_cores: 3xTF32, or TF32 with
        // --tf32), the one not selected checked against the composite like the other.
        const bool f32_both = dtype == DType::f32 && cuda_flash_kernels() == FlashKernels::mma;
        const bool tc = cuda_flash_f32_tensor_cores();
        double other_ms = 0, other_err = 0;
        bool other_pass = true;
        if (f32_both) {
          set_cuda_flash_f32_tensor_cores(!tc);
          other_err = rel_error(step(p, p.fused, kind), step(p, p.composite, kind));
          other_pass = other_err <= allowed(dtype);
          ok = ok && other_pass;
          other_ms = measure([&] { step(p, p.fused, kind); }, repeats).median_ms;
          set_cuda_flash_f32_tensor_cores(tc);
        }
        // Score-matrix FLOPs of the forward (QK^T and PV): 4 dh per (query, key, head) pair.
        const double flops = 4.0 * double(c.dh) * p.pairs;
        std::printf("%-10s %-5s %-10s %12.3f %12.3f %7.2f %12.1f %12.1f %9.1e%s", c.name.c_str(),
                    dtype_name(dtype), kind_name(kind), f.median_ms, m.median_ms,
                    m.median_ms / std::max(f.median_ms, 1e-9), double(f.peak_bytes) / 1048576.0,
                    double(m.peak_bytes) / 1048576.0, err, pass ? "" : "  MISMATCH");
        if (f32_both) {
          const double tc_ms = tc ? f.median_ms : other_ms, split_ms = tc ? other_ms : f.median_ms;
          std::printf("   (tensor cores %.3f ms, split %.3f ms: %.2fx; %s err %.1e%s)", tc_ms,
                      split_ms, split_ms / std::max(tc_ms, 1e-9), tc ? "split" : "tensor-core",
                      other_err, other_pass ? "" : " MISMATCH");
        }
        std::printf("\n");
        results.push_back({{"config", c.name},
                           {"samples", c.samples},
                           {"queries", c.queries},
                           {"keys_lo", c.keys_lo},
                           {"keys_hi", c.keys_hi},
                           {"heads", c.heads},
                           {"dh", c.dh},
                           {"dtype", dtype_name(dtype)},
                           {"step", kind_name(kind)},
                           {"fused_ms", f.median_ms},
                           {"composite_ms", m.median_ms},
                           {"fused_peak_bytes", f.peak_bytes},
                           {"composite_peak_bytes", m.peak_bytes},
                           {"fused_baseline_bytes", f.baseline_bytes},
                           {"composite_baseline_bytes", m.baseline_bytes},
                           {"fused_peak_total_bytes", f.peak_total_bytes},
                           {"composite_peak_total_bytes", m.peak_total_bytes},
                           {"forward_tflops_fused", flops / (f.median_ms * 1e-3) / 1e12},
                           {"rel_error", err},
                           {"pass", pass}});
        if (f32_both) {
          nlohmann::json& r = results.back();
          r["fused_f32_tensor_cores_ms"] = tc ? f.median_ms : other_ms;
          r["fused_f32_split_ms"] = tc ? other_ms : f.median_ms;
          r[tc ? "rel_error_f32_split" : "rel_error_f32_tensor_cores"] = other_err;
          r["pass"] = pass && other_pass;
        }
      }
    }
  }
  if (!peer_path.empty()) print_peer(results, peer_path);
  if (!json_path.empty()) {
    nlohmann::json doc{{"benchmark", "flash_attention"},
                       {"device", prop.name},
                       {"commit", commit},
                       {"repeats", repeats},
                       {"flash_kernels", flash_kernels_name()},
                       {"flash_kv_splits", cuda_flash_kv_splits()},
                       {"flash_f32_tensor_cores", cuda_flash_f32_tensor_cores()},
                       {"cuda_matmul_tf32", tf32},
                       {"results", results}};
    try {
      ::bench::write_atomically(json_path, doc.dump(2) + "\n");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "metatape-bench-flash-attention: %s\n", e.what());
      return 1;
    }
  }
  if (!ok) {
    std::fprintf(stderr, "metatape-bench-flash-attention: fused and composite results differ\n");
    return 1;
  }
  return 0;
}
