// One meta-step of second-order E2E-TTT on POCO (CPU, or one CUDA device with --device cuda),
// timed the same way as its peers
// tools/reference/meta_step_bench.py (PyTorch) and tools/reference/meta_step_jax.py (JAX);
// bench/meta_step_vs_peers.py runs all three and prints the ratios.
//
// One meta-step is what `metatape train --method e2e-ttt` does per outer step (meta/training.cpp):
// for each of --meta-batch sessions, meta::e2e_ttt_gradient on one support batch and one query
// batch of that session (--inner-steps SGD steps of lr --inner-lr on the unit and session
// embeddings, create_graph through every step, meta-loss = query loss + mean inner loss);
// the meta-gradients averaged over the sessions, clipped to global norm --clip, one AdamW step.
// Synthetic data: --sessions sessions of --neurons neurons; session m of the meta-batch is
// session m; its support and query batches hold --batch samples of all its neurons each, x and
// targets standard normal; f32, no dropout (the inner loop runs the model without dropout).
//
// --device cuda: the model is built on the CPU (the same initial weights as a CPU run) and moved
// to cuda:0 with the batches; AdamW and clipping run there without host reads (clipping through
// optim::clip_grad_norm_on_device). Each meta-step is timed from a synchronised device to a
// synchronised device, with one synchronisation between the meta-gradients and clip+AdamW for
// the split; the meta-loss is summed on the device and read after the step. Peak memory is the
// CUDA caching allocator's peak allocated bytes over the timed steps (reset after warm-up).
//
// --graph (CUDA): after the eager warm-up, the whole meta-step (meta-gradients of every session,
// clipping, AdamW with AdamWOptions::capturable) is captured once as a CUDA graph (CudaGraph,
// engine/core/backend.h) and each timed step is one replay: the host's per-op work (autograd,
// dispatch, allocation, launches) is paid once, at capture. The batches are the same every step,
// as in the eager run.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <map>

#include "bench/bench_io.h"
#include "metatape_git_commit.h"  // METATAPE_GIT_COMMIT
#include "engine/autograd/grad_mode.h"
#include "engine/core/backend.h"
#include "engine/core/matmul_settings.h"
#include "engine/core/profiler.h"
#include "engine/optim/adamw.h"
#include "engine/optim/optimizer.h"
#include "meta/maml.h"

using namespace mt;
using Clock = std::chrono::steady_clock;

