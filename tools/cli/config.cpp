#include "tools/cli/config.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/ranges.h>

#include "engine/core/error.h"

namespace mt::cli {

namespace {

// Reads the fields of one JSON object; every key must be consumed, or finish() names it.
class Reader {
 public:
  Reader(const nlohmann::json& j, std::string where) : j_(j), where_(std::move(where)) {
    MT_CHECK(j.is_object(), "config: '{}' must be a JSON object, got {}", where_, j.type_name());
  }
  template <class T>
  void get(const char* key, T& out) {
    known_.push_back(key);
    auto it = j_.find(key);
    if (it == j_.end()) return;
    try {
      if constexpr (std::is_same_v<T, uint64_t>) {
        MT_CHECK(it->is_number_unsigned() || (it->is_number_integer() && it->get<int64_t>() >= 0),
                 "must be a non-negative integer");
      } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
        MT_CHECK(it->is_number_integer(), "must be an integer");
      } else if constexpr (std::is_floating_point_v<T>) {
        MT_CHECK(it->is_number(), "must be a number");
      } else if constexpr (std::is_same_v<T, bool>) {
        MT_CHECK(it->is_boolean(), "must be true or false");
      }
      out = it->get<T>();
    } catch (const std::exception& e) {
      MT_FAIL("config: '{}.{}' = {}: {}", where_, key, it->dump(), e.what());
    }
  }
  nlohmann::json child(const char* key) {
    known_.push_back(key);
    auto it = j_.find(key);
    return it == j_.end() ? nlohmann::json::object() : *it;
  }
  void finish() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      bool ok = false;
      for (const auto& k : known_) ok |= (it.key() == k);
      if (!ok) {
        MT_FAIL("config: unknown key '{}.{}' (known keys of '{}': {})", where_, it.key(), where_,
                fmt::join(known_, ", "));
      }
    }
  }

 private:
  const nlohmann::json& j_;
  std::string where_;
  std::vector<std::string> known_;
};

void read_meta(const nlohmann::json& j, const std::string& where, meta::MetaOptions& m) {
  Reader r(j, where);
  r.get("meta_batch", m.meta_batch);
  r.get("inner_steps", m.inner_steps);
  r.get("inner_lr", m.inner_lr);
  r.get("params", m.params);
  r.get("include_inner_losses", m.include_inner_losses);
  r.finish();
}

void read_train(const nlohmann::json& j, const std::string& where, meta::TrainOptions& t) {
  Reader r(j, where);
  r.get("method", t.method);
  MT_CHECK(t.method == "standard" || t.method == "fomaml" || t.method == "e2e-ttt",
           "config: {}.method '{}' is not known; use standard, fomaml or e2e-ttt", where, t.method);
  read_meta(r.child("meta"), where + ".meta", t.meta);
  r.get("steps", t.steps);
  r.get("batch_size", t.batch_size);
  r.get("lr", t.lr);
  r.get("weight_decay", t.weight_decay);
  r.get("amsgrad", t.amsgrad);
  r.get("clip", t.clip);
  r.get("eval_every", t.eval_every);
  r.get("eval_batch_size", t.eval_batch_size);
  r.get("seed", t.seed);
  r.get("dropout", t.dropout);
  r.get("trainable", t.trainable);
  r.get("log_progress", t.log_progress);
  r.finish();
}

nlohmann::json synth_to_json(const data::SynthConfig& s) {
  return {{"seed", s.seed},
          {"num_sessions", s.num_sessions},
          {"n_total", s.n_total},
          {"min_neurons", s.min_neurons},
          {"max_neurons", s.max_neurons},
          {"num_frames", s.num_frames},
          {"burn_in_frames", s.burn_in_frames},
          {"steps_per_frame", s.steps_per_frame},
          {"g", s.g},
          {"tau", s.tau},
          {"dt", s.dt},
          {"noise_std", s.noise_std},
          {"min_perturbation", s.min_perturbation},
          {"max_perturbation", s.max_perturbation},
          {"drift", s.drift},
          {"obs_noise_std", s.obs_noise_std},
          {"name_prefix", s.name_prefix}};
}

