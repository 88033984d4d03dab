// metatape: the command-line tool. Subcommands:
//   data synth   write a synthetic multi-session data set (POCO's npz format)
//   data info    the sessions as a training would read them: sizes, times, range, windows
//   train        train a forecaster on the training sessions; a run folder with config.json,
//                metrics.jsonl, model.safetensors (best validation score),
//                train_state.safetensors (to --resume from) and summary.json
//   eval         evaluate a run's model on a split
//   adapt        adapt a run's model to held-out sessions by fine-tuning (per mode), with curves;
//                saves the adapted models in adapt/<label>/, a folder per adaptation
//   predict      forecasts of one session (trained or adapted model) as an .npz
//   bench        adaptation: the meta-learning experiment plan end to end; memory: E2E-TTT peak
//                memory against inner steps, with and without checkpointing
//   demo         synthetic data -> train POCO -> adapt to two unseen sessions, in minutes
// Errors print one line naming the file/field and the fix, and exit non-zero.
#include <CLI/CLI.hpp>
#include <fmt/ranges.h>
#include <omp.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>

#include "data/files.h"
#include "data/check.h"
#include "data/load.h"
#include "data/npz.h"
#include "engine/autograd/grad_mode.h"
#include "engine/core/backend.h"
#include "engine/io/checkpoint.h"
#include "engine/io/temp_file.h"
#include "meta/adaptation.h"
#include "tools/cli/adaptations.h"
#include "tools/cli/bench.h"
#include "tools/cli/common.h"
#include "tools/cli/config.h"

#include "metatape_git_commit.h"  // METATAPE_GIT_COMMIT

namespace fs = std::filesystem;
using namespace mt;
using nlohmann::json;
using cli::Adaptation;
using cli::Data;
using cli::adaptations_dir;
using cli::is_adapted_model_file;
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
  const int visible = cuda_device_count();
  MT_CHECK(index < visible, "--device {}: {} CUDA device(s) are visible{}", name, visible,
           visible == 0 ? " (no GPU, or no driver for it, on this machine); use --device cpu"
                        : fmt::format("; use cuda:0 .. cuda:{}", visible - 1));
  return cuda(index);
}

// How a run's model is evaluated: as it is meant to be used. A meta-learned model (fomaml,
// e2e-ttt) first takes its inner loop on each session's support windows, as in the validation
// of its training; `unadapted` evaluates the initial weights as they are.
struct Evaluation {
  meta::Metrics metrics;
  std::string procedure;  // a phrase for the printed title and the JSON
};
Evaluation evaluate_run(const cli::RunConfig& c, const meta::Forecaster& f,
                        const data::PreparedData& prepared, data::Split split,
                        bool unadapted = false) {
  meta::TrainOptions t = c.train;
  if (t.method == "standard")
    return {meta::evaluate_as_used(f, prepared, split, t), "as trained"};
  if (unadapted) {
    t.method = "standard";  // the initial weights as they are
    return {meta::evaluate_as_used(f, prepared, split, t),
            "initial weights, without the inner loop"};
  }
  return {meta::evaluate_as_used(f, prepared, split, t),
          fmt::format("after the {}-step inner loop (SGD at lr {}) on each session's support "
                      "windows, as validated in training",
                      t.meta.inner_steps, t.meta.inner_lr)};
}

// Loads a run's model.safetensors into `f`, which the run's config built. Every parameter must
// come from the file, except, with `new_sessions`, the per-session embedding tables (adapt: the
// held-out sessions' tables are new). Anything else missing or of another shape means the
// config and the file describe different models: an error listing them.
void load_run_model(meta::Forecaster& f, const std::string& run_dir, bool new_sessions,
                    bool overridden) {
  if (f.module() == nullptr) return;
  const std::string path = run_dir + "/model.safetensors";
  io::LoadReport rep = io::load_parameters(*f.module(), path, io::LoadMode::partial);
  // What does not fit: a tensor of another shape (with the reason), or one only one side has.
  std::vector<std::string> bad;
  for (const auto& sk : rep.skipped)
    if (!(new_sessions && meta::is_session_table(sk.name)))
      bad.push_back(sk.name + ": " + sk.reason);
  for (const auto& m : rep.missing) {
    const bool mismatched = std::any_of(rep.skipped.begin(), rep.skipped.end(),
                                        [&](const io::SkippedTensor& sk) { return sk.name == m; });
    if (!mismatched && !(new_sessions && meta::is_session_table(m)))
      bad.push_back(m + ": not in the file");
  }
  if (bad.empty()) return;
  const size_t shown = std::min<size_t>(bad.size(), 4);
  MT_FAIL("{} does not fit the model {}/config.json describes{}: {} tensor(s) differ ({}{}); "
          "restore the run's config.json{}",
          path, run_dir, overridden ? " with the --set overrides" : "", bad.size(),
          fmt::join(bad.begin(), bad.begin() + std::ptrdiff_t(shown), "; "),
          bad.size() > shown ? fmt::format("; and {} more", bad.size() - shown) : "",
          overridden ? " or drop the --set overrides of model.*" : "");
}

// Writes the parameters of `f`'s model, those in `overrides` replaced, as a checkpoint loadable
// like model.safetensors (CPU copies, the model's order).
void save_adapted_model(const std::string& path, meta::Forecaster& f,
                        const nn::ParamMap* overrides, const json& metadata) {
  io::NamedTensors tensors;
  for (auto& [name, t] : f.module()->named_parameters()) {
    const Tensor* v = &t;
    if (overrides != nullptr)
      if (auto it = overrides->find(name); it != overrides->end()) v = &it->second;
    tensors.emplace_back(name, v->device().is_cpu() ? v->detach() : v->detach().to(kCPU));
  }
  io::save_checkpoint(path, tensors, metadata);
}

// The files `metatape train` writes into a run folder, and those later commands add
// (eval_<split>[_unadapted].json, online.json; adapt.json and the adapted models of an earlier
// metatape's adapt, which now writes the folder adapt/ instead).
bool is_run_file(const std::string& name) {
  for (const char* f : {"config.json", "metrics.jsonl", "model.safetensors", "summary.json",
                        "train_state.safetensors", "adapt.json", "online.json"})
    if (name == f) return true;
  if (is_adapted_model_file(name)) return true;
  return name.rfind("eval_", 0) == 0 && name.size() > 10 &&
         name.compare(name.size() - 5, 5, ".json") == 0;
}

// The files of `run_dir` that a run consists of (is_run_file), listed before any is removed.
std::vector<fs::path> run_files(const std::string& run_dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(run_dir))
    if (e.is_regular_file() && is_run_file(e.path().filename().string())) out.push_back(e.path());
  return out;
}

// A run folder `train` may write into: new, empty, or (with `overwrite`) an earlier run whose
// files are removed first, so no file of the old run outlives the new one. Returns the folder's
// lock, taken before anything in it is looked at or removed.
std::unique_ptr<cli::FolderLock> prepare_run_folder(const std::string& run_dir, bool overwrite) {
  MT_CHECK(!fs::exists(run_dir) || fs::is_directory(run_dir), "--run {}: exists and is not a folder",
           run_dir);
  cli::make_folder(run_dir, "--run");
  auto lock = std::make_unique<cli::FolderLock>(run_dir, ".train.lock", "--run",
                                                "metatape train, adapt or online");
  const bool holds_run = fs::exists(run_dir + "/config.json") ||
                         fs::exists(run_dir + "/model.safetensors");
  const bool resumable = fs::exists(run_dir + "/train_state.safetensors") &&
                         fs::exists(run_dir + "/config.json") &&
                         !fs::exists(run_dir + "/summary.json");
  MT_CHECK(!holds_run || overwrite,
           "--run {}: the folder holds a run already{}; choose another folder, or pass "
           "--overwrite to replace that run (its model, metrics and results are deleted)",
           run_dir,
           resumable ? fmt::format(" (unfinished: metatape train --resume --run {} continues it)",
                                   run_dir)
                     : "");
  // Adaptations without their run (its files removed by hand) started from another model.
  MT_CHECK(holds_run || overwrite || !cli::has_adaptations(run_dir),
           "--run {}: the folder holds adaptations of an earlier run ({}) but not the run; "
           "choose another folder, or pass --overwrite to delete them",
           run_dir,
           fs::exists(run_dir + "/adapt.json") ? run_dir + "/adapt.json"
                                               : adaptations_dir(run_dir) + "/");
  for (const auto& p : run_files(run_dir)) fs::remove(p);
  cli::remove_adaptations(run_dir);
  return lock;
}

// A run whose training stopped early (interrupted, failed) has no summary.json: its model is the
// best checkpoint up to then. Said once on stderr by the commands that use it.
void note_if_unfinished(const std::string& run_dir) {
  if (!fs::exists(run_dir + "/summary.json"))
    std::fprintf(stderr,
                 "note: %s has no summary.json: its training did not finish (interrupted or "
                 "failed); model.safetensors is the best validation checkpoint up to then "
                 "(metatape train --resume --run %s continues the training)\n",
                 run_dir.c_str(), run_dir.c_str());
}

// The result files that continuing a run's training makes stale (summary, eval, adapt,
// online: computed from the model before the continuation): removed, and named on stderr.
void remove_results(const std::string& run_dir) {
  for (const auto& p : run_files(run_dir)) {
    const std::string name = p.filename().string();
    if (name == "config.json" || name == "metrics.jsonl" || name == "model.safetensors" ||
        name == "train_state.safetensors")
      continue;
    std::fprintf(stderr, "note: removed %s (computed from the model before this continuation)\n",
                 p.c_str());
    fs::remove(p);
  }
  for (const auto& removed : cli::remove_adaptations(run_dir))
    std::fprintf(stderr,
                 "note: removed the adaptation %s (it started from the model before this "
                 "continuation)\n",
                 removed.c_str());
}

// A line of metrics.jsonl: the evaluation point without a train_loss where there is none.
json metrics_line(const meta::EvalPoint& p) {
  json line = p.to_json();
  if (line["train_loss"].is_null()) line.erase("train_loss");
  return line;
}

// Brings a run folder back to its training state before resuming: metrics.jsonl holds the
// state's curve (points a crash left after the state are dropped; the resumed run writes them
// again) and model.safetensors the state's best parameters.
void restore_run_files(const std::string& run_dir, const json& state,
                       const io::SafetensorsContents& contents, const json& config) {
  std::string lines;
  for (const auto& p : state.at("curve"))
    lines += metrics_line(meta::EvalPoint::from_json(p)).dump() + "\n";
  cli::write_file_atomic(run_dir + "/metrics.jsonl", lines);
  io::NamedTensors best;
  for (const auto& [name, t] : contents.tensors) {
    if (name.rfind("param.", 0) != 0) continue;
    const std::string param = name.substr(6);
    const Tensor* b = contents.find("best." + param);
    best.emplace_back(param, b ? *b : t);
  }
  double best_score = state.at("best_score").is_null() ? NAN : state.at("best_score").get<double>();
  io::save_checkpoint(run_dir + "/model.safetensors", best,
                      {{"config", config}, {"step", state.at("best_step")}, {"val_score", best_score}});
}

// Ctrl-C (SIGINT) or SIGTERM during training: the first asks train() to stop after the current
// step and save its state (ResumeOptions::stop_after); a second one ends the process at once,
// as the signal would have. A second within kSameStopNs of the first is the same request sent
// twice (`timeout` signals the process and then its process group) and is not counted.
std::atomic<int> stop_signal{0};  // the signal that asked to stop, 0 = none
std::atomic<long long> stop_time_ns{0};  // CLOCK_MONOTONIC of the first stop signal, 0 = none
constexpr long long kSameStopNs = 300'000'000;  // 0.3 s: quicker than two Ctrl-C by hand
std::atomic<bool> training_done{false};  // past the last step: the run is being finished
std::atomic<int> stop_context{0};  // 0: train; 1: bench adaptation; 2: adapt; 3: online
static_assert(std::atomic<int>::is_always_lock_free, "set from a signal handler");
static_assert(std::atomic<long long>::is_always_lock_free, "set from a signal handler");

extern "C" void request_stop(int signal_number) {
  const int saved_errno = errno;
  timespec now {};
  ::clock_gettime(CLOCK_MONOTONIC, &now);  // async-signal-safe
  const long long now_ns = (long long)now.tv_sec * 1'000'000'000LL + now.tv_nsec;
  // The first stop signal claims the time; a second, even one another thread is handling at
  // this moment, finds it taken.
  long long first = 0;
  if (!stop_time_ns.compare_exchange_strong(first, now_ns)) {
    if (now_ns - first >= kSameStopNs) {  // asked again: abort now, by the default action
      struct sigaction fallback {};
      fallback.sa_handler = SIG_DFL;
      sigemptyset(&fallback.sa_mask);
      ::sigaction(signal_number, &fallback, nullptr);
      ::raise(signal_number);  // delivered as this handler returns
    }
    errno = saved_errno;
    return;
  }
  stop_signal.store(signal_number);
  static const char stopping[] =
      "\nstopping after this step and saving the training state (again to abort at once)\n";
  static const char finishing[] =
      "\ntraining is done: finishing the run (test evaluation, summary; again to abort, then "
      "train --resume finishes it)\n";
  static const char stopping_bench[] =
      "\nstopping after this training step or adaptation run and saving the progress (again to "
      "abort at once)\n";
  static const char stopping_adapt[] =
      "\nstopping after this step; this adaptation is abandoned (again to abort at once)\n";
  static const char stopping_online[] =
      "\nstopping online adaptation; nothing is written (again to abort at once)\n";
  const bool done = training_done.load();
  const int context = stop_context.load();
  const char* text = context == 1 ? stopping_bench
                     : context == 2 ? stopping_adapt
                     : context == 3 ? stopping_online
                     : done         ? finishing
                                    : stopping;
  const size_t length = std::strlen(text);
  ssize_t ignored = ::write(STDERR_FILENO, text, length);
  (void)ignored;
  errno = saved_errno;
}

// Ctrl-C (or SIGTERM) during adapt: the adaptation in progress is abandoned (its work folder
// removed); an earlier adaptation of that name stays as it was.
struct AdaptationStopped : Error {
  AdaptationStopped()
      : Error("adapt: stopped; nothing of this adaptation was kept, and an earlier adaptation of "
              "that name is as it was") {}
};
// ResumeOptions::stop_after of train's and adapt's training loops, asked after every step.
bool stop_requested(int64_t) { return stop_signal.load() != 0; }

