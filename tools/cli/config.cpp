#include "tools/cli/config.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>

#include <fmt/ranges.h>

#include "engine/core/error.h"
#include "engine/io/temp_file.h"
#include "meta/adaptation.h"

namespace mt::cli {

namespace {

// An error's message without the source location MT_CHECK appends (" [file:line]"): for a
// message that wraps it and gets a location of its own.
std::string without_source_location(const std::exception& e) {
  std::string why = e.what();
  if (const size_t at = why.rfind(" ["); at != std::string::npos && why.back() == ']')
    why.erase(at);
  return why;
}

bool looks_numeric(const std::string& text) {
  char* end = nullptr;
  (void)std::strtod(text.c_str(), &end);
  return !text.empty() && end != text.c_str() && *end == '\0';
}

// A value as a message shows it: text that is not UTF-8 (a --set of raw bytes) shown with
// replacement characters instead of failing the message itself.
std::string shown(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Why a value given for a whole number is not one ("" when it is), with how to write it.
std::string not_whole_number(const nlohmann::json& v, int64_t lowest, int64_t highest) {
  if (v.is_number_integer()) {
    const bool fits = v.is_number_unsigned()
                          ? v.get<uint64_t>() <= static_cast<uint64_t>(highest)
                          : v.get<int64_t>() >= lowest && v.get<int64_t>() <= highest;
    return fits ? std::string() : fmt::format("must be a whole number from {} to {}", lowest,
                                              highest);
  }
  // JSON reads 1e10 and 3.0 as floating point: say how to write a whole number.
  if (v.is_number_float() && std::isfinite(v.get<double>()) &&
      v.get<double>() == std::floor(v.get<double>()) &&
      std::abs(v.get<double>()) < 9.2e18)
    return fmt::format("must be an integer written without a point or exponent, e.g. {:.0f}",
                       v.get<double>());
  return "must be an integer";
}

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
        const std::string why = not_whole_number(*it, std::numeric_limits<T>::min(),
                                                 std::numeric_limits<T>::max());
        MT_CHECK(why.empty(), "{}", why);
      } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
        MT_CHECK(it->is_array(), "must be a list of whole numbers, e.g. [1, 3, 10]");
        for (const auto& x : *it) {
          const std::string why = not_whole_number(x, std::numeric_limits<int64_t>::min(),
                                                   std::numeric_limits<int64_t>::max());
          MT_CHECK(why.empty(), "holds {}: each entry {}", shown(x), why);
        }
      } else if constexpr (std::is_same_v<T, std::map<std::string, int64_t>>) {
        MT_CHECK(it->is_object(),
                 "must map names to whole numbers, e.g. {{\"fomaml\": 500}} (on the command "
                 "line, one at a time: --set {}.{}.fomaml=500)",
                 where_, key);
        for (auto e = it->begin(); e != it->end(); ++e) {
          const std::string why = not_whole_number(e.value(), std::numeric_limits<int64_t>::min(),
                                                   std::numeric_limits<int64_t>::max());
          MT_CHECK(why.empty(), "'{}' is {}: it {}", e.key(), shown(e.value()), why);
        }
      } else if constexpr (std::is_same_v<T, std::string>) {
        MT_CHECK(it->is_string(), "must be text (on the command line, quoted: --set '{}{}=\"...\"')",
                 where_ == "config" ? "" : where_ + ".", key);
      } else if constexpr (std::is_floating_point_v<T>) {
        MT_CHECK(it->is_number(), "must be a number");
      } else if constexpr (std::is_same_v<T, std::optional<double>>) {
        MT_CHECK(it->is_null() || it->is_number(), "must be a number, or null to leave it unset");
      } else if constexpr (std::is_same_v<T, bool>) {
        MT_CHECK(it->is_boolean(), "must be true or false");
      } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
        MT_CHECK(it->is_array() && std::all_of(it->begin(), it->end(),
                                               [](const nlohmann::json& x) { return x.is_string(); }),
                 "must be a list of names, e.g. [\"a\", \"b\"] (on the command line: --set "
                 "'{}.{}=[\"a\",\"b\"]')",
                 where_, key);
        for (auto a = it->begin(); a != it->end(); ++a)
          MT_CHECK(std::find(it->begin(), a, *a) == a, "names {} twice; give each once",
                   shown(*a));
      } else if constexpr (std::is_same_v<T, std::map<std::string, double>>) {
        MT_CHECK(it->is_object(),
                 "must map names to numbers, e.g. {{\"embeddings\": 0.003}} (on the command "
                 "line, one at a time: --set {}.{}.embeddings=0.003)",
                 where_, key);
        for (auto e = it->begin(); e != it->end(); ++e)
          MT_CHECK(e.value().is_number(), "'{}' is {}, not a number (--set {}.{}.{}=0.003)",
                   e.key(), shown(e.value()), where_, key, e.key());
      }
      if constexpr (std::is_same_v<T, std::map<std::string, double>> ||
                    std::is_same_v<T, std::map<std::string, int64_t>>) {
        // A map's entries are set one by one over its defaults (--set adapt.lr_by_mode.all=1e-4
        // keeps the other modes' step sizes).
        for (auto e = it->begin(); e != it->end(); ++e)
          out[e.key()] = e.value().template get<typename T::mapped_type>();
      } else {
        out = it->get<T>();
      }
    } catch (const std::exception& e) {
      // A number written so JSON does not read it (".001", "1e-3 ") came through --set as text.
      std::string hint;
      if constexpr ((std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) ||
                    std::is_same_v<T, std::optional<double>>)
        if (it->is_string()) {
          std::string text = it->template get<std::string>();
          std::string lower = text;
          for (char& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
          if (lower.find("nan") != std::string::npos || lower.find("inf") != std::string::npos)
            hint = " (JSON has no NaN or infinity: give a finite number)";
          else if (looks_numeric(text) && (text[0] == '.' || text.rfind("-.", 0) == 0))
            hint = " (JSON numbers need a digit before the point, e.g. 0.001)";
          else if (looks_numeric(text))
            hint = " (a number, not text: drop the quotes)";
        }
      // The inner check's own source location is dropped: this message gets one.
      const std::string why = without_source_location(e);
      MT_FAIL("config: '{}{}' = {}: {}{}", where_ == "config" ? "" : where_ + ".", key,
              shown(*it), why, hint);
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
      if (!ok && where_ == "config")  // the top level
        MT_FAIL("config: unknown key '{}' (known top-level keys: {})", it.key(),
                fmt::join(known_, ", "));
      if (!ok)
        MT_FAIL("config: unknown key '{}.{}' (known keys of '{}': {})", where_, it.key(), where_,
                fmt::join(known_, ", "));
    }
  }

 private:
  const nlohmann::json& j_;
  std::string where_;
  std::vector<std::string> known_;
};