void read_synth(const nlohmann::json& j, data::SynthConfig& s) {
  Reader r(j, "data.synthetic");
  r.get("seed", s.seed);
  r.get("num_sessions", s.num_sessions);
  r.get("n_total", s.n_total);
  r.get("min_neurons", s.min_neurons);
  r.get("max_neurons", s.max_neurons);
  r.get("num_frames", s.num_frames);
  r.get("burn_in_frames", s.burn_in_frames);
  r.get("steps_per_frame", s.steps_per_frame);
  r.get("g", s.g);
  r.get("tau", s.tau);
  r.get("dt", s.dt);
  r.get("noise_std", s.noise_std);
  r.get("min_perturbation", s.min_perturbation);
  r.get("max_perturbation", s.max_perturbation);
  r.get("drift", s.drift);
  r.get("obs_noise_std", s.obs_noise_std);
  r.get("name_prefix", s.name_prefix);
  r.finish();
}

// Sets j[a][b]... = value for a dotted path, creating objects on the way.
void set_path(nlohmann::json& j, const std::string& assignment) {
  const auto eq = assignment.find('=');
  MT_CHECK(eq != std::string::npos && eq > 0,
           "--set '{}': expected key=value, e.g. --set train.lr=1e-3", assignment);
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error&) {
    value = text;  // a bare string such as poco-seed
  }
  nlohmann::json* node = &j;
  size_t begin = 0;
  while (true) {
    const auto dot = key.find('.', begin);
    const std::string part = key.substr(begin, dot == std::string::npos ? dot : dot - begin);
    MT_CHECK(!part.empty(), "--set '{}': empty key segment", assignment);
    if (dot == std::string::npos) {
      (*node)[part] = value;
      return;
    }
    nlohmann::json& next = (*node)[part];
    if (!next.is_object()) next = nlohmann::json::object();
    node = &next;
    begin = dot + 1;
  }
}

}  // namespace

nlohmann::json RunConfig::to_json() const {
  const auto& p = data.prep;
  nlohmann::json d = {{"path", data.path},
                      {"synthetic", synth_to_json(data.synthetic)},
                      {"split", p.split.mode == data::SplitMode::Blocks ? "poco_blocks" : "chronological"},
                      {"train_fraction", p.split.train},
                      {"val_fraction", p.split.val},
                      {"test_fraction", p.split.test},
                      {"block_length", p.split.block_length},
                      {"stride", p.window.stride},
                      {"zscore", p.zscore},
                      {"support_fraction", p.support_fraction},
                      {"seed", p.seed},
                      {"holdout", data.holdout}};
  nlohmann::json m = {{"kind", model.kind},
                      {"preset", model.preset},
                      {"poco", model.poco},
                      {"mlp_hidden", model.mlp_hidden},
                      {"resolved", model.poco_config().to_json()}};
  nlohmann::json o = {{"lr", online.lr},
                      {"params", online.params},
                      {"stride", online.stride},
                      {"calibration_frames", online.calibration_frames},
                      {"calibration_steps", online.calibration_steps},
                      {"calibration_batch", online.calibration_batch},
                      {"seed", online.seed}};
  nlohmann::json a = {{"modes", adapt.modes},
                      {"train", adapt.train.to_json()},
                      {"lr_by_mode", adapt.lr_by_mode}};
  return {{"data", d},  {"model", m},  {"train", train.to_json()},
          {"adapt", a}, {"online", o}, {"threads", threads}};
}

