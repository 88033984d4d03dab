// Pieces the metatape subcommands share: the data of a run split into training and held-out
// sessions, and the printing of metrics.
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

#include "tools/cli/config.h"

namespace mt::cli {

struct Data {
  data::Dataset train, holdout;  // sessions used for training, and held out for adaptation
};

// Synthetic data (data.path empty) or the recordings at data.path, validated, split by
// data.holdout (every named session must exist).
Data load_data(const RunConfig& c);

std::vector<int64_t> sizes_of(const data::Dataset& d);
// CRC-32 (8 hex digits) of a session's recording: its activity and timestamps as loaded.
std::string recording_crc32(const data::Session& s);
// name, neurons, frames and crc32 of each session (a run's config.json 'sessions').
nlohmann::json session_json(const data::Dataset& d);
void print_metrics(const char* title, const meta::Metrics& m);
// The process-wide settings of the config: OpenMP threads and the saved-tensor recomputation
// policy (this thread's).
void apply_threads(const RunConfig& c);

}  // namespace mt::cli