// One list of (key, member) per settings struct serves reading and writing, so the two cannot
// drift apart.
template <class Fn>
void visit(data::SynthConfig& s, Fn&& fn) {
  fn("seed", s.seed);
  fn("num_sessions", s.num_sessions);
  fn("n_total", s.n_total);
  fn("min_neurons", s.min_neurons);
  fn("max_neurons", s.max_neurons);
  fn("num_frames", s.num_frames);
  fn("burn_in_frames", s.burn_in_frames);
  fn("steps_per_frame", s.steps_per_frame);
  fn("g", s.g);
  fn("tau", s.tau);
  fn("dt", s.dt);
  fn("noise_std", s.noise_std);
  fn("min_perturbation", s.min_perturbation);
  fn("max_perturbation", s.max_perturbation);
  fn("drift", s.drift);
  fn("obs_noise_std", s.obs_noise_std);
  fn("name_prefix", s.name_prefix);
}

template <class Fn>
void visit(data::NpzOptions& o, Fn&& fn) {
  fn("dt", o.dt);
}

template <class Fn>
void visit(data::Hdf5Options& o, Fn&& fn) {
  fn("dataset", o.dataset);
  fn("timestamps", o.timestamps);
  fn("frame_ranges", o.frame_ranges);
  fn("dt", o.dt);
}

template <class Fn>
void visit(data::CsvOptions& o, Fn&& fn) {
  fn("sampling_rate_hz", o.sampling_rate_hz);
  fn("time_axis", o.time_axis);
  fn("header", o.header);
  fn("label_column", o.label_column);
  fn("time_column", o.time_column);
}

template <class Fn>
void visit(meta::MetaOptions& m, Fn&& fn) {
  fn("lr", m.lr);
  fn("meta_batch", m.meta_batch);
  fn("inner_steps", m.inner_steps);
  fn("inner_lr", m.inner_lr);
  fn("params", m.params);
  fn("include_inner_losses", m.include_inner_losses);
  fn("checkpoint_steps", m.checkpoint_steps);
  fn("dropout", m.dropout);
}

