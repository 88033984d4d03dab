// The run configuration of the metatape CLI: one JSON document with sections data, model, train
// and adapt, read strictly (an unknown key is an error naming it and the known keys), with
// `--set section.key=value` overrides applied before reading.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/preprocess.h"
#include "data/synth.h"
#include "meta/forecaster.h"
#include "meta/online.h"
#include "meta/training.h"

namespace mt::cli {

struct DataSpec {
  std::string path;              // folder or file of recordings; empty = synthetic
  data::SynthConfig synthetic;   // used when path is empty
  data::PrepConfig prep;         // split, z-score, windows (window lengths come from the model)
  std::vector<std::string> holdout;  // session names kept out of training (for adapt)
};

struct AdaptSpec {
  std::vector<std::string> modes = {"embeddings", "embeddings+head", "all"};
  meta::TrainOptions train;  // steps, lr, eval_every, ... of the fine-tuning runs
  // Learning rate per mode (overrides train.lr): fewer tuned parameters take larger steps.
  std::map<std::string, double> lr_by_mode = {
      {"embeddings", 3e-3}, {"embeddings+head", 1e-3}, {"all", 3e-4}};
};

struct RunConfig {
  DataSpec data;
  meta::ModelSpec model;
  meta::TrainOptions train;
  AdaptSpec adapt;
  meta::OnlineOptions online;  // `metatape online`
  int threads = 0;  // OpenMP threads for the CPU kernels; 0 = the runtime's default

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

}  // namespace mt::cli