// Installs request_stop for SIGINT and SIGTERM while it lives, then restores the handlers.
class StopOnSignal {
 public:
  StopOnSignal() {
    stop_signal.store(0);
    stop_time_ns.store(0);
    training_done.store(false);
    struct sigaction action {};
    action.sa_handler = request_stop;
    sigemptyset(&action.sa_mask);
    sigaddset(&action.sa_mask, SIGINT);  // one handler at a time, whichever of the two came
    sigaddset(&action.sa_mask, SIGTERM);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~StopOnSignal() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

// The model is initialised (train) or loaded (adapt) on the CPU and then moved to `device`:
// the same weights on every device; batches follow it (meta::to_batch). With `resume`, the run
// in `run_dir` (its config.json gave `c`) continues from its train_state.safetensors.
json run_train(const cli::RunConfig& c, const std::string& run_dir, const Data& d,
               Device device = kCPU, bool overwrite = false, bool resume = false) {
  data::PreparedData prepared(d.train, c.data.prep);
  for (const auto& note : prepared.notes()) std::fprintf(stderr, "note: %s\n", note.c_str());
  Generator gen(c.train.seed);
  auto f = meta::make_forecaster(c.model, sizes_of(d.train), gen);
  // Everything that can be checked before training is, before the run folder is touched.
  meta::check_training(*f, prepared, {}, c.train);
  if (c.train.method != "standard")
    if (const std::string note = meta::meta_sessions_note(prepared); !note.empty())
      std::fprintf(stderr, "note: %s\n", note.c_str());
  if (c.train.method == "fomaml" && c.train.meta.checkpoint_steps > 0)
    std::fprintf(stderr, "note: train.meta.checkpoint_steps has no effect with fomaml (its inner "
                         "steps keep no graph to recompute)\n");
  if (c.train.method == "standard") {  // meta-learning settings a standard run does not use
    const json now = c.to_json()["train"]["meta"];
    const json defaults = cli::RunConfig{}.to_json()["train"]["meta"];
    std::vector<std::string> unused;
    for (const auto& [key, value] : now.items())
      if (!defaults.contains(key) || defaults[key] != value) unused.push_back("train.meta." + key);
    if (!unused.empty())
      std::fprintf(stderr, "note: standard training does not use %s (they set meta-learning: "
                           "--method fomaml or e2e-ttt)%s\n",
                   fmt::format("{}", fmt::join(unused, ", ")).c_str(),
                   c.train.meta.dropout ? "; its dropout is train.dropout" : "");
  }
  if (c.train.method != "standard" && c.model.kind == "poco" &&
      c.train.meta.inner_lr == cli::RunConfig{}.train.meta.inner_lr)
    std::fprintf(stderr, "note: train.meta.inner_lr is %g, the default: SGD steps that small "
                         "barely move a POCO model, so the inner loop changes little (the "
                         "meta-learning results in bench/README use 1.0 and 0.1); set it with "
                         "--set train.meta.inner_lr=...\n",
                 c.train.meta.inner_lr);
  if (c.train.method != "standard" && !c.train.dropout && c.train.meta.dropout)
    std::fprintf(stderr, "note: train.dropout=false is standard training's; meta-training "
                         "applies dropout by train.meta.dropout, which is on\n");
  json config = c.to_json();
  config["sessions"] = session_json(d.train);
  config["holdout_sessions"] = session_json(d.holdout);
  // A model without parameters (copy_last) has nothing to train, save or resume.
  const bool has_parameters = f->module() != nullptr;
  meta::ResumeOptions state;
  if (has_parameters) state.state_path = run_dir + "/train_state.safetensors";
  state.identity = cli::training_identity(config);
  state.resume = resume;
  std::unique_ptr<cli::FolderLock> lock;
  if (resume) {
    MT_CHECK(has_parameters, "--resume: {} is a {} model: it has no parameters to train, so "
             "nothing to resume", run_dir, f->kind());
    lock = std::make_unique<cli::FolderLock>(run_dir, ".train.lock", "--run",
                                             "metatape train, adapt or online");
    MT_CHECK(fs::exists(state.state_path),
             "--resume: {} has no train_state.safetensors (a run trained before resumable "
             "training, or one whose first validation did not finish); train it again with "
             "--overwrite",
             run_dir);
    // Every check before any file of the run changes.
    const json saved = meta::read_train_state_metadata(state.state_path);
    json saved_identity = saved.at("identity");
    cli::fill_settings_of_older_runs(saved_identity);
    const std::string differs = cli::describe_identity_difference(
        cli::identity_with_defaults(saved_identity, state.identity), state.identity);
    MT_CHECK(differs.empty(),
             "--resume: {}: {}; a run continues with the settings it was trained with (only "
             "train.steps, train.patience, train.log_progress, threads, data.path and the adapt, online and bench "
             "sections may change): restore it in --set, --method or {}/config.json",
             run_dir, differs, run_dir);
    // The same run: train() compares the state's identity as written (an older one lacks the
    // settings added since), and the continued run keeps writing it.
    state.identity = saved.at("identity");
    const int64_t at = saved.at("step").get<int64_t>();
    const bool finished = fs::exists(run_dir + "/summary.json");
    MT_CHECK(!finished || c.train.steps > at,
             "--resume: {} finished its {} steps{}; nothing to resume. To train it longer, raise "
             "train.steps above {}, e.g. --set train.steps={}",
             run_dir, at,
             c.train.steps < at ? fmt::format(" (train.steps is {} now)", c.train.steps) : "",
             at, std::max<int64_t>(2 * at, at + 1));
    if (finished && c.train.patience > 0) {
      // A finished run whose last evaluations already exhaust the patience would take no step.
      std::vector<meta::EvalPoint> curve;
      for (const auto& p : saved.at("curve")) curve.push_back(meta::EvalPoint::from_json(p));
      const int64_t best_step = saved.at("best_step").get<int64_t>();
      const int64_t since_best = meta::evaluations_since_best(curve, best_step);
      MT_CHECK(c.train.patience > since_best,
               "--resume: {} {} at step {}: its last {} evaluation(s) did not improve on step "
               "{}'s validation score, so train.patience {} stops it at once; to train it "
               "further, raise train.patience above {} or turn early stopping off: --set "
               "train.patience=0",
               run_dir, saved.value("stopped_early", false) ? "stopped early" : "finished", at,
               since_best, best_step, c.train.patience, since_best);
    }
    MT_CHECK(c.train.steps >= at,
             "--resume: the training state of {} is at step {}, past train.steps ({}); set "
             "train.steps to at least {}",
             run_dir, at, c.train.steps, at);
  } else {
    lock = prepare_run_folder(run_dir, overwrite);
  }
  f->to(device);
  if (device.is_cpu() && c.train.steps > 0 && f->module() != nullptr) cli::note_if_busy("training");
  std::ofstream metrics;
  auto open_metrics = [&](std::ios::openmode mode) {
    metrics.open(run_dir + "/metrics.jsonl", mode);
    MT_CHECK(metrics.good(), "{}/metrics.jsonl: cannot write", run_dir);
  };
  if (resume) {
    // The run's files change only once train() has read, checked and restored the whole state.
    state.on_restored = [&](const json& saved, const io::SafetensorsContents& tensors) {
      remove_results(run_dir);
      restore_run_files(run_dir, saved, tensors, config);
      cli::write_file_atomic(run_dir + "/config.json", config.dump(2) + "\n");
      open_metrics(std::ios::app);
      std::fprintf(stderr, "resuming %s from step %lld (%s) to step %lld\n", run_dir.c_str(),
                   (long long)saved.at("step").get<int64_t>(),
                   saved.value("evaluated", true) ? "its last evaluation point" : "where it stopped",
                   (long long)c.train.steps);
      const int threads_then = saved.value("threads", 0), threads_now = omp_get_max_threads();
      if (f->device().is_cpu() && threads_then > 0 && threads_then != threads_now)
        std::fprintf(stderr, "note: the run was trained with %d CPU threads and continues with "
                             "%d: parallel sums are split otherwise, so the continuation differs "
                             "from the run that did not stop in the last bits (--set threads=%d "
                             "continues it bitwise)\n",
                     threads_then, threads_now, threads_then);
      const std::string trained_on = saved.value("device", std::string("cpu"));
      if (trained_on != f->device().str())
        std::fprintf(stderr, "note: the run was trained on %s and continues on %s: the "
                             "continuation is not bitwise what %s would have computed\n",
                     trained_on.c_str(), f->device().str().c_str(), trained_on.c_str());
    };
  } else {
    cli::write_file_atomic(run_dir + "/config.json", config.dump(2) + "\n");
    open_metrics(std::ios::trunc);
  }
  const std::string model_path = run_dir + "/model.safetensors";
  auto on_eval = [&](const meta::EvalPoint& p) {
    metrics << metrics_line(p).dump() << "\n";
    metrics.flush();
    // A line lost (a full disk) would leave the curve short without a word: stop here; --resume
    // continues from the state of the last evaluation point and rewrites the file whole.
    MT_CHECK(metrics.good(),
             "{}/metrics.jsonl: writing the evaluation of step {} failed (disk full?); free some "
             "space and continue with metatape train --run {} --resume",
             run_dir, p.step, run_dir);
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
  state.stop_after = stop_requested;
  // Held until summary.json is written: a stop asked for after the last step lets the run end.
  StopOnSignal stop_on_signal;
  meta::TrainResult r = meta::train(*f, prepared, {}, c.train, {}, on_eval, on_best, state);
  training_done.store(true);
  if (stop_signal.load() != 0)
    std::fprintf(stderr, "note: the last step was done when the stop came: finishing the run "
                         "(its test evaluation and summary)\n");
  const Evaluation test = evaluate_run(c, *f, prepared, data::Split::Test);
  print_metrics(("test split (best validation checkpoint, " + test.procedure + "):").c_str(),
                test.metrics, c.data.prep.zscore);
  std::printf("best validation score %.4f at step %lld%s%s; %.1f s of steps + %.1f s of "
              "validation; peak %.1f MiB\n",
              r.best_score, (long long)r.best_step,
              c.train.method == "standard" ? "" : " (after the inner loop)",
              r.stopped_early
                  ? fmt::format(" (stopped early at step {} of {})", r.last_step, c.train.steps).c_str()
                  : "",
              r.seconds,
              r.eval_seconds, double(r.peak_bytes) / (1 << 20));
  if (r.best_step == 0 && c.train.steps > 0 && has_parameters)
    std::printf("note: no step improved the validation score of the initial model; the saved "
                "model is that initial model (lower %s, now %g%s, or train longer%s)\n",
                c.train.method == "standard" ? "train.lr" : "train.meta.lr",
                c.train.method == "standard" ? c.train.lr : c.train.meta.lr,
                c.train.method == "standard"
                    ? ""
                    : fmt::format(", or train.meta.inner_lr, now {}", c.train.meta.inner_lr).c_str(),
                r.stopped_early ? ": raise train.patience" : "");
  json summary = {{"train", r.to_json()},
                  {"test", test.metrics.to_json()},
                  {"test_procedure", test.procedure},
                  {"method", c.train.method},
                  {"kind", f->kind()}};
  cli::write_file_atomic(run_dir + "/summary.json", summary.dump(2) + "\n");
  return summary;
}

// Rebuilds the model of a run folder and loads its weights.
struct Run {
  cli::RunConfig config;
  json config_json;
  // The sessions the model was trained on and their neuron counts (config.json 'sessions').
  std::vector<std::string> trained_on;
  std::vector<int64_t> trained_sizes;
  std::vector<std::string> trained_crc32;  // "" where config.json has none (older runs)
};
// The run folder's lock as a reader (eval, predict, online): no training, adapt or online
// --label replaces the run's files meanwhile. Only in a folder that holds a run: elsewhere
// read_run says what is missing, and no lock file is left behind.
std::unique_ptr<cli::FolderLock> lock_to_read(const std::string& run_dir) {
  if (!fs::is_regular_file(run_dir + "/config.json")) return nullptr;
  return std::make_unique<cli::FolderLock>(run_dir, ".train.lock", "--run",
                                           "metatape train, adapt or online", /*reader=*/true);
}

Run read_run(const std::string& run_dir, bool note_unfinished = true) {
  const std::string path = run_dir + "/config.json";
  json j = cli::read_json_file(path);
  Run run;
  if (j.contains("sessions")) {
    const json& sessions = j["sessions"];
    MT_CHECK(sessions.is_array(), "{}: 'sessions' must be the list train wrote", path);
    for (const auto& s : sessions) {
      MT_CHECK(s.is_object() && s.contains("name") && s["name"].is_string() &&
                   s.contains("neurons") && s["neurons"].is_number_integer(),
               "{}: each entry of 'sessions' needs a name and a neuron count (as train wrote "
               "them); restore the file", path);
      run.trained_on.push_back(s["name"].get<std::string>());
      run.trained_sizes.push_back(s["neurons"].get<int64_t>());
      run.trained_crc32.push_back(s.value("crc32", std::string()));
    }
  }
  j.erase("sessions");  // descriptive fields written by train
  j.erase("holdout_sessions");
  cli::fill_settings_of_older_runs(j);
  if (note_unfinished) note_if_unfinished(run_dir);
  try {
    run.config = cli::config_from_json(j);
  } catch (const Error& e) {
    std::string why = e.what();  // without the check's own " [file:line]"
    if (const size_t at = why.rfind(" ["); at != std::string::npos && why.back() == ']')
      why.erase(at);
    MT_FAIL("{} (in {}): the run's settings do not read; restore the file (train writes it), or "
            "train the run again",
            why, path);
  }
  run.config_json = j;
  return run;
}

// Where and how the recordings were read (data.path and the loaders' options): stored with an
// adapted model, so that predict can name what differs when a recording's CRC-32 does.
json recordings_read_with(const cli::RunConfig& c) {
  const json data = c.to_json().at("data");
  return {{"path", data.at("path")},
          {"npz", data.at("npz")},
          {"hdf5", data.at("hdf5")},
          {"csv", data.at("csv")}};
}

// The loader options of `read_with` (recordings_read_with's) that apply to the file `source`:
// {"npz": ...}, {"hdf5": ...} or {"csv": ...}; empty for synthetic sessions (no file). Two
// readings of one recording are compared by these alone (its folder may have moved).
json reader_options_for(const json& read_with, const std::string& source) {
  const std::string key = data::loader_name(source);
  if (key.empty() || !read_with.is_object() || !read_with.contains(key)) return json::object();
  return {{key, read_with.at(key)}};
}

// What a trained model needs unchanged: its architecture (model kind and resolved settings) and
// the preprocessing its inputs went through (data: split, fractions, block length, z-scoring).
// --set may change where and how recordings are read (data.path, data.holdout, the loaders'
// options, data.synthetic), the window stride, support split, fraction and seed, and the adapt /
// online / bench sections.
void check_model_settings_kept(const Run& run, const cli::RunConfig& c, const char* command) {
  auto kept = [](json j) {
    json data = j.at("data");
    for (const char* key : {"path", "holdout", "npz", "hdf5", "csv", "synthetic", "stride",
                            "support_split", "support_fraction", "seed"})
      data.erase(key);
    const json& model = j.at("model");
    return json{{"data", data},
                {"model",
                 {{"kind", model.at("kind")},
                  {"mlp_hidden", model.at("mlp_hidden")},
                  {"poco", model.at("resolved")}}}};
  };
  const std::string differs =
      cli::describe_identity_difference(kept(run.config.to_json()), kept(c.to_json()));
  MT_CHECK(differs.empty(),
           "{}: {}; the model was trained with the run's model and preprocessing settings, and "
           "its inputs must be prepared as they were: drop that --set (data.path, data.holdout, "
           "how files are read, data.stride, data.support_split, data.support_fraction, "
           "data.seed and data.synthetic may change)",
           command, differs);
}

constexpr const char* kConfigPathCause =
    "a relative data.path is taken from the current folder, not from the config file's";

// A data.path that does not exist, said before any loader runs, naming where it came from
// (`source`: a run's config.json, a --config file), the likely `cause` and the fix.
void check_data_path(const cli::RunConfig& c, const std::vector<std::string>& sets,
                     const char* command, const std::string& source, const char* cause) {
  if (c.data.path.empty() || fs::exists(c.data.path)) return;
  if (fs::path(c.data.path).is_absolute() && cause == kConfigPathCause)
    cause = "the recordings are not there (moved, or a typo)";
  const bool overridden = std::any_of(sets.begin(), sets.end(), [](const std::string& x) {
    return x.rfind("data.path=", 0) == 0;
  });
  const std::string relative =
      fs::path(c.data.path).is_absolute()
          ? std::string()
          : fmt::format(" (relative to the current folder, {})", fs::current_path().string());
  if (overridden || source.empty())
    MT_FAIL("{}: --set data.path: '{}' does not exist{}; give the folder or file holding the "
            "recordings",
            command, c.data.path, relative);
  MT_FAIL("{}: data.path '{}' in {} does not exist{}: {}; pass --set data.path=\"<the "
          "recordings' folder or file>\" to read them where they are",
          command, c.data.path, source, relative, cause);
}

// A run's data.path that does not exist: the recordings moved, or the path is relative (as
// --set gives it, or as an earlier metatape recorded it) and is taken from another folder than
// the one the run was trained in. Then the path is made absolute, as recorded with adapted
// models.
void resolve_run_data_path(const std::string& run_dir, cli::RunConfig& c,
                           const std::vector<std::string>& sets, const char* command) {
  check_data_path(c, sets, command, run_dir + "/config.json",
                  "the recordings have moved, or the run was trained in another folder");
  cli::make_data_path_absolute(c);
}

// Scores of a run are of the recordings it was trained on: the data's training sessions must be
// the run's (names) and, where config.json recorded their CRC-32, hold the same recordings.
// Sessions the run was not trained on (recordings added to the folder since, e.g. a new animal
// adapted with --set data.holdout) are left out of `train`, with a note. Without
// `compare_recordings` (data regenerated on purpose), only the names are checked.
void check_same_recordings(const Run& run, data::Dataset& train, const std::string& run_dir,
                           const cli::RunConfig& now, bool compare_recordings = true) {
  if (run.trained_on.empty()) return;
  std::vector<std::string> others;
  std::erase_if(train.sessions, [&](const data::Session& s) {
    const bool other =
        std::find(run.trained_on.begin(), run.trained_on.end(), s.name) == run.trained_on.end();
    if (other) others.push_back(s.name);
    return other;
  });
  if (!others.empty())
    std::fprintf(stderr, "note: left out %zu session(s) the run was not trained on: %s\n",
                 others.size(), fmt::format("{}", fmt::join(others, ", ")).c_str());
  MT_CHECK(train.names() == run.trained_on,
           "{}: the data's training sessions ({}) are not those the run was trained on ({}, in "
           "{}/config.json); check data.path and data.holdout",
           run_dir, fmt::join(train.names(), ", "), fmt::join(run.trained_on, ", "), run_dir);
  if (!compare_recordings) return;
  for (size_t i = 0; i < train.sessions.size(); ++i) {
    const std::string& recorded = run.trained_crc32[i];
    if (recorded.empty()) continue;
    const std::string crc = cli::recording_crc32(train.sessions[i]);
    if (crc == recorded) continue;
    // Read with other options of its loader (--set data.csv.*, ...): the likelier cause.
    const std::string& source = train.sessions[i].source;
    const std::string read_differs = cli::describe_identity_difference(
        {{"data", reader_options_for(recordings_read_with(run.config), source)}},
        {{"data", reader_options_for(recordings_read_with(now), source)}});
    MT_CHECK(read_differs.empty(),
             "{}: the recording of session '{}' ({}) is read otherwise than when the run was "
             "trained: {}; read it as then (drop that --set)",
             run_dir, train.sessions[i].name, train.sessions[i].source, read_differs);
    MT_FAIL("{}: the recording of session '{}' ({}) is not the one the run was trained on "
            "(CRC-32 {} now, {} in {}/config.json): the scores would be of other data; restore "
            "the recording, or train a new run on it",
            run_dir, train.sessions[i].name, train.sessions[i].source, crc, recorded, run_dir);
  }
}

// Every held-out session must be new to the run's model (`trained_on`, config.json 'sessions'):
// an error naming the first that is not, `command` and `why` completing it.
void check_holdout_is_new(const std::vector<std::string>& trained_on,
                          const data::Dataset& holdout, const std::string& run_dir,
                          const char* command, const char* why) {
  for (const auto& name : holdout.names())
    MT_CHECK(std::find(trained_on.begin(), trained_on.end(), name) == trained_on.end(),
             "{}: data.holdout names '{}', a session the model was trained on ({}/config.json "
             "'sessions'); {}",
             command, name, run_dir, why);
}

// ---- adapt ----
// One adaptation's folder, {run}/adapt/<label>/, written by adapt or by online (`command`): its
// files go into a work folder (.<label>.partial) that takes the adaptation's place once complete
// (put_in_place) and is removed if it never does. The caller holds the run's .train.lock (one
// writer of the run folder at a time) from before it reads the model until this is done.
class AdaptationFolder {
 public:
  AdaptationFolder(const std::string& run_dir, const std::string& label, bool label_given,
                   std::vector<std::string> sessions, const char* command)
      : label_(label) {
    top_ = adaptations_dir(run_dir);
    const std::string& top = top_;
    MT_CHECK(!fs::exists(top) || fs::is_directory(top),
             "{}: {} is not a folder: adaptations are kept there; move that file away", command,
             top);
    created_top_ = cli::make_folder(top, command);
    for (const auto& restored : cli::tidy_adaptations(run_dir))
      std::printf("note: put back the adaptation '%s', which an adapt stopped while replacing "
                  "it had left aside\n",
                  restored.c_str());
    if (const std::string moved = cli::move_earlier_adaptation(run_dir); !moved.empty())
      std::printf("note: moved the adaptation an earlier metatape wrote into %s (adapt.json and "
                  "its models) to %s/%s/\n",
                  run_dir.c_str(), top.c_str(), moved.c_str());
    dir_ = top + "/" + label;
    partial_ = top + "/." + label + ".partial";
    // Only an adaptation is replaced: a user's file or folder of that name is left alone.
    MT_CHECK(!fs::exists(dir_) || (fs::is_directory(dir_) && fs::exists(dir_ + "/adapt.json")),
             "{}: {} is there and is not an adaptation (no adapt.json in it); {}", command, dir_,
             label_given ? "give another --label, or move it away"
                         : "name this adaptation with --label NAME");
    if (fs::exists(dir_)) {
      // adapt's fine-tuned models and online's kept ones are not replaced by the other command.
      json then;
      try {
        then = cli::read_json_file(dir_ + "/adapt.json");
      } catch (const std::exception&) {
        // unreadable: who made it is read off its models' names
      }
      std::string made_by = command;
      if (!then.is_object()) {
        bool online_models = false, adapt_models = false;
        std::error_code ec;
        for (const auto& entry : fs::directory_iterator(dir_, ec)) {
          const std::string name = entry.path().filename().string();
          if (name.rfind("adapted_online_", 0) == 0) online_models = true;
          else if (name.rfind("adapted_", 0) == 0) adapt_models = true;
        }
        if (online_models != adapt_models) made_by = online_models ? "online" : "adapt";
      } else
        made_by = then.contains("made_by") && then["made_by"].is_string()
                      ? then["made_by"].get<std::string>()
                      : std::string("adapt");
      if (made_by != command) {
        std::vector<std::string> methods;
        if (then.contains("methods") && then["methods"].is_array())
          for (const auto& m : then["methods"])
            if (m.is_object() && m.contains("method")) methods.push_back(m["method"].dump());
        MT_FAIL("{}: {} holds an adaptation made by metatape {}{}; {} would replace it: give "
                "another --label, or remove that folder first",
                command, dir_, made_by,
                methods.empty() ? "" : fmt::format(" (methods {})", fmt::join(methods, ", ")),
                command);
      }
    }
    if (!label_given && fs::exists(dir_)) {
      // The same default name for other sessions (a session name holding '+').
      std::vector<std::string> then;
      for (const auto& a : cli::find_adaptations(run_dir))
        if (a.label == label) then = a.sessions;
      std::sort(sessions.begin(), sessions.end());
      std::sort(then.begin(), then.end());
      MT_CHECK(then.empty() || then == sessions,
               "{}: the adaptation {}/ is of the sessions {}, this one of {}: they would share "
               "the name '{}'; name this one with --label NAME",
               command, dir_, fmt::join(then, ", "), fmt::join(sessions, ", "), label);
    }
  }
  ~AdaptationFolder() {
    std::error_code ignored;
    if (!done_ && created_) fs::remove_all(partial_, ignored);
    if (!done_ && created_top_) fs::remove(top_, ignored);  // only if still empty
  }
  AdaptationFolder(const AdaptationFolder&) = delete;
  AdaptationFolder& operator=(const AdaptationFolder&) = delete;

  const std::string& dir() const { return dir_; }
  // The work folder, made on first use: the adaptation's model files go there.
  const std::string& partial() {
    if (!created_) fs::create_directories(partial_);
    created_ = true;
    return partial_;
  }
  // Writes adapt.json into the work folder and puts it in place of {run}/adapt/<label>/.
  void put_in_place(const json& adapt) {
    cli::write_file_atomic(partial() + "/adapt.json", adapt.dump(2) + "\n");
    const bool replaces = fs::exists(dir_);
    cli::replace_folder(partial_, dir_);
    done_ = true;
    std::printf("adaptation '%s' written to %s/%s\n", label_.c_str(), dir_.c_str(),
                replaces ? " (replacing the earlier one of that name)" : "");
  }

 private:
  std::string label_, top_, dir_, partial_;
  bool created_ = false, created_top_ = false, done_ = false;
};

// Adapts the run's model to the held-out sessions: AdamW fine-tuning per adapt.modes and, for a
// meta-learned run, the inner loop it was meta-learned for. `trained_on` / `trained_sizes`: the
// training sessions (names, neuron counts) of the run.
// `given_label`: adapt's --label, the adaptation's folder under <run>/adapt/ (empty: the default
// name of the held-out sessions, default_adaptation_label).
json run_adapt(const cli::RunConfig& c, const std::string& run_dir, const Data& d, Device device,
               const std::vector<std::string>& trained_on,
               const std::vector<int64_t>& trained_sizes, bool overridden = false,
               const std::string& given_label = "", const std::string& run_data_path = "",
               const std::vector<std::string>& sets = {}, const json* run_config_read = nullptr) {
  MT_CHECK(!d.holdout.empty(),
           "adapt: no held-out sessions: data.holdout is empty, and adaptation is to sessions "
           "the training never saw; put the new recordings beside the others (or point --set "
           "data.path at them) and name them with --set 'data.holdout=[\"<session>\"]', or "
           "train a run that holds sessions out (data.holdout)");
  const std::string label =
      given_label.empty() ? cli::default_adaptation_label(d.holdout.names()) : given_label;
  cli::check_adaptation_label(label, /*given=*/!given_label.empty());
  MT_CHECK(!trained_sizes.empty(),
           "adapt: {}/config.json lists no training sessions ('sessions', written by train); "
           "restore the file",
           run_dir);
  check_holdout_is_new(trained_on, d.holdout, run_dir, "adapt",
                       "adaptation is to sessions the training never saw");
  data::PreparedData prepared(d.holdout, c.data.prep);
  const bool inner_row = c.train.method != "standard" && c.model.kind == "poco";
  if (inner_row)
    std::printf("note: this run was meta-learned (%s): the row inner-loop is the procedure it was "
                "meta-learned for (SGD at train.meta.inner_lr on train.meta.params for "
                "adapt.train.steps steps); the finetune rows use AdamW (adapt.train, "
                "adapt.lr_by_mode)\n",
                c.train.method.c_str());
  // One writer of the run folder at a time (train, resume, adapt): taken before the model is
  // read, so the model and its CRC-32 below are of the same file.
  const cli::FolderLock lock(run_dir, ".train.lock", "--run", "metatape train, adapt or online");
  // The run's config.json was read before the lock: a training that replaced the run meanwhile
  // would pair it with another model.
  if (run_config_read != nullptr) {
    const Run now = read_run(run_dir, /*note_unfinished=*/false);
    MT_CHECK(now.config_json == *run_config_read && now.trained_on == trained_on &&
                 now.trained_sizes == trained_sizes,
             "adapt: {}/config.json changed while adapt started (a training replaced the run); "
             "nothing was written: run adapt again",
             run_dir);
  }
  AdaptationFolder folder(run_dir, label, !given_label.empty(), d.holdout.names(), "adapt");
  const std::string& dir = folder.dir();
  // The trained model, with its own session tables: every adapted model starts from its weights,
  // the held-out sessions' embedding rows set by adapt.new_session_init.
  Generator g_trained(0);
  auto trained = meta::make_forecaster(c.model, trained_sizes, g_trained);
  load_run_model(*trained, run_dir, /*new_sessions=*/false, overridden);
  // (A model without parameters, copy_last, has no file.) The CRC-32 the checkpoint records.
  const std::string model_crc32 =
      trained->module() != nullptr ? cli::checkpoint_data_crc32(run_dir + "/model.safetensors")
                                   : "";
  const meta::NewSessionInit init = meta::parse_new_session_init(c.adapt.new_session_init);
  auto transferred = [&] {
    Generator gen(c.adapt.train.seed);
    auto f = meta::make_forecaster(c.model, sizes_of(d.holdout), gen);
    meta::transfer_to_new_sessions(*trained, *f, init);
    f->to(device);
    return f;
  };
  // The fine-tuning modes name parts of POCO. A baseline (nlinear, mlp) has no such parts: each
  // mode fine-tunes all of it, at the mode's own step size. copy_last has nothing to fine-tune:
  // its row is the reference alone.
  std::vector<std::string> modes = c.adapt.modes;
  if (trained->module() == nullptr) {
    modes.clear();
    std::fprintf(stderr, "note: the %s model has no parameters: the table holds its scores alone\n",
                 c.model.kind.c_str());
  } else if (c.model.kind != "poco" && modes != std::vector<std::string>{"all"}) {
    std::fprintf(stderr,
                 "note: the %s model has no embedding tables: each mode fine-tunes all of its "
                 "parameters, at the mode's step size (adapt.lr_by_mode)\n",
                 c.model.kind.c_str());
  }
  {  // every mode runs: check them all before the first, on one model of the held-out sizes
    Generator gen(c.adapt.train.seed);
    const auto probe = meta::make_forecaster(c.model, sizes_of(d.holdout), gen);
    for (const auto& mode : modes) {
      meta::TrainOptions t = c.adapt.train;
      if (c.model.kind == "poco") t.trainable = meta::finetune_prefixes(mode);
      meta::check_training(*probe, prepared, {}, t, "adapt.train");
    }
  }
  // This adaptation is written into a work folder and takes its place once complete.
  const std::string partial = folder.partial();
  // An adapted model's metadata: what predict needs to rebuild it (its session tables are the
  // held-out sessions', with their recordings' CRC-32) and how it was adapted.
  const json holdout_sessions = session_json(d.holdout);  // CRC-32 of each recording, once
  const json read_with = recordings_read_with(c);
  auto adapted_metadata = [&](const std::string& method, const json& scores) {
    return json{{"adapted", {{"method", method},
                             {"sessions", holdout_sessions},
                             {"read_with", read_with},
                             {"new_session_init", c.adapt.new_session_init},
                             {"scores", scores}}}};
  };
  json results = json::array();
  double copy_last_score = NAN;  // the reference every adapted model should beat
  int64_t improved = 0;  // saved models whose best validation point is past step 0
  if (device.is_cpu() && trained->module() != nullptr) cli::note_if_busy("adaptation");
  if (!modes.empty()) cli::note_unused_adapt_lr(c, modes);
  std::printf("\nadaptation to %lld unseen session%s (%s)\n", (long long)d.holdout.size(),
              d.holdout.size() == 1 ? "" : "s",
              fmt::format("{}", fmt::join(d.holdout.names(), ", ")).c_str());
  // Validation scores choose the kept model; the test split is left for these two readouts:
  // test@0, the transferred starting point (what adaptation has to beat), and test@best, the
  // kept model (at the best validation point). copy_last's row: its own score in both, 0 by the
  // score's definition.
  std::printf("  %-24s %10s %12s %12s %10s %9s %9s %10s %10s\n", "method", "params",
              "steps_to_95", "val_final", "val_best", "test@0", "test@best", "seconds",
              "peak_MiB");
  auto test_score = [&](const meta::Forecaster& f) {
    return meta::evaluate(f, prepared, data::Split::Test, {}, c.adapt.train.eval_batch_size).score;
  };
  // `f` holds the kept model (train() leaves the best validation parameters in it).
  auto row = [&](const std::string& name, const meta::TrainResult& r, double test_initial,
                 const meta::Forecaster& f) {
    const double test_at_best = test_score(f);
    std::printf("  %-24s %10lld %12lld %12.4f %10.4f %9.4f %9.4f %10.2f %10.1f\n", name.c_str(),
                (long long)r.trainable_parameters, (long long)r.steps_to_95,
                r.curve.back().val.score, r.best_score, test_initial, test_at_best, r.seconds,
                double(r.peak_bytes) / (1 << 20));
    std::fflush(stdout);
    json j = r.to_json();
    j["method"] = name;
    j["test_score_initial"] = test_initial;
    j["test_score_at_best"] = test_at_best;
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
    const meta::TrainResult r = meta::train(*f, prepared, {}, none);
    copy_last_score = r.best_score;
    row("copy_last", r, test_score(*f), *f);
  }
  // The transferred model's test score: where every fine-tuning mode and the inner loop start.
  const double test_initial = test_score(*transferred());
  meta::ResumeOptions stoppable;  // Ctrl-C: stop after the current step (AdaptationStopped)
  stoppable.stop_after = stop_requested;
  for (const auto& mode : modes) {
    auto f = transferred();
    meta::TrainOptions t = c.adapt.train;
    if (f->kind() == "poco") t.trainable = meta::finetune_prefixes(mode);
    if (auto it = c.adapt.lr_by_mode.find(mode); it != c.adapt.lr_by_mode.end()) t.lr = it->second;
    t.progress_label = "  finetune:" + mode + ": ";  // under the table's rows
    meta::TrainResult r;
    try {
      r = meta::train(*f, prepared, {}, t, {}, {}, {}, stoppable);
    } catch (const meta::TrainingStopped&) {
      throw AdaptationStopped();
    } catch (const meta::TrainingDiverged& e) {
      // One mode's step size is too large: the others still run; this one has no model.
      const std::string key = c.adapt.lr_by_mode.count(mode) ? "adapt.lr_by_mode." + mode
                                                             : std::string("adapt.train.lr");
      std::printf("  %-24s DIVERGED: the %s became %g at step %lld; lower %s (now %g)\n",
                  ("finetune:" + mode).c_str(), e.quantity.c_str(), e.value, (long long)e.step,
                  key.c_str(), t.lr);
      std::fflush(stdout);
      results.push_back({{"method", "finetune:" + mode},
                         {"diverged_at", e.step},
                         {"lr", t.lr},
                         {"lr_key", key}});
      continue;
    }
    row("finetune:" + mode, r, test_initial, *f);
    results.back()["lr"] = t.lr;  // the step size this mode took, and the key that set it
    results.back()["lr_key"] = c.adapt.lr_by_mode.count(mode) ? "adapt.lr_by_mode." + mode
                                                               : std::string("adapt.train.lr");
    improved += r.best_step > 0 ? 1 : 0;
    if (f->module() != nullptr) {
      // train() left the best validation parameters in the model.
      const std::string file = fmt::format("adapted_{}.safetensors", mode);
      save_adapted_model(partial + "/" + file, *f, nullptr,
                         adapted_metadata("finetune:" + mode,
                                          {{"best_val_score", r.best_score},
                                           {"best_step", r.best_step}}));
      results.back()["model"] = file;
    }
  }
  if (inner_row) {
    auto f = transferred();
    meta::AdaptOptions a;
    a.procedure = "inner";
    a.params = c.train.meta.params;
    a.steps = c.adapt.train.steps;
    a.lr = c.train.meta.inner_lr;
    a.backbone_lr = c.bench.inner_backbone_lr;
    a.batch_size = c.adapt.train.batch_size;
    a.eval_every = c.adapt.train.eval_every;
    // Also after each of the steps the inner loop was meta-learned for: its model may be best
    // there.
    for (int64_t k = 1; k <= c.train.meta.inner_steps; ++k) a.eval_steps.push_back(k);
    a.eval_batch_size = c.adapt.train.eval_batch_size;
    a.seed = c.adapt.train.seed;
    std::vector<meta::AdaptResult> per_session;
    json models = json::object();
    for (int64_t s = 0; s < prepared.num_sessions(); ++s) {
      if (stop_signal.load() != 0) throw AdaptationStopped();
      if (c.adapt.train.log_progress)
        std::fprintf(stderr, "inner-loop: session %lld of %lld (%s), %lld steps\n",
                     (long long)s + 1, (long long)prepared.num_sessions(),
                     prepared.session(s).name.c_str(), (long long)a.steps);
      nn::ParamMap adapted;
      per_session.push_back(meta::adapt_session(*f, prepared, s, a, &adapted));
      const meta::AdaptResult& r = per_session.back();
      if (r.diverged_at >= 0) continue;  // no model: its scores are NaN
      improved += r.best_step > 0 ? 1 : 0;
      // Per session: the inner loop adapts each session from the same starting point.
      const std::string file = fmt::format("adapted_inner-loop_{}.safetensors", r.session);
      // The values at the session's best validation point, as a fine-tuning mode saves.
      json metadata = adapted_metadata("inner-loop", {{"best_val_score", r.best_score},
                                                      {"best_step", r.best_step},
                                                      {"test_score", r.test_score_at_best}});
      metadata["adapted"]["session"] = r.session;
      save_adapted_model(partial + "/" + file, *f, &adapted, metadata);
      models[r.session] = file;
    }
    const meta::AdaptSummary m = meta::summarize_adaptation(per_session);
    // Each session's model is kept at its own best validation point: their mean score.
    const double best = m.best_score;
    std::printf("  %-24s %10lld %12lld %12.4f %10.4f %9.4f %9.4f %10.2f %10.1f%s\n",
                "inner-loop", (long long)m.adapted_parameters, (long long)m.steps_to_95,
                m.final_score, best, m.test_score_initial, m.test_score_at_best, m.seconds,
                double(m.peak_bytes) / (1 << 20),
                m.diverged_sessions ? "  (diverged: lower train.meta.inner_lr)" : "");
    json curve = json::array();
    for (const auto& [step, v] : m.mean_curve) curve.push_back({{"step", step}, {"val_score", v}});
    json sessions = json::array();
    for (const auto& r : per_session) sessions.push_back(r.to_json());
    results.push_back({{"method", "inner-loop"},
                       {"trainable_parameters", m.adapted_parameters},
                       {"steps_to_95", m.steps_to_95},
                       {"steps_to_95_gain", m.steps_to_95_gain},
                       {"initial_score", m.initial_score},
                       {"final_score", m.final_score},
                       // Means over sessions of each session's best validation score and
                       // the test score there: the saved models' (each session's model is
                       // kept at its best point); test_score is after the last step.
                       {"best_score", best},
                       {"test_score", m.test_score},
                       {"test_score_initial", m.test_score_initial},
                       {"test_score_at_best", m.test_score_at_best},
                       {"seconds", m.seconds},
                       {"peak_bytes", m.peak_bytes},
                       {"diverged_sessions", m.diverged_sessions},
                       {"inner_lr", a.lr},
                       {"new_session_init", c.adapt.new_session_init},
                       {"mean_curve", curve},
                       {"sessions", sessions},
                       {"models", models}});
  }
  std::printf("  (val_*: validation split, after the last step and at the best point, where the "
              "model is kept; steps_to_95: the first evaluated step from which the validation "
              "score stays at or above 95%% of val_final, -1 when val_final is not positive; "
              "test@0: the starting point, test@best: the kept model, on the test split; "
              "seconds: the adaptation steps alone, validation excluded%s)\n",
              inner_row ? "; the inner loop's, a mean per session" : "");
  // The method predict uses by default: the best validation score of the saved models (each
  // saved at its best validation point; the inner loop's per session, so its mean of bests is
  // the score of its models, each chosen on its own session). An inner loop that diverged on a
  // session has no model for it and is not chosen.
  std::string best_method;
  double best_final = -INFINITY;
  for (const auto& m : results) {
    if (!m.contains("model") && !m.contains("models")) continue;
    if (m.value("diverged_sessions", int64_t(0)) > 0) continue;
    const json& v = m["best_score"];
    const double score = v.is_number() ? v.get<double>() : NAN;
    if (std::isfinite(score) && score > best_final) {
      best_final = score;
      best_method = m.at("method").get<std::string>();
    }
  }
  // Every mode diverged: nothing to keep, and an adaptation of this name stays as it was.
  size_t saved = 0, diverged = 0;
  for (const auto& m : results) {
    saved += m.contains("model") + (m.contains("models") ? m["models"].size() : 0);
    diverged += m.contains("diverged_at") + (m.value("diverged_sessions", int64_t(0)) > 0);
  }
  MT_CHECK(saved > 0 || diverged == 0,
           "adapt: every adaptation diverged (above: lower the step sizes they name); no model "
           "was saved{}",
           fs::exists(dir) ? fmt::format(", and the adaptation {}/ is kept as it was", dir) : "");
  json out = {{"label", label},
              // The trained model every adapted model started from: predict refuses them once
              // the run's model is another (trained again since).
              {"trained_model_crc32", model_crc32.empty() ? json() : json(model_crc32)},
              {"sessions", holdout_sessions},
              {"new_session_init", c.adapt.new_session_init},
              // its settings, for the command that makes it again (cli::readapt_command)
              {"adapt", c.to_json()["adapt"]},
              {"methods", results}};
  if (!best_method.empty()) {
    out["best_method"] = best_method;
    // predict needs --adapted where other adaptations cover one of these sessions too.
    bool shared = false;
    const std::vector<std::string> these = d.holdout.names();
    for (const auto& a : cli::find_adaptations(run_dir))
      for (const auto& name : a.sessions)
        shared = shared || (a.label != label &&
                            std::find(these.begin(), these.end(), name) != these.end());
    std::printf("best: %s (validation score %.4f); metatape predict%s uses its model by default\n",
                best_method.c_str(), best_final,
                shared ? (" --adapted " + cli::shell_quote(label)).c_str() : "");
    // Recordings read from elsewhere than the run's data.path (--set data.path): predict reads
    // the run's, so its command needs the same setting.
    auto normal = [](const std::string& p) {
      return p.empty() ? p : fs::absolute(p).lexically_normal().string();
    };
    if (!run_data_path.empty() && normal(run_data_path) != normal(c.data.path)) {
      // With the other data.* settings given here (how the files are read), as predict needs
      // them to read the recordings as adapt did.
      std::string reading;
      for (const std::string& s : sets)
        if (s.rfind("data.", 0) == 0 && s.rfind("data.path=", 0) != 0 &&
            s.rfind("data.holdout=", 0) != 0)
          reading += " --set " + cli::shell_quote(s);
      std::printf("these recordings are not in the run's data.path (%s): predict them with "
                  "metatape predict --run %s --session %s%s --set %s%s --out FILE.npz\n",
                  run_data_path.c_str(), cli::shell_quote(run_dir).c_str(),
                  cli::shell_quote(these.front()).c_str(),
                  shared ? (" --adapted " + cli::shell_quote(label)).c_str() : "",
                  cli::shell_quote("data.path=" + json(normal(c.data.path)).dump()).c_str(),
                  reading.c_str());
    }
    if (improved == 0 && c.adapt.train.steps > 0)
      std::fprintf(stderr,
                   "note: no adaptation step improved the validation score of any method: every "
                   "saved model is the transferred starting point (step 0, its best); try more "
                   "steps (adapt.train.steps) or another step size (adapt.lr_by_mode.<mode>, "
                   "adapt.train.lr for a mode it does not list%s)\n",
                   inner_row ? ", train.meta.inner_lr for the inner loop" : "");
    if (std::isfinite(copy_last_score) && best_final < copy_last_score)
      std::fprintf(stderr,
                   "note: every adapted model kept scores below the copy-last forecast on "
                   "validation (best %.4f, copy_last %.4f): its forecasts are worse than "
                   "repeating the last frame; try more adaptation steps (adapt.train.steps), "
                   "another step size (adapt.lr_by_mode.<mode>, adapt.train.lr for a mode it "
                   "does not list), or a model trained longer or on more sessions\n",
                   best_final, copy_last_score);
    // Validation chose the kept models; the test split says whether that choice carries over.
    double best_test = -INFINITY;
    for (const auto& m : results)
      if ((m.contains("model") || m.contains("models")) && m.contains("test_score_at_best") &&
          m["test_score_at_best"].is_number())
        best_test = std::max(best_test, m["test_score_at_best"].get<double>());
    // (1e-6: the inner loop's evaluation sums in another order than evaluate's.)
    if (std::isfinite(best_test) && best_test < test_initial - 1e-6)
      std::fprintf(stderr,
                   "note: on the test split every kept model scores below the starting point "
                   "(test@0 %.4f, the best test@best %.4f): the gains on the validation frames "
                   "that chose them did not carry over; see the curves in adapt.json before "
                   "relying on these models\n",
                   test_initial, best_test);
  }
  // A stop the training loops did not see (during the last step, the last inner-loop session
  // or the saving) still abandons the adaptation, as the handler said, up to this point.
  if (stop_signal.load() != 0) throw AdaptationStopped();
  folder.put_in_place(out);
  if (stop_signal.load() != 0)
    std::fprintf(stderr, "note: the stop came as the finished adaptation was being put in place: "
                         "it is kept\n");
  return out;
}

// ---- predict ----
// Forecasts of one session written as an .npz: a training session with the trained model, a
// held-out one with a model `adapt` saved (`method`, default adapt.json's best_method; `label`:
// the adaptation, needed only where several adapted the session). `split`:
// train / val / test (that split's windows), all (every window of the recording, one frame
// apart) or next (one forecast of the pred_length frames after the recording's last frame).
void run_predict(const std::string& run_dir, const std::string& session_name,
                 std::string method, const std::string& label, const std::string& split,
                 const std::string& out_path, const std::vector<std::string>& sets,
                 Device device) {
  MT_CHECK(split == "train" || split == "val" || split == "test" || split == "all" ||
               split == "next" || split == "unseen",
           "predict: --split {} is not known; use train, val, test, all, next or unseen", split);
  MT_CHECK(fs::path(out_path).extension() == ".npz",
           "predict: --out {}: the forecasts are written as a NumPy .npz archive; name the file "
           "*.npz",
           out_path);
  {
    const fs::path parent = fs::path(out_path).has_parent_path() ? fs::path(out_path).parent_path()
                                                                 : fs::path(".");
    MT_CHECK(fs::is_directory(parent), "predict: --out {}: folder {} does not exist; create it first",
             out_path, parent.string());
  }
  const auto reading = lock_to_read(run_dir);
  Run run = read_run(run_dir);
  cli::RunConfig c = sets.empty() ? run.config : cli::apply_overrides(run.config_json, sets);
  check_model_settings_kept(run, c, "predict");
  resolve_run_data_path(run_dir, c, sets, "predict");
  apply_threads(c);
  Data d = load_data(c, {.need_training = false, .need_holdout = false});
  const data::Session* session = nullptr;
  for (const auto* set : {&d.train, &d.holdout})
    for (const auto& s : set->sessions)
      if (s.name == session_name) session = &s;
  if (session == nullptr) {
    std::vector<std::string> names = d.train.names();
    for (const auto& n : d.holdout.names()) names.push_back(n);
    MT_FAIL("predict: no session '{}' in the data ({}); give one of these, or point data.path "
            "at its recording (--set data.path=...)",
            session_name, fmt::join(names, ", "));
  }

  // The model, with the session tables it was trained or adapted with, and the session's index.
  std::vector<int64_t> sizes;
  std::vector<std::string> names, crcs;
  std::string model_path;
  json read_with_then;  // how adapt read the recordings (adapted models)
  // A model online kept: the frames whose statistics z-scored its stream ([begin, end), or null:
  // not z-scored); absent for the others, whose sessions are z-scored with their training split.
  std::optional<json> stream_zscore_frames;
  // Its stream's frames [0, stream_end) and stride: the frames after them were held back
  // (online.unseen_frames), forecast by --split unseen as online scored them.
  int64_t stream_end = -1, stream_stride = 1;
  std::string redo_adapted = "adapt the run to it again";  // the fix for a stale adapted model
  const auto trained_at = std::find(run.trained_on.begin(), run.trained_on.end(), session_name);
  bool has_parameters = false;
  {
    Generator probe_gen(0);
    has_parameters = meta::make_forecaster(c.model, {session->num_neurons}, probe_gen)->module() !=
                     nullptr;
  }
  if (!has_parameters) {
    // copy_last: nothing was trained or adapted; its forecasts are the same for every session.
    method = c.model.kind;
    sizes = {session->num_neurons};
    names = {session_name};
    crcs = {""};
  } else if (trained_at != run.trained_on.end()) {
    MT_CHECK((method.empty() || method == "trained") && label.empty(),
             "predict: '{}' is a training session of {}: its forecasts come from the trained "
             "model; drop --method and --adapted (adapted models are of the held-out sessions)",
             session_name, run_dir);
    method = "trained";
    sizes = run.trained_sizes;
    names = run.trained_on;
    crcs = run.trained_crc32;
    model_path = run_dir + "/model.safetensors";
    if (c.train.method != "standard")
      std::fprintf(stderr, "note: %s was meta-learned (%s): these are the forecasts of its "
                           "initial weights, without the inner loop\n",
                   run_dir.c_str(), c.train.method.c_str());
  } else {
    // The adaptations of this session: exactly one, or the one --adapted names. An unreadable
    // adapt.json is skipped with a note unless it is the one named.
    const std::vector<Adaptation> all = cli::find_adaptations(run_dir);
    std::vector<std::string> labels, covering;
    for (const auto& a : all) {
      labels.push_back(a.label);
      if (!a.unreadable.empty() && a.label != label)
        std::fprintf(stderr, "note: skipped the adaptation '%s': %s\n", a.label.c_str(),
                     a.unreadable.c_str());
      if (std::find(a.sessions.begin(), a.sessions.end(), session_name) != a.sessions.end())
        covering.push_back(a.label);
    }
    const auto named = [&](const std::string& l) -> const Adaptation& {
      return *std::find_if(all.begin(), all.end(), [&](const Adaptation& a) { return a.label == l; });
    };
    const bool held_out_in_config =
        std::find(c.data.holdout.begin(), c.data.holdout.end(), session_name) !=
        c.data.holdout.end();
    const std::string how_to_adapt = cli::adapt_command(
        run_dir, "", held_out_in_config ? std::vector<std::string>{}
                                        : std::vector<std::string>{session_name});
    const std::string listed =
        labels.empty() ? std::string("it has none")
                       : fmt::format("its adaptations: {}{}", fmt::join(labels, ", "),
                                     std::find(labels.begin(), labels.end(), ".") != labels.end()
                                         ? " ('.': the run folder itself, written by an earlier "
                                           "metatape)"
                                         : "");
    if (!label.empty()) {
      const std::string where = label == "." ? run_dir + "/adapt.json"
                                             : adaptations_dir(run_dir) + "/" + label + "/adapt.json";
      MT_CHECK(std::find(labels.begin(), labels.end(), label) != labels.end(),
               "predict: --adapted {}: {} has no adaptation of that name (no {}); {}", label,
               run_dir, where, listed);
      const Adaptation& a = named(label);
      MT_CHECK(a.unreadable.empty(),
               "predict: --adapted {}: {}; adapt the run again under that name ({}), or remove "
               "its folder",
               label, a.unreadable, cli::readapt_command(run_dir, a));
      MT_CHECK(std::find(covering.begin(), covering.end(), label) != covering.end(),
               "predict: --adapted {} adapted the run to {}, not to '{}'; {}", label,
               fmt::join(a.sessions, ", "), session_name,
               covering.empty() ? "adapt the run to it first with " + how_to_adapt
                                : fmt::format("adaptations of '{}': {}", session_name,
                                              fmt::join(covering, ", ")));
      covering = {label};
    }
    MT_CHECK(!covering.empty(),
             "predict: '{}' is not a training session of {}, and no adaptation of the run covers "
             "it ({}): adapt it first with {}",
             session_name, run_dir, listed, how_to_adapt);
    MT_CHECK(covering.size() == 1,
             "predict: '{}' was adapted in {} adaptations of {} ({}); choose one with --adapted "
             "NAME",
             session_name, covering.size(), run_dir, fmt::join(covering, ", "));
    const Adaptation& chosen = named(covering[0]);
    const std::string adapt_path = chosen.dir + "/adapt.json";
    const std::string readapt = cli::readapt_command(run_dir, chosen);
    const json& adapt = chosen.adapt;
    // The fix for a stale adaptation: made again by the command that made it.
    const std::string again =
        (adapt.value("made_by", std::string()) == "online" ? "keep it again: "
                                                           : "adapt the run again: ") +
        readapt;
    // Adapted from the model the run holds now? (Recorded since adaptations have folders.)
    if (adapt.contains("trained_model_crc32") && adapt["trained_model_crc32"].is_string()) {
      const std::string then = adapt["trained_model_crc32"].get<std::string>(),
                        now = cli::checkpoint_data_crc32(run_dir + "/model.safetensors");
      MT_CHECK(then == now,
               "predict: the adaptation {} started from another model than {}/model.safetensors "
               "(CRC-32 {} then, {} now: the run was trained again since); {}",
               adapt_path, run_dir, then, now, again);
    }
    if (method.empty()) {
      MT_CHECK(adapt.contains("best_method") && adapt["best_method"].is_string(),
               "predict: {} names no best_method: it is from an earlier metatape, which saved "
               "no adapted models, or every adaptation diverged; {}",
               adapt_path, again);
      method = adapt["best_method"].get<std::string>();
    }
    std::vector<std::string> known;
    std::string file;
    for (const auto& m : adapt.value("methods", json::array())) {
      const std::string name = m.value("method", std::string());
      if (m.contains("model") || m.contains("models")) known.push_back(name);
      if (name != method) continue;
      if (m.contains("model")) file = m["model"].get<std::string>();
      if (m.contains("models") && m["models"].contains(session_name))
        file = m["models"][session_name].get<std::string>();
      MT_CHECK(!file.empty() || !m.contains("models"),
               "predict: {} has no {} model for session '{}' (its adaptation diverged, or the "
               "session was not held out then)",
               adapt_path, method, session_name);
    }
    MT_CHECK(!file.empty(), "predict: {} has no model of method '{}'; {}", adapt_path, method,
             known.empty() ? fmt::format("it has none ({})", again)
                           : fmt::format("its methods with a model: {}", fmt::join(known, ", ")));
    model_path = chosen.dir + "/" + file;
    MT_CHECK(fs::exists(model_path), "predict: {} is missing ({} names it); {}", model_path,
             adapt_path, again);
    const json meta = io::read_checkpoint_metadata(model_path);
    MT_CHECK(meta.is_object() && meta.contains("adapted") && meta["adapted"].contains("sessions"),
             "predict: {} is not an adapted model written by metatape adapt or online",
             model_path);
    if (meta["adapted"].contains("read_with"))
      read_with_then = meta["adapted"]["read_with"];
    if (meta["adapted"].contains("zscore_frames")) {
      stream_zscore_frames = meta["adapted"]["zscore_frames"];
      redo_adapted = again;  // kept by online --label
      const json& adapted = meta["adapted"];
      const json frames = adapted.value("stream_frames", json());
      const json stride = adapted.contains("online") && adapted["online"].is_object()
                              ? adapted["online"].value("stride", json())
                              : json();
      MT_CHECK(frames.is_array() && frames.size() == 2 && frames[1].is_number_integer() &&
                   stride.is_number_integer() && stride.get<int64_t>() > 0,
               "predict: {}: its stream_frames or online.stride are missing or not frame counts; "
               "{}",
               model_path, again);
      stream_end = frames[1].get<int64_t>();
      stream_stride = stride.get<int64_t>();
    }
    for (const auto& s : meta["adapted"]["sessions"]) {
      names.push_back(s.at("name").get<std::string>());
      sizes.push_back(s.at("neurons").get<int64_t>());
      crcs.push_back(s.value("crc32", std::string()));
    }
    MT_CHECK(std::find(names.begin(), names.end(), session_name) != names.end(),
             "predict: {} was adapted to {}, not to '{}': adapt the run to it first with {}",
             model_path, fmt::join(names, ", "), session_name,
             cli::adapt_command(run_dir, "", {session_name}));
  }
  const size_t index = size_t(std::find(names.begin(), names.end(), session_name) - names.begin());
  MT_CHECK(sizes[index] == session->num_neurons,
           "predict: session '{}' has {} neurons, but the model's table for it has {} ({}): the "
           "recording is read otherwise than when the model was {} (data.csv / data.hdf5 "
           "options?); read it as then, or {}",
           session_name, session->num_neurons, sizes[index], model_path,
           method == "trained" ? "trained" : "adapted",
           method == "trained" ? "train a new run on it" : redo_adapted);
  const std::string crc = cli::recording_crc32(*session);
  if (method == "trained") read_with_then = recordings_read_with(run.config);  // the run's own
  if (!crcs[index].empty() && crcs[index] != crc && read_with_then.is_object()) {
    // Read with other options of its loader than by adapt or train: name the setting, which is
    // the likelier cause (the folder itself may have moved).
    const std::string read_differs = cli::describe_identity_difference(
        {{"data", reader_options_for(read_with_then, session->source)}},
        {{"data", reader_options_for(recordings_read_with(c), session->source)}},
        method == "trained" ? "the run" : "the adapt");
    MT_CHECK(read_differs.empty(),
             "predict: the recording of session '{}' ({}) is read otherwise than when {} was "
             "{}: {}; read it as then (--set), or {}",
             session_name, session->source, model_path,
             method == "trained" ? "trained" : "adapted", read_differs,
             method == "trained" ? "train a new run on it" : redo_adapted);
  }
  MT_CHECK(crcs[index].empty() || crcs[index] == crc,
           "predict: the recording of session '{}' ({}) is not the one {} was {} on (CRC-32 {} "
           "now, {} then); restore it, or {}",
           session_name, session->source, model_path,
           method == "trained" ? "trained" : "adapted", crc, crcs[index],
           method == "trained"    ? "train a new run on it"
           : stream_zscore_frames ? redo_adapted
                                  : "adapt the run to it again (metatape adapt)");
  Generator gen(0);
  auto f = meta::make_forecaster(c.model, sizes, gen);
  if (f->module() != nullptr) io::load_parameters(*f->module(), model_path);
  f->to(device);
  if (model_path.empty()) model_path = "(no parameters)";

  // The session alone, normalised as in training (its own train-split statistics), or as the
  // stream of an online-adapted model was (the statistics of the frames before its first scored
  // forecast).
  data::Dataset one;
  one.sessions.push_back(*session);
  data::PrepConfig prep = c.data.prep;
  std::optional<data::NormStats> stream_stats;
  if (stream_zscore_frames) {
    const json& z = *stream_zscore_frames;
    if (z.is_array()) {
      MT_CHECK(z.size() == 2 && z[0].is_number_integer() && z[1].is_number_integer() &&
                   z[0].get<int64_t>() >= 0 && z[0].get<int64_t>() < z[1].get<int64_t>() &&
                   z[1].get<int64_t>() <= session->num_frames,
               "predict: {}: zscore_frames {} are not frames of session '{}' ({} frames); keep "
               "the model again (metatape online --label)",
               model_path, z.dump(), session_name, session->num_frames);
      stream_stats = data::compute_stats(*session, {{z[0].get<int64_t>(), z[1].get<int64_t>()}});
      data::apply_zscore(one.sessions[0], *stream_stats);
    }
    prep.zscore = false;  // done here (or not at all, as online did)
  }
  const data::PreparedData prepared(std::move(one), prep);
  const data::WindowConfig& w = c.data.prep.window;
  const int64_t L = w.context_length(), H = w.pred_length, N = session->num_neurons,
                T = session->num_frames;
  std::vector<int64_t> starts;  // window starts (context begins there)
  if (split == "unseen") {
    MT_CHECK(stream_end >= 0,
             "predict: --split unseen forecasts the frames a model online --label kept never "
             "streamed; {} is not such a model (--split test scores frames it did not see)",
             model_path);
    MT_CHECK(stream_end < T,
             "predict: --split unseen: the online stream of {} ran to the recording's last frame "
             "({}): it holds no unseen frame; keep a model that leaves some with --set "
             "online.unseen_frames=N ({} --set online.unseen_frames=N)",
             model_path, T, redo_adapted);
    MT_CHECK(stream_end >= L,
             "predict: {}: its stream ends at frame {}, before one context ({}); {}", model_path,
             stream_end, L, redo_adapted);
    // As online scored them: a prediction every online.stride frames from the stream's end.
    for (int64_t t = stream_end; t + H <= T; t += std::min<int64_t>(stream_stride, T))
      starts.push_back(t - L);
  } else if (split == "next") {
    MT_CHECK(T >= L, "predict: session '{}' has {} frames, fewer than one context ({})",
             session_name, T, L);
  } else if (split == "all") {
    for (int64_t t = 0; t + w.seq_length <= T; ++t) starts.push_back(t);
  } else {
    starts = prepared.windows(0, split == "train" ? data::Split::Train
                                 : split == "val" ? data::Split::Val
                                                  : data::Split::Test);
  }
  MT_CHECK(split == "next" || !starts.empty(),
           "predict: session '{}' has no {} window (of {} frames)", session_name, split,
           w.seq_length);
  const int64_t W = split == "next" ? 1 : int64_t(starts.size());
  // Forecasts and targets, each held twice (the array and its .npy copy), and the times.
  data::detail::check_fits_in_memory(
      4.0 * double(W) * double(N) * double(H) * sizeof(float) + double(W * H) * sizeof(double),
      fmt::format("predict: {} windows x {} neurons x {} frames (--split {})", W, N, H, split),
      "use a shorter split (--split test or val are about 15% of the recording each)");

  const bool zscored = stream_zscore_frames ? stream_stats.has_value() : prep.zscore;
  const data::NormStats& stats = stream_stats ? *stream_stats : prepared.stats(0);
  std::vector<float> pred(static_cast<size_t>(W * N * H)), target;
  std::vector<int64_t> first(static_cast<size_t>(W));  // each window's first forecast frame
  std::vector<double> times(static_cast<size_t>(W * H));
  const std::vector<int64_t> session_of = {int64_t(index)};
  double sse = 0, copy_sse = 0;
  const NoGradGuard no_grad;
  const int64_t batch = std::max<int64_t>(1, c.train.eval_batch_size);
  for (int64_t b0 = 0; b0 < W; b0 += batch) {
    const int64_t nb = std::min(batch, W - b0);
    data::WindowBatch wb;
    if (split == "next") {
      // Context: the last L frames (normalised); no targets.
      wb.context_length = L;
      wb.pred_length = H;
      wb.session = {0};
      wb.start = {T - L};
      wb.neuron_offset = {0, N};
      const data::Session& z = prepared.session(0);
      for (int64_t n = 0; n < N; ++n)
        wb.context.insert(wb.context.end(), z.activity.begin() + n * T + (T - L),
                          z.activity.begin() + n * T + T);
      wb.target.assign(size_t(N * H), 0.0f);
    } else {
      std::vector<data::WindowRef> refs;
      for (int64_t i = b0; i < b0 + nb; ++i) refs.push_back({0, starts[size_t(i)]});
      wb = prepared.batch(refs);
    }
    const models::PocoBatch pb = meta::to_batch(wb, *f, session_of);
    const std::vector<float> p = f->predict(pb).to_vector<float>();  // (nb * N, H)
    const std::vector<float> copy = models::copy_last(pb.x, H).to_vector<float>();
    for (size_t k = 0; k < p.size(); ++k) {
      if (split == "next") break;
      const double e = p[k] - wb.target[k], ec = copy[k] - wb.target[k];
      sse += e * e;
      copy_sse += ec * ec;
    }
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t wi = b0 + i;
      first[size_t(wi)] = wb.start[size_t(i)] + L;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t h = 0; h < H; ++h) {
          const float v = p[size_t((i * N + n) * H + h)];
          pred[size_t((wi * N + n) * H + h)] =
              zscored ? v * stats.std[size_t(n)] + stats.mean[size_t(n)] : v;
        }
      for (int64_t h = 0; h < H; ++h) {
        const int64_t frame = first[size_t(wi)] + h;
        times[size_t(wi * H + h)] =
            frame < T ? session->timestamps[size_t(frame)]
                      : session->timestamps[size_t(T - 1)] +
                            double(frame - T + 1) * session->frame_interval();
      }
    }
  }
  if (split != "next") {
    target.resize(pred.size());
    for (int64_t wi = 0; wi < W; ++wi)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t h = 0; h < H; ++h)
          target[size_t((wi * N + n) * H + h)] = session->at(n, first[size_t(wi)] + h);
  }