// The scalar fields of TrainOptions (method and meta are handled by read_train/train_json).
template <class Fn>
void visit(meta::TrainOptions& t, Fn&& fn) {
  fn("method", t.method);
  fn("steps", t.steps);
  fn("batch_size", t.batch_size);
  fn("lr", t.lr);
  fn("weight_decay", t.weight_decay);
  fn("amsgrad", t.amsgrad);
  fn("clip", t.clip);
  fn("eval_every", t.eval_every);
  fn("patience", t.patience);
  fn("eval_batch_size", t.eval_batch_size);
  fn("seed", t.seed);
  fn("dropout", t.dropout);
  fn("trainable", t.trainable);
  fn("log_progress", t.log_progress);
}

template <class Fn>
void visit(meta::OnlineOptions& o, Fn&& fn) {
  fn("lr", o.lr);
  fn("params", o.params);
  fn("stride", o.stride);
  fn("calibration_frames", o.calibration_frames);
  fn("calibration_steps", o.calibration_steps);
  fn("calibration_batch", o.calibration_batch);
  fn("seed", o.seed);
  fn("unseen_frames", o.unseen_frames);
}

template <class Fn>
void visit(BenchSpec& b, Fn&& fn) {
  fn("methods", b.methods);
  fn("train_steps", b.train_steps);
  fn("param_sets", b.param_sets);
  fn("cross_procedures", b.cross_procedures);
  fn("meta_from_standard", b.meta_from_standard);
  fn("meta_lr", b.meta_lr);
  fn("meta_weight_decay", b.meta_weight_decay);
  fn("inner_backbone_lr", b.inner_backbone_lr);
  fn("adapt_steps", b.adapt_steps);
  fn("adapt_eval_every", b.adapt_eval_every);
  fn("adapt_eval_steps", b.adapt_eval_steps);
  fn("adapt_batch_size", b.adapt_batch_size);
  fn("new_session_init", b.new_session_init);
  fn("folds", b.folds);
  fn("memory_inner_steps", b.memory_inner_steps);
  fn("memory_batch_size", b.memory_batch_size);
}

// Reads every visited field of `out` from the object j (strict: unknown keys are errors).
template <class T>
void read_fields(const nlohmann::json& j, const std::string& where, T& out) {
  Reader r(j, where);
  visit(out, [&](const char* key, auto& field) { r.get(key, field); });
  r.finish();
}

template <class T>
nlohmann::json fields_json(T copy) {
  nlohmann::json j = nlohmann::json::object();
  visit(copy, [&](const char* key, const auto& field) { j[key] = field; });
  return j;
}

void read_train(const nlohmann::json& j, const std::string& where, meta::TrainOptions& t) {
  nlohmann::json scalars = j;
  if (scalars.is_object()) scalars.erase("meta");
  read_fields(scalars, where, t);
  MT_CHECK(t.method == "standard" || t.method == "fomaml" || t.method == "e2e-ttt",
           "config: {}.method '{}' is not known; use standard, fomaml or e2e-ttt", where, t.method);
  if (j.is_object() && j.contains("meta")) read_fields(j.at("meta"), where + ".meta", t.meta);
}

nlohmann::json train_json(const meta::TrainOptions& t) {
  nlohmann::json j = fields_json(t);
  j["meta"] = fields_json(t.meta);
  return j;
}

