#include "meta/forecaster.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>

#include "engine/autograd/grad_mode.h"

namespace mt::meta {

namespace {

class PocoForecaster final : public Forecaster {
 public:
  PocoForecaster(const models::PocoConfig& c, const std::vector<int64_t>& sizes, Generator& gen,
                 DType dtype)
      : model_(c, sizes, gen, dtype) {}
  std::string kind() const override { return "poco"; }
  nn::Module* module() override { return &model_; }
  Tensor predict(const models::PocoBatch& b, const nn::ParamMap* ov, Generator* g) const override {
    if (ov != nullptr) model_.check_overrides(*ov);
    return model_.forward(b, ov, g);
  }
  std::vector<int64_t> session_sizes() const override { return model_.session_sizes(); }
  const models::Poco& model() const { return model_; }

 private:
  models::Poco model_;
};

class NLinearForecaster final : public Forecaster {
 public:
  NLinearForecaster(int64_t ctx, int64_t pred, Generator& gen, DType dtype)
      : model_(ctx, pred, gen, dtype) {}
  std::string kind() const override { return "nlinear"; }
  nn::Module* module() override { return &model_; }
  Tensor predict(const models::PocoBatch& b, const nn::ParamMap* ov, Generator*) const override {
    if (ov != nullptr) model_.check_overrides(*ov);
    return model_.forward(b.x, ov);
  }

 private:
  models::NLinear model_;
};

class MlpForecaster final : public Forecaster {
 public:
  MlpForecaster(int64_t ctx, int64_t hidden, int64_t pred, Generator& gen, DType dtype)
      : model_(ctx, hidden, pred, gen, dtype) {}
  std::string kind() const override { return "mlp"; }
  nn::Module* module() override { return &model_; }
  Tensor predict(const models::PocoBatch& b, const nn::ParamMap* ov, Generator*) const override {
    if (ov != nullptr) model_.check_overrides(*ov);
    return model_.forward(b.x, ov);
  }

 private:
  models::MlpForecaster model_;
};

class CopyLastForecaster final : public Forecaster {
 public:
  explicit CopyLastForecaster(int64_t pred) : pred_(pred) {}
  std::string kind() const override { return "copy_last"; }
  nn::Module* module() override { return nullptr; }
  Tensor predict(const models::PocoBatch& b, const nn::ParamMap*, Generator*) const override {
    return models::copy_last(b.x, pred_);
  }

