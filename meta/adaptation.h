// Adaptation of a trained forecaster to sessions it never saw: the new sessions' embedding rows
// are initialised, then a chosen set of test-time parameters is updated for a fixed number of
// steps, either by fine-tuning (AdamW) or by the meta-learned inner loop (plain SGD at the inner
// learning rate), with the validation curve, steps to 95% of the final score, wall time and
// peak memory recorded. The forecaster is never modified: adapted values live in a ParamMap.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "meta/forecaster.h"

namespace mt::meta {

// How the embedding rows of sessions the trained model never saw start.
//   random: POCO's initialisation of a fresh table (unit rows N(0, emb_init_std)).
//   mean:   every new unit row is the mean of the trained unit rows, the new session row the mean
//           of the trained session rows: the "average neuron" the backbone has learned.
enum class NewSessionInit { random, mean };
NewSessionInit parse_new_session_init(const std::string& name);
const char* new_session_init_name(NewSessionInit init);

// Whether parameter `name` is a per-session embedding table (unit_emb., session_emb.): the
// parameters whose shapes follow the sessions a model is built for.
bool is_session_table(const std::string& name);

// Copies every parameter of `trained` into `fresh` whose name and shape agree; the per-session
// embedding tables (unit_emb., session_emb.), whose shapes differ, are set by `init`. Both must be
// the same kind of forecaster; returns the number of tensors copied.
int64_t transfer_to_new_sessions(Forecaster& trained, Forecaster& fresh, NewSessionInit init);

struct AdaptOptions {
  // finetune: AdamW (lr, weight_decay) on batches of the session's training windows.
  // inner:    plain SGD at lr on the same batches, the update the meta-learned inner loop uses.
  std::string procedure = "finetune";
  std::vector<std::string> params = {"unit_emb.", "session_emb."};  // name prefixes; empty = all
  int64_t steps = 200;
  double lr = 3e-3;
  // inner only: the SGD step size of the selected parameters other than the unit and session
  // embeddings (whose gradients are orders of magnitude smaller per entry); < 0 = lr.
  double backbone_lr = -1;
  double weight_decay = 0;
  int64_t batch_size = 32;
  int64_t eval_every = 5;       // validation every this many steps (and at 0 and the last step)
  // Further steps validated after (each >= 1; those beyond `steps` are not reached): the first
  // few steps, where a meta-learned inner loop is meant to work.
  std::vector<int64_t> eval_steps;
  int64_t eval_batch_size = 64;
  uint64_t seed = 0;            // batch sampling
};

struct AdaptPoint {
  int64_t step = 0;
  double seconds = 0;       // adaptation time so far, evaluation excluded
  double train_loss = 0;    // loss of the last step's batch (NaN at step 0)
  double val_score = 0, val_mse = 0;
};

struct AdaptResult {
  std::string session;
  std::vector<AdaptPoint> curve;
  // The step whose loss was not finite (the run stops there; the scores after it are NaN), or -1.
  int64_t diverged_at = -1;
  double initial_score = 0;   // validation score before any step
  double final_score = 0;     // validation score after the last step
  double test_score = 0;      // test split score after the last step
  double test_mse = 0;
  // The readout of early stopping on validation: the evaluated step with the best validation
  // score (the first of equals; 0 = before any step) and the test split score there; and the test
  // score before any step, the mark adaptation has to beat. A diverged run keeps the readout of
  // its best point before the divergence. A run read from JSON written before these existed has
  // best_step -1 and NaN scores.
  int64_t best_step = 0;
  double best_score = 0;
  double test_score_at_best = 0;
  double test_score_initial = 0;
  // First evaluated step from which the validation score stays at or above 95% of the final
  // score (-1 when the final score is not positive), and the first from which it stays at or
  // above initial + 95% of the gain (final - initial; -1 when there is no gain). "Stays": a curve
  // that touches the goal and falls back has not reached it yet.
  int64_t steps_to_95 = -1;
  int64_t steps_to_95_gain = -1;
  double seconds = 0;         // wall time of the adaptation steps alone
  double ms_per_step = 0;
  // Peak tensor bytes of the adaptation on the model's device: the model's parameters and
  // buffers (numel x itemsize, without the allocator's rounding of large blocks), plus the most
  // allocated (as the allocator counts it) during a step above what was held when
  // adapt_session was called (the adapted copies, optimizer state, batch, graph and gradients).
  // Other tensors the process holds (another model, a trained model's gradients) are not
  // counted.
  int64_t peak_bytes = 0;
  // Elements of the selected parameter tensors; an embedding table counts all of its rows (those
  // of every session the model was built for), of which a session's adaptation moves its own.
  int64_t adapted_parameters = 0;
  nlohmann::json to_json() const;
  // The inverse of to_json (null scores, those of a diverged run, read as NaN): a resumed
  // benchmark's earlier runs.
  static AdaptResult from_json(const nlohmann::json& j);
};

// Adapts `f` (already carrying the transferred weights) to dataset session `session` of `data`;
// `f` is left unchanged. With `adapted`, the values of the selected parameters at the best
// validation point (`best_step`, the first of equals; detached, by name) are put there, unless the
// run diverged: what early stopping on validation keeps, as fine-tuning's train() does. Only then
// is a copy of the selected values kept during the run (at each new best).
AdaptResult adapt_session(const Forecaster& f, const data::PreparedData& data, int64_t session,
                          const AdaptOptions& options, nn::ParamMap* adapted = nullptr);

// The mean over sessions of one adaptation setting: the mean validation curve (at the steps
// every session was validated at: a diverged run stops early), steps to 95% read off it (-1 when
// any session diverged), and the mean initial, final and test scores and seconds, the largest
// peak. The final and test means are NaN when a session diverged; the early-stopping readouts
// (best_score, test_score_at_best) are finite, as early stopping would have kept each best point.
struct AdaptSummary {
  std::vector<std::pair<int64_t, double>> mean_curve;
  int64_t steps_to_95 = -1, steps_to_95_gain = -1;
  int64_t diverged_sessions = 0;
  double initial_score = 0, final_score = 0, test_score = 0, seconds = 0;
  double test_score_initial = 0, best_score = 0, test_score_at_best = 0;  // means (AdaptResult)
  int64_t peak_bytes = 0;
  int64_t adapted_parameters = 0;  // mean over the sessions (models differ across folds)
};
AdaptSummary summarize_adaptation(const std::vector<AdaptResult>& per_session);

// Steps-to-95 rules of AdaptResult / TrainResult applied to a curve of (step, score).
int64_t steps_to_fraction_of_final(const std::vector<std::pair<int64_t, double>>& curve,
                                   double fraction);
int64_t steps_to_fraction_of_gain(const std::vector<std::pair<int64_t, double>>& curve,
                                  double fraction);

// Validation of a meta-learned model as it is meant to be used: for each session, `inner_steps`
// SGD steps (first order) of the test-time parameters on one fixed batch of its support windows,
// then the validation split with the adapted values. Sessions without support windows are
// evaluated unadapted.
Metrics evaluate_after_inner_loop(const Forecaster& f, const data::PreparedData& data,
                                  const std::vector<int64_t>& sessions, int64_t inner_steps,
                                  double inner_lr, const std::vector<std::string>& params,
                                  int64_t batch_size, int64_t eval_batch_size, uint64_t seed,
                                  data::Split split = data::Split::Val,
                                  const std::vector<int64_t>& session_of = {});

}  // namespace mt::meta
