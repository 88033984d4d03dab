// One CPU training step of POCO (forward, MSE loss, backward, AdamW), timed the same way as the
// PyTorch peer tools/reference/poco_bench.py: synthetic batch of --batch samples, sample b holding
// every neuron of session b mod --sessions, --neurons neurons per session, f32, warm-up steps then
// the median of --repeats steps. bench/poco_vs_torch.py runs both and prints the ratio.
// --online: instead, the two things `metatape online` does per prediction time (meta/online.cpp),
// in evaluation mode: an update, one SGD step of copies of the embedding tables (the test-time
// parameters) given to the forward as overrides, their gradients alone (autograd::grad), and a
// forecast, a forward without gradients with the updated copies, read back to the host.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "bench/bench_io.h"
#include "metatape_git_commit.h"  // METATAPE_GIT_COMMIT
#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/core/profiler.h"
#include "engine/optim/adamw.h"
#include "models/poco.h"

using namespace mt;
using Clock = std::chrono::steady_clock;

namespace {
double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}
// As Python's statistics.median (the peer's): the mean of the two middle values of an even count.
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"metatape POCO training-step benchmark (CPU)"};
  std::string config = "poco-paper", json_path;
  int threads = 2, batch = 32, neurons = 128, sessions = 8, warmup = 5, repeats = 20;
  bool eval = false, online = false;
  double lr = 1e-3, weight_decay = 0.01;
  app.add_option("--config", config, "poco-paper or poco-seed");
  app.add_option("--threads", threads, "OpenMP threads (default 2)");
  app.add_option("--batch", batch, "samples per batch (default 32)");
  app.add_option("--neurons", neurons, "neurons per sample = per session (default 128)");
  app.add_option("--sessions", sessions, "sessions (default 8)");
  app.add_option("--warmup", warmup, "untimed steps (default 5)");
  app.add_option("--repeats", repeats, "timed steps (default 20)");
  app.add_flag("--eval", eval, "no dropout (evaluation mode)");
  app.add_option("--lr", lr, "AdamW learning rate");
  app.add_option("--weight-decay", weight_decay, "AdamW weight decay");
  app.add_option("--json", json_path, "write the results as JSON to this path");
  app.add_flag("--online", online,
               "time an online update (SGD of the embedding tables, lr --lr) and a forecast "
               "instead of a training step; evaluation mode; use --batch 1 for one window");
  CLI11_PARSE(app, argc, argv);
  try {
    MT_CHECK(batch > 0 && neurons > 0 && sessions > 0 && repeats > 0 && warmup >= 0 && threads > 0,
             "batch, neurons, sessions, repeats and threads must be positive");
    omp_set_num_threads(threads);
    const models::PocoConfig c = models::PocoConfig::named(config);
    Generator gen(0);
    models::Poco model(c, std::vector<int64_t>(size_t(sessions), neurons), gen);
    models::PocoBatch b;
    std::vector<int64_t> units, owner;
    for (int s = 0; s < batch; ++s) {
      const int64_t session = s % sessions;
      b.sample_neurons.push_back(neurons);
      b.sample_sessions.push_back(session);
      for (int64_t n = 0; n < neurons; ++n) {
        units.push_back(model.unit_offset(session) + n);
        owner.push_back(session);
      }
    }
    const int64_t N = int64_t(units.size());
    b.x = normal(Shape{N, c.context()}, 0, 1, gen);
    b.target = normal(Shape{N, c.pred_length}, 0, 1, gen);
    b.unit_index = from_indices(units, Shape{N});
    b.neuron_session = from_indices(owner, Shape{N});
    if (online) {
      // Copies of the test-time parameters, as the online method keeps them.
      nn::ParamMap fast;
      TensorList leaves;
      for (const char* name : {"unit_emb.weight", "session_emb.weight"}) {
        Tensor leaf = model.parameter_map().at(name).detach().clone();
        leaf.set_requires_grad(true);
        fast[name] = leaf;
        leaves.push_back(leaf);
      }
      std::vector<double> update, forecast;
      double checksum = 0;
      for (int i = 0; i < warmup + repeats; ++i) {
        if (i == warmup) profiler::reset();
        const auto t0 = Clock::now();
        Tensor loss = mse_loss(model.forward(b, &fast, nullptr), b.target);
        TensorList g = autograd::grad({loss}, leaves, {}, std::nullopt, false, true);
        {
          NoGradGuard no_grad;
          for (size_t k = 0; k < leaves.size(); ++k) leaves[k].add_(g[k], -lr);
        }
        const double u_ms = ms_since(t0);
        const auto t1 = Clock::now();
        std::vector<float> pred;
        {
          NoGradGuard no_grad;
          pred = model.forward(b, &fast, nullptr).to_vector<float>();
        }
        const double f_ms = ms_since(t1);
        checksum = pred[0];
        if (i < warmup) continue;
        update.push_back(u_ms);
        forecast.push_back(f_ms);
      }
      MT_CHECK(std::isfinite(checksum), "the forecast is not finite ({})", checksum);
      std::printf("metatape %s online: batch %d x %d neurons, %d sessions, f32, %d threads\n",
                  config.c_str(), batch, neurons, sessions, threads);
      std::printf("  update %.3f ms (median of %d; min %.3f), forecast %.3f ms (min %.3f)\n",
                  median(update), repeats, *std::min_element(update.begin(), update.end()),
                  median(forecast), *std::min_element(forecast.begin(), forecast.end()));
      if (!json_path.empty()) {
        nlohmann::json j = {{"engine", "metatape"}, {"benchmark", "poco_online_step"},
                            {"config", config}, {"threads", threads}, {"batch", batch},
                            {"neurons_per_sample", neurons}, {"sessions", sessions},
                            {"repeats", repeats}, {"lr", lr},
                            {"update_ms_median", median(update)},
                            {"forecast_ms_median", median(forecast)},
                            {"update_ms", update}, {"forecast_ms", forecast},
                            {"commit", METATAPE_GIT_COMMIT}};
        bench::write_atomically(json_path, j.dump(2) + "\n");
      }
      return 0;
    }
    optim::AdamWOptions ao;
    ao.lr = lr;
    ao.weight_decay = weight_decay;
    optim::AdamW adam(model.named_parameters(), ao);
    Generator dropout_gen(1);
    std::vector<double> total, fwd, bwd, opt;
    double loss_value = 0;
    for (int i = 0; i < warmup + repeats; ++i) {
      if (i == warmup) profiler::reset();  // METATAPE_PROFILE=1 reports the timed steps only
      const auto t0 = Clock::now();
      adam.zero_grad();
      Tensor loss = mse_loss(model.forward(b, nullptr, eval ? nullptr : &dropout_gen), b.target);
      const double f_ms = ms_since(t0);
      const auto t1 = Clock::now();
      autograd::backward({loss});
      const double b_ms = ms_since(t1);
      const auto t2 = Clock::now();
      adam.step();
      const double o_ms = ms_since(t2);
      loss_value = loss.item<double>();
      if (i < warmup) continue;
      total.push_back(ms_since(t0));
      fwd.push_back(f_ms);
      bwd.push_back(b_ms);
      opt.push_back(o_ms);
    }
    MT_CHECK(std::isfinite(loss_value), "the loss is not finite ({})", loss_value);
    std::printf("metatape %s: batch %d x %d neurons, %d sessions, %lld parameters, f32, %d threads, %s\n",
                config.c_str(), batch, neurons, sessions,
                (long long)[&] { int64_t n = 0; for (auto& p : model.parameters()) n += p.numel(); return n; }(),
                threads, eval ? "eval (no dropout)" : "train (dropout)");
    std::printf("  %.2f ms/step (median of %d; min %.2f)\n", median(total), repeats,
                *std::min_element(total.begin(), total.end()));
    std::printf("  forward+loss %.2f ms, backward %.2f ms, AdamW %.2f ms (medians); peak %.1f MiB\n",
                median(fwd), median(bwd), median(opt),
                double(memory_stats().peak_allocated_bytes) / (1 << 20));
    if (!json_path.empty()) {
      nlohmann::json j = {{"engine", "metatape"}, {"config", config}, {"threads", threads},
                          {"batch", batch}, {"neurons_per_sample", neurons},
                          {"sessions", sessions}, {"dropout", !eval}, {"repeats", repeats},
                          {"ms_per_step_median", median(total)},
                          {"forward_ms_median", median(fwd)}, {"backward_ms_median", median(bwd)},
                          {"optimizer_ms_median", median(opt)},
                          {"peak_bytes", memory_stats().peak_allocated_bytes},
                          {"commit", METATAPE_GIT_COMMIT}};
      bench::write_atomically(json_path, j.dump(2) + "\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