  std::vector<data::NpzMember> members;
  members.push_back({"pred", data::make_npy_f32({W, N, H}, pred.data())});
  if (!target.empty()) members.push_back({"target", data::make_npy_f32({W, N, H}, target.data())});
  members.push_back({"start", data::make_npy_i64({W}, first.data())});
  members.push_back({"t", data::make_npy_f64({W, H}, times.data())});
  if (zscored) {
    members.push_back({"mean", data::make_npy_f32({N}, stats.mean.data())});
    members.push_back({"std", data::make_npy_f32({N}, stats.std.data())});
  }
  data::save_npz_members(out_path, members, {}, "predict");
  // The model file within the run folder (an adapted one: adapt/<label>/...).
  const std::string model_file = model_path.rfind(run_dir + "/", 0) == 0
                                     ? model_path.substr(run_dir.size() + 1)
                                     : model_path;
  std::printf("predict: %s, session '%s' (%lld neurons), model %s (%s): %lld forecast(s) of %lld "
              "frames from %lld frames of context%s\n",
              run_dir.c_str(), session_name.c_str(), (long long)N, method.c_str(),
              model_file.c_str(), (long long)W, (long long)H, (long long)L,
              split == "next" ? ", after the last frame" : "");
  if (split != "next") {
    std::string as;
    if (stream_zscore_frames)
      as = stream_stats ? fmt::format(", z-scored with frames [{}, {}) as its online stream was",
                                      (*stream_zscore_frames)[0].get<int64_t>(),
                                      (*stream_zscore_frames)[1].get<int64_t>())
                        : ", not z-scored, as its online stream was not";
    else if (split != "all")
      as = method != "trained" && has_parameters ? ", as adapt computes it"
           : c.train.method == "standard"     ? ", as eval computes it"
                                              : ", as eval --unadapted computes it";
    std::printf("score %.4f on these windows (1 - MSE / MSE of repeating the last frame%s%s)\n",
                copy_sse > 0 ? 1.0 - sse / copy_sse : 0.0, zscored ? ", on normalised values" : "",
                as.c_str());
    if (split == "unseen")
      std::printf("note: frames [%lld, %lld), after the model's online stream: it never learned "
                  "from them (online.json's unseen scores, column online, are of these "
                  "windows)\n",
                  (long long)stream_end, (long long)T);
    else if (stream_zscore_frames)
      std::printf("note: the online-adapted model learned from the recording's windows up to "
                  "frame %lld%s (one every online.stride frames): these frames include ones it "
                  "was fit on (online scored each window with the model as it was when the "
                  "window was predicted); %s\n",
                  (long long)stream_end, stream_end == T ? ", its end" : "",
                  stream_end < T ? "--split unseen scores the frames after them, which it never "
                                   "learned from"
                                 : "--split next forecasts the frames after the last one; "
                                   "online --label with --set online.unseen_frames=N keeps "
                                   "the last N frames from it, for --split unseen");
    else if (has_parameters && (split == "all" || split == "train"))
      std::printf("note: %s windows of the training split, which the model was fit on: "
                  "--split test scores frames it did not see\n",
                  split == "all" ? "these include the" : "these are the");
  }
  std::printf("wrote %s: pred (%lld, %lld, %lld) in the recording's units%s, start, t%s\n",
              out_path.c_str(), (long long)W, (long long)N, (long long)H,
              target.empty() ? "" : ", target", zscored ? ", mean, std" : "");
}