namespace {
double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
// The machine's state, as GFLOP/s of OpenBLAS's own multithreaded SGEMM on 512 x 512 x 512
// (operands in cache; ~30 products, ~0.1 s) with the engine's thread count. On the virtual
// machine the CPU benchmarks run on, this figure drops from ~200 to ~145 for seconds to minutes
// at a time (its two vCPUs placed far apart: threads that share packed panels wait on each
// other), while two independent single-threaded GEMMs keep their speed; the engine's GEMM
// (engine/cpu/gemm.h) splits products into per-thread blocks for that reason, so this probe
// calls OpenBLAS directly. The paired driver records it beside each pair of steps.
double gemm_probe_gflops() {
  const int n = 512;
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
  auto product = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(),
                n, 0.0f, c.data(), n);
  };
  for (int i = 0; i < 2; ++i) product();
  const int reps = 30;
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) product();
  return 2.0 * n * n * n * reps / (ms_since(t0) * 1e6);
}
std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos)
      return line.substr(line.find(':') + 2);
  return "unknown";
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"metatape E2E-TTT meta-step benchmark (CPU or CUDA)"};
  std::string config = "poco-paper", json_path, device_name = "cpu";
  int threads = 2, meta_batch = 2, batch = 32, neurons = 128, sessions = 8, inner_steps = 3,
      warmup = 1, repeats = 5, checkpoint_steps = -1;
  double inner_lr = 1e-3, meta_lr = 1e-4, weight_decay = 1e-4, clip = 1.0;
  bool checkpoint = false, tf32 = false, serve = false, graph = false, profile = false,
       graph_memory = false;
  std::string saved_recompute = "cuda";
  app.add_option("--config", config, "poco-paper or poco-seed");
  app.add_option("--threads", threads, "OpenMP threads (default 2)");
  app.add_option("--meta-batch", meta_batch, "sessions per meta-step (default 2)");
  app.add_option("--batch", batch, "samples per support / query batch (default 32)");
  app.add_option("--neurons", neurons, "neurons per sample = per session (default 128)");
  app.add_option("--sessions", sessions, "sessions of the model (default 8)");
  app.add_option("--inner-steps", inner_steps, "inner SGD steps (default 3)");
  app.add_option("--inner-lr", inner_lr, "inner SGD learning rate (default 1e-3)");
  app.add_option("--meta-lr", meta_lr, "AdamW learning rate (default 1e-4)");
  app.add_option("--weight-decay", weight_decay, "AdamW weight decay (default 1e-4)");
  app.add_option("--clip", clip, "max global gradient norm, 0 = none (default 1.0)");
  app.add_flag("--checkpoint", checkpoint, "checkpointed inner steps (all of them)");
  app.add_option("--checkpoint-steps", checkpoint_steps,
                 "checkpoint only the first N inner steps (the peak memory of the kept ones or "
                 "of one recomputed step, for N recomputations)");
  app.add_flag("--tf32", tf32, "CUDA: f32 matmuls on TF32 tensor cores (default off, as torch); with METATAPE_FLASH_F32=tensor_cores the fused attention's f32 tensor-core kernels take one TF32 product instead of three");
  app.add_flag("--graph", graph,
               "CUDA: after the warm-up, capture one whole meta-step (meta-gradients, clipping, "
               "AdamW with its step count on the device) as a CUDA graph and time its replays");
  app.add_flag("--profile", profile,
               "profile the timed steps: calls and host time per engine kernel and, on CUDA, "
               "device time per engine kernel and per CUDA kernel and how busy the device was "
               "(CUPTI); printed after the results and written to the JSON as 'profile'. The "
               "trace costs host time per launch: time steps without it");
  app.add_flag("--graph-memory", graph_memory,
               "in the first meta-step (a warm-up step when there is one), list what the first "
               "session's graph holds just before its outer backward: saved bytes by node and "
               "the largest saved tensors (autograd::graph_memory); printed and written to the "
               "JSON as 'graph_memory'");
  app.add_option("--saved-recompute", saved_recompute,
                 "outputs of cheaply recomputable ops (mul, geglu, layer_norm) saved for the "
                 "backward pass: recomputed when read (less memory, a few elementwise passes "
                 "more) 'always', 'never', or on CUDA only ('cuda', the default; "
                 "autograd::SavedRecompute)")
      ->check(CLI::IsMember({"cuda", "always", "never"}));
  app.add_option("--warmup", warmup, "untimed meta-steps (default 1)");
  app.add_option("--repeats", repeats, "timed meta-steps (default 5)");
  app.add_option("--device", device_name, "cpu or cuda (= cuda:0) (default cpu)")
      ->check(CLI::IsMember({"cpu", "cuda", "cuda:0"}));
  app.add_option("--json", json_path, "write the results as JSON to this path");
  app.add_flag("--serve", serve,
               "after the warm-up, print 'ready', then run one timed meta-step per line read from "
               "stdin (until 'quit' or end of input) and answer each with 'step_ms <ms>'; "
               "--repeats is "
               "ignored (bench/meta_step_vs_peers.py --paired alternates engines step by step); "
               "a line 'probe' is answered with 'probe_gflops <GFLOP/s>' of OpenBLAS's threaded "
               "SGEMM on 512^3 (the machine's state at that moment) and runs no step");
  CLI11_PARSE(app, argc, argv);
  try {
    MT_CHECK(meta_batch > 0 && batch > 0 && neurons > 0 && sessions >= meta_batch &&
                 repeats > 0 && warmup >= 0 && threads > 0 && inner_steps > 0,
             "meta-batch, batch, neurons, repeats, threads and inner steps must be positive and "
             "sessions >= meta-batch");
    omp_set_num_threads(threads);
    const Device device = device_name == "cpu" ? kCPU : cuda(0);
    const bool on_cuda = device.is_cuda();
    MT_CHECK(!graph || on_cuda, "--graph captures a CUDA graph: it needs --device cuda");
    MT_CHECK(!graph || warmup >= 1,
             "--graph needs --warmup >= 1 (the eager warm-up creates the optimizer state and the "
             "caches the capture must find in place)");
    MT_CHECK(!on_cuda || cuda_is_available(), "--device cuda: {}",
             built_with_cuda() ? "no CUDA device is visible on this machine"
                               : "this build has no CUDA backend (configure with METATAPE_CUDA=ON)");
    set_cuda_matmul_allow_tf32(tf32);
    SavedRecompute::set_policy(saved_recompute == "always"  ? SavedRecomputePolicy::always
                               : saved_recompute == "never" ? SavedRecomputePolicy::never
                                                            : SavedRecomputePolicy::cuda_only);
    const std::string device_description =
        on_cuda ? cuda_device_description(device.index) : cpu_model();
    meta::ModelSpec spec;
    spec.preset = config;
    const models::PocoConfig c = spec.poco_config();
    Generator gen(0);
    auto f = meta::make_forecaster(spec, std::vector<int64_t>(size_t(sessions), neurons), gen);
    const auto* poco = dynamic_cast<const models::Poco*>(f->module());
    MT_CHECK(poco != nullptr, "the benchmark needs a POCO model");
    f->to(device);  // before the optimizer: its state is created on the parameters' device
    auto make_batch = [&](int64_t session) {
      models::PocoBatch b;
      std::vector<int64_t> units, owner;
      for (int s = 0; s < batch; ++s) {
        b.sample_neurons.push_back(neurons);
        b.sample_sessions.push_back(session);
        for (int64_t n = 0; n < neurons; ++n) {
          units.push_back(poco->unit_offset(session) + n);
          owner.push_back(session);
        }
      }
      const int64_t N = int64_t(units.size());
      b.x = normal(Shape{N, c.context()}, 0, 1, gen);
      b.target = normal(Shape{N, c.pred_length}, 0, 1, gen);
      b.unit_index = from_indices(units, Shape{N});
      b.neuron_session = from_indices(owner, Shape{N});
      return b.to(device);  // drawn on the CPU: the same data on every device
    };
    std::vector<models::PocoBatch> support, query;
    for (int m = 0; m < meta_batch; ++m) {
      support.push_back(make_batch(m));
      query.push_back(make_batch(m));
    }
    meta::InnerLoopOptions inner;
    inner.steps = inner_steps;
    inner.inner_lr = inner_lr;
    inner.params = {"unit_emb.", "session_emb."};
    inner.checkpoint_steps =
        checkpoint_steps >= 0 ? checkpoint_steps : checkpoint ? inner_steps : 0;
    checkpoint = inner.checkpoint_steps > 0;
    auto params = f->module()->named_parameters();
    optim::AdamWOptions ao;
    ao.lr = meta_lr;
    ao.weight_decay = weight_decay;
    ao.capturable = graph;
    optim::AdamW adam(params, ao);

    std::vector<double> total, grad_ms, opt_ms;
    Tensor loss_total;  // 0-d f64 on the device: summed over the sessions, read after the step
    // One meta-step. `split` synchronises between the meta-gradients and clip+AdamW (eager
    // timing); a captured step has no synchronisation (g_ms, o_ms stay 0).
    autograd::GraphMemory graph_held;  // --graph-memory: filled by the first meta-step
    bool measure_graph = graph_memory;
    auto meta_step = [&](bool split, double* g_ms, double* o_ms) {
      const auto t0 = Clock::now();
      adam.zero_grad();
      // As meta/training.cpp: per-session meta-gradients, averaged, set as .grad.
      meta::MetaGradientMean mean;
      loss_total = Tensor();
      for (int m = 0; m < meta_batch; ++m) {
        meta::MetaGradient g = meta::e2e_ttt_gradient(
            *f, {support[size_t(m)]}, query[size_t(m)], inner, /*include_inner_losses=*/true,
            m == 0 && measure_graph ? &graph_held : nullptr);
        NoGradGuard no_grad;
        const Tensor loss = g.meta_loss.detach().to(DType::f64);
        loss_total = loss_total.defined() ? add(loss_total, loss) : loss;
        mean.add(g);
      }
      {
        NoGradGuard no_grad;
        const std::vector<std::string> names = mean.names();
        const TensorList grads = mean.mean();
        std::map<std::string, Tensor> by_name;
        for (size_t k = 0; k < names.size(); ++k) by_name.emplace(names[k], grads[k]);
        for (auto& [name, t] : params) t.set_grad(by_name.at(name));
      }
      if (split) {
        synchronize(device);
        *g_ms = ms_since(t0);
      }
      const auto t1 = Clock::now();
      if (clip > 0) {
        if (on_cuda)
          optim::clip_grad_norm_on_device(params, clip);
        else
          optim::clip_grad_norm(params, clip);
      }
      adam.step();
      if (split) {
        synchronize(device);
        *o_ms = ms_since(t1);
      }
    };
    CudaGraph step_graph;
    double loss_value = 0;
    synchronize(device);
    for (int i = 0; serve || i < warmup + repeats; ++i) {
      if (serve && i >= warmup) {
        if (i == warmup) {  // warmed up: the driver starts timing once every engine says so
          std::printf("ready\n");
          std::fflush(stdout);
        }
        std::string line;
        bool more = static_cast<bool>(std::getline(std::cin, line));
        while (more && line == "probe") {  // the machine's GEMM throughput, right now
          std::printf("probe_gflops %.1f\n", gemm_probe_gflops());
          std::fflush(stdout);
          more = static_cast<bool>(std::getline(std::cin, line));
        }
        if (!more || line == "quit") break;
      }
      if (i == warmup && profile) {
        // Before a capture: CUPTI instruments a graph's kernels when the graph is instantiated.
        profiler::enable(true);
        std::string why;
        if (on_cuda && !profiler::enable_device_trace(true, &why))
          std::fprintf(stderr, "--profile: host times only: %s\n", why.c_str());
      }
      if (i == warmup && graph) {
        // Captured after the eager warm-up (AdamW's state, the allocator's segments and the
        // cuBLAS plans exist); the capture runs nothing, each replay is one meta-step.
        const auto tc = Clock::now();
        step_graph.capture(device, [&] { meta_step(false, nullptr, nullptr); });
        std::printf("captured the meta-step as a CUDA graph in %.1f ms (private pool %.1f MiB)\n",
                    ms_since(tc), double(step_graph.pool_bytes()) / (1 << 20));
        // A replay allocates nothing: its memory is the graph's pool, reserved; the ordinary
        // pool's cache (the eager warm-up's blocks) is returned so reserved bytes are the
        // footprint (the pool plus live tensors: parameters, optimizer state, batches).
        empty_cache(device);
      }
      if (i == warmup && on_cuda) reset_peak_memory_stats(device);
      if (i == warmup) profiler::reset();  // METATAPE_PROFILE=1 reports the timed steps only
      const auto t0 = Clock::now();
      double g_ms = 0, o_ms = 0;
      if (graph && i >= warmup) {
        step_graph.replay();
      } else {
        meta_step(true, &g_ms, &o_ms);
        measure_graph = false;  // the first step only
      }
      synchronize(device);
      const double step_ms = ms_since(t0);
      loss_value = loss_total.item<double>() / double(meta_batch);
      if (i < warmup) continue;
      total.push_back(step_ms);
      grad_ms.push_back(g_ms);
      opt_ms.push_back(o_ms);
      if (serve) {
        std::printf("step_ms %.3f\n", total.back());
        std::fflush(stdout);
      }
    }
    MT_CHECK(!total.empty(), "no timed meta-step ran (--serve got no request)");
    MT_CHECK(std::isfinite(loss_value), "the meta-loss is not finite ({})", loss_value);
    int64_t n_params = 0;
    for (auto& [name, p] : params) n_params += p.numel();
    // With --graph, replays allocate nothing (their tensors live in the graph's private pool):
    // the figure is then the peak reserved bytes (see the capture above).
    const int64_t peak_bytes = graph ? memory_stats(device).peak_reserved_bytes
                                     : memory_stats(device).peak_allocated_bytes;
    std::printf("metatape %s E2E-TTT meta-step: meta-batch %d sessions x %d samples x %d neurons, "
                "%d inner steps (lr %g) on unit+session embeddings%s, %lld parameters, f32, "
                "%d threads, %s (%s)\n",
                config.c_str(), meta_batch, batch, neurons, inner_steps, inner_lr,
                checkpoint ? (inner.checkpoint_steps >= inner_steps
                                  ? ", checkpointed"
                                  : ", " + std::to_string(inner.checkpoint_steps) + " checkpointed")
                                 .c_str()
                           : graph ? ", one CUDA graph per step" : "",
                (long long)n_params, threads,
                device.str().c_str(), device_description.c_str());
    std::printf("  %.1f ms/meta-step (median of %d; min %.1f)\n", median(total), int(total.size()),
                *std::min_element(total.begin(), total.end()));
    std::printf("  meta-gradients %.1f ms, clip+AdamW %.1f ms (medians); peak %.1f MiB; "
                "last meta-loss %.6f\n",
                median(grad_ms), median(opt_ms), double(peak_bytes) / (1 << 20), loss_value);
    nlohmann::json graph_memory_json;
    if (graph_memory) {
      std::printf("%s", graph_held.table().c_str());
      nlohmann::json rows = nlohmann::json::array(), largest = nlohmann::json::array();
      for (const autograd::GraphMemoryRow& r : graph_held.rows)
        rows.push_back({{"node", r.node}, {"nodes", r.nodes}, {"tensors", r.tensors},
                        {"bytes", r.bytes}});
      for (const auto& l : graph_held.largest)
        largest.push_back({{"node", l.node}, {"shape", l.shape}, {"bytes", l.bytes}});
      graph_memory_json = {{"nodes", graph_held.nodes}, {"tensors", graph_held.tensors},
                           {"bytes", graph_held.bytes}, {"by_node", rows}, {"largest", largest}};
    }
    nlohmann::json profile_json;
    if (profile) {
      profiler::enable(false);
      std::printf("%s", profiler::report().c_str());  // waits for the device, reads its trace
      nlohmann::json kernels = nlohmann::json::array();
      for (const profiler::Entry& e : profiler::entries())
        kernels.push_back({{"kernel", e.kernel},
                           {"calls", e.calls},
                           {"host_ms", e.seconds * 1e3},
                           {"device_launches", e.device_launches},
                           {"device_ms", e.device_seconds * 1e3},
                           {"gflop", e.flops * 1e-9}});
      const profiler::DeviceSummary d = profiler::device_summary();
      nlohmann::json device_kernels = nlohmann::json::array();
      for (size_t k = 0; k < d.kernels.size() && k < 60; ++k)
        device_kernels.push_back({{"name", d.kernels[k].name},
                                  {"count", d.kernels[k].count},
                                  {"device_ms", d.kernels[k].seconds * 1e3}});
      profile_json = {{"steps", int64_t(total.size())},
                      {"engine_kernels", kernels},
                      {"device_activities", d.activities},
                      {"device_busy_ms", d.busy_seconds * 1e3},
                      {"device_span_ms", d.span_seconds * 1e3},
                      {"device_kernel_ms_sum", d.kernel_seconds * 1e3},
                      {"device_kernels_top", device_kernels}};
      profiler::enable_device_trace(false);
    }
    if (!json_path.empty()) {
      nlohmann::json j = {{"engine", "metatape"},
                          {"benchmark", "e2e_ttt_meta_step"},
                          {"config", config},
                          {"threads", threads},
                          {"device", device.str()},
                          {"device_name", device_description},
                          {"cuda_matmul_tf32", tf32},
                          {"meta_batch", meta_batch},
                          {"batch", batch},
                          {"neurons_per_sample", neurons},
                          {"sessions", sessions},
                          {"inner_steps", inner_steps},
                          {"inner_lr", inner_lr},
                          {"inner_params", inner.params},
                          {"checkpoint_steps", inner.checkpoint_steps},
                          {"cuda_graph", graph},
                          {"saved_recompute", saved_recompute},
                          {"meta_lr", meta_lr},
                          {"weight_decay", weight_decay},
                          {"clip", clip},
                          {"parameters", n_params},
                          {"warmup", warmup},
                          {"repeats", int64_t(total.size())},
                          {"served", serve},
                          {"ms_per_step_median", median(total)},
                          {"ms_per_step_min", *std::min_element(total.begin(), total.end())},
                          {"ms_per_step_all", total},
                          {"meta_gradients_ms_median", median(grad_ms)},
                          {"optimizer_ms_median", median(opt_ms)},
                          {"peak_bytes", peak_bytes},
                          {"peak_bytes_scope",
                           graph     ? "timed replays (CUDA caching allocator, reserved bytes: the "
                                       "graph's private pool and live tensors, the ordinary cache "
                                       "emptied after the capture)"
                           : on_cuda ? "timed steps (CUDA caching allocator, allocated bytes)"
                                     : "whole run (CPU allocator)"},
                          {"last_meta_loss", loss_value},
                          {"profiled", profile},
                          {"commit", METATAPE_GIT_COMMIT}};
      if (profile) j["profile"] = profile_json;
      if (graph_memory) j["graph_memory"] = graph_memory_json;
      bench::write_atomically(json_path, j.dump(2) + "\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
