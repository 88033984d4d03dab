// metatape: the command-line tool. Subcommands:
//   data synth   write a synthetic multi-session data set (POCO's npz format)
//   train        train a forecaster on the training sessions; a run folder with config.json,
//                metrics.jsonl, model.safetensors (best validation score) and summary.json
//   eval         evaluate a run's model on a split
//   adapt        adapt a run's model to held-out sessions by fine-tuning (per mode), with curves
//   bench        adaptation: the meta-learning experiment plan end to end; memory: E2E-TTT peak
//                memory against inner steps, with and without checkpointing
//   demo         synthetic data -> train POCO -> adapt to two unseen sessions, in minutes
// Errors print one line naming the file/field and the fix, and exit non-zero.
#include <CLI/CLI.hpp>
#include <fmt/ranges.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "data/load.h"
#include "engine/core/backend.h"
#include "engine/io/checkpoint.h"
#include "tools/cli/bench.h"
#include "tools/cli/common.h"
#include "tools/cli/config.h"

namespace fs = std::filesystem;
using namespace mt;
using nlohmann::json;
using cli::Data;
using cli::apply_threads;
using cli::load_data;
using cli::print_metrics;
using cli::session_json;
using cli::sizes_of;

namespace {

// ---- train ----
// "cpu" or "cuda[:i]" -> Device, checked against the build and the machine.
Device parse_device(const std::string& name) {
  if (name == "cpu") return kCPU;
  int index = 0;
  MT_CHECK(name == "cuda" || (name.rfind("cuda:", 0) == 0 && name.size() > 5 &&
                              name.find_first_not_of("0123456789", 5) == std::string::npos),
           "--device must be cpu, cuda or cuda:<index>, got '{}'", name);
  if (name.size() > 5) index = std::stoi(name.substr(5));
  MT_CHECK(built_with_cuda(), "--device {}: this build has no CUDA backend (METATAPE_CUDA=OFF)",
           name);
  MT_CHECK(index < cuda_device_count(), "--device {}: {} CUDA device(s) are visible", name,
           cuda_device_count());
  return cuda(index);
}

// The model is initialised (train) or loaded (adapt) on the CPU and then moved to `device`:
// the same weights on every device; batches follow it (meta::to_batch).
json run_train(const cli::RunConfig& c, const std::string& run_dir, const Data& d,
               Device device = kCPU) {
  fs::create_directories(run_dir);
  data::PreparedData prepared(d.train, c.data.prep);
  for (const auto& note : prepared.notes()) std::fprintf(stderr, "note: %s\n", note.c_str());
  Generator gen(c.train.seed);
  auto f = meta::make_forecaster(c.model, sizes_of(d.train), gen);
  f->to(device);
  json config = c.to_json();
  config["sessions"] = session_json(d.train);
  config["holdout_sessions"] = session_json(d.holdout);
  cli::write_file_atomic(run_dir + "/config.json", config.dump(2) + "\n");
  std::ofstream metrics(run_dir + "/metrics.jsonl", std::ios::trunc);
  MT_CHECK(metrics.good(), "{}/metrics.jsonl: cannot write", run_dir);
  const std::string model_path = run_dir + "/model.safetensors";
  auto on_eval = [&](const meta::EvalPoint& p) {
    json line = {{"step", p.step}, {"seconds", p.seconds}, {"val", p.val.to_json()}};
    if (std::isfinite(p.train_loss)) line["train_loss"] = p.train_loss;
    metrics << line.dump() << "\n";
    metrics.flush();
  };
  auto on_best = [&](const meta::EvalPoint& p) {
    if (f->module())
      io::save_checkpoint(model_path, *f->module(),
                          {{"config", config}, {"step", p.step}, {"val_score", p.val.score}});
  };
  int64_t total = 0, embeddings = 0;
  if (f->module())
    for (const auto& [name, t] : f->module()->named_parameters()) {
      total += t.numel();
      if (name.find("_emb.") != std::string::npos) embeddings += t.numel();
    }
  std::fprintf(stderr,
               "training %s (%lld parameters, %lld besides the embedding tables) on %lld sessions "
               "(%lld windows), %lld steps\n",
               f->kind().c_str(), (long long)total, (long long)(total - embeddings),
               (long long)d.train.size(),
               (long long)prepared.all_windows(data::Split::Train).size(), (long long)c.train.steps);
  meta::TrainResult r = meta::train(*f, prepared, {}, c.train, {}, on_eval, on_best);
  meta::Metrics test = meta::evaluate(*f, prepared, data::Split::Test, {}, c.train.eval_batch_size);
  print_metrics("test split (best validation checkpoint):", test);
  std::printf("best validation score %.4f at step %lld; %.1f s; peak %.1f MiB\n", r.best_score,
              (long long)r.best_step, r.seconds, double(r.peak_bytes) / (1 << 20));
  json summary = {{"train", r.to_json()}, {"test", test.to_json()}, {"kind", f->kind()}};
  cli::write_file_atomic(run_dir + "/summary.json", summary.dump(2) + "\n");
  return summary;
}

// Rebuilds the model of a run folder and loads its weights.
struct Run {
  cli::RunConfig config;
  json config_json;
};
Run read_run(const std::string& run_dir) {
  json j = cli::read_json_file(run_dir + "/config.json");
  j.erase("sessions");  // descriptive fields written by train
  j.erase("holdout_sessions");
  return Run{cli::config_from_json(j), j};
}

// ---- adapt ----
json run_adapt(const cli::RunConfig& c, const std::string& run_dir, const Data& d,
               Device device = kCPU) {
  MT_CHECK(!d.holdout.empty(),
           "adapt: the run has no held-out sessions; set data.holdout to the session names to "
           "adapt to");
  const std::string model_path = run_dir + "/model.safetensors";
  data::PreparedData prepared(d.holdout, c.data.prep);
  json results = json::array();
  std::printf("\nadaptation to %lld unseen sessions (%s)\n", (long long)d.holdout.size(),
              fmt::format("{}", fmt::join(d.holdout.names(), ", ")).c_str());
  std::printf("  %-18s %10s %12s %12s %10s %10s %10s\n", "method", "params", "steps_to_95",
              "final_score", "best", "seconds", "peak_MiB");
  auto row = [&](const std::string& name, const meta::TrainResult& r) {
    std::printf("  %-18s %10lld %12lld %12.4f %10.4f %10.2f %10.1f\n", name.c_str(),
                (long long)r.trainable_parameters, (long long)r.steps_to_95,
                r.curve.back().val.score, r.best_score, r.seconds,
                double(r.peak_bytes) / (1 << 20));
    std::fflush(stdout);
    json j = r.to_json();
    j["method"] = name;
    results.push_back(j);
  };
  {
    // Reference: the copy-last forecast on the same windows.
    Generator gen(0);
    meta::ModelSpec copy = c.model;
    copy.kind = "copy_last";
    auto f = meta::make_forecaster(copy, sizes_of(d.holdout), gen);
    f->to(device);
    meta::TrainOptions none = c.adapt.train;
    none.steps = 0;
    none.log_progress = false;
    row("copy_last", meta::train(*f, prepared, {}, none));
  }
  for (const auto& mode : c.adapt.modes) {
    Generator gen(c.adapt.train.seed);
    auto f = meta::make_forecaster(c.model, sizes_of(d.holdout), gen);
    if (f->module()) {
      io::LoadReport rep = io::load_parameters(*f->module(), model_path, io::LoadMode::partial);
      (void)rep;  // the new sessions' embedding tables differ in shape and keep their fresh init
    }
    f->to(device);
    meta::TrainOptions t = c.adapt.train;
    if (f->kind() == "poco") t.trainable = meta::finetune_prefixes(mode);
    if (auto it = c.adapt.lr_by_mode.find(mode); it != c.adapt.lr_by_mode.end()) t.lr = it->second;
    t.log_progress = false;
    row("finetune:" + mode, meta::train(*f, prepared, {}, t));
  }
  json out = {{"sessions", session_json(d.holdout)}, {"methods", results}};
  cli::write_file_atomic(run_dir + "/adapt.json", out.dump(2) + "\n");
  return out;
}

// ---- online ----
// For every training session: the stream is its validation + test frames (the validation part is
// the offline method's calibration segment); frozen, offline and online scores. With `drifts`
// (synthetic data only), the data are regenerated with each drift magnitude.
json run_online_cmd(const std::string& run_dir, const std::vector<double>& drifts,
                    const std::vector<std::string>& sets) {
  Run run = read_run(run_dir);
  cli::RunConfig c = sets.empty() ? run.config : cli::apply_overrides(run.config_json, sets);
  apply_threads(c);
  MT_CHECK(drifts.empty() || c.data.path.empty(),
           "online: --drift regenerates synthetic data; this run was trained on {}", c.data.path);
  std::vector<double> sweep = drifts.empty() ? std::vector<double>{c.data.synthetic.drift} : drifts;
  const models::PocoConfig pc = c.model.poco_config();
  json rows = json::array();
  std::printf("%8s %-24s %8s %10s %10s %10s %9s\n", "drift", "session", "windows", "frozen",
              "offline", "online", "online_s");
  for (double drift : sweep) {
    cli::RunConfig cd = c;
    cd.data.synthetic.drift = drift;
    Data d = load_data(cd);
    data::PreparedData prepared(d.train, cd.data.prep);
    Generator gen(0);
    auto f = meta::make_forecaster(cd.model, sizes_of(d.train), gen);
    if (f->module()) io::load_parameters(*f->module(), run_dir + "/model.safetensors", io::LoadMode::strict);
    meta::OnlineOptions opt = cd.online;
    double sums[3] = {0, 0, 0};
    for (int64_t s = 0; s < prepared.num_sessions(); ++s) {
      const auto& splits = prepared.splits(s);
      MT_CHECK(!splits.val.empty() && !splits.test.empty(),
               "online: session '{}' has no validation or test frames", prepared.session(s).name);
      const int64_t begin = splits.val.front().begin, end = splits.test.back().end;
      opt.calibration_frames = std::min<int64_t>(cd.online.calibration_frames, data::SessionSplits::frames(splits.val));
      meta::OnlineScores r = meta::run_online(*f, prepared.session(s), s, begin, end, pc.context(),
                                              pc.pred_length, opt);
      std::printf("%8.2f %-24s %8lld %10.4f %10.4f %10.4f %9.2f\n", drift,
                  prepared.session(s).name.c_str(), (long long)r.predictions, r.frozen, r.offline,
                  r.online, r.online_seconds);
      sums[0] += r.frozen;
      sums[1] += r.offline;
      sums[2] += r.online;
      rows.push_back({{"drift", drift}, {"session", prepared.session(s).name},
                      {"windows", r.predictions}, {"frozen", r.frozen}, {"offline", r.offline},
                      {"online", r.online}, {"online_seconds", r.online_seconds}});
    }
    const double n = double(prepared.num_sessions());
    std::printf("%8.2f %-24s %8s %10.4f %10.4f %10.4f\n", drift, "mean", "", sums[0] / n,
                sums[1] / n, sums[2] / n);
  }
  json out = {{"rows", rows}, {"options", c.to_json()["online"]}};
  cli::write_file_atomic(run_dir + "/online.json", out.dump(2) + "\n");
  return out;
}

int run_eval(const std::string& run_dir, const std::string& split_name) {
  Run run = read_run(run_dir);
  apply_threads(run.config);
  Data d = load_data(run.config);
  data::PreparedData prepared(d.train, run.config.data.prep);
  Generator gen(0);
  auto f = meta::make_forecaster(run.config.model, sizes_of(d.train), gen);
  if (f->module()) io::load_parameters(*f->module(), run_dir + "/model.safetensors", io::LoadMode::strict);
  data::Split split = split_name == "val" ? data::Split::Val
                      : split_name == "train" ? data::Split::Train
                                              : data::Split::Test;
  MT_CHECK(split_name == "val" || split_name == "train" || split_name == "test",
           "eval: --split must be train, val or test, got '{}'", split_name);
  meta::Metrics m = meta::evaluate(*f, prepared, split, {}, run.config.train.eval_batch_size);
  print_metrics(("split " + split_name + ":").c_str(), m);
  cli::write_file_atomic(run_dir + "/eval_" + split_name + ".json", m.to_json().dump(2) + "\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"metatape: neural population forecasters that adapt to a new session in a few "
               "gradient steps"};
  app.require_subcommand(1);
  std::string config_file, run_dir, out_dir, split = "test";
  std::vector<std::string> sets;

  auto* data_cmd = app.add_subcommand("data", "data sets");
  data_cmd->require_subcommand(1);
  auto* synth = data_cmd->add_subcommand("synth", "write a synthetic multi-session data set");
  synth->add_option("--out", out_dir, "folder for the .npz sessions")->required();
  synth->add_option("--config", config_file, "run config JSON (its data.synthetic section)");
  synth->add_option("--set", sets, "override, e.g. --set data.synthetic.num_sessions=8");

  auto* train = app.add_subcommand("train", "train a forecaster; writes a run folder");
  train->add_option("--config", config_file, "run config JSON (defaults when omitted)");
  train->add_option("--set", sets, "override a config value, e.g. --set train.lr=3e-4");
  train->add_option("--run", run_dir, "run folder to create")->required();
  std::string method;
  train->add_option("--method", method, "standard, fomaml or e2e-ttt (same as --set train.method=...)");
  std::string device_name = "cpu";
  train->add_option("--device", device_name, "cpu, cuda or cuda:<index> (default cpu)");

  auto* eval = app.add_subcommand("eval", "evaluate a run's model");
  eval->add_option("--run", run_dir, "run folder written by train")->required();
  eval->add_option("--split", split, "train, val or test");

  auto* adapt = app.add_subcommand("adapt", "adapt a run's model to its held-out sessions");
  adapt->add_option("--run", run_dir, "run folder written by train")->required();
  adapt->add_option("--set", sets, "override, e.g. --set adapt.train.steps=100");
  adapt->add_option("--device", device_name, "cpu, cuda or cuda:<index> (default cpu)");

  auto* online = app.add_subcommand(
      "online", "online vs offline adaptation on each session's validation + test stream");
  online->add_option("--run", run_dir, "run folder written by train")->required();
  std::vector<double> drifts;
  online->add_option("--drift", drifts, "synthetic drift magnitudes to sweep, e.g. --drift 0 0.1 0.2 0.3");
  online->add_option("--set", sets, "override, e.g. --set online.lr=1e-2");

  auto* bench = app.add_subcommand("bench", "benchmarks: adaptation (the experiment plan), memory");
  bench->require_subcommand(1);
  auto* bench_adapt = bench->add_subcommand(
      "adaptation", "train standard / FOMAML / E2E-TTT, adapt each to the held-out sessions");
  auto* bench_memory = bench->add_subcommand(
      "memory", "E2E-TTT meta-gradient peak memory against inner steps, with and without checkpointing");
  bench_adapt->add_option("--device", device_name, "cpu, cuda or cuda:<index> (default cpu)");
  for (auto* b : {bench_adapt, bench_memory}) {
    b->add_option("--config", config_file, "run config JSON (defaults when omitted)");
    b->add_option("--set", sets, "override, e.g. --set bench.adapt_steps=100");
    b->add_option("--out", out_dir, "folder for the JSON results and plots")->required();
  }

  auto* demo = app.add_subcommand("demo", "synthetic data -> train POCO -> adapt to 2 unseen sessions");
  demo->add_option("--run", run_dir, "run folder (default: a fresh folder under /tmp)");
  demo->add_option("--set", sets, "override a demo config value");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (synth->parsed()) {
      cli::RunConfig c = cli::load_config(config_file, sets);
      data::Dataset d = data::synthesize(c.data.synthetic);
      data::write_dataset_npz(d, out_dir);
      for (const auto& s : d.sessions)
        std::printf("%s: %lld neurons x %lld frames\n", s.name.c_str(), (long long)s.num_neurons,
                    (long long)s.num_frames);
      std::printf("wrote %lld sessions to %s\n", (long long)d.size(), out_dir.c_str());
      return 0;
    }
    if (train->parsed()) {
      if (!method.empty()) sets.push_back("train.method=\"" + method + "\"");
      cli::RunConfig c = cli::load_config(config_file, sets);
      apply_threads(c);
      Data d = load_data(c);
      run_train(c, run_dir, d, parse_device(device_name));
      return 0;
    }
    if (eval->parsed()) return run_eval(run_dir, split);
    if (online->parsed()) {
      run_online_cmd(run_dir, drifts, sets);
      return 0;
    }
    if (adapt->parsed()) {
      Run run = read_run(run_dir);
      cli::RunConfig c = run.config;
      if (!sets.empty()) c = cli::apply_overrides(run.config_json, sets);
      apply_threads(c);
      Data d = load_data(c);
      run_adapt(c, run_dir, d, parse_device(device_name));
      return 0;
    }
    if (bench_adapt->parsed() || bench_memory->parsed()) {
      cli::RunConfig c = cli::load_config(config_file, sets);
      apply_threads(c);
      if (bench_adapt->parsed()) cli::run_bench_adaptation(c, out_dir, parse_device(device_name));
      else cli::run_bench_memory(c, out_dir);
      return 0;
    }
    if (demo->parsed()) {
      // A small synthetic world: 6 sessions from one network, 2 held out; poco-paper trained
      // briefly, then adapted to the held-out sessions by each fine-tuning mode.
      std::vector<std::string> demo_sets = {
          "data.synthetic.num_sessions=6", "data.synthetic.min_neurons=48",
          "data.synthetic.max_neurons=96", "data.synthetic.num_frames=1200",
          "data.synthetic.steps_per_frame=5",  // frames 0.5 time constants apart
          R"(data.holdout=["synth_004","synth_005"])", "train.steps=400", "train.batch_size=16",
          "train.eval_every=50", "train.lr=1e-3", "adapt.train.steps=100",
          "adapt.train.eval_every=10", "adapt.train.batch_size=8"};
      demo_sets.insert(demo_sets.end(), sets.begin(), sets.end());
      cli::RunConfig c = cli::load_config("", demo_sets);
      apply_threads(c);
      if (run_dir.empty())
        run_dir = (fs::temp_directory_path() /
                   fmt::format("metatape-demo-{}", std::chrono::system_clock::now().time_since_epoch().count()))
                      .string();
      std::printf("metatape demo: run folder %s\n", run_dir.c_str());
      const auto t0 = std::chrono::steady_clock::now();
      Data d = load_data(c);
      run_train(c, run_dir, d);
      run_adapt(c, run_dir, d);
      std::printf("demo finished in %.1f s\n",
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