// ---- online ----
// The forecasts of one session's stream as run_online scored them, in the recording's units
// (`stats`, when the stream was z-scored), with their targets from the raw `recording`, as an
// .npz for `online --forecasts`.
void save_online_forecasts(const std::string& path, const meta::OnlineForecasts& fc,
                           const data::Session& recording, const data::NormStats* stats,
                           int64_t horizon) {
  const int64_t W = int64_t(fc.start.size()), N = recording.num_neurons, H = horizon;
  std::vector<float> target(size_t(W * N * H));
  std::vector<double> times(size_t(W * H));
  for (int64_t w = 0; w < W; ++w) {
    const int64_t t0 = fc.start[size_t(w)];
    for (int64_t n = 0; n < N; ++n)
      for (int64_t h = 0; h < H; ++h) target[size_t((w * N + n) * H + h)] = recording.at(n, t0 + h);
    for (int64_t h = 0; h < H; ++h) times[size_t(w * H + h)] = recording.timestamps[size_t(t0 + h)];
  }
  auto units = [&](std::vector<float> v) {
    if (stats)
      for (size_t k = 0; k < v.size(); ++k) {
        const size_t n = (k / size_t(H)) % size_t(N);
        v[k] = v[k] * stats->std[n] + stats->mean[n];
      }
    return v;
  };
  std::vector<data::NpzMember> members;
  for (const auto& [name, values] : {std::pair<const char*, const std::vector<float>*>{
                                         "frozen", &fc.frozen},
                                     {"offline", &fc.offline},
                                     {"online", &fc.online}}) {
    const std::vector<float> v = units(*values);
    members.push_back({name, data::make_npy_f32({W, N, H}, v.data())});
  }
  members.push_back({"target", data::make_npy_f32({W, N, H}, target.data())});
  members.push_back({"start", data::make_npy_i64({W}, fc.start.data())});
  members.push_back({"t", data::make_npy_f64({W, H}, times.data())});
  members.push_back({"unseen", data::make_npy_i64({W}, fc.unseen.data())});
  if (stats) {
    members.push_back({"mean", data::make_npy_f32({N}, stats->mean.data())});
    members.push_back({"std", data::make_npy_f32({N}, stats->std.data())});
  }
  data::save_npz_members(path, members, {}, "online --forecasts");
}