// Sets j[a][b]... = value for a dotted path, creating objects on the way.
void set_path(nlohmann::json& j, const std::string& assignment) {
  const auto eq = assignment.find('=');
  MT_CHECK(eq != std::string::npos && eq > 0,
           "--set '{}': expected key=value, e.g. --set train.lr=1e-3", assignment);
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  try {
    (void)nlohmann::json(assignment).dump();  // throws on text that is not UTF-8
  } catch (const nlohmann::json::exception&) {
    MT_FAIL("--set {}: the text is not valid UTF-8 (a file name or value in another encoding?); "
            "give it in UTF-8",
            nlohmann::json(assignment).dump(-1, ' ', false,
                                            nlohmann::json::error_handler_t::replace));
  }
  nlohmann::json value;
  try {
    value = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error&) {
    value = text;  // a bare string such as poco-seed
  } catch (const nlohmann::json::exception& e) {  // e.g. a number out of double's range
    MT_FAIL("--set '{}': the value is not usable ({}); give a value in range, e.g. 1e-3",
            assignment, e.what());
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
                      {"synthetic", fields_json(data.synthetic)},
                      {"split", p.split.mode == data::SplitMode::Blocks ? "poco_blocks" : "chronological"},
                      {"train_fraction", p.split.train},
                      {"val_fraction", p.split.val},
                      {"test_fraction", p.split.test},
                      {"block_length", p.split.block_length},
                      {"stride", p.window.stride},
                      {"zscore", p.zscore},
                      {"support_split", p.support_split == data::SupportSplit::Shuffled
                                            ? "shuffled"
                                            : "chronological"},
                      {"support_fraction", p.support_fraction},
                      {"seed", p.seed},
                      {"holdout", data.holdout}};
  d["npz"] = fields_json(data.load.npz);
  d["hdf5"] = fields_json(data.load.hdf5);
  d["hdf5"]["time_axis"] = data.load.hdf5.time_axis == data::TimeAxis::Auto
                               ? nlohmann::json("auto")
                               : nlohmann::json(int(data.load.hdf5.time_axis));
  d["csv"] = fields_json(data.load.csv);
  d["csv"]["delimiter"] = std::string(1, data.load.csv.delimiter);
  nlohmann::json m = {{"kind", model.kind},
                      {"preset", model.preset},
                      {"poco", model.poco},
                      {"mlp_hidden", model.mlp_hidden},
                      {"resolved", model.poco_config().to_json()}};
  nlohmann::json a = {{"modes", adapt.modes},
                      {"train", train_json(adapt.train)},
                      {"lr_by_mode", adapt.lr_by_mode},
                      {"new_session_init", adapt.new_session_init}};
  return {{"data", d},  {"model", m},  {"train", train_json(train)},
          {"adapt", a}, {"online", fields_json(online)}, {"bench", fields_json(bench)},
          {"threads", threads}, {"saved_recompute", saved_recompute}};
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
    read_fields(r.child("synthetic"), "data.synthetic", c.data.synthetic);
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
    std::string support_split = "shuffled";
    r.get("support_split", support_split);
    MT_CHECK(support_split == "chronological" || support_split == "shuffled",
             "config: data.support_split '{}' is not known; use shuffled (a random share of the "
             "training windows, the default) or chronological (support windows from the first "
             "data.support_fraction of each session's training frames, query windows from the "
             "rest)",
             support_split);
    c.data.prep.support_split = support_split == "shuffled" ? data::SupportSplit::Shuffled
                                                            : data::SupportSplit::Chronological;
    r.get("support_fraction", c.data.prep.support_fraction);
    r.get("seed", c.data.prep.seed);
    r.get("holdout", c.data.holdout);
    read_fields(r.child("npz"), "data.npz", c.data.load.npz);
    {
      nlohmann::json hj = r.child("hdf5");
      nlohmann::json axis = "auto";
      if (hj.is_object() && hj.contains("time_axis")) {
        axis = hj["time_axis"];
        hj.erase("time_axis");
      }
      read_fields(hj, "data.hdf5", c.data.load.hdf5);
      MT_CHECK(axis == "auto" || axis == 0 || axis == 1,
               "config: data.hdf5.time_axis = {}: use \"auto\", 0 (rows are frames) or 1 "
               "(columns are frames)",
               axis.dump());
      c.data.load.hdf5.time_axis = axis == "auto" ? data::TimeAxis::Auto
                                   : axis == 0    ? data::TimeAxis::Axis0
                                                  : data::TimeAxis::Axis1;
    }
    {
      nlohmann::json cj = r.child("csv");
      std::string delimiter = ",";
      if (cj.is_object() && cj.contains("delimiter")) {
        MT_CHECK(cj["delimiter"].is_string() && cj["delimiter"].get<std::string>().size() == 1,
                 "config: data.csv.delimiter = {}: one character, e.g. \",\", \";\" or "
                 "\"\\t\"",
                 cj["delimiter"].dump());
        delimiter = cj["delimiter"].get<std::string>();
      }
      // A column number may be given as a number (--set data.csv.time_column=1).
      if (cj.is_object() && cj.contains("time_column") && cj["time_column"].is_number_integer())
        cj["time_column"] = std::to_string(cj["time_column"].get<int64_t>());
      data::CsvOptions& o = c.data.load.csv;
      Reader cr(cj, "data.csv");
      visit(o, [&](const char* key, auto& field) { cr.get(key, field); });
      (void)cr.child("delimiter");  // read above; listed among the known keys
      cr.finish();
      o.delimiter = delimiter[0];
      MT_CHECK(std::isfinite(o.sampling_rate_hz) && o.sampling_rate_hz > 0,
               "config: data.csv.sampling_rate_hz = {}: a positive number of frames per second",
               o.sampling_rate_hz);
      MT_CHECK(o.time_axis == 0 || o.time_axis == 1,
               "config: data.csv.time_axis = {}: use 1 (columns are frames, rows are neurons) or "
               "0 (rows are frames, columns are neurons)",
               o.time_axis);
      MT_CHECK(o.time_column.empty() || o.time_axis == 0,
               "config: data.csv.time_column = \"{}\" needs data.csv.time_axis=0 (rows are "
               "frames); with frames as columns the times come from data.csv.sampling_rate_hz",
               o.time_column);
    }
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
    r.get("new_session_init", c.adapt.new_session_init);
    r.finish();
  }
  read_fields(top.child("online"), "online", c.online);
  read_fields(top.child("bench"), "bench", c.bench);
  top.get("threads", c.threads);
  top.get("saved_recompute", c.saved_recompute);
  // Written by `metatape train` into a run's config.json (descriptive): a run's config can be
  // given back as --config.
  (void)top.child("sessions");
  (void)top.child("holdout_sessions");
  top.finish();
  MT_CHECK(c.threads >= 0 && c.threads <= 4096,
           "config: threads is {}: the CPU threads to use, from 1 (0: the runtime's default, "
           "OMP_NUM_THREADS or every core)",
           c.threads);
  // The data's own checks, said before anything is read or written and named by their keys.
  const data::SplitConfig& split = c.data.prep.split;
  MT_CHECK(std::isfinite(split.train) && std::isfinite(split.val) && std::isfinite(split.test) &&
               split.train >= 0 && split.val >= 0 && split.test >= 0 &&
               std::abs(split.train + split.val + split.test - 1.0) < 1e-6,
           "config: data.train_fraction {} + data.val_fraction {} + data.test_fraction {}: each "
           "must be >= 0 and they must sum to 1",
           split.train, split.val, split.test);
  MT_CHECK(split.mode != data::SplitMode::Blocks || split.block_length >= 1,
           "config: data.block_length is {}: the frames of each block of data.split=poco_blocks, "
           ">= 1",
           split.block_length);
  MT_CHECK(c.data.prep.window.stride >= 1,
           "config: data.stride is {}: frames between the starts of two windows, >= 1",
           c.data.prep.window.stride);
  MT_CHECK(std::isfinite(c.data.prep.support_fraction) && c.data.prep.support_fraction >= 0 &&
               c.data.prep.support_fraction <= 1,
           "config: data.support_fraction is {}: the share of each session's training windows "
           "(frames with data.support_split=chronological) in its support set (meta-learning), "
           "in [0, 1]",
           c.data.prep.support_fraction);
  try {
    if (c.data.path.empty()) data::check_config(c.data.synthetic);  // (unread otherwise)
  } catch (const Error& e) {
    std::string why = without_source_location(e);
    if (why.rfind("synthesize: ", 0) == 0) why.erase(0, 12);
    MT_FAIL("config: data.synthetic (the synthetic data's settings): {}", why);
  }
  MT_CHECK(c.saved_recompute == "cuda" || c.saved_recompute == "always" ||
               c.saved_recompute == "never",
           "config: saved_recompute '{}' is not known; use cuda (recompute cheap saved outputs "
           "on CUDA only, the default), always or never",
           c.saved_recompute);
  meta::check_train_options(c.train, "config: train");
  meta::check_train_options(c.adapt.train, "config: adapt.train");
  MT_CHECK(c.adapt.train.patience == 0,
           "config: adapt.train.patience is {}: adaptation takes every step (its curves and steps "
           "to 95% are read off them); set it to 0", c.adapt.train.patience);
  {  // adapt fine-tunes: adapt.train.meta is part of its settings' type, not read
    const nlohmann::json given = fields_json(c.adapt.train.meta);
    const nlohmann::json unread = fields_json(meta::MetaOptions{});
    for (const auto& [key, value] : given.items())
      MT_CHECK(value == unread.at(key),
               "config: adapt.train.meta.{} is not read (adapt fine-tunes with AdamW; the inner "
               "loop of a meta-learned run takes train.meta.{}): drop it",
               key, key);
  }
  MT_CHECK(c.adapt.train.method == "standard",
           "config: adapt.train.method is '{}': `metatape adapt` fine-tunes (standard); the "
           "meta-learned inner loop is set by train.meta.* and compared by `metatape bench "
           "adaptation`", c.adapt.train.method);
  MT_CHECK(!c.adapt.modes.empty(), "config: adapt.modes must name at least one parameter set "
           "(embeddings, embeddings+head, embeddings+latents, embeddings+last_layer, all)");
  meta::check_online_options(c.online);
  // Resolve and validate the model now, so a bad value fails before any data is read.
  const std::string& kind = c.model.kind;
  MT_CHECK(kind == "poco" || kind == "nlinear" || kind == "mlp" || kind == "copy_last",
           "config: model.kind '{}' is not known; use poco, nlinear, mlp or copy_last", kind);
  MT_CHECK(c.model.preset == "poco-paper" || c.model.preset == "poco-seed",
           "config: model.preset '{}' is not known; use poco-paper or poco-seed (and model.poco "
           "to change single settings)",
           c.model.preset);
  models::PocoConfig pc;
  try {
    pc = c.model.poco_config();
  } catch (const Error& e) {  // POCO's own message, named by its place in the config
    std::string why = without_source_location(e);
    if (why.rfind("POCO config: ", 0) == 0) why.erase(0, 13);
    MT_FAIL("config: model.poco (preset '{}'): {}", c.model.preset, why);
  }
  c.data.prep.window.seq_length = pc.seq_length;
  c.data.prep.window.pred_length = pc.pred_length;
  for (const auto& mode : c.adapt.modes) meta::finetune_prefixes(mode);
  MT_CHECK(!c.bench.methods.empty(),
           "config: bench.methods is empty: name the methods to compare, e.g. [\"standard\", "
           "\"fomaml\", \"e2e-ttt\"]");
  for (const auto& m : c.bench.methods)
    MT_CHECK(m == "standard" || m == "fomaml" || m == "e2e-ttt",
             "config: bench.methods names '{}'; use standard, fomaml or e2e-ttt", m);
  for (const auto& [m, steps] : c.bench.train_steps)
    MT_CHECK((m == "standard" || m == "fomaml" || m == "e2e-ttt") && steps >= 0,
             "config: bench.train_steps.{} = {}: the key must be standard, fomaml or e2e-ttt and "
             "the value >= 0", m, steps);
  MT_CHECK(!c.bench.param_sets.empty(), "config: bench.param_sets must name at least one set");
  for (const auto& set : c.bench.param_sets) meta::finetune_prefixes(set);
  MT_CHECK(c.bench.adapt_steps >= 0 && c.bench.adapt_eval_every > 0 && c.bench.adapt_batch_size > 0 &&
               c.bench.memory_batch_size > 0,
           "config: bench.adapt_steps must be >= 0 and bench.adapt_eval_every, "
           "bench.adapt_batch_size, bench.memory_batch_size positive");
  for (const int64_t s : c.bench.adapt_eval_steps)
    MT_CHECK(s >= 1, "config: bench.adapt_eval_steps holds {}; list adaptation steps >= 1 to "
             "validate after (step 0 always is), e.g. [1, 2, 3, 5]", s);
  meta::parse_new_session_init(c.bench.new_session_init);
  meta::parse_new_session_init(c.adapt.new_session_init);
  MT_CHECK(c.bench.folds == 0 || c.bench.folds >= 2,
           "config: bench.folds is {}; use 0 (hold out data.holdout once) or K >= 2 (hold out each "
           "of K groups of sessions in turn)", c.bench.folds);

  MT_CHECK(c.bench.meta_lr > 0, "config: bench.meta_lr must be positive, got {}", c.bench.meta_lr);
  MT_CHECK(!c.bench.meta_weight_decay ||
               (std::isfinite(*c.bench.meta_weight_decay) && *c.bench.meta_weight_decay >= 0),
           "config: bench.meta_weight_decay must be >= 0 (or null: train.weight_decay), got {}",
           c.bench.meta_weight_decay.value_or(0));
  MT_CHECK(c.bench.inner_backbone_lr > 0, "config: bench.inner_backbone_lr must be positive, got {}",
           c.bench.inner_backbone_lr);
  MT_CHECK(!c.bench.memory_inner_steps.empty(),
           "config: bench.memory_inner_steps must list at least one inner-step count, e.g. "
           "[1, 3, 10, 30]");
  for (int64_t k : c.bench.memory_inner_steps)
    MT_CHECK(k >= 1, "config: bench.memory_inner_steps must be >= 1, got {}", k);
  for (const auto& [mode, lr] : c.adapt.lr_by_mode) {
    try {
      meta::finetune_prefixes(mode);
    } catch (const Error& e) {
      MT_FAIL("config: adapt.lr_by_mode.{}: {}", mode, without_source_location(e));
    }
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
  // A run's config.json given back (it lists the sessions train read): as the run read it.
  if (j.is_object() && j.contains("sessions")) fill_settings_of_older_runs(j);
  try {
    return apply_overrides(j, overrides);
  } catch (const Error& e) {
    if (file.empty()) throw;
    // The file is to blame where it fails on its own; otherwise an override is.
    bool file_alone_reads = true;
    try {
      (void)config_from_json(j);
    } catch (const Error&) {
      file_alone_reads = false;
    }
    if (file_alone_reads && !overrides.empty())
      throw Error(fmt::format("{} (from --set; {} alone reads)", e.what(), file));
    throw Error(fmt::format("{} (in {})", e.what(), file));
  }
}

