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

#include <string>

#include <nlohmann/json.hpp>

#include "engine/core/device.h"
#include "tools/cli/config.h"

namespace mt::cli {

// Models train and adapt on `device` (initialised on the CPU and moved: the same weights on every
// device); the JSON's machine record names it.
nlohmann::json run_bench_adaptation(const RunConfig& c, const std::string& out_dir,
                                    Device device = kCPU);
nlohmann::json run_bench_memory(const RunConfig& c, const std::string& out_dir);

// Runs tools/plot.py on a result file when python3 with matplotlib is present; otherwise prints
// the command to run. Never fails the benchmark.
void plot_results(const std::string& kind, const std::string& json_path, const std::string& out_dir);

}  // namespace mt::cli