// For every training session: the stream is its validation + test frames (the validation part is
// the offline method's calibration segment). For every held-out session (new to the model, its
// embedding rows set by adapt.new_session_init, as adapt starts): the stream is the whole
// recording from its first frame, the start of it the calibration segment, as a new recording
// session would arrive. Frozen, offline and online scores of each. With `drifts` (synthetic data
// only), the data are regenerated with each drift magnitude. With a `label`, the model each
// held-out session's online adaptation leaves behind is kept as the adaptation {run}/adapt/<label>/
// (predict --adapted <label>), with the frames whose statistics z-scored its stream. With
// `forecasts_given`, each stream's forecasts go to that folder (save_online_forecasts).
json run_online_cmd(const std::string& run_dir, const std::vector<double>& drifts,
                    const std::vector<std::string>& sets, Device device,
                    const std::string& label, const std::string& forecasts_given) {
  if (!label.empty()) cli::check_adaptation_label(label, /*given=*/true, "online");
  // --forecasts: a new or empty folder outside the run folder (nothing in it is replaced, and
  // nothing the run's commands replace holds it); each session's file is written into a work
  // folder inside it and moved in place when every stream has run: a stop or an error leaves
  // none of them, and the folder itself is removed again if this run made it.
  fs::path forecasts_dir;
  if (!forecasts_given.empty()) {
    forecasts_dir = fs::path(forecasts_given).lexically_normal();
    if (forecasts_dir.filename().empty()) forecasts_dir = forecasts_dir.parent_path();  // "F/"
    const fs::path parent =
        forecasts_dir.has_parent_path() ? forecasts_dir.parent_path() : fs::path(".");
    MT_CHECK(fs::is_directory(parent),
             "online: --forecasts {}: folder {} does not exist; create it first",
             forecasts_given, parent.string());
    MT_CHECK(!fs::exists(forecasts_dir) || fs::is_directory(forecasts_dir),
             "online: --forecasts {} is a file, not a folder; name a new or empty folder",
             forecasts_given);
    MT_CHECK(fs::exists(forecasts_dir) || !fs::is_symlink(forecasts_dir),
             "online: --forecasts {} is a link to nothing; name a new or empty folder",
             forecasts_given);
    if (fs::exists(forecasts_dir)) {
      // The work folder of an online run killed before it ended (its process gone): removed.
      std::error_code ec;
      for (const auto& entry : fs::directory_iterator(forecasts_dir, ec)) {
        if (cli::left_by_dead_process(entry.path().filename().string(), ".online.", ".partial")) {
          std::error_code rm;
          fs::remove_all(entry.path(), rm);
        }
      }
      std::vector<std::string> held;
      for (const auto& entry : fs::directory_iterator(forecasts_dir))
        held.push_back(entry.path().filename().string());
      std::sort(held.begin(), held.end());
      const bool killed = std::any_of(held.begin(), held.end(), [](const std::string& name) {
        return name.rfind(".online.", 0) == 0 && name.size() > 16 &&
               name.compare(name.size() - 8, 8, ".partial") == 0;
      });
      MT_CHECK(held.empty(),
               "online: --forecasts {} holds {} entr{} ({}{}); the forecasts go into a new or "
               "empty folder (nothing in it is replaced): name another, or empty this one{}",
               forecasts_given, held.size(), held.size() == 1 ? "y" : "ies",
               fmt::join(held.begin(), held.begin() + std::min<ptrdiff_t>(3, held.size()), ", "),
               held.size() > 3 ? ", ..." : "",
               killed ? " (a .online.<pid>.partial folder is the work of another online run, "
                        "still running: wait for it to end)"
                      : "");
    }
    const fs::path run_path = fs::weakly_canonical(run_dir),
                   dir_path = fs::weakly_canonical(forecasts_dir);
    const auto [r, d] = std::mismatch(run_path.begin(), run_path.end(), dir_path.begin(),
                                      dir_path.end());
    MT_CHECK(r != run_path.end(),
             "online: --forecasts {} is inside the run folder {} (whose commands replace what "
             "they write there); name a folder outside it",
             forecasts_given, run_dir);
  }
  // Until `kept` (once online.json and the kept models are written too), a stop or an error
  // removes the work folder, the files already moved out of it, and the folder if this run made
  // it.
  struct ForecastsFolder {
    fs::path dir, work, made;        // made: dir, when this run made it
    std::vector<std::string> moved;  // names moved from work into dir
    bool kept = false;
    ~ForecastsFolder() {
      if (kept || work.empty()) return;
      std::error_code ignored;
      for (const std::string& name : moved) fs::remove(dir / name, ignored);
      fs::remove_all(work, ignored);
      if (!made.empty()) fs::remove(made, ignored);  // (only if empty)
    }
  } forecasts_folder;
  if (!forecasts_dir.empty()) {
    forecasts_folder.dir = forecasts_dir;
    if (cli::make_folder(forecasts_dir.string(), "online --forecasts"))
      forecasts_folder.made = forecasts_dir;
    forecasts_folder.work = forecasts_dir / fmt::format(".online.{}.partial", ::getpid());
    fs::create_directory(forecasts_folder.work);
  }
  const fs::path& forecasts_work = forecasts_folder.work;
  json forecast_files = json::array();  // forecasts.json's list
  // Kept models (--label) are of the recordings themselves, held out: taken with the run's lock
  // (one writer of the run folder); otherwise a reader's lock. Either is taken before the run's
  // config and model are read, so a training that replaces the run cannot come in between, and
  // only in a folder that holds a run (read_run names what is missing; no lock file is left).
  std::unique_ptr<cli::FolderLock> lock;
  if (label.empty())
    lock = lock_to_read(run_dir);
  else if (fs::is_regular_file(fs::path(run_dir) / "config.json"))
    lock = std::make_unique<cli::FolderLock>(run_dir, ".train.lock", "--run",
                                             "metatape train, adapt or online");
  Run run = read_run(run_dir);
  cli::RunConfig c = sets.empty() ? run.config : cli::apply_overrides(run.config_json, sets);
  resolve_run_data_path(run_dir, c, sets, "online");
  MT_CHECK(c.model.kind != "copy_last",
           "online: the run's model (copy_last, {}/config.json) has no parameters to adapt; "
           "online adaptation is of a trained poco model (or nlinear / mlp, their parameters "
           "named in online.params)",
           run_dir);
  if (c.model.kind != "poco" && c.online.params == meta::OnlineOptions{}.params) {
    // The default names POCO's embedding tables; the baselines have none.
    std::fprintf(stderr,
                 "note: the %s model has no embedding tables: online steps update all of its "
                 "parameters (online.params names a part of them)\n",
                 c.model.kind.c_str());
    c.online.params.clear();
  }
  apply_threads(c);
  if (c.train.method != "standard" && c.model.kind == "poco" &&
      (c.online.lr != c.train.meta.inner_lr || c.online.params != c.train.meta.params))
    std::fprintf(stderr,
                 "note: this run was meta-learned (%s) for SGD at train.meta.inner_lr %g on %s; "
                 "online steps take online.lr %g on %s; to adapt as it was meta-learned: --set "
                 "online.lr=%g --set 'online.params=%s'\n",
                 c.train.method.c_str(), c.train.meta.inner_lr,
                 json(c.train.meta.params).dump().c_str(), c.online.lr,
                 json(c.online.params).dump().c_str(), c.train.meta.inner_lr,
                 json(c.train.meta.params).dump().c_str());
  MT_CHECK(drifts.empty() || c.data.path.empty(),
           "online: --drift regenerates synthetic data; this run was trained on {}", c.data.path);
  for (size_t i = 0; i < drifts.size(); ++i)
    MT_CHECK(std::find(drifts.begin(), drifts.begin() + i, drifts[i]) == drifts.begin() + i,
             "online: --drift gives {} twice; give each magnitude once", drifts[i]);
  std::vector<double> sweep = drifts.empty() ? std::vector<double>{c.data.synthetic.drift} : drifts;
  // A drift sweep (or a --set of data.synthetic.*) regenerates the recordings on purpose; any
  // other run is scored on the recordings it was trained on.
  const bool regenerated =
      !drifts.empty() || std::any_of(sets.begin(), sets.end(), [](const std::string& x) {
        return x.rfind("data.synthetic.", 0) == 0;
      });
  const bool synthetic = c.data.path.empty();  // drift is a property of synthetic data only
  // The run's sessions are scored on frames it was not trained on, prepared as in its training
  // (another split would put trained frames into the streams; the kept models are fed their
  // inputs as the run prepares them, and predict refuses others): only how recordings are read,
  // which are held out, and the synthetic data's settings may change.
  check_model_settings_kept(run, c, "online");
  if (!label.empty()) {
    MT_CHECK(!c.data.holdout.empty(),
             "online --label {}: keeps the online-adapted model of each held-out session, and "
             "data.holdout is empty; hold sessions out (--set 'data.holdout=[\"<session>\"]') or "
             "drop --label",
             label);
    MT_CHECK(!regenerated,
             "online --label {}: keeps models of the recordings as they are, and {} regenerates "
             "them; drop --label, or the drift sweep and the data.synthetic.* overrides",
             label, drifts.empty() ? "a data.synthetic.* override" : "--drift");
  }
  MT_CHECK(c.online.unseen_frames == 0 || !c.data.holdout.empty(),
           "online: online.unseen_frames ({}) holds the last frames of each held-out session's "
           "recording back, and data.holdout is empty; hold sessions out (--set "
           "'data.holdout=[\"<session>\"]') or drop online.unseen_frames",
           c.online.unseen_frames);
  if (regenerated && drifts.empty())
    std::fprintf(stderr, "note: the data.synthetic.* overrides regenerate the recordings: these "
                         "scores are of data the run was not trained on\n");
  // The model scored: its CRC-32 before it is read, compared again before anything is written
  // (a train --overwrite of the run meanwhile would make online.json describe another model).
  const std::string model_crc32 =
      cli::checkpoint_data_crc32(run_dir + "/model.safetensors");
  // Where the kept models go: checked before any stream runs (its work folder made on first use).
  std::unique_ptr<AdaptationFolder> folder;
  if (!label.empty())
    folder = std::make_unique<AdaptationFolder>(run_dir, label, /*label_given=*/true,
                                                c.data.holdout, "online");
  // After the options and the label are checked: a refusal is not buried under it.
  if (c.model.kind == "poco") cli::note_if_busy("online adaptation");
  json kept_models = json::object(), kept_rows = json::array(), holdout_sessions;
  const models::PocoConfig pc = c.model.poco_config();
  const meta::NewSessionInit init = meta::parse_new_session_init(c.adapt.new_session_init);
  json rows = json::array();
  bool header_printed = false;  // once the data passed their checks
  size_t name_width = 24;       // the session column: its longest name, "(new)" included
  std::vector<std::string> below_copy_last;  // sessions where every method scores below 0
  std::vector<std::string> not_finite;       // methods whose forecasts were not finite
  std::vector<std::string> behind;           // sessions whose cycles outlast their frames
  std::vector<std::string> calibration_hurt;  // new sessions calibrated below the frozen model
  int64_t stride_that_fits = 0;              // the smallest stride that fits all of them
  std::vector<std::string> unseen_rows;      // the table of the unseen frames' scores
  bool new_below_copy_last = false;          // held-out ones among them
  bool any_held_out = false;
  // Trained sessions left out under data.split=poco_blocks: their last block's validation + test
  // frames (their stream) are too few for a scored window; with that number of frames.
  std::map<std::string, int64_t> blocks_too_short;
  const bool blocks = c.data.prep.split.mode == data::SplitMode::Blocks;
  for (double drift : sweep) {
    cli::RunConfig cd = c;
    cd.data.synthetic.drift = drift;
    const std::string drift_text = synthetic ? fmt::format("{:.2f}", drift) : "-";
    Data d = load_data(cd);
    check_holdout_is_new(run.trained_on, d.holdout, run_dir, "online",
                         "held-out sessions are scored as new to the model");
    // Regenerated data have other CRC-32s; their sessions must still be the run's.
    check_same_recordings(run, d.train, run_dir, cd, /*compare_recordings=*/!regenerated);
    for (const auto& name : d.train.names()) name_width = std::max(name_width, name.size());
    for (const auto& name : d.holdout.names())
      name_width = std::max(name_width, name.size() + 6);
    Generator gen(0);
    auto f = meta::make_forecaster(cd.model, sizes_of(d.train), gen);
    load_run_model(*f, run_dir, /*new_sessions=*/false, !sets.empty());
    // The model as adapt starts it on the held-out sessions: the trained weights, their
    // embedding rows new (adapt.new_session_init); made on the CPU, then moved.
    std::unique_ptr<meta::Forecaster> fresh;
    if (!d.holdout.empty()) {
      Generator g_new(cd.adapt.train.seed);
      fresh = meta::make_forecaster(cd.model, sizes_of(d.holdout), g_new);
      meta::transfer_to_new_sessions(*f, *fresh, init);
      fresh->to(device);
    }
    f->to(device);
    // The options of a stream whose first `calibration_cap` frames at most are the offline
    // method's calibration segment; frames are held back (online.unseen_frames) from a held-out
    // session's whole recording only (a trained session's stream is its short validation + test
    // part).
    // A session's --forecasts file (one per drift magnitude in a sweep: the magnitude as given,
    // shortest exact form).
    auto forecasts_file = [&](const std::string& name, double magnitude) {
      return drifts.empty() ? name + ".npz" : fmt::format("{}_drift{}.npz", name, magnitude);
    };
    auto stream_options = [&](int64_t calibration_cap, bool held_out) {
      meta::OnlineOptions opt = cd.online;
      opt.calibration_frames = std::min<int64_t>(cd.online.calibration_frames, calibration_cap);
      if (!held_out) opt.unseen_frames = 0;
      return opt;
    };
    // Each session's stream: a trained one's frames after its last training frame, its
    // validation + test frames (under data.split=poco_blocks those of its last block: each
    // earlier block's are followed by frames the model was trained on, and the z-score
    // statistics, of every training range, would be of frames after the stream's start), its
    // validation frames there capping the calibration segment; a held-out one's whole recording
    // (its first training-split range caps it).
    struct Stream {
      int64_t begin = 0, end = 0, calibration_cap = 0;
    };
    auto trained_stream = [&](const data::Session& session) {
      const data::SessionSplits splits = data::split_frames(session.num_frames,
                                                            cd.data.prep.split);
      MT_CHECK(!splits.val.empty() && !splits.test.empty(),
               "online: session '{}' has no validation or test frames", session.name);
      const int64_t begin = splits.train.empty() ? splits.val.front().begin
                                                 : splits.train.back().end;
      int64_t cap = 0;  // the validation frames from `begin` on, up to the first test frame
      for (const data::FrameRange& r : splits.val)
        if (r.begin <= begin && begin < r.end) cap = r.end - begin;
      return Stream{begin, session.num_frames, cap};
    };
    auto held_out_stream = [&](const data::Session& session) {
      const data::SessionSplits splits = data::split_frames(session.num_frames,
                                                            cd.data.prep.split);
      return Stream{0, session.num_frames,
                    splits.train.empty() ? 0 : splits.train.front().length()};
    };
    // Every stream checked before the first runs (a refusal after minutes of streams wastes
    // them).
    for (const auto* set : {&d.train, &d.holdout})
      for (const auto& session : set->sessions) {
        const Stream st = set == &d.train ? trained_stream(session) : held_out_stream(session);
        const meta::OnlineOptions opt = stream_options(st.calibration_cap, set == &d.holdout);
        if (set == &d.train && blocks &&
            st.end - st.begin < std::max(opt.calibration_frames, pc.context()) + pc.pred_length) {
          blocks_too_short[session.name] = st.end - st.begin;
          continue;
        }
        meta::check_online_stream(session.name, session.num_frames, st.begin, st.end,
                                  pc.context(), pc.pred_length, opt);
        if (!forecasts_dir.empty()) {
          // Three methods' forecasts and the targets, each held twice (the array and its .npy).
          const int64_t windows =
              meta::online_scored_windows(st.begin, st.end, pc.context(), pc.pred_length, opt);
          data::detail::check_fits_in_memory(
              8.0 * double(windows) * double(session.num_neurons) * double(pc.pred_length) *
                  sizeof(float),
              fmt::format("online --forecasts: session '{}', {} windows x {} neurons x {} frames",
                          session.name, windows, session.num_neurons, pc.pred_length),
              "raise online.stride, or drop --forecasts");
        }
      }
    if (!blocks_too_short.empty() && drift == sweep.front()) {
      std::vector<std::string> named;
      for (const auto& [name, frames] : blocks_too_short)
        named.push_back(fmt::format("{} ({} frames)", name, frames));
      const std::string why = fmt::format(
          "under data.split=poco_blocks a trained session's stream is its last block's "
          "validation + test frames, those after its last training frame (each earlier block's "
          "are followed by frames the model was trained on); {} too few for a calibration "
          "segment or a context ({}) and one horizon ({})",
          named.size() == 1 ? "this one has" : "these have", pc.context(), pc.pred_length);
      MT_CHECK(blocks_too_short.size() < size_t(d.train.size()) || !d.holdout.empty(),
               "online: no session to score: {}: {}; hold a session out (--set "
               "'data.holdout=[\"<session>\"]'; it is scored as new over its whole recording) "
               "or train with a data.block_length that leaves each last block longer",
               why, fmt::join(named, ", "));
      std::fprintf(stderr, "note: trained session(s) %s left out: %s\n",
                   fmt::format("{}", fmt::join(named, ", ")).c_str(), why.c_str());
    }
    // One session's stream, [begin, end) of its frames, the first `calibration_cap` of them at
    // most the offline method's calibration segment; a row of the table and of online.json.
    auto score_session = [&](meta::Forecaster& model, const data::Session& session, int64_t s,
                             int64_t begin, int64_t end, int64_t calibration_cap, bool held_out,
                             const data::Session& recording, const data::NormStats* stats) {
      if (!header_printed)
        std::printf("%8s %s %8s %10s %10s %10s %9s %9s %9s\n", "drift",
                    cli::padded("session", name_width).c_str(), "windows", "frozen", "offline",
                    "online", "online_s", "update_ms", "fcst_ms");
      header_printed = true;
      const meta::OnlineOptions opt = stream_options(calibration_cap, held_out);
      const std::string& name = session.name;
      const char* cap_name =
          held_out ? "the session's first training-split range" : "its validation split";
      // (A trained session's cap is noted when the value was set: the default is capped by the
      // validation split of most recordings.)
      if (opt.calibration_frames < cd.online.calibration_frames && drift == sweep.front() &&
          (held_out || cd.online.calibration_frames != meta::OnlineOptions{}.calibration_frames))
        std::fprintf(stderr,
                     "note: session '%s': online.calibration_frames (%lld) is capped at %lld, "
                     "%s\n",
                     name.c_str(), (long long)cd.online.calibration_frames,
                     (long long)opt.calibration_frames, cap_name);
      const int64_t stream_end = end - opt.unseen_frames;
      std::fprintf(stderr, "online: %s%s: frames [%lld, %lld)%s%s\n", name.c_str(),
                   held_out ? " (new)" : "", (long long)begin, (long long)stream_end,
                   opt.unseen_frames > 0
                       ? fmt::format(", then [{}, {}) unseen", stream_end, end).c_str()
                       : "",
                   synthetic && sweep.size() > 1 ? fmt::format(", drift {}", drift).c_str()
                                                 : "");
      std::optional<meta::OnlineForecasts> forecasts;
      if (!forecasts_dir.empty()) forecasts.emplace();  // (its size checked before any stream)
      meta::OnlineScores r =
          meta::run_online(model, session, s, begin, end, pc.context(), pc.pred_length, opt,
                           [] { return stop_signal.load() != 0; },
                           forecasts ? &*forecasts : nullptr);
      if (forecasts) {
        const std::string file = forecasts_file(name, drift);
        save_online_forecasts((forecasts_work / file).string(), *forecasts, recording, stats,
                              pc.pred_length);
        forecasts.reset();
        json entry = {{"file", file},
                      {"session", name},
                      {"held_out", held_out},
                      {"windows", r.predictions},
                      {"unseen_windows", r.unseen.windows},
                      {"zscored", stats != nullptr}};
        if (synthetic) entry["drift"] = drift;
        forecast_files.push_back(entry);
      }
      if (!held_out || label.empty()) r.online_parameters.clear();  // kept only to be saved
      if (!r.offline_calibrated && opt.calibration_steps > 0 && drift == sweep.front())
        std::fprintf(stderr,
                     "note: session '%s': the offline method took no calibration step: %lld "
                     "calibration frames hold no window of %lld context + %lld horizon frames; "
                     "its scores are the frozen model's; raise online.calibration_frames "
                     "(capped by %s)\n",
                     name.c_str(), (long long)opt.calibration_frames, (long long)pc.context(),
                     (long long)pc.pred_length, cap_name);
      any_held_out = any_held_out || held_out;
      if (held_out && r.offline_calibrated && r.offline < r.frozen && drift == sweep.front())
        calibration_hurt.push_back(fmt::format("{} (offline {:.4f}, frozen {:.4f}, {} frames)",
                                               name, r.offline, r.frozen,
                                               opt.calibration_frames));
      // A diverged method's score is NaN (null in online.json): named, and not compared.
      std::vector<std::string> diverged;
      double best = -std::numeric_limits<double>::infinity();
      for (const auto& [method, score] : {std::pair<const char*, double>{"frozen", r.frozen},
                                          {"offline", r.offline},
                                          {"online", r.online}}) {
        if (std::isfinite(score))
          best = std::max(best, score);
        else
          diverged.push_back(method);
      }
      if (!diverged.empty())
        not_finite.push_back(fmt::format("{}{} ({}){}", name, held_out ? " (new)" : "",
                                         fmt::join(diverged, ", "),
                                         synthetic && sweep.size() > 1
                                             ? fmt::format(" at drift {}", drift)
                                             : std::string()));
      if (best < 0) {
        below_copy_last.push_back(name);
        new_below_copy_last = new_below_copy_last || held_out;
      }
      std::printf("%8s %s %8lld %10.4f %10.4f %10.4f %9.2f %9.2f %9.2f\n", drift_text.c_str(),
                  cli::padded(name + (held_out ? " (new)" : ""), name_width).c_str(),
                  (long long)r.predictions, r.frozen, r.offline, r.online, r.online_seconds,
                  r.update_ms.median, r.forecast_ms.median);
      // A live recording gives a new prediction time every stride frames: the cycle (an update
      // and a forecast) has to fit in between.
      const double frame_interval_s = session.frame_interval();
      const double interval_ms = 1000.0 * frame_interval_s * double(opt.stride);
      if (r.cycle_ms.count > 0 && interval_ms > 0 && r.cycle_ms.p95 > interval_ms &&
          drift == sweep.front())
      {
        behind.push_back(fmt::format("{} ({:.3g} ms of {:.3g} ms)", name, r.cycle_ms.p95,
                                     interval_ms));
        stride_that_fits =
            std::max(stride_that_fits,
                     int64_t(std::ceil(1.25 * r.cycle_ms.p95 / (1000.0 * frame_interval_s))));
      }
      auto segments_json = [](const std::vector<meta::OnlineSegment>& segments) {
        json out = json::array();
        for (const auto& seg : segments)
          out.push_back({{"frames", json::array({seg.first_frame, seg.last_frame})},
                         {"windows", seg.windows},
                         {"frozen", seg.frozen},
                         {"offline", seg.offline},
                         {"online", seg.online}});
        return out;
      };
      auto latency = [](const meta::LatencyMs& l) {
        return json{{"median", l.median}, {"p95", l.p95}, {"max", l.max}, {"count", l.count}};
      };
      json row = {{"session", name},
                  {"held_out", held_out},
                  {"stream_frames", json::array({begin, stream_end})},
                  {"windows", r.predictions},
                  {"frozen", r.frozen},
                  {"offline", r.offline},
                  {"online", r.online},
                  {"online_seconds", r.online_seconds},
                  {"online_steps", r.online_steps},
                  {"final_steps", r.final_steps},
                  {"latency_ms", {{"update", latency(r.update_ms)},
                                  {"forecast", latency(r.forecast_ms)},
                                  {"cycle", latency(r.cycle_ms)}}},
                  {"segments", segments_json(r.segments)},
                  {"frame_interval_s", frame_interval_s},
                  {"prediction_interval_ms", interval_ms},
                  {"calibration_frames", opt.calibration_frames},
                  {"offline_calibrated", r.offline_calibrated}};
      // The held-back frames, scored by each method's model as the stream left it (null: none).
      row["unseen"] = json();
      if (opt.unseen_frames > 0) {
        row["unseen"] = segments_json({r.unseen})[0];
        row["unseen"]["stream_frames"] = json::array({stream_end, end});
        unseen_rows.push_back(fmt::format(
            "{:>8} {} {:8} {:10.4f} {:10.4f} {:10.4f}", drift_text,
            cli::padded(name + (held_out ? " (new)" : ""), name_width), r.unseen.windows,
            r.unseen.frozen, r.unseen.offline, r.unseen.online));
      }
      if (synthetic) row["drift"] = drift;
      rows.push_back(row);
      return r;
    };
    auto print_mean = [&](const char* label, const std::vector<meta::OnlineScores>& scores) {
      double sums[3] = {0, 0, 0};
      for (const auto& r : scores) {
        sums[0] += r.frozen;
        sums[1] += r.offline;
        sums[2] += r.online;
      }
      const double n = double(scores.size());
      std::printf("%8s %s %8s %10.4f %10.4f %10.4f\n", drift_text.c_str(),
                  cli::padded(label, name_width).c_str(), "",
                  sums[0] / n, sums[1] / n, sums[2] / n);
    };
    {
      data::PreparedData prepared(d.train, cd.data.prep);
      std::vector<meta::OnlineScores> scores;
      for (int64_t s = 0; s < prepared.num_sessions(); ++s) {
        if (blocks_too_short.count(prepared.session(s).name)) continue;
        const Stream st = trained_stream(prepared.session(s));
        scores.push_back(score_session(*f, prepared.session(s), s, st.begin, st.end,
                                       st.calibration_cap, false, d.train[s],
                                       cd.data.prep.zscore ? &prepared.stats(s) : nullptr));
      }
      if (!scores.empty()) print_mean(d.holdout.empty() ? "mean" : "mean (trained)", scores);
    }
    if (!d.holdout.empty()) {
      std::vector<meta::OnlineScores> scores;
      for (int64_t s = 0; s < d.holdout.size(); ++s) {
        // A live session knows only its past: it is z-scored (data.zscore) with the statistics
        // of the frames before its first scored forecast (the calibration segment, at least one
        // context), not with those of its training split as adapt does.
        data::Session session = d.holdout[s];
        const Stream st = held_out_stream(session);
        const int64_t cap = st.calibration_cap;
        const int64_t seen = std::min(session.num_frames,
                                      std::max(std::min(cd.online.calibration_frames, cap),
                                               pc.context()));
        std::optional<data::NormStats> stream_stats;
        if (cd.data.prep.zscore) {
          const data::NormStats& stats =
              stream_stats.emplace(data::compute_stats(session, {{0, seen}}));
          if (!stats.constant_neurons.empty() && drift == sweep.front())
            std::fprintf(stderr,
                         "note: held-out session '%s': %zu of its %lld neurons are constant over "
                         "its first %lld frames, which z-score the stream; their std is set to "
                         "1\n",
                         session.name.c_str(), stats.constant_neurons.size(),
                         (long long)session.num_neurons, (long long)seen);
          data::apply_zscore(session, stats);
        }
        scores.push_back(score_session(*fresh, session, s, st.begin, st.end, cap, true,
                                       d.holdout[s], stream_stats ? &*stream_stats : nullptr));
        const json zscore_frames = cd.data.prep.zscore ? json::array({0, seen}) : json();
        rows.back()["zscore_frames"] = zscore_frames;
        if (!label.empty()) {
          // The model the stream leaves behind, and how predict reproduces its inputs: the
          // recording z-scored with the statistics of zscore_frames (null: not z-scored).
          if (holdout_sessions.is_null()) holdout_sessions = session_json(d.holdout);
          meta::OnlineScores& r = scores.back();
          const std::string file = fmt::format("adapted_online_{}.safetensors", session.name);
          json metadata = {{"adapted", {{"method", "online"},
                                        {"session", session.name},
                                        {"sessions", holdout_sessions},
                                        {"read_with", recordings_read_with(cd)},
                                        {"new_session_init", cd.adapt.new_session_init},
                                        {"online", cd.to_json()["online"]},
                                        {"stream_frames", rows.back()["stream_frames"]},
                                        {"zscore_frames", zscore_frames},
                                        {"scores", {{"frozen", r.frozen},
                                                    {"offline", r.offline},
                                                    {"online", r.online}}},
                                        {"unseen", rows.back()["unseen"]}}}};
          save_adapted_model(folder->partial() + "/" + file, *fresh, &r.online_parameters,
                             metadata);
          r.online_parameters.clear();  // saved: no need to hold them (on the device) any longer
          kept_models[session.name] = file;
          kept_rows.push_back(rows.back());
        }
      }
      print_mean("mean (new sessions)", scores);
    }
  }
  const char* legend =
      "scores: 1 - MSE / MSE of repeating the last frame, on the windows after each stream's "
      "calibration segment; frozen: the model as it is; offline: SGD on the calibration "
      "segment, then frozen; online: one SGD step on each window once its frames have arrived. "
      "Trained sessions: the frames after their last training frame, their validation + "
      "test frames (under data.split=poco_blocks, their last block's). (new): held-out sessions, their whole "
      "recording, embedding rows as adapt.new_session_init sets them, z-scored with the frames "
      "before their first scored forecast (zscore_frames), not with their training split as "
      "adapt does. segments: the scored windows in ten consecutive stretches, each scored "
      "alone (frames: the prediction times of its first and last window), how the scores "
      "change along the stream. latency_ms (on device): update, the online method's SGD step on one arrived "
      "window; forecast, its forecast of one window, to the host; cycle, a scored prediction "
      "time's update and forecast, which a live recording allows prediction_interval_ms "
      "(online.stride x frame_interval_s) for. unseen: the last online.unseen_frames frames of "
      "a held-out session's recording (stream_frames), held back from every method, forecast "
      "every online.stride frames from the stream's end by each method's model as the stream "
      "left it, without updates (null: none held back)";
  if (!unseen_rows.empty()) {
    std::printf("after each new session's stream, its %lld held-back frames "
                "(online.unseen_frames), forecast without updates by each method's model as the "
                "stream left it:\n",
                (long long)c.online.unseen_frames);
    std::printf("%8s %s %8s %10s %10s %10s\n", "drift",
                cli::padded("session", name_width).c_str(), "windows", "frozen", "offline",
                "online");
    for (const std::string& line : unseen_rows) std::printf("%s\n", line.c_str());
  }
  std::printf("scores: 1 - MSE / MSE of copy-last, after each stream's calibration segment%s\n",
              any_held_out ? "; (new): a held-out session from its first frame, z-scored with "
                             "the frames before its first scored forecast (online.json: legend, "
                             "zscore_frames)"
                           : "");
  std::printf("update_ms, fcst_ms: median milliseconds of the online method's SGD step and of its "
              "forecast of one window on %s (online.json: latency_ms, with p95 and max); "
              "online_s: the whole pass, the three methods' forecasts included\n",
              device.str().c_str());
  if (!behind.empty())
    std::fprintf(stderr,
                 "note: the online method would fall behind a live recording of %s: the 95th "
                 "percentile of an update + forecast cycle is longer than the time between two "
                 "prediction times (online.stride x the frame interval); online.stride=%lld would "
                 "keep the cycle within 80%% of that time%s\n",
                 fmt::format("{}", fmt::join(behind, ", ")).c_str(), (long long)stride_that_fits,
                 device.is_cpu() && built_with_cuda() && cuda_device_count() > 0
                     ? ", or run on a GPU (--device cuda)"
                     : "");
  if (!not_finite.empty())
    std::fprintf(stderr,
                 "note: forecasts that were not finite, scored nan (null in online.json): %s; "
                 "where the offline or online method's are, their SGD steps diverged: lower "
                 "online.lr (now %g)\n",
                 fmt::format("{}", fmt::join(not_finite, ", ")).c_str(), c.online.lr);
  if (!calibration_hurt.empty())
    std::fprintf(stderr,
                 "note: on the new session(s) %s, calibrating on the first frames made the "
                 "forecasts worse than the uncalibrated model: that segment does not resemble the "
                 "rest of the recording, or it is too short to fit; try a longer "
                 "online.calibration_frames (capped by the first training-split range) or fewer "
                 "online.calibration_steps\n",
                 fmt::format("{}", fmt::join(calibration_hurt, ", ")).c_str());
  if (!below_copy_last.empty()) {
    std::sort(below_copy_last.begin(), below_copy_last.end());
    below_copy_last.erase(std::unique(below_copy_last.begin(), below_copy_last.end()),
                          below_copy_last.end());
    std::fprintf(stderr,
                 "note: on %s every method scores below the copy-last forecast (repeating the "
                 "last frame)%s\n",
                 fmt::format("{}", fmt::join(below_copy_last, ", ")).c_str(),
                 new_below_copy_last
                     ? "; a new session's longer calibration segment (online.calibration_frames) "
                       "gives steadier normalisation statistics"
                     : "");
  }
  json out = {{"run", fs::absolute(run_dir).lexically_normal().string()},
              {"device", device.str()},
              // the adaptation --label kept the held-out sessions' models in (null: none)
              {"label", label.empty() ? json() : json(label)},
              {"legend", legend},
              {"rows", rows},
              {"options", c.to_json()["online"]},
              {"new_session_init", c.adapt.new_session_init}};
  out["model_crc32"] = model_crc32;
  MT_CHECK(cli::checkpoint_data_crc32(run_dir + "/model.safetensors") == model_crc32,
           "online: {}/model.safetensors changed while online ran (the run was trained again?): "
           "these scores are of the model it replaced; nothing was written, run online again",
           run_dir);
  if (stop_signal.load() != 0) throw meta::OnlineStopped();  // asked during the last session
  if (!forecasts_work.empty()) {
    // The forecasts first (into the folder this run checked empty, with forecasts.json saying
    // what they are), then the kept models, then online.json.
    const json manifest = {
        {"run", out["run"]},
        {"model_crc32", model_crc32},
        {"device", device.str()},
        {"label", out["label"]},
        {"options", out["options"]},
        {"files", forecast_files},
        {"legend",
         "one file per session stream (and drift): frozen, offline, online (windows x neurons "
         "x frames, the recording's units): each method's forecast of frames start .. start + "
         "frames - 1 as online made it; target: those frames; t: their times; unseen: 1 for a "
         "window of the held-back frames (online.unseen_frames), forecast without updates; "
         "mean, std (when zscored): the normalisation the model saw; scores in online.json. "
         "files: windows, the stream's scored windows, then unseen_windows (a file holds "
         "windows + unseen_windows)"}};
    cli::write_file_atomic((forecasts_work / "forecasts.json").string(),
                           manifest.dump(2) + "\n");
    // The data files first, forecasts.json (which lists them) last: a folder with it is whole.
    std::vector<std::string> names;
    for (const auto& f : forecast_files) names.push_back(f["file"].get<std::string>());
    names.push_back("forecasts.json");
    for (const std::string& name : names) {
      fs::rename(forecasts_work / name, forecasts_dir / name);
      forecasts_folder.moved.push_back(name);
    }
    io::sync_folder_of(forecasts_dir / "forecasts.json");
    std::printf("wrote %zu forecast file(s) and forecasts.json to %s (frozen, offline, online: "
                "windows x neurons x frames in the recording's units; unseen: held-back "
                "windows)\n",
                forecast_files.size(), forecasts_dir.c_str());
  }
  if (folder) {
    const json adapt = {
        {"label", label},
        {"made_by", "online"},
        {"trained_model_crc32", out["model_crc32"]},
        {"sessions", holdout_sessions},
        {"new_session_init", c.adapt.new_session_init},
        {"online", c.to_json()["online"]},
        // the adapt.* settings online uses (the new sessions' rows), for the command that keeps
        // these models again (cli::readapt_command)
        {"adapt",
         {{"new_session_init", c.adapt.new_session_init},
          {"train", {{"seed", c.adapt.train.seed}}}}},
        {"methods", json::array({{{"method", "online"},
                                  {"models", kept_models},
                                  {"sessions", kept_rows}}})},
        {"best_method", "online"}};
    folder->put_in_place(adapt);
  }
  // Last: online.json names the adaptation --label kept, which is then in place.
  cli::write_file_atomic(run_dir + "/online.json", out.dump(2) + "\n");
  std::printf("wrote %s/online.json\n", run_dir.c_str());
  if (folder) {
    std::printf("predict --adapted %s forecasts with these models, each as online adaptation left "
                "it at the end of its %s\n",
                label.c_str(),
                c.online.unseen_frames > 0
                    ? "stream (--split unseen: the held-back frames, which it never learned from)"
                    : "recording");
  } else if (any_held_out && !regenerated) {
    std::printf("(the online-adapted models of the held-out sessions are not kept: --label NAME "
                "keeps them, for metatape predict --adapted NAME)\n");
  }
  if (!forecasts_work.empty()) {  // everything written: the forecasts stay
    forecasts_folder.kept = true;
    std::error_code ignored;
    fs::remove_all(forecasts_work, ignored);
  }
  if (stop_signal.load() != 0)  // (it is never cleared: asked any time since the check above)
    std::fprintf(stderr, "note: the stop came as the finished results were being written: they "
                         "are kept\n");
  return out;
}