nlohmann::json read_json_file(const std::string& path) {
  MT_CHECK(std::filesystem::exists(path), "{}: file does not exist", path);
  MT_CHECK(!std::filesystem::is_directory(path), "{}: is a folder, not a JSON file", path);
  std::ifstream in(path);
  MT_CHECK(in.good(), "{}: cannot be read", path);
  std::stringstream ss;
  ss << in.rdbuf();
  // A key given twice in one object: JSON readers keep one of the two silently.
  std::vector<std::set<std::string>> open_objects;
  std::string twice;
  auto note_keys = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Event::key && twice.empty() && !open_objects.empty() &&
               !open_objects.back().insert(parsed.get<std::string>()).second) {
      twice = parsed.get<std::string>();
    }
    return true;
  };
  try {
    nlohmann::json j = nlohmann::json::parse(ss.str(), note_keys);
    MT_CHECK(twice.empty(),
             "{}: the key '{}' is given twice in one object (only one would be read); keep one",
             path, twice);
    return j;
  } catch (const nlohmann::json::parse_error& e) {
    MT_FAIL("{}: invalid JSON ({}); fix the file or regenerate it", path, e.what());
  } catch (const nlohmann::json::exception& e) {  // e.g. a number beyond double's range
    MT_FAIL("{}: a value is not usable ({}); give numbers within double precision's range, "
            "e.g. 1e-3",
            path, e.what());
  }
}

