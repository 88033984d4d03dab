// `metatape bench adaptation`: the experiment plan end to end. Trains one model per method
// (standard, FOMAML, E2E-TTT) on the training sessions from the same initial weights, then adapts
// each to every held-out session (fine-tuning for the standard model, the SGD inner loop for the
// meta-learned ones, and the other way round as a control), over an ablation of test-time
// parameter sets; reports steps to 95% of the final score, final validation and test scores,
// adaptation wall time and peak memory; writes adaptation.json and PNG plots.
//
// `metatape bench memory`: peak memory and time of one E2E-TTT meta-gradient against the number
// of inner steps K, with and without checkpointed inner steps, and the largest difference between
// the two meta-gradients; writes memory.json and a plot.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/core/device.h"
#include "engine/core/error.h"
#include "tools/cli/config.h"

namespace mt::cli {

// How a `bench adaptation` run may be stopped and continued. Progress is kept in
// <out>/bench_state.json (each method's finished training and each finished adaptation run,
// written atomically as they end) beside model_<method>.safetensors, and a training in progress
// in <out>/train_state_<method>.safetensors (meta::ResumeOptions, at every evaluation point).
struct BenchControl {
  // Continue the benchmark in the output folder: finished trainings and runs are taken from the
  // state (the models from their checkpoints), a training in progress continues from its state
  // bitwise, the rest runs. The config, the recordings (CRC-32) and the device kind must be
  // those of the interrupted run (threads may differ). Without resume, the state and results
  // of an earlier benchmark in the folder are removed first.
  bool resume = false;
  // Without resume, a folder holding a benchmark (unfinished or finished) is refused unless
  // this is set; its files are then removed first.
  bool overwrite = false;
  // Asked after every training step and every adaptation run: true saves the progress there and
  // throws BenchStopped (the CLI's Ctrl-C).
  std::function<bool()> stop_requested;
  // The folder a stopped benchmark names in its `--resume --out` hint (empty: the output folder;
  // a fold of a cross-validated benchmark names the benchmark's own folder).
  std::string resume_dir;
};

// Thrown when BenchControl::stop_requested stopped the benchmark; its progress is saved.
struct BenchStopped : Error {
  explicit BenchStopped(const std::string& what) : Error(what) {}
};

// Models train and adapt on `device` (initialised on the CPU and moved: the same weights on every
// device); the JSON's machine record names it. With bench.folds = K >= 2, the benchmark runs once
// per fold in <out>/fold_<k> (each resumable as above), each holding out one of K contiguous
// groups of the sessions in name order, and <out>/adaptation.json pools them: every fold's
// trainings and runs (with their "fold") and the table over all held-out sessions.
nlohmann::json run_bench_adaptation(const RunConfig& c, const std::string& out_dir,
                                    Device device = kCPU, const BenchControl& control = {});
nlohmann::json run_bench_memory(const RunConfig& c, const std::string& out_dir);

// <out>/bench_state.json, and that file read and checked (errors name the folder and the fix):
// its "config" is the config the benchmark started with.
std::string bench_state_path(const std::string& out_dir);
nlohmann::json read_bench_state(const std::string& out_dir);

// Runs tools/plot.py on a result file when python3 with matplotlib is present; otherwise prints
// the command to run. Never fails the benchmark.
// `stopped` (may be empty) tells whether the user asked to stop: a script cut short by that
// (Ctrl-C reaches it too) is reported with the command that makes the plots, not as a failure.
void plot_results(const std::string& kind, const std::string& json_path, const std::string& out_dir,
                  const std::function<bool()>& stopped = {});

}  // namespace mt::cli
