#include "meta/adaptation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/optim/adamw.h"
#include "meta/maml.h"

namespace mt::meta {

NewSessionInit parse_new_session_init(const std::string& name) {
  if (name == "random") return NewSessionInit::random;
  if (name == "mean") return NewSessionInit::mean;
  MT_FAIL("new-session embedding init '{}' is not known; use random or mean", name);
}

const char* new_session_init_name(NewSessionInit init) {
  return init == NewSessionInit::random ? "random" : "mean";
}

bool is_session_table(const std::string& name) {
  return name.rfind("unit_emb.", 0) == 0 || name.rfind("session_emb.", 0) == 0;
}

int64_t transfer_to_new_sessions(Forecaster& trained, Forecaster& fresh, NewSessionInit init) {
  MT_CHECK(trained.kind() == fresh.kind(), "transfer: trained forecaster is {}, the new one {}",
           trained.kind(), fresh.kind());
  if (trained.module() == nullptr) return 0;
  nn::ParamMap from = trained.module()->parameter_map();
  NoGradGuard no_grad;
  int64_t copied = 0;
  for (auto& [name, t] : fresh.module()->named_parameters()) {
    auto it = from.find(name);
    MT_CHECK(it != from.end(), "transfer: parameter '{}' of the new forecaster is not in the "
             "trained one (different model configuration?)", name);
    const Tensor& src = it->second;
    if (is_session_table(name)) {
      MT_CHECK(src.dim() == 2 && t.dim() == 2 && src.size(1) == t.size(1),
               "transfer: '{}' is {} in the trained model and {} in the new one", name,
               src.shape().str(), t.shape().str());
      if (init == NewSessionInit::mean) t.copy_(expand(mean(src, {0}, true), t.shape()));
      continue;
    }
    MT_CHECK(src.shape() == t.shape(), "transfer: '{}' is {} in the trained model and {} in the "
             "new one", name, src.shape().str(), t.shape().str());
    t.copy_(src);
    ++copied;
  }
  return copied;
}

namespace {

// The first step from which every later point of the curve is at least `goal` (the last point
// always is, for the goals below).
int64_t held_from(const std::vector<std::pair<int64_t, double>>& curve, double goal) {
  size_t i = curve.size();
  while (i > 0 && curve[i - 1].second >= goal) --i;
  return i < curve.size() ? curve[i].first : -1;
}

}  // namespace

int64_t steps_to_fraction_of_final(const std::vector<std::pair<int64_t, double>>& curve,
                                   double fraction) {
  if (curve.empty() || !(curve.back().second > 0)) return -1;
  return held_from(curve, fraction * curve.back().second);
}

int64_t steps_to_fraction_of_gain(const std::vector<std::pair<int64_t, double>>& curve,
                                  double fraction) {
  if (curve.empty()) return -1;
  const double first = curve.front().second, last = curve.back().second;
  if (!(last > first)) return -1;  // no gain to reach
  return held_from(curve, first + fraction * (last - first));
}

nlohmann::json AdaptResult::to_json() const {
  nlohmann::json c = nlohmann::json::array();
  for (const auto& p : curve) {
    nlohmann::json q = {{"step", p.step}, {"seconds", p.seconds}, {"val_score", p.val_score},
                        {"val_mse", p.val_mse}};
    if (std::isfinite(p.train_loss)) q["train_loss"] = p.train_loss;
    c.push_back(q);
  }
  return {{"session", session},
          {"initial_score", initial_score},
          {"final_score", final_score},
          {"test_score", test_score},
          {"test_mse", test_mse},
          {"best_step", best_step},
          {"best_score", best_score},
          {"test_score_at_best", test_score_at_best},
          {"test_score_initial", test_score_initial},
          {"steps_to_95", steps_to_95},
          {"steps_to_95_gain", steps_to_95_gain},
          {"diverged_at", diverged_at},
          {"seconds", seconds},
          {"ms_per_step", ms_per_step},
          {"peak_bytes", peak_bytes},
          {"adapted_parameters", adapted_parameters},
          {"curve", c}};
}

AdaptResult AdaptResult::from_json(const nlohmann::json& j) {
  auto num = [](const nlohmann::json& x) { return x.is_null() ? NAN : x.get<double>(); };
  AdaptResult r;
  r.session = j.at("session").get<std::string>();
  r.initial_score = num(j.at("initial_score"));
  r.final_score = num(j.at("final_score"));
  r.test_score = num(j.at("test_score"));
  r.test_mse = num(j.at("test_mse"));
  // Absent from runs written before these readouts existed: not a number there.
  r.best_step = j.value("best_step", int64_t(-1));
  r.best_score = j.contains("best_score") ? num(j.at("best_score")) : NAN;
  r.test_score_at_best = j.contains("test_score_at_best") ? num(j.at("test_score_at_best")) : NAN;
  r.test_score_initial = j.contains("test_score_initial") ? num(j.at("test_score_initial")) : NAN;
  r.steps_to_95 = j.at("steps_to_95").get<int64_t>();
  r.steps_to_95_gain = j.at("steps_to_95_gain").get<int64_t>();
  r.diverged_at = j.at("diverged_at").get<int64_t>();
  r.seconds = num(j.at("seconds"));
  r.ms_per_step = num(j.at("ms_per_step"));
  r.peak_bytes = j.at("peak_bytes").get<int64_t>();
  r.adapted_parameters = j.at("adapted_parameters").get<int64_t>();
  for (const auto& q : j.at("curve")) {
    AdaptPoint p;
    p.step = q.at("step").get<int64_t>();
    p.seconds = num(q.at("seconds"));
    p.val_score = num(q.at("val_score"));
    p.val_mse = num(q.at("val_mse"));
    p.train_loss = q.contains("train_loss") ? num(q.at("train_loss")) : NAN;
    r.curve.push_back(p);
  }
  return r;
}

AdaptResult adapt_session(const Forecaster& f, const data::PreparedData& data, int64_t session,
                          const AdaptOptions& opt, nn::ParamMap* adapted) {
  MT_CHECK(opt.procedure == "finetune" || opt.procedure == "inner",
           "adaptation: procedure '{}' is not known; use finetune or inner", opt.procedure);
  MT_CHECK(opt.steps >= 0 && opt.lr > 0 && opt.batch_size > 0 && opt.eval_every > 0,
           "adaptation: steps ({}) must be >= 0, lr ({}), batch_size ({}) and eval_every ({}) "
           "positive", opt.steps, opt.lr, opt.batch_size, opt.eval_every);
  MT_CHECK(session >= 0 && session < data.num_sessions(), "adaptation: no session {}", session);
  for (const int64_t s : opt.eval_steps)
    MT_CHECK(s >= 1, "adaptation: eval_steps holds {}; the steps validated after must be >= 1", s);
  check_prefixes(f, opt.params, "adaptation parameter set");
  nn::Module* module = const_cast<Forecaster&>(f).module();
  AdaptResult r;
  r.session = data.session(session).name;
  const auto& starts = data.windows(session, data::Split::Train);
  MT_CHECK(opt.steps == 0 || !starts.empty(), "adaptation: session '{}' has no training windows",
           r.session);

  // Memory: the model itself, and what the adaptation allocates above what is held now.
  const int64_t held_before = memory_stats(f.device()).allocated_bytes;
  const int64_t model_bytes = module ? module->parameter_bytes(/*with_buffers=*/true) : 0;

  // The adapted parameters: copies of the selected ones, as leaves of each step's graph.
  std::vector<std::string> names;
  TensorList leaves;
  nn::ParamMap overrides;
  if (module)
    for (auto& [name, t] : module->named_parameters()) {
      if (!matches_prefixes(name, opt.params)) continue;
      Tensor leaf = t.detach().clone();
      leaf.set_requires_grad(true);
      names.push_back(name);
      leaves.push_back(leaf);
      overrides[name] = leaf;
      r.adapted_parameters += t.numel();
    }
  MT_CHECK(module == nullptr || opt.steps == 0 || !leaves.empty(),
           "adaptation: no parameter matches the prefixes");
  std::unique_ptr<optim::AdamW> adam;
  if (opt.procedure == "finetune" && !leaves.empty()) {
    optim::NamedParams np;
    for (size_t i = 0; i < names.size(); ++i) np.emplace_back(names[i], leaves[i]);
    optim::AdamWOptions ao;
    ao.lr = opt.lr;
    ao.weight_decay = opt.weight_decay;
    adam = std::make_unique<optim::AdamW>(np, ao);
  }

  std::vector<double> lr_of;  // per leaf
  for (const auto& name : names)
    lr_of.push_back(opt.backbone_lr >= 0 && !is_session_table(name) ? opt.backbone_lr : opt.lr);
  std::vector<std::pair<int64_t, double>> scores;
  double seconds = 0, last_loss = NAN;
  auto test_of = [&](nn::ParamMap* params) {
    return evaluate(f, data, data::Split::Test, {session}, opt.eval_batch_size, {},
                    leaves.empty() ? nullptr : params);
  };
  // Early stopping's readout: the test split is scored at each new best validation point. The
  // values there are copied only for `adapted` (then peak_bytes counts the copy), so the
  // benchmark's peak memory is the adaptation's own.
  nn::ParamMap best_values;
  r.best_score = -INFINITY;
  r.test_score_at_best = NAN;
  r.test_score_initial = test_of(&overrides).score;
  auto eval_point = [&](int64_t step) {
    Metrics m = evaluate(f, data, data::Split::Val, {session}, opt.eval_batch_size, {},
                         leaves.empty() ? nullptr : &overrides);
    r.curve.push_back({step, seconds, last_loss, m.score, m.mse});
    scores.emplace_back(step, m.score);
    if (m.score > r.best_score) {
      r.best_score = m.score;
      r.best_step = step;
      r.test_score_at_best = step == 0 ? r.test_score_initial : test_of(&overrides).score;
      if (adapted != nullptr)
        for (size_t i = 0; i < names.size(); ++i)
          best_values[names[i]] = leaves[i].detach().clone();
    }
  };
  eval_point(0);
  std::mt19937_64 rng(opt.seed);
  std::uniform_int_distribution<size_t> pick(0, starts.empty() ? 0 : starts.size() - 1);
  for (int64_t step = 1; step <= opt.steps && !leaves.empty(); ++step) {
    std::vector<data::WindowRef> refs;
    for (int64_t i = 0; i < opt.batch_size; ++i) refs.push_back({session, starts[pick(rng)]});
    models::PocoBatch b = to_batch(data.batch(refs), f);
    reset_peak_memory_stats(f.device());
    const auto t0 = std::chrono::steady_clock::now();
    Tensor loss = mse_loss(f.predict(b, &overrides), b.target);
    TensorList g = autograd::grad({loss}, leaves, {}, std::nullopt, false, /*allow_unused=*/true);
    last_loss = loss.item<double>();
    if (!std::isfinite(last_loss)) {
      // Diverged: no update from a non-finite gradient; the run ends here with NaN scores.
      r.diverged_at = step;
      break;
    }
    {
      NoGradGuard no_grad;
      if (adam) {
        for (size_t i = 0; i < leaves.size(); ++i)
          leaves[i].set_grad(g[i].defined() ? g[i] : zeros_like(leaves[i]));
        adam->step();
      } else {
        for (size_t i = 0; i < leaves.size(); ++i)
          if (g[i].defined()) leaves[i].add_(g[i], -lr_of[i]);
      }
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t step_peak = memory_stats(f.device()).peak_allocated_bytes;
    r.peak_bytes = std::max(r.peak_bytes, model_bytes + step_peak - held_before);
    if (step % opt.eval_every == 0 || step == opt.steps ||
        std::find(opt.eval_steps.begin(), opt.eval_steps.end(), step) != opt.eval_steps.end())
      eval_point(step);
  }
  r.initial_score = scores.front().second;
  // Early stopping on validation would have kept the best point, a diverged run's too.
  if (!std::isfinite(r.best_score)) r.best_score = NAN;
  if (r.diverged_at >= 0) {
    r.final_score = r.test_score = r.test_mse = NAN;
    r.seconds = seconds;
    return r;
  }
  r.final_score = scores.back().second;
  r.steps_to_95 = steps_to_fraction_of_final(scores, 0.95);
  r.steps_to_95_gain = steps_to_fraction_of_gain(scores, 0.95);
  r.seconds = seconds;
  r.ms_per_step = opt.steps > 0 ? 1e3 * seconds / double(opt.steps) : 0;
  Metrics test = test_of(&overrides);
  r.test_score = test.score;
  r.test_mse = test.mse;
  if (adapted != nullptr)
    for (auto& [name, value] : best_values) (*adapted)[name] = std::move(value);
  return r;
}

AdaptSummary summarize_adaptation(const std::vector<AdaptResult>& ps) {
  MT_CHECK(!ps.empty(), "summarize_adaptation: no sessions");
  AdaptSummary out;
  const double n = double(ps.size());
  for (const auto& r : ps) {
    out.diverged_sessions += r.diverged_at >= 0;
    out.initial_score += r.initial_score / n;
    out.final_score += r.final_score / n;
    out.test_score += r.test_score / n;
    out.test_score_initial += r.test_score_initial / n;
    out.best_score += r.best_score / n;
    out.test_score_at_best += r.test_score_at_best / n;
    out.seconds += r.seconds / n;
    out.peak_bytes = std::max(out.peak_bytes, r.peak_bytes);
  }
  // The steps every session was validated at: a diverged run's curve ends early, and a resumed
  // benchmark may pool runs validated on different grids (bench.adapt_eval_steps).
  for (const AdaptPoint& first : ps.front().curve) {
    double v = 0;
    bool everywhere = true;
    for (const auto& r : ps) {
      const auto it = std::find_if(r.curve.begin(), r.curve.end(),
                                   [&](const AdaptPoint& p) { return p.step == first.step; });
      if (it == r.curve.end()) {
        everywhere = false;
        break;
      }
      v += it->val_score / n;
    }
    if (everywhere) out.mean_curve.emplace_back(first.step, v);
  }
  if (out.diverged_sessions == 0) {
    out.steps_to_95 = steps_to_fraction_of_final(out.mean_curve, 0.95);
    out.steps_to_95_gain = steps_to_fraction_of_gain(out.mean_curve, 0.95);
  }
  // The same for every session of one model; pooled over models (bench.folds), their mean.
  double adapted = 0;
  for (const auto& r : ps) adapted += double(r.adapted_parameters);
  out.adapted_parameters = int64_t(std::llround(adapted / double(ps.size())));
  return out;
}

Metrics evaluate_after_inner_loop(const Forecaster& f, const data::PreparedData& data,
                                  const std::vector<int64_t>& sessions_in, int64_t inner_steps,
                                  double inner_lr, const std::vector<std::string>& params,
                                  int64_t batch_size, int64_t eval_batch_size, uint64_t seed,
                                  data::Split split, const std::vector<int64_t>& session_of) {
  std::vector<int64_t> sessions = sessions_in;
  if (sessions.empty())
    for (int64_t s = 0; s < data.num_sessions(); ++s) sessions.push_back(s);
  nn::Module* module = const_cast<Forecaster&>(f).module();
  MT_CHECK(module != nullptr, "evaluation after the inner loop needs a forecaster with parameters");
  Metrics all;
  for (int64_t s : sessions) {
    const auto& support = data.support(s);
    if (support.empty() || inner_steps == 0) {
      Metrics m = evaluate(f, data, split, {s}, eval_batch_size, session_of);
      all.sessions.push_back(m.sessions.at(0));
      continue;
    }
    // One fixed support batch per session, the same at every evaluation point.
    std::mt19937_64 rng(seed + uint64_t(s));
    std::uniform_int_distribution<size_t> pick(0, support.size() - 1);
    std::vector<data::WindowRef> refs;
    for (int64_t i = 0; i < batch_size; ++i) refs.push_back({s, support[pick(rng)]});
    models::PocoBatch b = to_batch(data.batch(refs), f, session_of);
    InnerLoopOptions opt;
    opt.steps = inner_steps;
    opt.inner_lr = inner_lr;
    opt.params = params;
    opt.create_graph = false;
    nn::ParamMap init;
    for (auto& [name, t] : module->named_parameters()) init[name] = t.detach();
    // Detached values do not require grad: the inner loop needs leaves that do.
    for (auto& [name, t] : init)
      if (matches_prefixes(name, params)) t.set_requires_grad(true);
    InnerResult inner = inner_loop(f, init, {b}, opt);
    nn::ParamMap adapted;
    for (auto& [name, t] : inner.fast) adapted[name] = t.detach();
    Metrics m = evaluate(f, data, split, {s}, eval_batch_size, session_of, &adapted);
    all.sessions.push_back(m.sessions.at(0));
  }
  for (const auto& s : all.sessions) {
    const double n = double(all.sessions.size());
    all.mse += s.mse / n;
    all.mae += s.mae / n;
    all.score += s.score / n;
    all.r2 += s.r2 / n;
  }
  return all;
}

}  // namespace mt::meta
