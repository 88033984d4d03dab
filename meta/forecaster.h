// Forecasters behind one interface (POCO and the baselines), the conversion of data windows into
// model batches, and the forecasting metrics POCO reports.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/preprocess.h"
#include "models/baselines.h"
#include "models/poco.h"

namespace mt::meta {

// A forecaster maps a batch's contexts to (sum N, pred_length) predictions.
class Forecaster {
 public:
  virtual ~Forecaster() = default;
  virtual std::string kind() const = 0;  // "poco", "nlinear", "mlp", "copy_last"
  // The trainable module, or nullptr (copy_last has no parameters).
  virtual nn::Module* module() = 0;
  virtual Tensor predict(const models::PocoBatch& batch, const nn::ParamMap* overrides = nullptr,
                         Generator* dropout_gen = nullptr) const = 0;
  // Sessions the forecaster has per-session parameters for (POCO's embedding rows).
  virtual std::vector<int64_t> session_sizes() const { return {}; }

  // Moves the parameters and buffers to `device` (nn::Module::to: in place, names and handles
  // kept); batches made by to_batch() land there too. Build the optimizer after moving.
  void to(Device device) {
    if (nn::Module* m = module()) m->to(device);
    device_ = device;
  }
  Device device() const { return device_; }

 private:
  Device device_ = kCPU;
};

// Whether parameter `name` starts with one of `prefixes`; an empty list selects every parameter.
bool matches_prefixes(const std::string& name, const std::vector<std::string>& prefixes);
// Checks that each of `prefixes` selects at least one parameter of `f` (a typo would otherwise
// drop silently out of the selection); the error names `what` (the config field), the prefix and
// the model's parameter groups. A forecaster without parameters passes.
void check_prefixes(const Forecaster& f, const std::vector<std::string>& prefixes,
                    const std::string& what);

struct ModelSpec {
  std::string kind = "poco";          // poco | nlinear | mlp | copy_last
  std::string preset = "poco-paper";  // POCO's named configuration
  nlohmann::json poco = nlohmann::json::object();  // overrides of the preset's fields
  int64_t mlp_hidden = 1024;
  int64_t seq_length = 0, pred_length = 0;  // filled from the POCO config for every kind

  // Resolves preset + overrides (and the window lengths) and validates.
  models::PocoConfig poco_config() const;
};

// session_sizes: neurons of each session the forecaster is built for.
// dtype: of the parameters (f32 for training; f64 for gradient checks).
std::unique_ptr<Forecaster> make_forecaster(const ModelSpec& spec,
                                            const std::vector<int64_t>& session_sizes,
                                            Generator& gen, DType dtype = DType::f32);

// Window batch -> tensors on the forecaster's device (built on the host, then queued to the
// device without waiting). `session_of` maps the batch's dataset session index to the model's
// session index (for POCO's embedding rows); identity when empty.
models::PocoBatch to_batch(const data::WindowBatch& windows, const Forecaster& forecaster,
                           const std::vector<int64_t>& session_of = {});

struct SessionMetrics {
  std::string name;
  int64_t windows = 0;
  double mse = 0, mae = 0, copy_mse = 0;
  // All on the split's normalised (z-scored when data.zscore) targets, pooled over neurons and
  // forecast frames.
  double score = 0;  // 1 - mse / copy_mse; 0 when copy_mse is 0 (undefined)
  double r2 = 0;     // 1 - SSE / sum over neurons of (y - mean_y)^2; 0 when that sum is 0
};
struct Metrics {
  std::vector<SessionMetrics> sessions;
  double mse = 0, mae = 0, score = 0, r2 = 0;  // averages over sessions
  nlohmann::json to_json() const;
  // The inverse of to_json (null values, as JSON writes NaN, read back as NaN).
  static Metrics from_json(const nlohmann::json& j);
};

// Evaluates on every window of `split` of the given dataset sessions (all when empty), in
// batches; no gradients are recorded.
Metrics evaluate(const Forecaster& forecaster, const data::PreparedData& data, data::Split split,
                 const std::vector<int64_t>& sessions = {}, int64_t batch_size = 32,
                 const std::vector<int64_t>& session_of = {}, const nn::ParamMap* overrides = nullptr);

}  // namespace mt::meta