void write_file_atomic(const std::string& path, const std::string& text) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  // A name of this process's own (two commands writing one file do not share it), removed
  // unless it was renamed into place; a process killed meanwhile leaves it, named by its pid.
  std::string tmp;
  const int fd = io::create_temp_beside(target, tmp);
  if (fd < 0) {
    const int err = errno;
    MT_FAIL("{}: cannot write a file in {} ({}); does the folder exist, is it writable?", path,
            dir.string(), std::strerror(err));
  }
  struct TempFile {
    const std::string& name;
    int fd;
    bool keep = false;
    ~TempFile() {
      if (fd >= 0) ::close(fd);
      if (!keep) ::unlink(name.c_str());
    }
  } guard{tmp, fd};
  auto fail = [&](const char* what, int err) {
    MT_FAIL("{}: {} failed ({}){}; the file is as it was", path, what, std::strerror(err),
            err == ENOSPC || err == EDQUOT ? ": the disk is full, free some space" : "");
  };
  for (size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("writing", n < 0 ? errno : EIO);
    done += static_cast<size_t>(n);
  }
  // On the disk before it replaces the file (a power cut leaves the old one or the new one).
  if (::fsync(fd) != 0) fail("writing", errno);
  const int closed = ::close(guard.fd);
  guard.fd = -1;
  if (closed != 0) fail("writing", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("replacing it", errno);
  guard.keep = true;
  io::sync_folder_of(target);  // the rename itself, durable
}

