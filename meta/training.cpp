#include "meta/training.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include <omp.h>
#include <unistd.h>

#include <fmt/ranges.h>

#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/io/safetensors.h"
#include "engine/optim/adamw.h"
#include "meta/adaptation.h"
#include "meta/maml.h"

namespace mt::meta {

nlohmann::json TrainResult::to_json() const {
  nlohmann::json c = nlohmann::json::array();
  for (const auto& p : curve)
    c.push_back({{"step", p.step}, {"train_loss", p.train_loss}, {"seconds", p.seconds},
                 {"val_score", p.val.score}, {"val_mse", p.val.mse}, {"val_mae", p.val.mae},
                 {"val_r2", p.val.r2}});
  return {{"best_step", best_step},   {"best_score", best_score},
          {"seconds", seconds},       {"eval_seconds", eval_seconds},
          {"peak_bytes", peak_bytes},
          {"steps_to_95", steps_to_95}, {"trainable_parameters", trainable_parameters},
          {"last_step", last_step},   {"stopped_early", stopped_early},
          {"curve", c}};
}

int64_t evaluations_since_best(const std::vector<EvalPoint>& curve, int64_t best_step) {
  return std::count_if(curve.begin(), curve.end(),
                       [&](const EvalPoint& p) { return p.step > best_step; });
}

nlohmann::json EvalPoint::to_json() const {
  return {{"step", step},
          {"seconds", seconds},
          {"train_loss", std::isfinite(train_loss) ? nlohmann::json(train_loss) : nlohmann::json()},
          {"val", val.to_json()}};
}

EvalPoint EvalPoint::from_json(const nlohmann::json& j) {
  EvalPoint p;
  p.step = j.at("step").get<int64_t>();
  p.seconds = j.at("seconds").get<double>();
  p.train_loss = j.at("train_loss").is_null() ? NAN : j.at("train_loss").get<double>();
  p.val = Metrics::from_json(j.at("val"));
  return p;
}

std::vector<std::string> finetune_prefixes(const std::string& mode) {
  if (mode == "embeddings") return {"unit_emb.", "session_emb."};
  if (mode == "embeddings+head") return {"unit_emb.", "session_emb.", "head."};
  if (mode == "embeddings+latents") return {"unit_emb.", "session_emb.", "latent_emb."};
  // POCO's last Perceiver-IO layer: the decoder's cross-attention and feed-forward.
  if (mode == "embeddings+last_layer") return {"unit_emb.", "session_emb.", "decoder."};
  if (mode == "all") return {};
  MT_FAIL("parameter set '{}' is not known; use embeddings, embeddings+head, embeddings+latents, "
          "embeddings+last_layer or all", mode);
}

namespace {

std::string format_eta(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = int64_t(seconds + 0.5);
  return s >= 60 ? fmt::format("{}m{:02d}s", s / 60, s % 60) : fmt::format("{}s", s);
}

std::vector<int64_t> all_if_empty(const std::vector<int64_t>& sessions,
                                  const data::PreparedData& data) {
  if (!sessions.empty()) return sessions;
  std::vector<int64_t> all;
  for (int64_t s = 0; s < data.num_sessions(); ++s) all.push_back(s);
  return all;
}

// Sessions with both support and query windows: those FOMAML and E2E-TTT learn from.
std::vector<int64_t> meta_sessions_of(const data::PreparedData& data,
                                      const std::vector<int64_t>& sessions) {
  std::vector<int64_t> out;
  for (int64_t s : sessions)
    if (!data.support(s).empty() && !data.query(s).empty()) out.push_back(s);
  return out;
}

}  // namespace

std::string meta_sessions_note(const data::PreparedData& data,
                               const std::vector<int64_t>& sessions_in) {
  std::vector<std::string> left_out;
  bool without_support = false;
  for (int64_t s : all_if_empty(sessions_in, data)) {
    if (data.windows(s, data::Split::Train).empty() ||
        (!data.support(s).empty() && !data.query(s).empty()))
      continue;
    without_support |= data.support(s).empty();
    left_out.push_back(fmt::format("{} ({} support, {} query windows)", data.session(s).name,
                                   data.support(s).size(), data.query(s).size()));
  }
  if (left_out.empty()) return "";
  const data::PrepConfig& p = data.config();
  return fmt::format(
      "meta-learning leaves out {} training session(s) whose support or query share of the "
      "training {} holds no whole window of {} frames: {}{}; a larger data.train_fraction, "
      "another data.support_fraction (now {}) or shorter windows would keep them",
      left_out.size(),
      p.support_split == data::SupportSplit::Chronological ? "frames" : "windows",
      p.window.seq_length, fmt::join(left_out, ", "),
      without_support ? "; a meta-learned model is scored on those without support windows "
                        "without its inner loop"
                      : "",
      p.support_fraction);
}

namespace {

// ---- training state (ResumeOptions) ----
constexpr const char* kStateKey = "metatape.train_state";  // metadata: the state's JSON
// ... and its CRC-32 (8 hex digits): the file's own checksum covers the tensor data only.
constexpr const char* kStateCrcKey = "metatape.train_state.crc32";

std::string crc_hex(const std::string& text) {
  return fmt::format("{:08x}", io::crc32_of_bytes(text.data(), text.size()));
}

nlohmann::json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

Tensor to_cpu_copy(const Tensor& t) {
  NoGradGuard no_grad;
  return t.detach().to(kCPU).contiguous();
}

// Where two identities first differ, as a JSON pointer ("/train/lr"), for the refusal message.
std::string first_difference(const nlohmann::json& stored, const nlohmann::json& now) {
  const nlohmann::json patch = nlohmann::json::diff(stored, now);
  if (patch.empty()) return "";
  return patch[0].value("path", std::string("/"));
}

// Copies `src` (a CPU tensor from the state file) into `dst`, checking the shape and dtype.
void restore_into(Tensor& dst, const Tensor* src, const std::string& name,
                  const std::string& path) {
  MT_CHECK(src != nullptr,
           "{}: the training state has no tensor '{}'; the file is not this run's state (train "
           "the run again from the start)",
           path, name);
  MT_CHECK(src->shape() == dst.shape() && src->dtype() == dst.dtype(),
           "{}: '{}' is {} {} in the training state but {} {} in the model; the file is not this "
           "run's state (train the run again from the start)",
           path, name, dtype_name(src->dtype()), src->shape().str(), dtype_name(dst.dtype()),
           dst.shape().str());
  NoGradGuard no_grad;
  dst.copy_(*src);
}

}  // namespace

nlohmann::json read_train_state_metadata(const std::string& path) {
  const io::SafetensorsHeader h = io::read_safetensors_header(path);
  auto it = h.metadata.find(kStateKey);
  MT_CHECK(it != h.metadata.end(),
           "{}: not a training state (no '{}' metadata); it is written by train with a state "
           "path (metatape train writes <run>/train_state.safetensors)",
           path, kStateKey);
  auto crc = h.metadata.find(kStateCrcKey);
  MT_CHECK(crc != h.metadata.end() && crc->second == crc_hex(it->second),
           "{}: the training state's metadata is damaged (its CRC-32 does not match); it cannot "
           "be resumed: train the run again from the start",
           path);
  nlohmann::json j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  MT_CHECK(j.is_object() && j.contains("step") && j.contains("curve") && j.contains("identity"),
           "{}: the training state's metadata is damaged; it cannot be resumed: train the run "
           "again from the start",
           path);
  return j;
}

Metrics evaluate_as_used(const Forecaster& f, const data::PreparedData& data, data::Split split,
                         const TrainOptions& opt, const std::vector<int64_t>& sessions,
                         const std::vector<int64_t>& session_of) {
  if (opt.method == "standard")
    return evaluate(f, data, split, sessions, opt.eval_batch_size, session_of);
  return evaluate_after_inner_loop(f, data, sessions, opt.meta.inner_steps, opt.meta.inner_lr,
                                   opt.meta.params, opt.batch_size, opt.eval_batch_size, opt.seed,
                                   split, session_of);
}

void check_train_options(const TrainOptions& o, const std::string& where) {
  MT_CHECK(o.method == "standard" || o.method == "fomaml" || o.method == "e2e-ttt",
           "{}.method '{}' is not known; use standard, fomaml or e2e-ttt", where, o.method);
  MT_CHECK(o.steps >= 0, "{}.steps must be >= 0, got {}", where, o.steps);
  MT_CHECK(o.batch_size > 0, "{}.batch_size must be positive (windows per step), got {}", where,
           o.batch_size);
  MT_CHECK(o.eval_batch_size > 0,
           "{}.eval_batch_size must be positive (windows per validation batch), got {}", where,
           o.eval_batch_size);
  MT_CHECK(o.eval_every > 0, "{}.eval_every must be positive (steps between validations), got {}",
           where, o.eval_every);
  MT_CHECK(o.patience >= 0,
           "{}.patience must be >= 0 (evaluations without a better validation score before "
           "training stops; 0 = never stop early), got {}",
           where, o.patience);
  MT_CHECK(std::isfinite(o.lr) && o.lr > 0, "{}.lr must be a positive number, got {}", where, o.lr);
  MT_CHECK(std::isfinite(o.weight_decay) && o.weight_decay >= 0,
           "{}.weight_decay must be >= 0, got {}", where, o.weight_decay);
  MT_CHECK(std::isfinite(o.clip) && o.clip >= 0,
           "{}.clip must be >= 0 (the largest gradient norm; 0 = no clipping), got {}", where,
           o.clip);
  const MetaOptions& m = o.meta;
  MT_CHECK(std::isfinite(m.lr) && m.lr > 0, "{}.meta.lr must be a positive number, got {}", where,
           m.lr);
  MT_CHECK(m.meta_batch > 0, "{}.meta.meta_batch must be positive, got {}", where, m.meta_batch);
  MT_CHECK(m.inner_steps >= 0, "{}.meta.inner_steps must be >= 0, got {}", where, m.inner_steps);
  MT_CHECK(std::isfinite(m.inner_lr) && m.inner_lr > 0,
           "{}.meta.inner_lr must be a positive number, got {}", where, m.inner_lr);
  MT_CHECK(m.checkpoint_steps >= 0, "{}.meta.checkpoint_steps must be >= 0 (0 = none), got {}",
           where, m.checkpoint_steps);
  MT_CHECK(o.method == "standard" || m.inner_steps >= 1,
           "{}.meta.inner_steps is 0: {} without an inner loop is standard training; set it "
           ">= 1 or use method standard", where, o.method);
}

void check_training(const Forecaster& f, const data::PreparedData& data,
                    const std::vector<int64_t>& sessions_in, const TrainOptions& opt,
                    const std::string& where) {
  check_train_options(opt, where);
  check_prefixes(f, opt.trainable, where + ".trainable");
  const std::vector<int64_t> sessions = all_if_empty(sessions_in, data);
  bool windows = false;
  for (int64_t s : sessions) windows |= !data.windows(s, data::Split::Train).empty();
  MT_CHECK(windows, "{}: the sessions have no training windows (recordings shorter than a "
           "window of the model's seq_length + pred_length frames?)", where);
  // Every evaluation scores each session's validation windows (the best model is chosen on
  // them): said here, before a run's files are written, not at the first evaluation.
  for (int64_t s : sessions)
    MT_CHECK(!data.windows(s, data::Split::Val).empty(),
             "{}: session '{}' has no validation windows, on which training scores its "
             "evaluations and picks the best model; give the validation split a window "
             "(data.val_fraction > 0, of at least a window's seq_length + pred_length frames)",
             where, data.session(s).name);
  if (opt.method == "standard") return;
  MT_CHECK(const_cast<Forecaster&>(f).module() != nullptr,
           "{}.method {}: the {} model has no parameters to meta-learn", where, opt.method,
           f.kind());
  check_prefixes(f, opt.meta.params, where + ".meta.params");
  const size_t usable = meta_sessions_of(data, sessions).size();
  MT_CHECK(usable > 0,
           "{}: no session has both support and query windows for {}; data.support_fraction "
           "(the support share of each session's training windows, or of its frames with "
           "data.support_split=chronological) must leave both, e.g. 0.7: with the "
           "chronological split each share must hold a whole window (model.poco.seq_length "
           "frames)",
           where, opt.method);
  MT_CHECK(int64_t(usable) >= opt.meta.meta_batch,
           "{}.meta.meta_batch is {}, but only {} training session(s) have both support and "
           "query windows; an outer step averages distinct sessions: lower it to at most {}",
           where, opt.meta.meta_batch, usable, usable);
}

TrainResult train(Forecaster& f, const data::PreparedData& data,
                  const std::vector<int64_t>& sessions_in, const TrainOptions& opt,
                  const std::vector<int64_t>& session_of,
                  const std::function<void(const EvalPoint&)>& on_eval,
                  const std::function<void(const EvalPoint&)>& on_best,
                  const ResumeOptions& resume) {
  check_training(f, data, sessions_in, opt);
  MT_CHECK(!resume.resume || !resume.state_path.empty(),
           "training: resuming needs the state file (ResumeOptions::state_path)");
  const std::vector<int64_t> sessions = all_if_empty(sessions_in, data);
  std::vector<data::WindowRef> pool;
  for (int64_t s : sessions)
    for (int64_t start : data.windows(s, data::Split::Train)) pool.push_back({s, start});

  nn::Module* module = f.module();
  optim::NamedParams params;
  if (module)
    for (auto& [name, t] : module->named_parameters())
      if (matches_prefixes(name, opt.trainable)) params.emplace_back(name, t);
  TrainResult result;
  for (auto& [n, t] : params) result.trainable_parameters += t.numel();
  MT_CHECK(module == nullptr || opt.steps == 0 || !params.empty(),
           "training: no parameter matches the trainable prefixes");

  optim::AdamWOptions ao;
  ao.lr = opt.method == "standard" ? opt.lr : opt.meta.lr;
  ao.weight_decay = opt.weight_decay;
  ao.amsgrad = opt.amsgrad;
  std::unique_ptr<optim::AdamW> adam;
  if (!params.empty()) adam = std::make_unique<optim::AdamW>(params, ao);
  TensorList param_tensors;
  for (auto& [n, t] : params) param_tensors.push_back(t);

  std::mt19937_64 rng(opt.seed);
  std::uniform_int_distribution<size_t> pick(0, pool.size() - 1);
  Generator dropout_gen(opt.seed ^ 0x9E3779B97F4A7C15ull);
  reset_peak_memory_stats();
  const auto start = std::chrono::steady_clock::now();
  double seconds_before = 0;  // wall time of the interrupted part of a resumed run
  auto elapsed = [&] {
    return seconds_before +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const bool meta_method = opt.method != "standard";
  std::vector<Tensor> best_params;
  result.best_score = -INFINITY;
  double loss_sum = 0;
  int64_t loss_count = 0;

  auto evaluate_point = [&](int64_t step) {
    const double eval_start = elapsed();
    EvalPoint p;
    p.step = step;
    p.train_loss = loss_count ? loss_sum / double(loss_count) : NAN;
    p.val = evaluate_as_used(f, data, data::Split::Val, opt, sessions, session_of);
    p.seconds = elapsed();
    result.eval_seconds += p.seconds - eval_start;
    loss_sum = 0;
    loss_count = 0;
    result.curve.push_back(p);
    if (on_eval) on_eval(p);
    if (p.val.score > result.best_score) {
      result.best_score = p.val.score;
      result.best_step = step;
      NoGradGuard no_grad;
      best_params.clear();
      for (auto& t : param_tensors) best_params.push_back(t.detach().clone());
      if (on_best) on_best(p);
    }
  };

  // Early stopping (TrainOptions::patience): the last `patience` evaluations did not improve.
  auto patience_exhausted = [&] {
    return opt.patience > 0 &&
           evaluations_since_best(result.curve, result.best_step) >= opt.patience;
  };

  // Sessions with both support and query windows take part in meta-learning (check_training:
  // at least meta_batch of them).
  std::vector<int64_t> meta_sessions;
  if (meta_method) meta_sessions = meta_sessions_of(data, sessions);

  // The whole state after `step` (an evaluation point, or a step at which the run was stopped).
  int64_t peak_before = 0;  // peak bytes of the interrupted part of a resumed run
  auto save_state = [&](int64_t step, bool evaluated) {
    io::NamedTensors tensors;
    if (module)
      for (auto& [name, t] : module->named_parameters())
        tensors.emplace_back("param." + name, to_cpu_copy(t));
    if (best_params.size() == params.size())
      for (size_t i = 0; i < params.size(); ++i)
        tensors.emplace_back("best." + params[i].first, to_cpu_copy(best_params[i]));
    if (adam)  // copied straight to the host: no device copy adds to the peak memory
      for (auto& [name, t] : adam->state_views()) tensors.emplace_back("optim." + name, to_cpu_copy(t));
    std::ostringstream rng_text;
    rng_text << rng;
    nlohmann::json curve = nlohmann::json::array();
    for (const auto& p : result.curve) curve.push_back(p.to_json());
    std::vector<std::string> trainable;
    for (auto& [name, t] : params) trainable.push_back(name);
    const nlohmann::json state = {
        {"version", 1},
        {"device", f.device().str()},
        // CPU threads: another count splits the parallel sums otherwise (last bits)
        {"threads", omp_get_max_threads()},
        {"step", step},
        {"evaluated", evaluated},
        {"steps", opt.steps},
        {"identity", resume.identity},
        {"trainable", trainable},
        {"best_step", result.best_step},
        {"best_score", number_or_null(result.best_score)},
        {"curve", curve},
        {"loss_sum", loss_sum},
        {"loss_count", loss_count},
        {"seconds", elapsed()},
        {"eval_seconds", result.eval_seconds},
        {"peak_bytes", std::max(peak_before, memory_stats(f.device()).peak_allocated_bytes)},
        {"window_rng", rng_text.str()},
        {"dropout_generator", {dropout_gen.seed(), dropout_gen.offset()}},
        {"meta_sessions", meta_sessions},
        {"stopped_early", result.stopped_early}};
    const std::string text = state.dump();
    io::save_safetensors(resume.state_path, tensors,
                         {{kStateKey, text}, {kStateCrcKey, crc_hex(text)}});
  };

  int64_t first_step = 1;
  bool state_evaluated = true;  // the resumed state's step is an evaluation point
  if (resume.resume) {
    const std::string& path = resume.state_path;
    const nlohmann::json state = read_train_state_metadata(path);
    const std::string differs = first_difference(state["identity"], resume.identity);
    MT_CHECK(differs.empty(),
             "{}: the training state was written by another run: its config differs at '{}'; "
             "resume with the run's own config, or train the run again from the start",
             path, differs);
    try {
      MT_CHECK(state.value("version", 0) == 1,
               "{}: the training state has format version {}; this metatape reads version 1",
               path, state.value("version", 0));
      const int64_t step = state.at("step").get<int64_t>();
      MT_CHECK(step <= opt.steps,
               "{}: the training state is at step {}, past train.steps ({}); set train.steps to "
               "at least {}",
               path, step, opt.steps, step);
      std::vector<std::string> trainable;
      for (auto& [name, t] : params) trainable.push_back(name);
      MT_CHECK(state.at("trainable").get<std::vector<std::string>>() == trainable,
               "{}: the training state trains other parameters than train.trainable selects; "
               "resume with the run's own config",
               path);
      const io::SafetensorsContents contents = io::load_safetensors(path);
      if (module)
        for (auto& [name, t] : module->named_parameters())
          restore_into(t, contents.find("param." + name), "param." + name, path);
      best_params.clear();
      if (!params.empty() && contents.find("best." + params[0].first) != nullptr)
        for (auto& [name, t] : params) {
          Tensor b = t.detach().clone();
          restore_into(b, contents.find("best." + name), "best." + name, path);
          best_params.push_back(b);
        }
      if (adam) {
        optim::NamedParams optim_state;
        for (const auto& [name, t] : contents.tensors)
          if (name.rfind("optim.", 0) == 0) optim_state.emplace_back(name.substr(6), t);
        adam->load_state_dict(optim_state);
      }
      std::istringstream rng_text(state.at("window_rng").get<std::string>());
      rng_text >> rng;
      MT_CHECK(!rng_text.fail(), "{}: the training state's window_rng is damaged", path);
      const auto gen_state = state.at("dropout_generator").get<std::vector<uint64_t>>();
      MT_CHECK(gen_state.size() == 2, "{}: the training state's dropout_generator is damaged",
               path);
      dropout_gen.set_state(gen_state[0], gen_state[1]);
      const auto order = state.at("meta_sessions").get<std::vector<int64_t>>();
      MT_CHECK(std::multiset<int64_t>(order.begin(), order.end()) ==
                   std::multiset<int64_t>(meta_sessions.begin(), meta_sessions.end()),
               "{}: the training state's meta-learning sessions are not this data's; resume "
               "with the run's own data",
               path);
      meta_sessions = order;
      for (const auto& p : state.at("curve")) result.curve.push_back(EvalPoint::from_json(p));
      result.best_step = state.at("best_step").get<int64_t>();
      result.best_score =
          state.at("best_score").is_null() ? -INFINITY : state.at("best_score").get<double>();
      result.eval_seconds = state.at("eval_seconds").get<double>();
      peak_before = state.at("peak_bytes").get<int64_t>();
      loss_sum = state.value("loss_sum", 0.0);
      loss_count = state.value("loss_count", int64_t(0));
      seconds_before = state.at("seconds").get<double>();
      first_step = step + 1;
      state_evaluated = state.value("evaluated", true);
      if (resume.on_restored) resume.on_restored(state, contents);
    } catch (const nlohmann::json::exception& e) {
      MT_FAIL("{}: the training state's metadata is damaged ({}); it cannot be resumed: train "
              "the run again from the start",
              path, e.what());
    }
    // Stopped at the step that is now the last (train.steps set to it): the run ends with
    // that step's evaluation, as a run of that length does.
    if (!state_evaluated && first_step - 1 == opt.steps && opt.steps > 0) {
      evaluate_point(opt.steps);
      save_state(opt.steps, true);
    }
  } else {
    evaluate_point(0);
    if (!resume.state_path.empty()) save_state(0, true);
    // Asked to stop during the first evaluation: stop before the first step.
    if (opt.steps > 0 && adam && resume.stop_after && resume.stop_after(0))
      throw TrainingStopped(0, !resume.state_path.empty());
  }
  auto sample = [&](const std::vector<int64_t>& starts, int64_t s) {
    std::vector<data::WindowRef> refs;
    std::uniform_int_distribution<size_t> any(0, starts.size() - 1);
    for (int64_t i = 0; i < opt.batch_size; ++i) refs.push_back({s, starts[any(rng)]});
    return to_batch(data.batch(refs), f, session_of);
  };
  // One outer step of FOMAML / E2E-TTT: gradients averaged over meta_batch sessions, left in
  // the parameters' .grad for the optimizer. Returns the mean meta-loss.
  auto meta_step = [&]() {
    MetaGradientMean mean;
    double loss_total = 0;
    // meta_batch distinct sessions: the first ones of a shuffled order.
    std::shuffle(meta_sessions.begin(), meta_sessions.end(), rng);
    InnerLoopOptions inner;
    inner.steps = opt.meta.inner_steps;
    inner.checkpoint_steps = opt.meta.checkpoint_steps;
    inner.inner_lr = opt.meta.inner_lr;
    inner.params = opt.meta.params;
    inner.dropout = opt.meta.dropout ? &dropout_gen : nullptr;
    for (int64_t m = 0; m < opt.meta.meta_batch; ++m) {
      const int64_t s = meta_sessions[size_t(m)];
      models::PocoBatch support = sample(data.support(s), s), query = sample(data.query(s), s);
      MetaGradient g = opt.method == "fomaml"
                           ? fomaml_gradient(f, {support}, query, inner)
                           : e2e_ttt_gradient(f, {support}, query, inner,
                                              opt.meta.include_inner_losses);
      loss_total += g.meta_loss.item<double>();
      mean.add(g);
    }
    const std::vector<std::string> names = mean.names();
    const TensorList grads = mean.mean();
    std::map<std::string, Tensor> by_name;
    for (size_t i = 0; i < names.size(); ++i) by_name.emplace(names[i], grads[i]);
    NoGradGuard no_grad;
    for (auto& [name, t] : params) {
      auto it = by_name.find(name);
      if (it != by_name.end()) t.set_grad(it->second);
    }
    return loss_total / double(opt.meta.meta_batch);
  };

  const double seconds_at_first = elapsed();
  bool progress_line = false;  // a progress line without its newline is on stderr
  // On a terminal one line, rewritten; in a log file whole lines, about twenty of them.
  const bool progress_on_terminal = ::isatty(STDERR_FILENO) == 1;
  const int64_t progress_every =
      progress_on_terminal ? 10 : std::max<int64_t>(10, (opt.steps / 20 + 9) / 10 * 10);
  double last_progress_seconds = seconds_at_first;
  result.last_step = first_step - 1;
  // A resumed run whose last evaluations already exhaust the patience takes no step.
  result.stopped_early = state_evaluated && patience_exhausted() && first_step <= opt.steps;
  try {
    for (int64_t step = first_step; step <= opt.steps && adam && !result.stopped_early; ++step) {
      double loss_value = 0;
      adam->zero_grad();
      if (meta_method) {
        loss_value = meta_step();
      } else {
        std::vector<data::WindowRef> refs;
        for (int64_t i = 0; i < opt.batch_size; ++i) refs.push_back(pool[pick(rng)]);
        models::PocoBatch b = to_batch(data.batch(refs), f, session_of);
        Tensor pred = f.predict(b, nullptr, opt.dropout ? &dropout_gen : nullptr);
        Tensor loss = mse_loss(pred, b.target);
        loss_value = loss.item<double>();
        // Gradients of the trained parameters only: a frozen layer's weight gradient (a GEMM per
        // linear layer) is not computed, which fine-tuning a few embedding rows would waste.
        const TensorList grads = autograd::grad({loss}, param_tensors, {}, std::nullopt,
                                                /*create_graph=*/false, /*allow_unused=*/true);
        // Owned, as backward() would store them: the clipping may scale them in place.
        for (size_t i = 0; i < grads.size(); ++i)
          if (grads[i].defined()) params[i].second.set_grad(grads[i].detach().clone());
      }
      auto diverged = [&](const char* what, double value) {
        return TrainingDiverged(
            fmt::format("training: the {} became {} at step {}; lower {} (now {}){} or "
                        "check the data",
                        what, value, step, meta_method ? "train.meta.lr" : "train.lr",
                        meta_method ? opt.meta.lr : opt.lr,
                        meta_method ? fmt::format(" (bench adaptation: bench.meta_lr) or "
                                                  "train.meta.inner_lr (now {})",
                                                  opt.meta.inner_lr)
                                    : std::string()),
            step, what, value);
      };
      if (!std::isfinite(loss_value)) throw diverged("loss", loss_value);
      if (opt.clip > 0) {
        // A finite loss can still give a non-finite gradient: no step is taken from it.
        const double norm = optim::clip_grad_norm(params, opt.clip);
        if (!std::isfinite(norm)) throw diverged("gradient norm", norm);
      }
      adam->step();
      result.last_step = step;
      loss_sum += loss_value;
      ++loss_count;
      // Also when a line is overdue (slow steps: meta-learning a large model), so that the
      // first comes within seconds, not after ten steps.
      const bool progress_overdue =
          elapsed() - last_progress_seconds >= (progress_on_terminal ? 2.0 : 30.0);
      if (opt.log_progress &&
          (step % progress_every == 0 || step == opt.steps || progress_overdue)) {
        const double t = elapsed(), rate = double(step - first_step + 1) / (t - seconds_at_first);
        last_progress_seconds = t;
        // Slow steps (under one a second) as seconds per step.
        const std::string speed = rate >= 1 ? fmt::format("{:.1f} steps/s", rate)
                                            : fmt::format("{:.1f} s/step", 1 / rate);
        std::fprintf(stderr, "%s%sstep %lld/%lld  loss %.4f  %s  ETA %s%s",
                     progress_on_terminal ? "\r" : "", opt.progress_label.c_str(),
                     (long long)step, (long long)opt.steps, loss_value, speed.c_str(),
                     format_eta(double(opt.steps - step) / rate).c_str(),
                     progress_on_terminal ? "   " : "\n");
        std::fflush(stderr);
        progress_line = progress_on_terminal;
      }
      const bool evaluated = step % opt.eval_every == 0 || step == opt.steps;
      if (evaluated) {
        evaluate_point(step);
        result.stopped_early = step < opt.steps && patience_exhausted();
        if (!resume.state_path.empty()) save_state(step, true);
        if (result.stopped_early) break;
      }
      if (step < opt.steps && resume.stop_after && resume.stop_after(step)) {
        const bool saved = !resume.state_path.empty();
        if (saved && !evaluated) save_state(step, false);
        throw TrainingStopped(step, saved);
      }
    }
  } catch (...) {
    if (progress_line) std::fprintf(stderr, "\n");  // what the caller prints starts a line
    throw;
  }
  if (progress_line) std::fprintf(stderr, "\n");
  if (result.stopped_early && opt.log_progress)
    std::fprintf(stderr,
                 "stopped early at step %lld of %lld: %lld evaluation(s) in a row did not "
                 "improve on the best validation score, %.4f at step %lld (patience %lld)\n",
                 (long long)result.last_step, (long long)opt.steps,
                 (long long)evaluations_since_best(result.curve, result.best_step),
                 result.best_score, (long long)result.best_step, (long long)opt.patience);
  result.seconds = elapsed() - result.eval_seconds;
  result.peak_bytes = std::max(peak_before, memory_stats(f.device()).peak_allocated_bytes);
  // Restore the best parameters.
  if (!best_params.empty()) {
    NoGradGuard no_grad;
    for (size_t i = 0; i < param_tensors.size(); ++i) param_tensors[i].copy_(best_params[i]);
  }
  std::vector<std::pair<int64_t, double>> scores;
  for (const auto& p : result.curve) scores.emplace_back(p.step, p.val.score);
  result.steps_to_95 = steps_to_fraction_of_final(scores, 0.95);
  return result;
}

}  // namespace mt::meta
