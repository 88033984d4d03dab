// The CLI's run config (tools/cli/config.h): the CSV loader's options as config keys, and the
// identity a resumed run is compared against. A training state written before a setting existed
// resumes when the setting still holds its default, and is refused, naming the key and both
// values, when it does not.
#include <utility>

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "tools/cli/config.h"

using namespace mt;
using Catch::Contains;
using nlohmann::json;

namespace {

json identity_of(const cli::RunConfig& c) {
  json config = c.to_json();
  config["sessions"] = json::array({{{"name", "a"}, {"crc32", 1234}}});
  return cli::training_identity(config);
}

// A run's config.json written before a setting existed (`older`), resumed: the difference
// between its training state's identity and the identity of the config it resumes with (the
// older config, filled by fill_settings_of_older_runs), without and with the same filling of the
// saved identity.
std::pair<std::string, std::string> older_identity_differences(const json& older) {
  json filled = older;
  cli::fill_settings_of_older_runs(filled);
  json now_config = cli::config_from_json(filled).to_json();
  now_config["sessions"] = json::array({{{"name", "a"}, {"crc32", 1234}}});
  const json now = cli::training_identity(now_config);
  json then_config = older;
  then_config["sessions"] = now_config["sessions"];
  json then = cli::training_identity(then_config);
  std::string unfilled =
      cli::describe_identity_difference(cli::identity_with_defaults(then, now), now);
  cli::fill_settings_of_older_runs(then);
  return {unfilled,
          cli::describe_identity_difference(cli::identity_with_defaults(then, now), now)};
}

}  // namespace

TEST_CASE("cli config: the CSV options are config keys", "[cli][config]") {
  const cli::RunConfig c = cli::config_from_json(json::parse(
      R"({"data": {"csv": {"time_axis": 0, "header": true, "label_column": true,
                           "time_column": "time", "delimiter": ";", "sampling_rate_hz": 2.2}}})"));
  const auto& o = c.data.load.csv;
  CHECK(o.time_axis == 0);
  CHECK(o.header);
  CHECK(o.label_column);
  CHECK(o.time_column == "time");
  CHECK(o.delimiter == ';');
  CHECK(o.sampling_rate_hz == 2.2);
  // to_json writes them back, and reading that gives the same config.
  const json again = cli::config_from_json(c.to_json()).to_json();
  CHECK(again == c.to_json());
  CHECK(again["data"]["csv"]["time_column"] == "time");
  // The unknown-key message lists every known key, the delimiter included.
  REQUIRE_THROWS_WITH(
      cli::config_from_json(json::parse(R"({"data": {"csv": {"seperator": ";"}}})")),
      Contains("data.csv.seperator") && Contains("delimiter") && Contains("time_column"));
  // A column number as a JSON number; values checked before any file is read.
  CHECK(cli::config_from_json(json::parse(R"({"data": {"csv": {"time_axis": 0, "time_column": 1}}})"))
            .data.load.csv.time_column == "1");
  // Values checked before any file is read: each config is refused with a message naming the
  // key (and, where it helps, the value).
  const std::pair<const char*, const char*> refused[] = {
      {R"({"data": {"csv": {"headers": true}}})", "data.csv.headers"},
      {R"({"data": {"csv": {"header": "yes"}}})", "data.csv.header"},
      {R"({"data": {"csv": {"time_axis": 2}}})", "data.csv.time_axis = 2"},
      {R"({"data": {"csv": {"sampling_rate_hz": 0}}})", "data.csv.sampling_rate_hz = 0"},
      {R"({"data": {"csv": {"time_column": "t"}}})", "needs data.csv.time_axis=0"},
      {R"({"train": {"patience": -1}})", "train.patience must be >= 0"},
      {R"({"adapt": {"train": {"patience": 3}}})", "adapt.train.patience is 3"},
      {R"({"bench": {"folds": 1}})", "bench.folds is 1"},
      {R"({"bench": {"adapt_eval_steps": [1, 0]}})", "bench.adapt_eval_steps holds 0"},
      {R"({"bench": {"meta_weight_decay": -0.1}})", "bench.meta_weight_decay must be >= 0"},
      {R"({"bench": {"meta_weight_decay": "0.1"}})", "must be a number, or null"},
      {R"({"bench": {"meta_weight_decay": ".05"}})", "need a digit before the point"},
  };
  for (const auto& [text, message] : refused) {
    INFO(text);
    REQUIRE_THROWS_WITH(cli::config_from_json(json::parse(text)), Contains(message));
  }
  // bench.folds with data.holdout is a benchmark's refusal, not the config's: train and adapt
  // read such a config.
  CHECK_NOTHROW(cli::config_from_json(
      json::parse(R"({"bench": {"folds": 3}, "data": {"holdout": ["a"]}})")));
}

TEST_CASE("cli config: an optional setting is null while unset", "[cli][config]") {
  // bench.meta_weight_decay: unset (FOMAML and E2E-TTT take train.weight_decay) unless given.
  const cli::RunConfig defaults = cli::config_from_json(json::object());
  CHECK_FALSE(defaults.bench.meta_weight_decay.has_value());
  CHECK(defaults.to_json()["bench"]["meta_weight_decay"].is_null());
  CHECK_FALSE(cli::config_from_json(defaults.to_json()).bench.meta_weight_decay.has_value());
  const cli::RunConfig set =
      cli::config_from_json(json::parse(R"({"bench": {"meta_weight_decay": 0.1}})"));
  REQUIRE(set.bench.meta_weight_decay.has_value());
  CHECK(*set.bench.meta_weight_decay == 0.1);
  CHECK(cli::config_from_json(set.to_json()).to_json() == set.to_json());
  // An explicit null is the default; 0 is a value (no decay), not unset.
  CHECK_FALSE(cli::config_from_json(json::parse(R"({"bench": {"meta_weight_decay": null}})"))
                  .bench.meta_weight_decay.has_value());
  CHECK(cli::config_from_json(json::parse(R"({"bench": {"meta_weight_decay": 0}})"))
            .bench.meta_weight_decay == 0.0);
}