// What a training state must match to be resumed: the run's data settings, sessions (with the
// CRC-32 of each recording, session_json: the same files, not just the same names), model and
// training options. Left out, so they may change: train.steps (a finished run may train
// longer), train.patience (so may one that stopped early), train.log_progress, data.path (a moved data folder; its contents are compared), and
// threads (sums may then differ in the last bits from the uninterrupted run's), plus the
// sections training does not read (adapt, online, bench).
nlohmann::json training_identity(const nlohmann::json& config) {
  nlohmann::json id = {{"data", config.at("data")},
                       {"model", config.at("model")},
                       {"train", config.at("train")},
                       {"saved_recompute", config.at("saved_recompute")},
                       {"sessions", config.at("sessions")}};
  id["train"].erase("steps");
  id["train"].erase("patience");
  id["train"].erase("log_progress");
  id["data"].erase("path");
  return id;
}

void fill_settings_of_older_runs(nlohmann::json& j) {
  if (!j.is_object()) return;
  // adapt.train.meta: never read, and refused away from its defaults since: dropped.
  if (j.contains("adapt") && j["adapt"].is_object() && j["adapt"].contains("train") &&
      j["adapt"]["train"].is_object())
    j["adapt"]["train"].erase("meta");
  if (!j.contains("train") || !j["train"].is_object()) return;
  nlohmann::json& train = j["train"];
  if (!train.contains("meta") || !train["meta"].is_object()) return;
  const std::string method =
      train.contains("method") && train["method"].is_string() ? train["method"].get<std::string>()
                                                               : std::string("standard");
  if (!train["meta"].contains("lr") && train.contains("lr") && method != "standard")
    train["meta"]["lr"] = train["lr"];
}