// `metatape data info`: the sessions as a training with this config would read them (loader
// options, holdout, splits and windows), with the preprocessing notes; writes nothing.
void run_data_info(const cli::RunConfig& c) {
  const Data d = load_data(c);
  cli::note_default_csv_rate(c, d);
  std::printf("%s: %lld session(s), %lld for training, %lld held out\n",
              c.data.path.empty() ? "synthetic data" : c.data.path.c_str(),
              (long long)(d.train.size() + d.holdout.size()), (long long)d.train.size(),
              (long long)d.holdout.size());
  int width = 7;
  for (const auto* set : {&d.train, &d.holdout})
    for (const auto& s : set->sessions) width = std::max(width, int(cli::text_width(s.name)));
  std::printf("%-*s %-9s %8s %8s %10s %9s %21s %23s\n", width, "session", "role", "neurons",
              "frames", "seconds", "s/frame", "activity min..max", "windows train/val/test");
  // A split too short for one window is the error training would stop with: the table is
  // printed first (windows "-"), then the error.
  std::exception_ptr prepare_error;
  for (const auto* set : {&d.train, &d.holdout}) {
    if (set->empty()) continue;
    std::unique_ptr<data::PreparedData> prepared;
    try {
      prepared = std::make_unique<data::PreparedData>(*set, c.data.prep);
      for (const auto& note : prepared->notes())
        std::fprintf(stderr, "note: %s\n", note.c_str());
    } catch (const Error&) {
      if (!prepare_error) prepare_error = std::current_exception();
    }
    for (int64_t i = 0; i < set->size(); ++i) {
      const data::Session& s = (*set)[i];
      const auto [lo, hi] = std::minmax_element(s.activity.begin(), s.activity.end());
      const std::string range = fmt::format("{:.4g}..{:.4g}", *lo, *hi);
      const std::string windows =
          prepared ? fmt::format("{}/{}/{}", prepared->windows(i, data::Split::Train).size(),
                                 prepared->windows(i, data::Split::Val).size(),
                                 prepared->windows(i, data::Split::Test).size())
                   : std::string("-");
      std::printf("%s %-9s %8lld %8lld %10.1f %9.4g %21s %23s\n",
                  cli::padded(s.name, size_t(width)).c_str(),
                  set == &d.train ? "train" : "held out", (long long)s.num_neurons,
                  (long long)s.num_frames, s.timestamps.back() - s.timestamps.front(),
                  s.frame_interval(), range.c_str(), windows.c_str());
    }
  }
  std::fflush(stdout);
  if (prepare_error) std::rethrow_exception(prepare_error);
}