TEST_CASE("cli config: a training identity from before a setting existed", "[cli][config]") {
  const cli::RunConfig defaults = cli::config_from_json(json::object());
  const json now = identity_of(defaults);
  CHECK(cli::describe_identity_difference(now, now).empty());

  // A state written before data.csv had these keys: it lacks them.
  json then = now;
  for (const char* key : {"time_axis", "header", "label_column", "time_column"})
    REQUIRE(then["data"]["csv"].erase(key) == 1);
  // Compared as it is, it differs; with the defaults filled in it does not.
  CHECK_FALSE(cli::describe_identity_difference(then, now).empty());
  CHECK(cli::describe_identity_difference(cli::identity_with_defaults(then, now), now).empty());

  // A new setting away from its default is a difference, named with both values.
  cli::RunConfig changed = defaults;
  changed.data.load.csv.time_axis = 0;
  const json now_changed = identity_of(changed);
  CHECK(cli::describe_identity_difference(cli::identity_with_defaults(then, now_changed),
                                          now_changed) ==
        "data.csv.time_axis is 0 now, 1 in the run");
  // Settings present in the saved identity are never replaced by defaults.
  json then_lr = now;
  then_lr["train"]["lr"] = 0.5;
  CHECK(cli::describe_identity_difference(cli::identity_with_defaults(then_lr, now), now) ==
        fmt::format("train.lr is {} now, 0.5 in the run", now["train"]["lr"].dump()));
  // Other recordings are named as such; `what` names the run.
  json other = now;
  other["sessions"][0]["crc32"] = 99;
  CHECK(cli::describe_identity_difference(other, now) ==
        "the training sessions' recordings differ from those the run was trained on (other "
        "files, or their contents changed)");
  CHECK(cli::describe_identity_difference(then_lr, now, "the benchmark") ==
        fmt::format("train.lr is {} now, 0.5 in the benchmark", now["train"]["lr"].dump()));
}

TEST_CASE("cli config: a run from before train.meta.lr existed keeps the outer step it took",
          "[cli][config]") {
  // A new config: the experiment plan's meta_lr, apart from standard training's train.lr.
  const cli::RunConfig defaults = cli::config_from_json(json::object());
  CHECK(defaults.train.meta.lr == 1e-4);
  CHECK(defaults.train.lr == 1e-3);
  // A run's config.json written before it existed: its FOMAML / E2E-TTT steps took train.lr.
  json older = defaults.to_json();
  REQUIRE(older["train"]["meta"].erase("lr") == 1);
  older["train"]["method"] = "e2e-ttt";
  older["train"]["lr"] = 2e-3;
  json filled = older;
  cli::fill_settings_of_older_runs(filled);
  CHECK(cli::config_from_json(filled).train.meta.lr == 2e-3);
  // Its training state's identity, filled in the same way, matches the run's config: the
  // resumed run goes on at the step size it took (the default 1e-4 would be a difference).
  const auto [unfilled, differences] = older_identity_differences(older);
  CHECK(unfilled == "train.meta.lr is 0.002 now, 0.0001 in the run");
  CHECK(differences.empty());
  // A run that has the setting keeps its own value.
  json newer = defaults.to_json();
  newer["train"]["meta"]["lr"] = 5e-5;
  cli::fill_settings_of_older_runs(newer);
  CHECK(newer["train"]["meta"]["lr"] == 5e-5);
}

TEST_CASE("cli config: data.support_split, shuffled unless set (as before the key existed)",
          "[cli][config]") {
  const cli::RunConfig defaults = cli::config_from_json(json::object());
  CHECK(defaults.data.prep.support_split == data::SupportSplit::Shuffled);
  CHECK(defaults.to_json()["data"]["support_split"] == "shuffled");
  json chronological = {{"data", {{"support_split", "chronological"}}}};
  CHECK(cli::config_from_json(chronological).data.prep.support_split ==
        data::SupportSplit::Chronological);
  CHECK_THROWS_WITH(cli::config_from_json({{"data", {{"support_split", "random"}}}}),
                    Catch::Contains("data.support_split 'random' is not known") &&
                        Catch::Contains("chronological") && Catch::Contains("shuffled"));
  // A run's config.json written before the key existed drew its support windows at random: it
  // reads as shuffled, and its training identity matches a resumed run's.
  json older = defaults.to_json();
  REQUIRE(older["data"].erase("support_split") == 1);
  CHECK(cli::config_from_json(older).data.prep.support_split == data::SupportSplit::Shuffled);
  const auto [unfilled, differences] = older_identity_differences(older);
  CHECK(unfilled.empty());
  CHECK(differences.empty());
  // A run trained with the chronological split resumes only with it.
  json chrono_run = cli::config_from_json(chronological).to_json();
  chrono_run["sessions"] = json::array({{{"name", "a"}, {"crc32", 1234}}});
  json shuffled_run = defaults.to_json();
  shuffled_run["sessions"] = chrono_run["sessions"];
  CHECK(cli::describe_identity_difference(cli::training_identity(chrono_run),
                                          cli::training_identity(shuffled_run)) ==
        "data.support_split is \"shuffled\" now, \"chronological\" in the run");
}