// A training identity written by an earlier metatape lacks the settings added since (e.g.
// data.csv.time_axis), which held their defaults then: each key missing from `then` is taken from
// the default config, so an old run resumes unless a new setting now differs from its default.
nlohmann::json with_missing_from(nlohmann::json then, const nlohmann::json& base) {
  std::function<void(nlohmann::json&, const nlohmann::json&)> fill =
      [&](nlohmann::json& into, const nlohmann::json& from) {
        if (!into.is_object() || !from.is_object()) return;
        for (const auto& [key, value] : from.items()) {
          if (!into.contains(key))
            into[key] = value;
          else
            fill(into[key], value);
        }
      };
  fill(then, base);
  return then;
}

nlohmann::json identity_with_defaults(nlohmann::json then, const nlohmann::json& now) {
  nlohmann::json defaults = config_from_json(nlohmann::json::object()).to_json();
  defaults["sessions"] = now.at("sessions");
  return with_missing_from(std::move(then), training_identity(defaults));
}

// The first difference between the identity a run was trained with and the one now, in a
// user's words: "train.lr is 0.5 now, 0.001 in the run".
std::string describe_identity_difference(const nlohmann::json& then, const nlohmann::json& now,
                                         const std::string& what) {
  const nlohmann::json patch = nlohmann::json::diff(then, now);
  if (patch.empty()) return "";
  const std::string pointer = patch[0].value("path", std::string("/"));
  if (pointer.rfind("/sessions", 0) == 0)
    return fmt::format("the training sessions' recordings differ from those {} was trained on "
                       "(other files, or their contents changed)",
                       what);
  if (pointer.rfind("/holdout_sessions", 0) == 0)
    return fmt::format("the held-out sessions' recordings differ from those of {} (other files, "
                       "or their contents changed)",
                       what);
  // Inside a list (an index, or "-" for an appended entry) the whole list is shown.
  std::string path = pointer;
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    const std::string token = path.substr(slash + 1, path.find('/', slash + 1) - slash - 1);
    const bool index = !token.empty() &&
                       std::all_of(token.begin(), token.end(),
                                   [](unsigned char ch) { return std::isdigit(ch) != 0; });
    if (token == "-" || index) {
      path.erase(slash);
      break;
    }
  }
  std::string key = path.substr(1);
  std::replace(key.begin(), key.end(), '/', '.');
  const nlohmann::json::json_pointer ptr(path);
  auto value = [&](const nlohmann::json& j) {
    return j.contains(ptr) ? j.at(ptr).dump() : "unset";
  };
  return fmt::format("{} is {} now, {} in {}", key, value(now), value(then), what);
}

}  // namespace mt::cli