 private:
  int64_t pred_;
};

}  // namespace

models::PocoConfig ModelSpec::poco_config() const {
  models::PocoConfig c = models::PocoConfig::from_json(poco, models::PocoConfig::named(preset));
  return c;
}

std::unique_ptr<Forecaster> make_forecaster(const ModelSpec& spec,
                                            const std::vector<int64_t>& sizes, Generator& gen,
                                            DType dtype) {
  const models::PocoConfig c = spec.poco_config();
  if (spec.kind == "poco") return std::make_unique<PocoForecaster>(c, sizes, gen, dtype);
  if (spec.kind == "nlinear")
    return std::make_unique<NLinearForecaster>(c.context(), c.pred_length, gen, dtype);
  if (spec.kind == "mlp") {
    MT_CHECK(spec.mlp_hidden > 0, "model.mlp_hidden must be positive, got {}", spec.mlp_hidden);
    return std::make_unique<MlpForecaster>(c.context(), spec.mlp_hidden, c.pred_length, gen, dtype);
  }
  if (spec.kind == "copy_last") return std::make_unique<CopyLastForecaster>(c.pred_length);
  MT_FAIL("model.kind '{}' is not known; use poco, nlinear, mlp or copy_last", spec.kind);
}

models::PocoBatch to_batch(const data::WindowBatch& w, const Forecaster& f,
                           const std::vector<int64_t>& session_of) {
  models::PocoBatch b;
  const int64_t n = w.total_neurons();
  b.x = from_vector(std::span<const float>(w.context), Shape{n, w.context_length});
  b.target = from_vector(std::span<const float>(w.target), Shape{n, w.pred_length});
  const std::vector<int64_t> sizes = f.session_sizes();
  std::vector<int64_t> units, sessions;
  units.reserve(size_t(n));
  sessions.reserve(size_t(n));
  for (int64_t i = 0; i < w.size(); ++i) {
    const int64_t ds = w.session[size_t(i)];
    const int64_t s = session_of.empty() ? ds : session_of.at(size_t(ds));
    const int64_t count = w.num_neurons(i);
    b.sample_neurons.push_back(count);
    b.sample_sessions.push_back(s);
    if (sizes.empty()) continue;
    MT_CHECK(s >= 0 && s < int64_t(sizes.size()) && sizes[size_t(s)] == count,
             "batch: window of data session {} has {} neurons but model session {} has {}", ds,
             count, s, s >= 0 && s < int64_t(sizes.size()) ? sizes[size_t(s)] : -1);
    int64_t offset = 0;
    for (int64_t k = 0; k < s; ++k) offset += sizes[size_t(k)];
    for (int64_t j = 0; j < count; ++j) {
      units.push_back(offset + j);
      sessions.push_back(s);
    }
  }
  if (sizes.empty()) {  // baselines: per-session identities are not used
    units.assign(size_t(n), 0);
    sessions.assign(size_t(n), 0);
  }
  b.unit_index = from_indices(units, Shape{n});
  b.neuron_session = from_indices(sessions, Shape{n});
  return f.device().is_cpu() ? b : b.to(f.device());
}

bool matches_prefixes(const std::string& name, const std::vector<std::string>& prefixes) {
  if (prefixes.empty()) return true;
  for (const auto& p : prefixes)
    if (name.rfind(p, 0) == 0) return true;
  return false;
}

void check_prefixes(const Forecaster& f, const std::vector<std::string>& prefixes,
                    const std::string& what) {
  nn::Module* module = const_cast<Forecaster&>(f).module();
  if (module == nullptr) return;
  const auto named = module->named_parameters();
  for (const auto& p : prefixes) {
    bool found = false;
    for (const auto& [name, t] : named) found |= name.rfind(p, 0) == 0;
    if (found) continue;
    // The groups a prefix can name: each parameter's name up to and including its first dot.
    std::vector<std::string> groups;
    for (const auto& [name, t] : named) {
      const std::string g = name.substr(0, name.find('.') + 1);
      if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
    }
    MT_FAIL("{}: '{}' selects no parameter of the {} model; name prefixes start with one of {}",
            what, p, f.kind(), fmt::join(groups, ", "));
  }
}

nlohmann::json Metrics::to_json() const {
  nlohmann::json per = nlohmann::json::array();
  for (const auto& s : sessions)
    per.push_back({{"session", s.name}, {"windows", s.windows}, {"mse", s.mse}, {"mae", s.mae},
                   {"copy_mse", s.copy_mse}, {"score", s.score}, {"r2", s.r2}});
  return {{"mse", mse}, {"mae", mae}, {"score", score}, {"r2", r2}, {"sessions", per}};
}

Metrics Metrics::from_json(const nlohmann::json& v) {
  auto num = [](const nlohmann::json& x) { return x.is_null() ? NAN : x.get<double>(); };
  Metrics m;
  m.mse = num(v.at("mse"));
  m.mae = num(v.at("mae"));
  m.score = num(v.at("score"));
  m.r2 = num(v.at("r2"));
  for (const auto& s : v.at("sessions")) {
    SessionMetrics sm;
    sm.name = s.at("session").get<std::string>();
    sm.windows = s.at("windows").get<int64_t>();
    sm.mse = num(s.at("mse"));
    sm.mae = num(s.at("mae"));
    sm.copy_mse = num(s.at("copy_mse"));
    sm.score = num(s.at("score"));
    sm.r2 = num(s.at("r2"));
    m.sessions.push_back(sm);
  }
  return m;
}

Metrics evaluate(const Forecaster& f, const data::PreparedData& data, data::Split split,
                 const std::vector<int64_t>& sessions_in, int64_t batch_size,
                 const std::vector<int64_t>& session_of, const nn::ParamMap* ov) {
  NoGradGuard no_grad;
  std::vector<int64_t> sessions = sessions_in;
  if (sessions.empty())
    for (int64_t s = 0; s < data.num_sessions(); ++s) sessions.push_back(s);
  Metrics m;
  for (int64_t s : sessions) {
    const auto& starts = data.windows(s, split);
    SessionMetrics sm;
    sm.name = data.session(s).name;
    sm.windows = int64_t(starts.size());
    MT_CHECK(!starts.empty(), "evaluate: session '{}' has no {} windows", sm.name,
             data::split_name(split));
    double sse = 0, sae = 0, copy_sse = 0, count = 0;
    // R^2 against each neuron's mean target over the split: sums per neuron of d = y - y_ref
    // (y_ref: the neuron's first target), whose spread is y's but without y's offset, so that
    // sum d^2 - (sum d)^2 / n does not cancel to a rounding residue (a flat neuron gives 0).
    const int64_t N = data.session(s).num_neurons;
    std::vector<double> y_ref(size_t(N), 0), d_sum(size_t(N), 0), d_sq(size_t(N), 0),
        y_n(size_t(N), 0);
    for (size_t first = 0; first < starts.size(); first += size_t(batch_size)) {
      std::vector<data::WindowRef> refs;
      for (size_t i = first; i < std::min(starts.size(), first + size_t(batch_size)); ++i)
        refs.push_back({s, starts[i]});
      data::WindowBatch w = data.batch(refs);
      models::PocoBatch b = to_batch(w, f, session_of);
      auto pred = f.predict(b, ov).to_vector<float>();
      auto copy = models::copy_last(b.x, w.pred_length).to_vector<float>();
      const int64_t P = w.pred_length;
      for (int64_t r = 0; r < w.total_neurons(); ++r) {
        const int64_t neuron = r % N;  // every window of this session holds all N neurons
        for (int64_t t = 0; t < P; ++t) {
          const size_t k = size_t(r * P + t);
          const double y = w.target[k], e = pred[k] - y, ec = copy[k] - y;
          sse += e * e;
          sae += std::abs(e);
          copy_sse += ec * ec;
          if (y_n[size_t(neuron)] == 0) y_ref[size_t(neuron)] = y;
          const double d = y - y_ref[size_t(neuron)];
          d_sum[size_t(neuron)] += d;
          d_sq[size_t(neuron)] += d * d;
          y_n[size_t(neuron)] += 1;
          count += 1;
        }
      }
    }
    double sst = 0;
    for (size_t n = 0; n < size_t(N); ++n)
      if (y_n[n] > 0) sst += std::max(0.0, d_sq[n] - d_sum[n] * d_sum[n] / y_n[n]);
    sm.mse = sse / count;
    sm.mae = sae / count;
    sm.copy_mse = copy_sse / count;
    // Undefined when the baseline is exact (every target frame repeats the last context frame:
    // a flat recording) or no target varies: 0 by convention (eval notes such a session).
    sm.score = copy_sse > 0 ? 1.0 - sse / copy_sse : 0.0;
    sm.r2 = sst > 0 ? 1.0 - sse / sst : 0.0;
    m.sessions.push_back(sm);
  }
  for (const auto& s : m.sessions) {
    m.mse += s.mse / double(m.sessions.size());
    m.mae += s.mae / double(m.sessions.size());
    m.score += s.score / double(m.sessions.size());
    m.r2 += s.r2 / double(m.sessions.size());
  }
  return m;
}

}  // namespace mt::meta
