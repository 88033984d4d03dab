#include "tools/cli/bench.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <omp.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>

#include "engine/autograd/grad_mode.h"
#include "engine/core/backend.h"
#include "engine/io/checkpoint.h"
#include "meta/adaptation.h"
#include "meta/maml.h"
#include "meta/training.h"
#include "tools/cli/common.h"

#ifndef METATAPE_SOURCE_DIR
#define METATAPE_SOURCE_DIR ""
#endif
#include "metatape_git_commit.h"  // METATAPE_GIT_COMMIT

namespace fs = std::filesystem;
using nlohmann::json;

extern char** environ;

namespace mt::cli {

namespace {

// A config an earlier metatape recorded, read as the run or benchmark used it.
json older_filled(json config) {
  fill_settings_of_older_runs(config);
  return config;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  return "unknown CPU";
}

// The 1-, 5- and 15-minute load averages (/proc/loadavg; empty where there is none).
std::vector<double> load_average() {
  std::ifstream in("/proc/loadavg");
  std::vector<double> load(3);
  for (double& v : load)
    if (!(in >> v)) return {};
  return load;
}

json machine_json(Device device = kCPU) {
  json m = {{"device", device.str()},
            {"cpu", cpu_name()},
            {"cores", omp_get_num_procs()},
            {"threads", omp_get_max_threads()},
            {"load_average_at_start", load_average()},
            {"commit", METATAPE_GIT_COMMIT}};
  if (const char* policy = std::getenv("OMP_WAIT_POLICY")) m["omp_wait_policy"] = policy;
  if (const char* spin = std::getenv("GOMP_SPINCOUNT")) m["gomp_spincount"] = spin;
  if (device.is_cuda()) m["device_name"] = cuda_device_description(device.index);
  return m;
}

double mib(int64_t bytes) { return double(bytes) / double(1 << 20); }

// The adaptation procedure a method's model is meant to be used with.
std::string own_procedure(const std::string& method) {
  return method == "standard" ? "finetune" : "inner";
}

// Copies every parameter of `from` into `to` (the same model configuration and sessions).
void copy_parameters(meta::Forecaster& from, meta::Forecaster& to) {
  NoGradGuard no_grad;
  auto src = from.module()->named_parameters();
  auto dst = to.module()->named_parameters();
  MT_CHECK(src.size() == dst.size(), "bench: models with different parameter lists");
  for (size_t i = 0; i < dst.size(); ++i) dst[i].second.copy_(src[i].second);
}

struct RunKey {
  std::string method, procedure, params;
};

// A row of the results table: one (method, procedure, parameter set), every held-out session.
struct Row {
  RunKey key;
  std::vector<meta::AdaptResult> per_session;
};

// Prints the table under `heading` and returns it as JSON: per row, the mean over its sessions;
// steps to 95% are read off the mean validation curve.
json adaptation_table(const std::vector<Row>& rows, const std::string& heading) {
  json table = json::array();
  std::printf("\n%s (steps to 95%% from the mean validation curve; test@0: before any step; "
              "test@best: at each session's best validation point, early stopping's readout):\n",
              heading.c_str());
  std::printf("%-9s %-8s %-22s %10s %11s %9s %9s %9s %10s %10s %10s %9s %9s\n", "method",
              "adapt", "params", "adapted", "steps_to_95", "(gain)", "initial", "final", "test",
              "test@0", "test@best", "seconds", "peak_MiB");
  for (const auto& row : rows) {
    const meta::AdaptSummary m = meta::summarize_adaptation(row.per_session);
    std::printf("%-9s %-8s %-22s %10lld %11lld %9lld %9.4f %9.4f %10.4f %10.4f %10.4f %9.2f "
                "%9.1f%s\n",
                row.key.method.c_str(), row.key.procedure.c_str(), row.key.params.c_str(),
                (long long)m.adapted_parameters, (long long)m.steps_to_95,
                (long long)m.steps_to_95_gain, m.initial_score, m.final_score, m.test_score,
                m.test_score_initial, m.test_score_at_best, m.seconds, mib(m.peak_bytes),
                m.diverged_sessions > 0
                    ? fmt::format("  ({} of {} diverged)", m.diverged_sessions,
                                  row.per_session.size())
                          .c_str()
                    : "");
    json curve = json::array();
    for (const auto& [step, v] : m.mean_curve) curve.push_back({{"step", step}, {"val_score", v}});
    table.push_back({{"method", row.key.method},
                     {"procedure", row.key.procedure},
                     {"params", row.key.params},
                     {"sessions", row.per_session.size()},
                     {"adapted_parameters", m.adapted_parameters},
                     {"steps_to_95", m.steps_to_95},
                     {"steps_to_95_gain", m.steps_to_95_gain},
                     {"diverged_sessions", m.diverged_sessions},
                     {"initial_score", m.initial_score},
                     {"final_score", m.final_score},
                     {"test_score", m.test_score},
                     {"test_score_initial", m.test_score_initial},
                     {"best_score", m.best_score},
                     {"test_score_at_best", m.test_score_at_best},
                     {"seconds", m.seconds},
                     {"peak_bytes", m.peak_bytes},
                     {"mean_curve", curve}});
  }
  std::printf("(adapted: elements of the selected tensors, an embedding table with the rows of "
              "every held-out session, of which each session's adaptation moves its own; "
              "steps_to_95 -1: the final score is not positive, or a session diverged; "
              "peak_MiB: the largest session's, the model's parameters plus the most a step "
              "allocates above what was held when its adaptation started)\n");
  std::fflush(stdout);
  return table;
}


}  // namespace

std::string bench_state_path(const std::string& out_dir) { return out_dir + "/bench_state.json"; }

nlohmann::json read_bench_state(const std::string& out_dir) {
  const std::string path = bench_state_path(out_dir);
  MT_CHECK(fs::exists(path),
           "bench adaptation --resume: {} has no bench_state.json{}; start the benchmark without "
           "--resume",
           out_dir,
           fs::exists(out_dir + "/adaptation.json")
               ? " (the benchmark there finished: adaptation.json holds its results)"
               : " (no benchmark was started there)");
  const json state = read_json_file(path);
  MT_CHECK(state.is_object() && state.value("version", 0) == 1 && state.contains("config") &&
               state.contains("identity") && state.contains("trainings") &&
               state["trainings"].is_array() && state.contains("runs") && state["runs"].is_array(),
           "{}: not a benchmark state this metatape can read; start the benchmark again with "
           "--overwrite instead of --resume",
           path);
  return state;
}

namespace {

// The end of a benchmark, plain or cross-validated: <out_dir>/adaptation.json written (with the
// table and the load average at the end), its progress file removed (adaptation.json holds
// everything), the plots drawn.
json finish_benchmark(json out, const json& table, const std::string& out_dir,
                      const std::function<bool()>& stopped) {
  out["table"] = table;
  out["machine"]["load_average_at_end"] = load_average();
  const std::string path = out_dir + "/adaptation.json";
  write_file_atomic(path, out.dump(2) + "\n");
  fs::remove(bench_state_path(out_dir));
  std::printf("wrote %s\n", path.c_str());
  plot_results("adaptation", path, out_dir, stopped);
  return out;
}

bool is_fold_dir(const fs::path& p) {
  const std::string name = p.filename().string();
  return name.size() > 5 && name.rfind("fold_", 0) == 0 &&
         std::all_of(name.begin() + 5, name.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
}

// The files and fold folders a benchmark (plain or cross-validated) writes in its output folder,
// by their exact names (a fold folder only when it holds a benchmark): what --overwrite removes
// and what a new benchmark without it refuses to touch. Other files are left alone.
std::vector<fs::path> benchmark_files(const std::string& out_dir) {
  std::vector<fs::path> found;
  std::vector<std::string> names = {"bench_state.json", "adaptation.json",
                                    "adaptation_curves.png", "adaptation_ablation.png",
                                    "adaptation_training.png"};
  for (const char* method : {"standard", "fomaml", "e2e-ttt"}) {
    names.push_back(fmt::format("model_{}.safetensors", method));
    names.push_back(fmt::format("train_state_{}.safetensors", method));
  }
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    const fs::path& p = entry.path();
    const std::string name = p.filename().string();
    if (entry.is_directory()
            ? is_fold_dir(p) && (fs::exists(p / "adaptation.json") ||
                                 fs::exists(p / "bench_state.json"))
            : std::find(names.begin(), names.end(), name) != names.end())
      found.push_back(p);
  }
  std::sort(found.begin(), found.end());
  return found;
}

// bench.folds = K: the benchmark once per group of sessions held out, pooled (bench.h).
json run_bench_folds(const RunConfig& c, const std::string& out_dir, Device device,
                     const BenchControl& control) {
  MT_CHECK(c.data.holdout.empty(),
           "bench adaptation: bench.folds = {} holds out each group of sessions in turn, so "
           "data.holdout must be empty (it names {}); drop it, or set bench.folds=0 to hold those "
           "out once",
           c.bench.folds, fmt::format("{}", fmt::join(c.data.holdout, ", ")));
  const Data all = load_data(c);  // data.holdout is empty: every session is in `train`
  const int64_t n = all.train.size(), k_folds = c.bench.folds;
  MT_CHECK(k_folds <= n,
           "bench.folds = {}: {} session(s) cannot make {} held-out groups of at least one "
           "session; lower bench.folds to at most {}",
           k_folds, n, k_folds, n);
  make_folder(out_dir, "--out");
  const FolderLock lock(out_dir, ".bench.lock", "--out", "metatape bench adaptation");
  std::vector<std::vector<std::string>> groups;
  for (int64_t k = 0; k < k_folds; ++k) {
    std::vector<std::string> g;
    for (int64_t i = k * n / k_folds; i < (k + 1) * n / k_folds; ++i) g.push_back(all.train[i].name);
    groups.push_back(g);
  }
  auto fold_dir = [&](int64_t k) { return fmt::format("{}/fold_{}", out_dir, k + 1); };
  auto fold_config = [&](int64_t k) {
    RunConfig ck = c;
    ck.bench.folds = 0;
    ck.data.holdout = groups[size_t(k)];
    return ck;
  };

  // The state: the config (what --resume reads) and what a resumed benchmark must match: the
  // config without the thread count, every recording, the device kind.
  const std::string device_kind = device.is_cuda() ? "cuda" : "cpu";
  auto identity_of = [&](json config) {
    config.erase("threads");
    config["train"].erase("log_progress");
    config["sessions"] = session_json(all.train);
    config["device"] = device_kind;
    return config;
  };
  const json identity = identity_of(c.to_json());
  const std::string state_path = bench_state_path(out_dir);
  json state = {{"version", 1},     {"config", c.to_json()},    {"identity", identity},
                {"folds", groups},  {"trainings", json::array()}, {"runs", json::array()}};
  if (control.resume) {
    const json saved = read_bench_state(out_dir);
    json saved_identity = saved.at("identity");
    fill_settings_of_older_runs(saved_identity);  // (as the config it resumes with)
    const json then = with_missing_from(
        saved_identity, identity_of(config_from_json(json::object()).to_json()));
    const std::string differs = describe_identity_difference(then, identity, "the benchmark");
    MT_CHECK(differs.empty(),
             "bench adaptation --resume --out {}: {}; a benchmark continues with the settings, "
             "recordings and device it started with (only threads and train.log_progress may "
             "change), or start it again "
             "with --overwrite instead of --resume",
             out_dir, differs);
    state["identity"] = saved.at("identity");
  } else {
    const std::vector<fs::path> earlier = benchmark_files(out_dir);
    MT_CHECK(earlier.empty() || control.overwrite,
             "--out {}: the folder holds a benchmark ({}); continue an unfinished one with "
             "--resume, or pass --overwrite to start again (its results, folds and models are "
             "deleted)",
             out_dir, earlier.front().filename().string());
    for (const auto& p : earlier) fs::remove_all(p);
  }
  write_file_atomic(state_path, state.dump(1) + "\n");
  json out = {{"machine", machine_json(device)},
              {"config", c.to_json()},
              {"sessions", session_json(all.train)},
              {"holdout_sessions", session_json(all.train)}};
  json folds = json::array(), trainings = json::array(), runs = json::array();
  std::vector<Row> rows;
  for (int64_t k = 0; k < k_folds; ++k) {
    const std::string dir = fold_dir(k);
    const RunConfig ck = fold_config(k);
    std::printf("\n=== fold %lld of %lld: held out %s (%s) ===\n", (long long)(k + 1),
                (long long)k_folds, fmt::format("{}", fmt::join(groups[size_t(k)], ", ")).c_str(),
                dir.c_str());
    std::fflush(stdout);
    json result;
    if (control.resume && fs::exists(dir + "/adaptation.json") &&
        !fs::exists(bench_state_path(dir))) {
      result = read_json_file(dir + "/adaptation.json");
      // Finished before the stop: the same benchmark's fold (config, recordings) or refused.
      const Data dk = load_data(ck);
      auto fold_identity = [&](json config, const json& sessions, const json& held_out) {
        if (!config.is_object()) config = json::object();
        config.erase("threads");
        if (config.contains("train") && config["train"].is_object())
          config["train"].erase("log_progress");
        config["sessions"] = sessions;
        config["holdout_sessions"] = held_out;
        return config;
      };
      const json now =
          fold_identity(ck.to_json(), session_json(dk.train), session_json(dk.holdout));
      const json then = with_missing_from(
          fold_identity(older_filled(result.value("config", json::object())),
                        result.value("train_sessions", json::array()),
                        result.value("holdout_sessions", json::array())),
          fold_identity(config_from_json(json::object()).to_json(), json::array(),
                        json::array()));
      const std::string differs = describe_identity_difference(then, now, "the fold");
      MT_CHECK(differs.empty(),
               "bench adaptation --resume --out {}: {}/adaptation.json is not this benchmark's "
               "fold {}: {}; start the benchmark again with --overwrite",
               out_dir, dir, k + 1, differs);
      std::printf("fold %lld finished earlier (%s/adaptation.json)\n", (long long)(k + 1),
                  dir.c_str());
    } else {
      if (control.stop_requested && control.stop_requested())
        throw BenchStopped(fmt::format(
            "stopped before fold {}; the progress is saved in {}: continue with metatape bench "
            "adaptation --resume --out '{}'{}",
            k + 1, out_dir, out_dir, device.is_cuda() ? " --device " + device.str() : ""));
      BenchControl fold_control = control;
      fold_control.resume = control.resume && fs::exists(bench_state_path(dir));
      fold_control.overwrite = !fold_control.resume;  // the folder is this benchmark's fold
      fold_control.resume_dir = out_dir;
      result = run_bench_adaptation(ck, dir, device, fold_control);
    }
    folds.push_back({{"fold", k + 1},
                     {"holdout", groups[size_t(k)]},
                     {"folder", fs::path(dir).filename().string()},
                     {"table", result.at("table")}});
    for (json t : result.at("training")) {
      t["fold"] = k + 1;
      trainings.push_back(t);
    }
    for (json r : result.at("runs")) {
      r["fold"] = k + 1;
      const RunKey key{r.value("method", std::string()), r.value("procedure", std::string()),
                       r.value("params", std::string())};
      auto it = std::find_if(rows.begin(), rows.end(), [&](const Row& row) {
        return row.key.method == key.method && row.key.procedure == key.procedure &&
               row.key.params == key.params;
      });
      if (it == rows.end()) it = rows.insert(rows.end(), Row{key, {}});
      it->per_session.push_back(meta::AdaptResult::from_json(r));
      runs.push_back(r);
    }
  }
  const json table = adaptation_table(
      rows, fmt::format("all {} folds: adaptation to {} unseen sessions, mean over sessions",
                        k_folds, n));
  out["folds"] = folds;
  out["training"] = trainings;
  out["runs"] = runs;
  return finish_benchmark(std::move(out), table, out_dir, control.stop_requested);
}

}  // namespace

json run_bench_adaptation(const RunConfig& c, const std::string& out_dir, Device device,
                          const BenchControl& control) {
  MT_CHECK(!fs::exists(out_dir) || fs::is_directory(out_dir), "--out {}: exists and is not a folder",
           out_dir);
  if (c.bench.folds > 0) return run_bench_folds(c, out_dir, device, control);
  make_folder(out_dir, "--out");
  const FolderLock lock(out_dir, ".bench.lock", "--out", "metatape bench adaptation");
  Data d = load_data(c);
  MT_CHECK(!d.holdout.empty(),
           "bench adaptation: no held-out sessions; set data.holdout to the sessions the training "
           "must not see (e.g. --set 'data.holdout=[\"a\",\"b\"]')");
  MT_CHECK(c.model.kind == "poco", "bench adaptation: model.kind must be poco, got {}",
           c.model.kind);
  const meta::NewSessionInit init = meta::parse_new_session_init(c.bench.new_session_init);
  data::PreparedData train_data(d.train, c.data.prep), held(d.holdout, c.data.prep);
  for (const auto& note : train_data.notes()) std::fprintf(stderr, "note: %s\n", note.c_str());
  for (const auto& note : held.notes()) std::fprintf(stderr, "note: %s\n", note.c_str());
  if (std::any_of(c.bench.methods.begin(), c.bench.methods.end(),
                  [](const std::string& m) { return m != "standard"; }))
    if (const std::string note = meta::meta_sessions_note(train_data); !note.empty())
      std::fprintf(stderr, "note: %s\n", note.c_str());
  {  // The parameter sets fine-tuned: every one for standard training, the first for the
     // meta-learned methods' control row (bench.cross_procedures).
    const bool standard = std::find(c.bench.methods.begin(), c.bench.methods.end(),
                                    "standard") != c.bench.methods.end();
    std::vector<std::string> finetuned;
    if (standard)
      finetuned = c.bench.param_sets;
    else if (!c.bench.methods.empty() && c.bench.cross_procedures && !c.bench.param_sets.empty())
      finetuned = {c.bench.param_sets.front()};
    if (!finetuned.empty()) cli::note_unused_adapt_lr(c, finetuned);
  }
  std::printf("bench adaptation: %lld training sessions, %lld held out (%s); methods %s; "
              "%lld adaptation steps; new-session embeddings: %s\n",
              (long long)d.train.size(), (long long)d.holdout.size(),
              fmt::format("{}", fmt::join(d.holdout.names(), ", ")).c_str(),
              fmt::format("{}", fmt::join(c.bench.methods, ", ")).c_str(),
              (long long)c.bench.adapt_steps, c.bench.new_session_init.c_str());
  std::fflush(stdout);

  // Progress (BenchControl). The identity is what a resumed benchmark must match: the config
  // without the thread count, the recordings and the device kind.
  const std::string device_kind = device.is_cuda() ? "cuda" : "cpu";
  auto identity_of = [&](json config) {
    config.erase("threads");
    config["train"].erase("log_progress");
    config["sessions"] = session_json(d.train);
    config["holdout_sessions"] = session_json(d.holdout);
    config["device"] = device_kind;
    return config;
  };
  const json identity = identity_of(c.to_json());
  const std::string state_path = bench_state_path(out_dir);
  json state = {{"version", 1},
                {"config", c.to_json()},
                {"identity", identity},
                {"trainings", json::array()},
                {"runs", json::array()}};
  if (control.resume) {
    const json saved = read_bench_state(out_dir);
    // A state written before a setting existed lacks it: it held its default then.
    json saved_identity = saved.at("identity");
    fill_settings_of_older_runs(saved_identity);  // (as the config it resumes with)
    const json then = with_missing_from(
        saved_identity, identity_of(config_from_json(json::object()).to_json()));
    MT_CHECK(then.value("device", device_kind) == device_kind,
             "bench adaptation --resume --out {}: the benchmark ran on {}; resume it there "
             "(--device {})",
             out_dir, then.value("device", device_kind), then.value("device", device_kind));
    const std::string differs = describe_identity_difference(then, identity, "the benchmark");
    const bool recordings = differs.find("recordings differ") != std::string::npos;
    MT_CHECK(differs.empty(),
             "bench adaptation --resume --out {}: {}; a benchmark continues with the settings "
             "and recordings it started with (only threads and train.log_progress may change): "
             "{}, or start it again "
             "with --overwrite instead of --resume",
             out_dir, differs,
             recordings ? "restore the recordings (data.path)" : "drop the --set that differs");
    // The same benchmark: its identity stays as written (the trainings' states hold it).
    state["identity"] = saved.at("identity");
    state["trainings"] = saved.at("trainings");
    state["runs"] = saved.at("runs");
    std::printf("resuming: %zu training(s) and %zu adaptation run(s) done earlier\n",
                state["trainings"].size(), state["runs"].size());
  } else {
    MT_CHECK(!fs::exists(state_path) || control.overwrite,
             "--out {}: the folder holds an unfinished benchmark (bench_state.json); continue it "
             "with --resume, or pass --overwrite to start again (its models and progress are "
             "deleted)",
             out_dir);
    MT_CHECK(!fs::exists(out_dir + "/adaptation.json") || control.overwrite,
             "--out {}: the folder holds a finished benchmark (adaptation.json); choose another "
             "folder, or pass --overwrite to replace it (its results, models and plots are "
             "deleted)",
             out_dir);
    // Another benchmark's files in the folder (a stopped one's models, a cross-validated one's
    // folds) are not this one's: refused, or removed with --overwrite.
    const std::vector<fs::path> earlier = benchmark_files(out_dir);
    MT_CHECK(earlier.empty() || control.overwrite,
             "--out {}: the folder holds another benchmark's files ({}); choose another folder, "
             "or pass --overwrite to remove them",
             out_dir, earlier.front().filename().string());
    for (const auto& p : earlier) fs::remove_all(p);
  }
  write_file_atomic(state_path, state.dump(1) + "\n");
  auto stop_requested = [&] { return control.stop_requested && control.stop_requested(); };
  auto stopped = [&](const std::string& where) {
    return BenchStopped(fmt::format(
        "stopped {}; the progress is saved in {}: continue with metatape bench adaptation "
        "--resume --out '{}'{}",
        where, out_dir, control.resume_dir.empty() ? out_dir : control.resume_dir,
        device.is_cuda() ? " --device " + device.str() : ""));
  };

  note_if_busy("bench");
  json out = {{"machine", machine_json(device)},
              {"config", c.to_json()},
              {"train_sessions", session_json(d.train)},
              {"holdout_sessions", session_json(d.holdout)}};
  json trainings = json::array(), runs = json::array();
  std::vector<Row> rows;

  std::unique_ptr<meta::Forecaster> standard_model;
  for (const auto& method : c.bench.methods) {
    // Every method starts from the same initial weights; with bench.meta_from_standard the
    // meta-learned ones continue from the standard model instead.
    Generator gen(c.train.seed);
    auto f = meta::make_forecaster(c.model, sizes_of(d.train), gen);
    const bool from_standard = method != "standard" && c.bench.meta_from_standard;
    if (from_standard) {
      MT_CHECK(standard_model != nullptr,
               "bench adaptation: bench.meta_from_standard needs \"standard\" before the "
               "meta-learning methods in bench.methods");
      copy_parameters(*standard_model, *f);
    }
    f->to(device);
    meta::TrainOptions t = c.train;
    t.method = method;
    if (method != "standard") {
      t.meta.lr = c.bench.meta_lr;
      t.weight_decay = c.bench.meta_weight_decay.value_or(t.weight_decay);
    }
    if (auto it = c.bench.train_steps.find(method); it != c.bench.train_steps.end())
      t.steps = it->second;
    const std::string model_path = fmt::format("{}/model_{}.safetensors", out_dir, method);
    json tj;
    for (const auto& done : state["trainings"])
      if (done.value("method", std::string()) == method) tj = done;
    if (!tj.is_null()) {
      // Trained before the benchmark stopped: its best model is the checkpoint.
      MT_CHECK(fs::exists(model_path),
               "bench adaptation --resume: {} is missing (the {} model, trained earlier); start "
               "the benchmark again with --overwrite instead of --resume",
               model_path, method);
      f->to(kCPU);
      io::load_parameters(*f->module(), model_path);
      // A state left by a process that ended between the two writes below.
      fs::remove(fmt::format("{}/train_state_{}.safetensors", out_dir, method));
      std::printf("trained %-9s earlier: best validation score %.4f at step %lld (%s)\n",
                  method.c_str(), tj.at("best_score").is_null() ? NAN : tj.at("best_score").get<double>(),
                  (long long)tj.at("best_step").get<int64_t>(), model_path.c_str());
    } else {
      if (stop_requested()) throw stopped(fmt::format("before the training of {}", method));
      std::fprintf(stderr, "training %s: %lld steps%s\n", method.c_str(), (long long)t.steps,
                   from_standard ? ", starting from the standard model" : "");
      meta::ResumeOptions r;
      r.state_path = fmt::format("{}/train_state_{}.safetensors", out_dir, method);
      r.resume = control.resume && fs::exists(r.state_path);
      r.identity = {{"bench", state["identity"]}, {"method", method}};
      r.stop_after = [&](int64_t) { return stop_requested(); };
      if (r.resume) std::fprintf(stderr, "training %s: continuing from %s\n", method.c_str(),
                                 r.state_path.c_str());
      meta::TrainResult tr;
      try {
        tr = meta::train(*f, train_data, {}, t, {}, {}, {}, r);
      } catch (const meta::TrainingStopped& e) {
        throw stopped(fmt::format("in the training of {} after step {}", method, e.step));
      }
      std::printf("trained %-9s %5lld steps in %7.1f s (%.0f ms/step), peak %.1f MiB, best "
                  "validation score %.4f at step %lld%s%s\n",
                  method.c_str(), (long long)tr.last_step, tr.seconds,
                  tr.last_step ? 1e3 * tr.seconds / double(tr.last_step) : 0.0,
                  mib(tr.peak_bytes), tr.best_score, (long long)tr.best_step,
                  method == "standard" ? "" : " (after the inner loop)",
                  tr.stopped_early
                      ? fmt::format("; stopped early (of {} steps)", t.steps).c_str()
                      : "");
      if (method != "standard" && tr.best_step == 0 && t.steps > 0)
        std::printf("note: %s never improved the validation score of its starting point in "
                    "%lld steps; its model is that starting point (try another bench.meta_lr, now "
                    "%g, or more steps)\n",
                    method.c_str(), (long long)tr.last_step, t.meta.lr);
      std::fflush(stdout);
      // Back on the CPU for the checkpoint and the copies below (the models they copy into live
      // there); the held-out model moves to `device` once it is complete.
      f->to(kCPU);
      io::save_checkpoint(model_path, *f->module(), {{"method", method}, {"steps", t.steps}});
      tj = tr.to_json();
      tj["method"] = method;
      tj["steps"] = t.steps;
      tj["from_standard"] = from_standard;
      tj["lr"] = method == "standard" ? t.lr : t.meta.lr;
      tj["weight_decay"] = t.weight_decay;
      if (r.resume) tj["resumed"] = true;  // peak_bytes then covers the continued part only
      state["trainings"].push_back(tj);
      write_file_atomic(state_path, state.dump(1) + "\n");
      fs::remove(r.state_path);  // the checkpoint and the state file hold all that is needed
    }
    trainings.push_back(tj);

    Generator gen_new(c.adapt.train.seed);
    auto fresh = meta::make_forecaster(c.model, sizes_of(d.holdout), gen_new);
    meta::transfer_to_new_sessions(*f, *fresh, init);

    if (method == "standard") {
      Generator g0(0);
      standard_model = meta::make_forecaster(c.model, sizes_of(d.train), g0);
      copy_parameters(*f, *standard_model);
    }
    fresh->to(device);

    std::vector<RunKey> keys;
    for (const auto& set : c.bench.param_sets) keys.push_back({method, own_procedure(method), set});
    if (c.bench.cross_procedures)
      keys.push_back({method, own_procedure(method) == "inner" ? "finetune" : "inner",
                      c.bench.param_sets.front()});
    for (const auto& key : keys) {
      meta::AdaptOptions a;
      a.procedure = key.procedure;
      a.params = meta::finetune_prefixes(key.params);
      a.steps = c.bench.adapt_steps;
      a.batch_size = c.bench.adapt_batch_size;
      a.eval_every = c.bench.adapt_eval_every;
      a.eval_steps = c.bench.adapt_eval_steps;
      a.eval_batch_size = c.adapt.train.eval_batch_size;
      a.seed = c.adapt.train.seed;
      if (key.procedure == "inner") {
        a.lr = c.train.meta.inner_lr;
        a.backbone_lr = c.bench.inner_backbone_lr;
      } else {
        a.lr = c.adapt.train.lr;
        if (auto it = c.adapt.lr_by_mode.find(key.params); it != c.adapt.lr_by_mode.end())
          a.lr = it->second;
        a.weight_decay = c.adapt.train.weight_decay;
      }
      Row row{key, {}};
      for (int64_t s = 0; s < held.num_sessions(); ++s) {
        const json* earlier = nullptr;
        for (const auto& done : state["runs"])
          if (done.value("method", std::string()) == key.method &&
              done.value("procedure", std::string()) == key.procedure && done.value("params", std::string()) == key.params &&
              done.value("session", std::string()) == held.session(s).name)
            earlier = &done;
        if (earlier != nullptr) {
          meta::AdaptResult r = meta::AdaptResult::from_json(*earlier);
          std::printf("  %-9s %-8s %-22s %s done earlier: score %.4f -> %.4f  test %.4f\n",
                      key.method.c_str(), key.procedure.c_str(), key.params.c_str(),
                      padded(r.session, 22).c_str(), r.initial_score, r.final_score, r.test_score);
          runs.push_back(*earlier);
          row.per_session.push_back(std::move(r));
          continue;
        }
        if (stop_requested())
          throw stopped(fmt::format("before adapting {} ({}, {}) to {}", key.method,
                                    key.procedure, key.params, held.session(s).name));
        meta::AdaptResult r = meta::adapt_session(*fresh, held, s, a);
        if (r.diverged_at >= 0) {
          std::printf("  %-9s %-8s %-22s %s DIVERGED at step %lld (lr %g); test %.4f -> (at "
                      "best step %lld: %.4f)\n",
                      key.method.c_str(), key.procedure.c_str(), key.params.c_str(),
                      padded(r.session, 22).c_str(), (long long)r.diverged_at, a.lr,
                      r.test_score_initial, (long long)r.best_step, r.test_score_at_best);
        } else {
          std::printf("  %-9s %-8s %-22s %s steps_to_95 %4lld (gain %4lld)  score %.4f -> "
                      "%.4f  test %.4f -> %.4f (at best step %lld: %.4f)  %6.2f s  %.1f MiB\n",
                      key.method.c_str(), key.procedure.c_str(), key.params.c_str(),
                      padded(r.session, 22).c_str(), (long long)r.steps_to_95,
                      (long long)r.steps_to_95_gain, r.initial_score, r.final_score,
                      r.test_score_initial, r.test_score, (long long)r.best_step,
                      r.test_score_at_best, r.seconds, mib(r.peak_bytes));
        }
        std::fflush(stdout);
        json rj = r.to_json();
        rj["method"] = key.method;
        rj["procedure"] = key.procedure;
        rj["params"] = key.params;
        rj["lr"] = a.lr;
        if (key.procedure == "inner") rj["backbone_lr"] = a.backbone_lr;
        runs.push_back(rj);
        state["runs"].push_back(rj);
        write_file_atomic(state_path, state.dump(1) + "\n");
        row.per_session.push_back(std::move(r));
      }
      rows.push_back(std::move(row));
    }
  }

  const json table = adaptation_table(
      rows, fmt::format("adaptation to {} unseen sessions, mean over sessions", held.num_sessions()));
  out["training"] = trainings;
  out["runs"] = runs;
  return finish_benchmark(std::move(out), table, out_dir, stop_requested);
}

json run_bench_memory(const RunConfig& c, const std::string& out_dir) {
  make_folder(out_dir, "--out");
  Data d = load_data(c);
  data::PreparedData prepared(d.train, c.data.prep);
  Generator gen(c.train.seed);
  auto f = meta::make_forecaster(c.model, sizes_of(d.train), gen);
  MT_CHECK(f->module() != nullptr, "bench memory: model.kind {} has no parameters", c.model.kind);
  int64_t s = -1;
  for (int64_t i = 0; i < prepared.num_sessions() && s < 0; ++i)
    if (!prepared.support(i).empty() && !prepared.query(i).empty()) s = i;
  MT_CHECK(s >= 0, "bench memory: no session has support and query windows");
  std::mt19937_64 rng(c.train.seed);
  auto sample = [&](const std::vector<int64_t>& starts) {
    std::uniform_int_distribution<size_t> pick(0, starts.size() - 1);
    std::vector<data::WindowRef> refs;
    for (int64_t i = 0; i < c.bench.memory_batch_size; ++i) refs.push_back({s, starts[pick(rng)]});
    return meta::to_batch(prepared.batch(refs), *f);
  };
  models::PocoBatch support = sample(prepared.support(s)), query = sample(prepared.query(s));
  const int64_t param_bytes = f->module()->parameter_bytes();
  std::printf("bench memory: E2E-TTT meta-gradient of %s on session '%s', batch %lld windows "
              "(%lld neuron rows), test-time parameters %s%s; parameters %.1f MiB\n",
              c.model.preset.c_str(), prepared.session(s).name.c_str(),
              (long long)c.bench.memory_batch_size, (long long)support.x.size(0),
              fmt::format("{}", fmt::join(c.train.meta.params, " ")).c_str(),
              c.train.meta.dropout ? ", dropout on (train.meta.dropout)" : "", mib(param_bytes));
  std::fflush(stdout);
  note_if_busy("bench");  // the seconds columns
  std::printf("%6s %14s %14s %8s %10s %10s %14s\n", "K", "peak_MiB", "ckpt_peak_MiB", "ratio",
              "seconds", "ckpt_s", "max_rel_diff");
  json rows = json::array();
  for (int64_t K : c.bench.memory_inner_steps) {
    meta::InnerLoopOptions opt;
    opt.steps = K;
    opt.inner_lr = c.train.meta.inner_lr;
    opt.params = c.train.meta.params;
    // train.meta.dropout: masks (kept by the graph) as meta-training draws them; every
    // meta-gradient from the same generator state, so both variants use the same masks.
    Generator masks(c.train.seed);
    if (c.train.meta.dropout) opt.dropout = &masks;
    auto same_masks = [&] { masks.set_state(c.train.seed, 0); };
    int64_t peaks[2] = {0, 0};
    double seconds[2] = {0, 0};
    TensorList grads[2];
    // One untimed meta-gradient of each variant first (first-touch allocations, thread start):
    // the timed ones then compare like with like, whichever runs first.
    if (K == c.bench.memory_inner_steps.front())
      for (int ck = 0; ck < 2; ++ck) {
        opt.checkpoint_steps = ck == 1 ? opt.steps : 0;
        same_masks();
        (void)meta::e2e_ttt_gradient(*f, {support}, query, opt, c.train.meta.include_inner_losses);
      }
    for (int ck = 0; ck < 2; ++ck) {
      opt.checkpoint_steps = ck == 1 ? opt.steps : 0;
      same_masks();
      const int64_t before = memory_stats().allocated_bytes;
      reset_peak_memory_stats();
      const auto t0 = std::chrono::steady_clock::now();
      meta::MetaGradient g = meta::e2e_ttt_gradient(*f, {support}, query, opt,
                                                    c.train.meta.include_inner_losses);
      seconds[ck] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      peaks[ck] = memory_stats().peak_allocated_bytes - before;
      grads[ck] = g.grads;
    }
    // Largest difference between the two meta-gradients, relative to the largest entry.
    double diff = 0, scale = 0;
    {
      NoGradGuard no_grad;
      for (size_t i = 0; i < grads[0].size(); ++i) {
        auto a = grads[0][i].to_vector<double>(), b = grads[1][i].to_vector<double>();
        for (size_t k = 0; k < a.size(); ++k) {
          diff = std::max(diff, std::abs(a[k] - b[k]));
          scale = std::max(scale, std::abs(a[k]));
        }
      }
    }
    const double rel = scale > 0 ? diff / scale : diff;
    std::printf("%6lld %14.1f %14.1f %8.3f %10.2f %10.2f %14.2e\n", (long long)K, mib(peaks[0]),
                mib(peaks[1]), double(peaks[1]) / double(std::max<int64_t>(peaks[0], 1)),
                seconds[0], seconds[1], rel);
    std::fflush(stdout);
    rows.push_back({{"inner_steps", K},
                    {"peak_bytes", peaks[0]},
                    {"checkpointed_peak_bytes", peaks[1]},
                    {"seconds", seconds[0]},
                    {"checkpointed_seconds", seconds[1]},
                    {"max_relative_difference", rel}});
  }
  json out = {{"machine", machine_json()},
              {"model", c.model.preset},
              {"session", prepared.session(s).name},
              {"batch_windows", c.bench.memory_batch_size},
              {"neuron_rows", support.x.size(0)},
              {"test_time_params", c.train.meta.params},
              {"dropout", c.train.meta.dropout},
              {"parameter_bytes", param_bytes},
              {"note", "peak_bytes: peak CPU tensor bytes above those allocated before the "
                       "meta-gradient (the model's parameters and the batches)"},
              {"rows", rows}};
  const std::string path = out_dir + "/memory.json";
  write_file_atomic(path, out.dump(2) + "\n");
  std::printf("wrote %s\n", path.c_str());
  plot_results("memory", path, out_dir);
  return out;
}

void plot_results(const std::string& kind, const std::string& json_path,
                  const std::string& out_dir, const std::function<bool()>& stopped) {
  std::string script = std::string(METATAPE_SOURCE_DIR) + "/tools/plot.py";
  if (!fs::exists(script)) {
    std::printf("plots: tools/plot.py not found; run python3 <metatape>/tools/plot.py %s %s %s\n",
                kind.c_str(), json_path.c_str(), out_dir.c_str());
    return;
  }
  // Debian's interpreter is the one that sees python3-matplotlib, whatever else is on PATH.
  const std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  // Run directly, not through a shell: paths are passed as they are, whatever they contain.
  std::vector<std::string> args = {python, script, kind, json_path, out_dir};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string shown = fmt::format("{}", fmt::join(args, " "));
  std::fflush(stdout);
  pid_t pid = 0;
  const int spawn_error = posix_spawnp(&pid, python.c_str(), nullptr, nullptr, argv.data(), environ);
  if (spawn_error != 0) {
    std::printf("plots: cannot start %s (%s); install python3 and python3-matplotlib "
                "(tools/install-deps.sh), then run: %s\n",
                python.c_str(), std::strerror(spawn_error), shown.c_str());
    return;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  const bool failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
  if (failed && stopped && stopped()) {
    std::printf("plots: stopped with the benchmark (its JSON is complete); make them with: %s\n",
                shown.c_str());
    return;
  }
  if (failed)
    std::printf("plots: '%s' failed (exit %d); is python3-matplotlib installed "
                "(tools/install-deps.sh)?\n",
                shown.c_str(), WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

}  // namespace mt::cli
