// The run configuration of the metatape CLI: one JSON document with sections data, model, train
// and adapt, read strictly (an unknown key is an error naming it and the known keys), with
// `--set section.key=value` overrides applied before reading.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/preprocess.h"
#include "data/synth.h"
#include "meta/forecaster.h"
#include "meta/online.h"
#include "data/load.h"
#include "meta/training.h"

// An optional setting is JSON null when unset (BenchSpec::meta_weight_decay).
namespace nlohmann {
template <class T>
struct adl_serializer<std::optional<T>> {
  static void to_json(json& j, const std::optional<T>& value) {
    if (value) j = *value;
    else j = nullptr;
  }
  static void from_json(const json& j, std::optional<T>& value) {
    if (j.is_null()) value.reset();
    else value = j.get<T>();
  }
};
}  // namespace nlohmann

namespace mt::cli {

struct DataSpec {
  std::string path;              // folder or file of recordings; empty = synthetic
  data::SynthConfig synthetic;   // used when path is empty
  data::PrepConfig prep;         // split, z-score, windows (window lengths come from the model)
  std::vector<std::string> holdout;  // session names kept out of training (for adapt)
  // How files are read (data.npz.*, data.hdf5.*, data.csv.*): data set paths, time axis, frame
  // times where a file has none.
  data::LoadOptions load;
};

struct AdaptSpec {
  std::vector<std::string> modes = {"embeddings", "embeddings+head", "all"};
  // How the held-out sessions' embedding rows start, for every row of `metatape adapt`:
  // "mean" (the mean trained row, as bench.new_session_init) or "random" (POCO's init).
  std::string new_session_init = "mean";
  meta::TrainOptions train;  // steps, lr, eval_every, ... of the fine-tuning runs
  // Learning rate per mode (overrides train.lr): fewer tuned parameters take larger steps.
  std::map<std::string, double> lr_by_mode = {
      {"embeddings", 3e-3},         {"embeddings+head", 1e-3}, {"embeddings+latents", 3e-3},
      {"embeddings+last_layer", 1e-3}, {"all", 3e-4}};
};

// `metatape bench adaptation` and `metatape bench memory`.
struct BenchSpec {
  std::vector<std::string> methods = {"standard", "fomaml", "e2e-ttt"};
  // Training steps per method (a method not named trains train.steps).
  std::map<std::string, int64_t> train_steps;
  // Test-time parameter sets adapted on the held-out sessions (the ablation); the first is the
  // headline row of each method.
  std::vector<std::string> param_sets = {"embeddings", "embeddings+latents",
                                         "embeddings+last_layer", "all"};
  // Also adapt each model by the other procedure (fine-tuning for meta-learned models, the SGD
  // inner loop for the standard one) on the first parameter set.
  bool cross_procedures = true;
  // FOMAML and E2E-TTT start from the weights standard training reached (and then take their own
  // steps) instead of from the initial weights.
  bool meta_from_standard = true;
  // Outer (AdamW) learning rate of FOMAML and E2E-TTT (the experiment plan's meta_lr); standard
  // training uses train.lr.
  double meta_lr = 1e-4;
  // Their AdamW weight decay; unset (null), train.weight_decay, as standard training's.
  std::optional<double> meta_weight_decay;
  // SGD step size of the non-embedding parameters in the inner-loop procedure (the embeddings
  // take train.meta.inner_lr, the step size they were meta-learned with).
  double inner_backbone_lr = 1e-3;
  int64_t adapt_steps = 200;
  int64_t adapt_eval_every = 5;
  // Also validated after these adaptation steps (each >= 1; those beyond adapt_steps are not
  // reached), e.g. [1, 2, 3, 5]: the few steps a meta-learned inner loop is trained for
  // (train.meta.inner_steps). Empty by default, as benchmarks written before it existed ran.
  std::vector<int64_t> adapt_eval_steps;
  int64_t adapt_batch_size = 32;
  std::string new_session_init = "mean";  // random | mean (meta/adaptation.h)
  // Cross-validation over held-out groups: 0 = hold out data.holdout once; K >= 2 = split all
  // sessions (in name order) into K contiguous groups and run the benchmark K times, each group
  // held out in turn (data.holdout must then be empty); the table pools every held-out session.
  int64_t folds = 0;
  // Memory benchmark: E2E-TTT meta-gradient peak memory against the number of inner steps.
  std::vector<int64_t> memory_inner_steps = {1, 3, 10, 30};
  int64_t memory_batch_size = 32;
};

struct RunConfig {
  DataSpec data;
  meta::ModelSpec model;
  meta::TrainOptions train;
  AdaptSpec adapt;
  meta::OnlineOptions online;  // `metatape online`
  BenchSpec bench;             // `metatape bench`
  int threads = 0;  // OpenMP threads for the CPU kernels; 0 = the runtime's default
  // Outputs of cheap ops saved for the backward pass recomputed when read (autograd
  // SavedRecompute): "cuda" (on CUDA devices only, the default), "always" or "never".
  std::string saved_recompute = "cuda";

  nlohmann::json to_json() const;
};

// Defaults, then `file` (if not empty), then each "a.b=value" override (value parsed as JSON,
// else taken as a string). Errors name the file, the key and the fix.
RunConfig load_config(const std::string& file, const std::vector<std::string>& overrides);
RunConfig config_from_json(const nlohmann::json& j);
// config_from_json of j with the overrides applied.
RunConfig apply_overrides(nlohmann::json j, const std::vector<std::string>& overrides);

// Reads a JSON file; errors name the file (missing, unreadable, invalid JSON with position).
nlohmann::json read_json_file(const std::string& path);
// Writes text atomically: a temp file in the same folder, then rename.
void write_file_atomic(const std::string& path, const std::string& text);

// Resuming a run (metatape train --resume). training_identity: what a training state must
// match, from a run config (to_json plus "sessions"). identity_with_defaults: a state's saved
// identity with the settings added since it was written filled in at their defaults.
// describe_identity_difference: the first difference in a user's words ("train.lr is 0.5 now,
// 0.001 in the run", `what` naming the run), or "" when there is none.
nlohmann::json training_identity(const nlohmann::json& config);
// A run's config.json, or a training state's identity, written before a setting existed whose
// default is not what that run used, given what it used: train.meta.lr (before it existed,
// FOMAML and E2E-TTT took their outer steps at train.lr). adapt.train.meta, never read (and
// now refused away from its defaults), is dropped.
void fill_settings_of_older_runs(nlohmann::json& run_config);
nlohmann::json identity_with_defaults(nlohmann::json then, const nlohmann::json& now);
// `then` with every key of `base` it lacks (recursively, objects only) copied in.
nlohmann::json with_missing_from(nlohmann::json then, const nlohmann::json& base);
std::string describe_identity_difference(const nlohmann::json& then, const nlohmann::json& now,
                                         const std::string& what = "the run");

}  // namespace mt::cli
