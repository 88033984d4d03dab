// Standard multi-session training and fine-tuning (adaptation to new sessions) of a forecaster:
// AdamW, gradient-norm clipping, periodic evaluation, best-model tracking, and the adaptation
// curve with steps-to-95%-of-final.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "engine/core/error.h"
#include "engine/io/safetensors.h"
#include "meta/forecaster.h"

namespace mt::meta {

// Meta-learning settings used when TrainOptions::method is fomaml or e2e-ttt.
struct MetaOptions {
  // Outer (AdamW) step size of the initial weights, the experiment plan's meta_lr
  // (TrainOptions::lr is standard training's; weight decay, amsgrad and clip are shared).
  double lr = 1e-4;
  int64_t meta_batch = 2;    // distinct sessions per outer step (gradients averaged)
  int64_t inner_steps = 3;   // SGD steps on each session's support batch
  double inner_lr = 1e-3;
  std::vector<std::string> params = {"unit_emb.", "session_emb."};  // test-time parameters
  bool include_inner_losses = true;  // E2E-TTT meta-loss = query loss + mean inner loss
  // E2E-TTT: the first N inner steps recomputed during the outer backward instead of kept
  // (InnerLoopOptions::checkpoint_steps; 0 = none, >= inner_steps = all): less memory, one
  // more forward and inner backward per checkpointed step.
  int64_t checkpoint_steps = 0;
  // The model's dropout in the inner steps and the query forward of each outer step (masks
  // from the training's dropout generator; TrainOptions::dropout is standard training's). Off by
  // default: the inner loop is then the one the model is adapted and evaluated with.
  bool dropout = false;
};

struct TrainOptions {
  // standard: minimise the loss on training windows; fomaml / e2e-ttt: meta-learn the initial
  // weights so that `meta.inner_steps` steps on a session's support windows fit its query windows.
  std::string method = "standard";
  MetaOptions meta;
  int64_t steps = 2000;
  // standard: windows per step, drawn from all training sessions; fomaml / e2e-ttt: windows of
  // each support batch and of each query batch, per session of the meta-batch.
  int64_t batch_size = 32;
  double lr = 1e-3;  // AdamW step size of standard training (meta-learning: meta.lr)
  double weight_decay = 1e-4;
  bool amsgrad = false;
  double clip = 1.0;             // max gradient norm; 0 = no clipping
  int64_t eval_every = 100;      // steps between validation passes (and at the last step)
  // Early stopping: training ends once `patience` evaluations in a row have not raised the best
  // validation score (0 = off: all `steps` are taken). The best parameters are kept either way;
  // the steps left are skipped (a later one might have improved: resume with a larger patience).
  int64_t patience = 0;
  int64_t eval_batch_size = 64;
  uint64_t seed = 0;             // window sampling and dropout
  bool dropout = true;           // the model's dropout in standard training (meta: meta.dropout)
  // Parameter name prefixes to train (empty = all), e.g. {"unit_emb.", "session_emb."}.
  std::vector<std::string> trainable;
  // A progress line on stderr: on a terminal one line rewritten every 10 steps (or 2 s);
  // otherwise (a log file) a line each twentieth of the steps (at least 10 apart, or 30 s).
  // Starts with `progress_label` (e.g. the adaptation mode; not part of a configuration).
  bool log_progress = true;
  std::string progress_label;
};

struct EvalPoint {
  int64_t step = 0;
  // Mean training loss since the previous point: standard, the batch loss; FOMAML, the query
  // loss; E2E-TTT, the meta-loss (query loss + mean inner loss with include_inner_losses).
  double train_loss = 0;
  double seconds = 0;     // wall time since training started
  Metrics val;
  // {"step", "seconds", "train_loss" (null when not a number: the first point), "val"}; the
  // training state's curve, and (without a null train_loss) a line of the CLI's metrics.jsonl.
  nlohmann::json to_json() const;
  static EvalPoint from_json(const nlohmann::json& j);  // doubles round-trip exactly
};

struct TrainResult {
  std::vector<EvalPoint> curve;
  int64_t best_step = 0;
  double best_score = 0;
  double seconds = 0;       // wall time of the training steps (evaluations excluded)
  double eval_seconds = 0;  // wall time of the validation passes
  int64_t peak_bytes = 0;   // peak tensor bytes on the forecaster's device during the run
  int64_t steps_to_95 = -1; // first evaluated step from which the score stays >= 95% of the
                            // final score (-1 when it is not positive; AdaptResult's rule)
  int64_t trainable_parameters = 0;
  int64_t last_step = 0;      // the last step taken: `steps`, or earlier when stopped early
  bool stopped_early = false; // `patience` evaluations in a row without a better score
  nlohmann::json to_json() const;
};

// Evaluation points of a curve after its best one (`best_step`): what TrainOptions::patience
// counts.
int64_t evaluations_since_best(const std::vector<EvalPoint>& curve, int64_t best_step);

// Checks the values of `options` alone (positive sizes and rates, a known method, an inner loop
// for the meta-learning methods); errors name the config fields under `where` ("train",
// "adapt.train") and the fix.
void check_train_options(const TrainOptions& options, const std::string& where = "train");
// check_train_options, and what needs the model and the data: every name prefix selects a
// parameter, the sessions have training windows, each has validation windows (every evaluation
// scores them), and for FOMAML / E2E-TTT at least meta_batch
// sessions have both support and query windows. train() starts with it; a caller that writes
// files first (the CLI's run folder) calls it before.
void check_training(const Forecaster& forecaster, const data::PreparedData& data,
                    const std::vector<int64_t>& sessions, const TrainOptions& options,
                    const std::string& where = "train");

// The training sessions (all when `sessions` is empty) that have training windows but no support
// or no query window, so that FOMAML and E2E-TTT leave them out (and a meta-learned model is
// scored on one without support windows without its inner loop): one note naming each with its
// window counts and the fix, or "" when there is none.
std::string meta_sessions_note(const data::PreparedData& data,
                               const std::vector<int64_t>& sessions = {});

// Scores `split` as a model trained with `options` is meant to be used: a meta-learned one
// (fomaml, e2e-ttt) after its inner loop on each session's support windows
// (evaluate_after_inner_loop), a standard one as it is (evaluate). Training validates with it.
Metrics evaluate_as_used(const Forecaster& forecaster, const data::PreparedData& data,
                         data::Split split, const TrainOptions& options,
                         const std::vector<int64_t>& sessions = {},
                         const std::vector<int64_t>& session_of = {});

// Resumable training: the whole state of a run, saved at every evaluation point (and when asked
// to stop), from which an interrupted run continues as if it had not stopped.
struct ResumeOptions {
  // Where train() writes its state after every evaluation point (step 0 included): a
  // safetensors file with the model's current parameters ("param.<name>"), the best evaluation's
  // trainable parameters ("best.<name>"), the AdamW state ("optim.<name>.<state>") and, in its
  // metadata, the step, the curve so far, the best step and score, the window-sampling and
  // dropout random-number states, the meta-batch session order and the elapsed seconds.
  // Written atomically (io::save_safetensors): a crash leaves the previous state. "" = none.
  std::string state_path;
  // Continue from the state in `state_path` instead of starting at step 0. With the same
  // forecaster (as built, before training), data, options and device, the continued run's
  // parameters, curve and best model are bitwise those of the run that did not stop.
  // `options.steps` may be larger than the interrupted run's (train longer); it may not be
  // smaller than the state's step.
  bool resume = false;
  // Stored in the state and compared on resume: a state written for another run (another
  // config or data) is refused. Typically the run's config without `train.steps`.
  nlohmann::json identity;
  // Called once a resumed state has been read and fully checked and restored into the model
  // and optimizer, before the first step: the state's metadata (read_train_state_metadata's)
  // and its tensors ("param.", "best.", "optim." entries). A caller that keeps files beside
  // the state (the CLI's metrics and best model) brings them in line here, after every check.
  std::function<void(const nlohmann::json& state, const io::SafetensorsContents& tensors)>
      on_restored;
  // Asked after every step (with the step just done): true stops the run there. train() then
  // writes the state at that step (with `state_path`) and throws TrainingStopped; resuming
  // continues bitwise as from an evaluation point. The CLI's Ctrl-C handler answers it.
  std::function<bool(int64_t step)> stop_after;
};

// Thrown by train() when a step's loss or gradient norm is not finite (the message names
// train.lr and the
// meta-learning rates; callers with other settings may catch it and name theirs).
struct TrainingDiverged : Error {
  int64_t step = 0;
  std::string quantity;  // "loss" or "gradient norm"
  double value = 0;
  TrainingDiverged(const std::string& what, int64_t at, std::string which, double v)
      : Error(what), step(at), quantity(std::move(which)), value(v) {}
};

// Thrown by train() when ResumeOptions::stop_after asked it to stop.
struct TrainingStopped : Error {
  int64_t step = 0;        // the last step done (the state's step)
  bool state_saved = false;
  TrainingStopped(int64_t step_done, bool saved)
      : Error(fmt::format("training stopped after step {}", step_done)),
        step(step_done),
        state_saved(saved) {}
};

// Trains `forecaster` on the training windows of `sessions` (all when empty), evaluating on their
// validation windows. `on_eval` is called at every evaluation point (for metrics.jsonl);
// `on_best` when the validation score improves (for the best checkpoint). At the end the
// parameters of the best evaluation are restored into the model. With `resume.state_path`, the
// state is saved at every evaluation point, and `resume.resume` continues from it (the curve up
// to the state's step is in the result; `on_eval` and `on_best` are called for the new points
// only; seconds, eval_seconds and peak_bytes cover both parts).
TrainResult train(Forecaster& forecaster, const data::PreparedData& data,
                  const std::vector<int64_t>& sessions, const TrainOptions& options,
                  const std::vector<int64_t>& session_of = {},
                  const std::function<void(const EvalPoint&)>& on_eval = {},
                  const std::function<void(const EvalPoint&)>& on_best = {},
                  const ResumeOptions& resume = {});

// The metadata of a training state file (ResumeOptions::state_path) without its tensors: "step",
// "steps" (train.steps of the run that wrote it), "best_step", "best_score", "curve", "identity",
// "evaluated" (whether the step is an evaluation point, the curve's last), "device" (where it
// was trained).
// Errors name the file.
nlohmann::json read_train_state_metadata(const std::string& path);

// Named sets of test-time parameters (fine-tuning modes, adaptation ablations) as name prefixes:
// "embeddings" (unit and session embeddings), "embeddings+head" (plus the FiLM head),
// "embeddings+latents" (plus the learned latents), "embeddings+last_layer" (plus the decoder, the
// last Perceiver-IO layer), "all" (empty list: every parameter).
std::vector<std::string> finetune_prefixes(const std::string& mode);

}  // namespace mt::meta