int run_eval(const std::string& run_dir, const std::string& split_name, bool unadapted,
             const std::vector<std::string>& sets, Device device) {
  MT_CHECK(split_name == "val" || split_name == "train" || split_name == "test",
           "eval: --split must be train, val or test, got '{}'", split_name);
  const auto reading = lock_to_read(run_dir);
  Run run = read_run(run_dir);
  cli::RunConfig c = sets.empty() ? run.config : cli::apply_overrides(run.config_json, sets);
  {  // the scores are of the run as trained and validated: only how recordings are read moves
    auto scored = [](json j) {
      // (data.holdout: eval scores the run's training sessions whatever is held out;
      // train.eval_batch_size: memory, not the scores)
      for (const char* key : {"path", "npz", "hdf5", "csv", "holdout"}) j["data"].erase(key);
      j["train"].erase("eval_batch_size");
      for (const char* key : {"threads", "saved_recompute", "adapt", "online", "bench"})
        j.erase(key);
      j["train"].erase("log_progress");
      return j;
    };
    const std::string differs =
        cli::describe_identity_difference(scored(run.config.to_json()), scored(c.to_json()));
    MT_CHECK(differs.empty(),
             "eval: {}; eval scores the run as it was trained and validated: drop that --set "
             "(data.path, data.holdout, how files are read, train.eval_batch_size, "
             "train.log_progress, threads, saved_recompute and the adapt, online and bench "
             "sections may change)",
             differs);
  }
  resolve_run_data_path(run_dir, c, sets, "eval");
  if (unadapted && c.train.method == "standard") {
    std::fprintf(stderr, "note: --unadapted: a standard run's model has no inner loop; it is "
                         "evaluated as it is\n");
    unadapted = false;
  }
  apply_threads(c);
  Data d = load_data(c, {.need_training = true, .need_holdout = false});
  check_same_recordings(run, d.train, run_dir, c);
  data::PreparedData prepared(d.train, c.data.prep);
  Generator gen(0);
  auto f = meta::make_forecaster(c.model, sizes_of(d.train), gen);
  load_run_model(*f, run_dir, /*new_sessions=*/false, /*overridden=*/!sets.empty());
  f->to(device);
  data::Split split = split_name == "val" ? data::Split::Val
                      : split_name == "train" ? data::Split::Train
                                              : data::Split::Test;
  const Evaluation e = evaluate_run(c, *f, prepared, split, unadapted);
  print_metrics(("split " + split_name + " (" + e.procedure + "):").c_str(), e.metrics,
                c.data.prep.zscore);
  json out = e.metrics.to_json();
  out["procedure"] = e.procedure;
  out["method"] = c.train.method;
  if (c.train.method != "standard" && !unadapted) {
    // What the inner loop adds: the initial weights' score on the same windows (one forward pass
    // per window, little next to the inner loops).
    const Evaluation initial = evaluate_run(c, *f, prepared, split, /*unadapted=*/true);
    const double gain = e.metrics.score - initial.metrics.score;
    std::printf("the inner loop: %+.4f over the initial weights (%.4f without it, eval "
                "--unadapted)\n",
                gain, initial.metrics.score);
    out["unadapted_score"] = initial.metrics.score;
    // Below a thousandth the inner loop is not what the run's score is made of.
    if (std::abs(gain) < 1e-3)
      std::fprintf(stderr,
                   "note: the %lld-step inner loop barely changes the score (%+.5f): this run "
                   "forecasts as its initial weights do%s\n",
                   (long long)c.train.meta.inner_steps, gain,
                   c.train.meta.inner_lr < 0.1
                       ? fmt::format("; at train.meta.inner_lr {} its SGD steps hardly move the "
                                     "model: a meta-learned run adapts when trained with a "
                                     "larger one (bench/README's meta-learning results use 1.0 "
                                     "and 0.1)",
                                     c.train.meta.inner_lr)
                             .c_str()
                       : "");
  }
  const std::string name = unadapted ? "eval_" + split_name + "_unadapted.json"
                                     : "eval_" + split_name + ".json";
  cli::write_file_atomic(run_dir + "/" + name, out.dump(2) + "\n");
  if (!c.data.holdout.empty())
    std::fprintf(stderr,
                 "note: eval scores the sessions the run was trained on; the held-out %s (%s, "
                 "data.holdout) %s scored by metatape adapt --run %s (then predict --session "
                 "NAME)\n",
                 c.data.holdout.size() == 1 ? "session" : "sessions",
                 fmt::format("{}", fmt::join(c.data.holdout, ", ")).c_str(),
                 c.data.holdout.size() == 1 ? "is" : "are", cli::shell_quote(run_dir).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"metatape: neural population forecasters that adapt to a new session in a few "
               "gradient steps"};
  app.require_subcommand(1);
  app.set_version_flag("--version", fmt::format("metatape, commit {} ({})", METATAPE_GIT_COMMIT,
                                                built_with_cuda() ? "CPU and CUDA" : "CPU only"));
  std::string config_file, run_dir, out_dir, split = "test";
  std::vector<std::string> sets;

  auto* data_cmd = app.add_subcommand("data", "data sets");
  data_cmd->require_subcommand(1);
  auto* synth = data_cmd->add_subcommand("synth", "write a synthetic multi-session data set");
  synth->add_option("--out", out_dir, "folder for the .npz sessions")->required();
  synth->add_option("--config", config_file, "run config JSON (its data.synthetic section)");
  synth->add_option("--set", sets, "override, e.g. --set data.synthetic.num_sessions=8");
  bool synth_overwrite = false;
  synth->add_flag("--overwrite", synth_overwrite,
                  "remove the .npz files already in --out first (else such a folder is refused: "
                  "two sets would mix)");

  auto* info = data_cmd->add_subcommand(
      "info", "list the sessions as a training with this config would read them (writes nothing)");
  info->add_option("--config", config_file, "run config JSON (its data section)");
  info->add_option("--set", sets,
                   "override, e.g. --set data.path=\"recordings\" --set data.csv.header=true");

  auto* train = app.add_subcommand("train", "train a forecaster; writes a run folder");
  train->add_option("--config", config_file, "run config JSON (defaults when omitted)");
  train->add_option("--set", sets, "override a config value, e.g. --set train.lr=3e-4");
  train->add_option("--run", run_dir, "run folder to create (or, with --resume, to continue)")
      ->required();
  bool overwrite = false, resume = false;
  train->add_flag("--resume", resume,
                  "continue the run in --run from its saved state (its last evaluation point, or "
                  "the step where Ctrl-C stopped it; or a finished run, given a larger --set "
                  "train.steps=N); its "
                  "config.json is used; train.steps, train.patience, train.log_progress, "
                  "threads, data.path (same recordings) and the adapt/online/bench sections may "
                  "change, nothing else");
  train->add_flag("--overwrite", overwrite,
                  "replace the run already in the --run folder (its model, metrics and results "
                  "are deleted first)");
  std::string method;
  train->add_option("--method", method,
                    "standard (the default), fomaml or e2e-ttt (same as --set "
                    "train.method=...)");
  std::string device_name = "cpu";
  train->add_option("--device", device_name, "cpu, cuda or cuda:<index> (default cpu)");

  auto* eval = app.add_subcommand("eval", "evaluate a run's model");
  eval->add_option("--run", run_dir, "run folder written by train")->required();
  eval->add_option("--split", split, "train, val or test")->capture_default_str();
  eval->add_option("--set", sets,
                   "override where and how recordings are read, e.g. --set "
                   "data.path=\"recordings\"");
  bool unadapted = false;
  eval->add_flag("--unadapted", unadapted,
                 "meta-learned runs (fomaml, e2e-ttt): evaluate the initial weights without the "
                 "inner loop (default: after it, as in training's validation)");
  eval->add_option("--device", device_name, "cpu, cuda or cuda:<index> (default cpu)");

  auto* adapt = app.add_subcommand("adapt", "adapt a run's model to its held-out sessions");
  adapt->add_option("--run", run_dir, "run folder written by train")->required();
  adapt->add_option("--set", sets, "override, e.g. --set adapt.train.steps=100");
  adapt->add_option("--device", device_name, "cpu, cuda or cuda:<index> (default cpu)");
  std::string adapt_label;
  adapt->add_option("--label", adapt_label,
                    "the adaptation's name: its folder {run}/adapt/NAME/ (default: the held-out "
                    "sessions' names, sorted, joined by '+'); adapting under a name again "
                    "replaces that adaptation, other names are kept");

  auto* predict = app.add_subcommand(
      "predict", "forecasts of one session from a run's trained or adapted model, as an .npz");
  predict->add_option("--run", run_dir, "run folder written by train (and adapt, online --label)")
      ->required();
  std::string predict_session, predict_method, predict_split = "test";
  predict->add_option("--session", predict_session,
                      "a training session of the run, or a held-out one adapted by adapt or kept "
                      "by online --label")
      ->required();
  predict->add_option("--method", predict_method,
                      "held-out sessions: the adapted model to use, e.g. finetune:embeddings or "
                      "inner-loop (default: adapt.json's best_method)");
  std::string predict_adapted;
  predict->add_option("--adapted", predict_adapted,
                      "held-out sessions: the adaptation (adapt --label, online --label) whose "
                      "model to use; "
                      "needed only where several adaptations of the run cover the session ('.': "
                      "the one an earlier metatape wrote into the run folder itself)");
  predict->add_option("--split", predict_split,
                      "windows to forecast: train, val, test, all (every window), next (the "
                      "frames after the recording's end) or unseen (a model online --label kept "
                      "with online.unseen_frames: the frames after its stream)")
      ->capture_default_str();
  predict->add_option("--out", out_dir, "the .npz to write (pred, target, start, t, mean, std)")
      ->required();
  predict->add_option("--set", sets, "override, e.g. --set data.path=\"new_recordings\"");
  predict->add_option("--device", device_name, "cpu, cuda or cuda:<index> (default cpu)");

  auto* online = app.add_subcommand(
      "online", "online vs offline adaptation: on the validation + test stream of each session "
                "the run was trained on, and on the whole recording of each held-out session "
                "(data.holdout), new to the model; --set 'data.holdout=[]' scores the trained ones "
                "alone; online.stride frames between predictions, 1 by default: every window; "
                "Ctrl-C stops it, writing nothing (online.* settings; writes online.json)");
  online->add_option("--run", run_dir, "run folder written by train")->required();
  std::vector<double> drifts;
  online->add_option("--drift", drifts,
                     "synthetic runs only: drift magnitudes to sweep (the data regenerated for "
                     "each), e.g. --drift 0 0.1 0.2 0.3");
  online->add_option("--set", sets, "override, e.g. --set online.lr=1e-2");
  online->add_option("--device", device_name,
                     "cpu, cuda or cuda:<index> (default cpu): where the model runs, and whose "
                     "update and forecast milliseconds are reported");
  std::string online_forecasts;
  online->add_option("--forecasts", online_forecasts,
                     "a new or empty folder outside the run folder (made if missing; its parent "
                     "must exist) for each session's forecasts as the three methods made them, "
                     "SESSION.npz (frozen, offline, online: windows x neurons x frames in the "
                     "recording's units; target, start, t, unseen; mean and std when z-scored) "
                     "and forecasts.json; written when the run ends, none if it stops");
  std::string online_label;
  online->add_option("--label", online_label,
                     "keep the model each held-out session's online adaptation leaves behind, as "
                     "the adaptation {run}/adapt/NAME/ (metatape predict --adapted NAME; the "
                     "session z-scored as its stream was); again under a name replaces it");

  auto* bench = app.add_subcommand("bench", "benchmarks: adaptation (the experiment plan), memory");
  bench->require_subcommand(1);
  auto* bench_adapt = bench->add_subcommand(
      "adaptation", "train standard / FOMAML / E2E-TTT, adapt each to the held-out sessions");
  auto* bench_memory = bench->add_subcommand(
      "memory", "E2E-TTT meta-gradient peak memory against inner steps, with and without checkpointing");
  bench_adapt->add_option("--device", device_name, "cpu, cuda or cuda:<index> (default cpu)");
  bool bench_resume = false;
  bench_adapt->add_flag("--resume", bench_resume,
                        "continue the benchmark stopped in --out (Ctrl-C, a crash): finished "
                        "trainings and adaptation runs are kept, a training in progress continues "
                        "from its saved state as if it had not stopped; its config is used (--set "
                        "may change threads only)");
  bool bench_overwrite = false;
  bench_adapt->add_flag("--overwrite", bench_overwrite,
                        "start again in an --out folder that holds a benchmark, finished or not "
                        "(only the files a benchmark writes are deleted first)");
  for (auto* b : {bench_adapt, bench_memory}) {
    b->add_option("--config", config_file, "run config JSON (defaults when omitted)");
    b->add_option("--set", sets,
                  b == bench_adapt ? "override, e.g. --set bench.adapt_steps=100"
                                   : "override, e.g. --set 'bench.memory_inner_steps=[1,3]'");
    b->add_option("--out", out_dir, "folder for the JSON results and plots")->required();
  }

  auto* demo = app.add_subcommand("demo", "synthetic data -> train POCO -> adapt to 2 unseen sessions");
  demo->add_option("--run", run_dir, "run folder (default: a fresh folder under /tmp)");
  demo->add_option("--set", sets, "override a demo config value");
  demo->add_flag("--overwrite", overwrite, "replace the run already in the --run folder");

  // A misspelt command: CLI11 would only say that a subcommand is required.
  if (argc > 1 && argv[1][0] != '-') {
    std::vector<std::string> names;
    for (const CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
      names.push_back(sub->get_name());
    if (std::find(names.begin(), names.end(), argv[1]) == names.end()) {
      std::fprintf(stderr, "error: unknown command '%s'; the commands are %s (metatape --help)\n",
                   argv[1], fmt::format("{}", fmt::join(names, ", ")).c_str());
      return static_cast<int>(CLI::ExitCodes::ExtrasError);
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (synth->parsed()) {
      cli::RunConfig c = cli::load_config(config_file, sets);
      // A folder is one data set: files of an earlier set would be loaded with this one.
      // (The loaders' own listing: the files a training on the folder would read.) Recordings
      // of another kind (HDF5, CSV) are never removed: such a folder is refused.
      std::vector<std::string> earlier;
      if (fs::is_directory(out_dir)) {
        earlier = data::detail::list_files(out_dir, {".npz"}, "data synth");
        const auto others =
            data::detail::list_files(out_dir, {".h5", ".hdf5", ".nwb", ".csv"}, "data synth");
        MT_CHECK(others.empty(),
                 "data synth: {} holds recordings already ({}{}), and a folder is one data set "
                 "of one kind; choose an empty folder",
                 out_dir, fs::path(others.front()).filename().string(),
                 others.size() > 1 ? fmt::format(" and {} more", others.size() - 1) : "");
      }
      MT_CHECK(earlier.empty() || synth_overwrite,
               "data synth: {} holds {} .npz file(s) already ({}{}), which a training on the "
               "folder would load with the new set; choose an empty folder, or pass --overwrite "
               "to remove them first",
               out_dir, earlier.size(), fs::path(earlier.front()).filename().string(),
               earlier.size() > 1 ? ", ..." : "");
      data::Dataset d = data::synthesize(c.data.synthetic);
      // All or nothing: the set is written into a work folder beside (hidden: no loader reads
      // it), and only once every file is there does it replace the earlier set. A work folder
      // left by a killed synth (its process gone) is removed.
      const bool made_out_dir = !fs::exists(out_dir);
      std::error_code ec;
      fs::create_directories(out_dir, ec);
      MT_CHECK(!ec && fs::is_directory(out_dir),
               "data synth: --out {}: cannot create the folder ({}); check the path and "
               "permissions",
               out_dir, ec.message());
      for (const auto& entry : fs::directory_iterator(out_dir, ec)) {
        if (cli::left_by_dead_process(entry.path().filename().string(), ".synth.", ".partial")) {
          std::error_code rm;
          fs::remove_all(entry.path(), rm);
        }
      }
      const fs::path work = fs::path(out_dir) / fmt::format(".synth.{}.partial", ::getpid());
      try {
        data::write_dataset_npz(d, work.string());
      } catch (const std::exception& e) {
        std::error_code rm;
        fs::remove_all(work, rm);
        if (made_out_dir) fs::remove(out_dir, rm);  // (only while empty)
        MT_FAIL("data synth: writing the set failed: {}; nothing of the new set was kept in {}",
                e.what(), out_dir);
      }
      // Every file written: the earlier set goes and the new one takes its place (renames in
      // one folder).
      for (const auto& p : earlier) fs::remove(p);
      for (const auto& session : d.sessions)
        fs::rename(work / (session.name + ".npz"), fs::path(out_dir) / (session.name + ".npz"));
      if (!d.sessions.empty())  // the renames above, durable
        io::sync_folder_of(fs::path(out_dir) / (d.sessions.front().name + ".npz"));
      std::error_code rm;
      fs::remove_all(work, rm);
      for (const auto& s : d.sessions)
        std::printf("%s: %lld neurons x %lld frames\n", s.name.c_str(), (long long)s.num_neurons,
                    (long long)s.num_frames);
      std::printf("wrote %lld sessions to %s\n", (long long)d.size(), out_dir.c_str());
      return 0;
    }
    if (info->parsed()) {
      cli::RunConfig c = cli::load_config(config_file, sets);
      check_data_path(c, sets, "data info", config_file, kConfigPathCause);
      apply_threads(c);
      run_data_info(c);
      return 0;
    }
    if (train->parsed()) {
      if (!method.empty()) sets.push_back("train.method=\"" + method + "\"");
      if (resume) {
        MT_CHECK(config_file.empty() && !overwrite,
                 "train --resume continues the run with its own config.json: drop {}",
                 overwrite ? "--overwrite" : "--config");
        MT_CHECK(fs::exists(run_dir + "/config.json") ||
                     fs::exists(run_dir + "/train_state.safetensors"),
                 "train --resume: {} holds no run (no config.json); start it without --resume",
                 run_dir);
        MT_CHECK(fs::exists(run_dir + "/config.json"),
                 "train --resume: {}/config.json is missing, and a run resumes with the config "
                 "it was trained with; restore the file, or start the run again with --overwrite",
                 run_dir);
        Run run = read_run(run_dir, /*note_unfinished=*/false);
        cli::RunConfig c = sets.empty() ? run.config : cli::apply_overrides(run.config_json, sets);
        resolve_run_data_path(run_dir, c, sets, "train --resume");
        const Device device = parse_device(device_name);  // before the data is read
        apply_threads(c);
        Data d = load_data(c);
        // Recordings added to the folder since (a later animal) are not part of the run.
        check_same_recordings(run, d.train, run_dir, c);
        run_train(c, run_dir, d, device, false, true);
        return 0;
      }
      cli::RunConfig c = cli::load_config(config_file, sets);
      check_data_path(c, sets, "train", config_file, kConfigPathCause);
      cli::make_data_path_absolute(c);  // config.json then reads the recordings from anywhere
      std::error_code ec;
      MT_CHECK(c.data.path.empty() || !fs::is_directory(c.data.path) ||
                   !fs::exists(run_dir) || !fs::equivalent(run_dir, c.data.path, ec),
               "train: --run {} is the recordings' folder (data.path): a run folder holds the "
               "run's model and results, which would lie among the recordings; choose another "
               "folder",
               run_dir);
      const Device device = parse_device(device_name);  // before the data is read
      apply_threads(c);
      Data d = load_data(c);
      cli::note_default_csv_rate(c, d);
      run_train(c, run_dir, d, device, overwrite);
      return 0;
    }
    if (eval->parsed()) return run_eval(run_dir, split, unadapted, sets, parse_device(device_name));
    if (predict->parsed()) {
      run_predict(run_dir, predict_session, predict_method, predict_adapted, predict_split,
                  out_dir, sets, parse_device(device_name));
      return 0;
    }
    if (online->parsed()) {
      stop_context.store(3);
      StopOnSignal on_signal;
      if (online->count("--label") > 0)  // (an empty --label "" too)
        cli::check_adaptation_label(online_label, /*given=*/true, "online");
      MT_CHECK(online->count("--forecasts") == 0 || !online_forecasts.empty(),
               "online: --forecasts \"\" names no folder; name one, or drop --forecasts");
      run_online_cmd(run_dir, drifts, sets, parse_device(device_name), online_label,
                     online_forecasts);
      return 0;
    }
    if (adapt->parsed()) {
      if (!adapt_label.empty()) cli::check_adaptation_label(adapt_label, /*given=*/true);
      Run run = read_run(run_dir);
      cli::RunConfig c = run.config;
      if (!sets.empty()) c = cli::apply_overrides(run.config_json, sets);
      check_model_settings_kept(run, c, "adapt");
      // The training's settings: adapt reads only the inner loop's (a meta-learned run's row);
      // any other --set train.* would change nothing, without a word.
      std::vector<std::string> unread;
      for (const std::string& s : sets) {
        const std::string key = s.substr(0, s.find('='));
        if (key.rfind("train.", 0) == 0 && key != "train.meta.inner_lr" &&
            key != "train.meta.inner_steps" && key != "train.meta.params")
          unread.push_back(key);
      }
      if (!unread.empty())
        std::fprintf(stderr,
                     "note: adapt does not read %s: training settings (the fine-tuning's are "
                     "adapt.train.*; of train.*, adapt reads only the inner loop's "
                     "train.meta.inner_lr, inner_steps and params)\n",
                     fmt::format("{}", fmt::join(unread, ", ")).c_str());
      resolve_run_data_path(run_dir, c, sets, "adapt");
      const Device device = parse_device(device_name);  // before the data is read
      apply_threads(c);
      Data d = load_data(c, {.need_training = false});
      stop_context.store(2);
      StopOnSignal on_signal;
      run_adapt(c, run_dir, d, device, run.trained_on, run.trained_sizes,
                !sets.empty(), adapt_label, run.config.data.path, sets, &run.config_json);
      return 0;
    }
    if (bench_adapt->parsed()) {
      MT_CHECK(!(bench_resume && bench_overwrite),
               "bench adaptation: --resume continues a benchmark, --overwrite starts it again: "
               "pass one of them");
      cli::RunConfig c;
      if (bench_resume) {
        MT_CHECK(config_file.empty(),
                 "bench adaptation --resume continues with the config the benchmark started with "
                 "(in {}): drop --config",
                 cli::bench_state_path(out_dir));
        // (Its data.path as it started: a resumed benchmark matches its recorded settings.)
        json started_with = cli::read_bench_state(out_dir).at("config");
        cli::fill_settings_of_older_runs(started_with);
        c = cli::apply_overrides(started_with, sets);
      } else {
        c = cli::load_config(config_file, sets);
        check_data_path(c, sets, "bench adaptation", config_file, kConfigPathCause);
        cli::make_data_path_absolute(c);
      }
      apply_threads(c);
      cli::BenchControl control;
      control.resume = bench_resume;
      control.overwrite = bench_overwrite;
      control.stop_requested = [] { return stop_signal.load() != 0; };
      stop_context.store(1);
      StopOnSignal on_signal;
      cli::run_bench_adaptation(c, out_dir, parse_device(device_name), control);
      if (stop_signal.load() != 0)
        std::fprintf(stderr, "note: the stop came during the last adaptation run or the plots: "
                             "the benchmark finished (%s/adaptation.json)\n",
                     out_dir.c_str());
      return 0;
    }
    if (bench_memory->parsed()) {
      cli::RunConfig c = cli::load_config(config_file, sets);
      apply_threads(c);
      cli::run_bench_memory(c, out_dir);
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
      run_train(c, run_dir, d, kCPU, overwrite);
      {  // a stop asked for during training's finishing does not carry over
        stop_context.store(2);
        StopOnSignal on_signal;
        run_adapt(c, run_dir, d, kCPU, d.train.names(), sizes_of(d.train));
      }
      std::printf("demo finished in %.1f s\n",
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      return 0;
    }
  } catch (const meta::OnlineStopped&) {  // Ctrl-C during online
    std::fprintf(stderr, "online: stopped; online.json was not written (an earlier one is as it "
                         "was), nor any --forecasts or --label files\n");
    const int signal_number = stop_signal.load();
    return 128 + (signal_number != 0 ? signal_number : SIGINT);
  } catch (const AdaptationStopped& e) {  // Ctrl-C during adapt
    std::fprintf(stderr, "%s\n", e.what());
    const int signal_number = stop_signal.load();
    return 128 + (signal_number != 0 ? signal_number : SIGINT);
  } catch (const cli::BenchStopped& e) {  // Ctrl-C during bench adaptation
    std::fprintf(stderr, "%s\n", e.what());
    const int signal_number = stop_signal.load();
    return 128 + (signal_number != 0 ? signal_number : SIGINT);
  } catch (const meta::TrainingStopped& e) {  // Ctrl-C during train or demo
    if (e.state_saved)
      std::fprintf(stderr,
                   "stopped after step %lld; the training state is saved in "
                   "%s/train_state.safetensors: continue with metatape train --resume --run '%s'\n",
                   (long long)e.step, run_dir.c_str(), run_dir.c_str());
    else
      std::fprintf(stderr, "stopped after step %lld\n", (long long)e.step);
    const int signal_number = stop_signal.load();
    return 128 + (signal_number != 0 ? signal_number : SIGINT);  // as the signal would have
  } catch (const meta::TrainingDiverged& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    // The run folder keeps its last evaluation point, but a run resumes only with the settings
    // it was trained with: the way on is a new run.
    if (train->parsed())
      std::fprintf(stderr,
                   "note: %s keeps the model and state of the last evaluation point before step "
                   "%lld; a run resumes only with the settings it was trained with, so train it "
                   "again with the lower value and --overwrite (or in another folder)\n",
                   run_dir.c_str(), (long long)e.step);
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "error: out of memory: what this command was asked to hold (data, model, batch) "
                 "does not fit in this machine's memory; use fewer or shorter sessions, a smaller "
                 "model or batch, or a machine with more memory\n");
    if (train->parsed() && fs::exists(run_dir + "/train_state.safetensors"))
      std::fprintf(stderr,
                   "note: %s keeps the state of its last evaluation point: with the memory freed "
                   "elsewhere, metatape train --resume --run '%s' continues it; with a smaller "
                   "batch or model, train it again with --overwrite (a run resumes only with the "
                   "settings it was trained with)\n",
                   run_dir.c_str(), run_dir.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