RunConfig config_from_json(const nlohmann::json& j) {
  RunConfig c;
  // Fine-tuning defaults: short runs with a larger step size on few parameters.
  c.adapt.train.steps = 200;
  c.adapt.train.lr = 1e-2;
  c.adapt.train.weight_decay = 0;
  c.adapt.train.eval_every = 10;
  c.adapt.train.dropout = false;
  Reader top(j, "config");
  {
    nlohmann::json dj = top.child("data");
    Reader r(dj, "data");
    r.get("path", c.data.path);
    read_synth(r.child("synthetic"), c.data.synthetic);
    std::string split = "chronological";
    r.get("split", split);
    if (split == "poco_blocks") {
      c.data.prep.split = data::SplitConfig::poco_blocks();
    } else {
      MT_CHECK(split == "chronological",
               "config: data.split '{}' is not known; use chronological or poco_blocks", split);
    }
    r.get("train_fraction", c.data.prep.split.train);
    r.get("val_fraction", c.data.prep.split.val);
    r.get("test_fraction", c.data.prep.split.test);
    r.get("block_length", c.data.prep.split.block_length);
    r.get("stride", c.data.prep.window.stride);
    r.get("zscore", c.data.prep.zscore);
    r.get("support_fraction", c.data.prep.support_fraction);
    r.get("seed", c.data.prep.seed);
    r.get("holdout", c.data.holdout);
    r.finish();
  }
  {
    nlohmann::json mj = top.child("model");
    Reader r(mj, "model");
    r.get("kind", c.model.kind);
    r.get("preset", c.model.preset);
    c.model.poco = r.child("poco");
    r.get("mlp_hidden", c.model.mlp_hidden);
    nlohmann::json resolved = r.child("resolved");  // written by to_json; informational
    (void)resolved;
    r.finish();
  }
  read_train(top.child("train"), "train", c.train);
  {
    nlohmann::json aj = top.child("adapt");
    Reader r(aj, "adapt");
    r.get("modes", c.adapt.modes);
    read_train(r.child("train"), "adapt.train", c.adapt.train);
    r.get("lr_by_mode", c.adapt.lr_by_mode);
    r.finish();
  }
  {
    nlohmann::json oj = top.child("online");
    Reader r(oj, "online");
    r.get("lr", c.online.lr);
    r.get("params", c.online.params);
    r.get("stride", c.online.stride);
    r.get("calibration_frames", c.online.calibration_frames);
    r.get("calibration_steps", c.online.calibration_steps);
    r.get("calibration_batch", c.online.calibration_batch);
    r.get("seed", c.online.seed);
    r.finish();
  }
  top.get("threads", c.threads);
  top.finish();
  // Resolve and validate the model now, so a bad value fails before any data is read.
  const std::string& kind = c.model.kind;
  MT_CHECK(kind == "poco" || kind == "nlinear" || kind == "mlp" || kind == "copy_last",
           "config: model.kind '{}' is not known; use poco, nlinear, mlp or copy_last", kind);
  const models::PocoConfig pc = c.model.poco_config();
  c.data.prep.window.seq_length = pc.seq_length;
  c.data.prep.window.pred_length = pc.pred_length;
  for (const auto& mode : c.adapt.modes) meta::finetune_prefixes(mode);
  for (const auto& [mode, lr] : c.adapt.lr_by_mode) {
    meta::finetune_prefixes(mode);
    MT_CHECK(lr > 0, "config: adapt.lr_by_mode.{} must be positive, got {}", mode, lr);
  }
  return c;
}

RunConfig apply_overrides(nlohmann::json j, const std::vector<std::string>& overrides) {
  for (const auto& o : overrides) set_path(j, o);
  return config_from_json(j);
}

RunConfig load_config(const std::string& file, const std::vector<std::string>& overrides) {
  nlohmann::json j = file.empty() ? nlohmann::json::object() : read_json_file(file);
  try {
    return apply_overrides(j, overrides);
  } catch (const Error& e) {
    if (file.empty()) throw;
    throw Error(fmt::format("{} (in {})", e.what(), file));
  }
}

nlohmann::json read_json_file(const std::string& path) {
  MT_CHECK(std::filesystem::exists(path), "{}: file does not exist", path);
  std::ifstream in(path);
  MT_CHECK(in.good(), "{}: cannot be read", path);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::parse_error& e) {
    MT_FAIL("{}: invalid JSON ({}); fix the file or regenerate it", path, e.what());
  }
}

void write_file_atomic(const std::string& path, const std::string& text) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path tmp = target.parent_path() / fmt::format(".{}.tmp", target.filename().string());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MT_CHECK(out.good(), "{}: cannot write (does the folder exist and is it writable?)",
             tmp.string());
    out << text;
    out.flush();
    MT_CHECK(out.good(), "{}: write failed (disk full?)", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp);
    MT_FAIL("{}: cannot replace ({})", path, ec.message());
  }
}

}  // namespace mt::cli
