// Resumable training (meta::train with ResumeOptions): a run that stops after an evaluation
// point and is resumed from its state file ends bitwise where the run that did not stop ends
// (parameters, curve, best step), for standard training with dropout and for FOMAML with
// dropout (whose meta-batch order is part of the state), as does a run asked to stop between
// evaluation points; a state written for another run or past train.steps is refused with the
// file's name. Meta-training draws dropout masks only with train.meta.dropout.
#include <catch2/catch.hpp>

#include <cctype>
#include <cstring>
#include <fstream>
#include <iterator>
#include <filesystem>
#include <stdexcept>

#include "data/synth.h"
#include "meta/training.h"
#include "support/temp_dir.h"

using namespace mt;
using mt::testing::TempDir;

namespace {

data::PreparedData tiny_data() {
  data::SynthConfig c;
  c.seed = 3;
  c.num_sessions = 3;
  c.n_total = 48;
  c.min_neurons = 6;
  c.max_neurons = 9;
  c.num_frames = 300;
  data::PrepConfig p;
  p.window.seq_length = 16;
  p.window.pred_length = 4;
  p.window.stride = 2;
  return data::PreparedData(data::synthesize(c), p);
}

std::unique_ptr<meta::Forecaster> tiny_poco(const data::PreparedData& d) {
  meta::ModelSpec spec;
  spec.kind = "poco";
  spec.preset = "poco-paper";
  spec.poco = {{"dim", 16},       {"dim_head", 8},   {"self_heads", 2}, {"conditioning_dim", 16},
               {"num_latents", 4}, {"seq_length", 16}, {"pred_length", 4}, {"patch", 4}};
  std::vector<int64_t> sizes;
  for (int64_t s = 0; s < d.num_sessions(); ++s) sizes.push_back(d.session(s).num_neurons);
  Generator gen(11);  // the same initial weights for every run
  return meta::make_forecaster(spec, sizes, gen);
}

meta::TrainOptions options(const std::string& method) {
  meta::TrainOptions o;
  o.method = method;
  o.steps = 12;
  o.eval_every = 4;
  o.batch_size = 4;
  o.eval_batch_size = 16;
  o.lr = 3e-3;
  o.meta.lr = 3e-3;  // the outer step of the meta-learning methods
  o.seed = 5;
  o.dropout = true;
  o.log_progress = false;
  o.meta.meta_batch = 2;
  o.meta.inner_steps = 2;
  o.meta.dropout = true;  // FOMAML's inner and query forwards draw from the dropout generator
  return o;
}

struct Finished {
  meta::TrainResult result;
  std::vector<std::vector<float>> params;
};

Finished finish(meta::Forecaster& f, meta::TrainResult r) {
  Finished out{std::move(r), {}};
  for (auto& [name, t] : f.module()->named_parameters()) out.params.push_back(t.to_vector<float>());
  return out;
}

// Bitwise: every parameter and every curve value.
void require_same(const Finished& a, const Finished& b) {
  REQUIRE(a.params.size() == b.params.size());
  for (size_t i = 0; i < a.params.size(); ++i) {
    REQUIRE(a.params[i].size() == b.params[i].size());
    CHECK(std::memcmp(a.params[i].data(), b.params[i].data(), a.params[i].size() * sizeof(float)) ==
          0);
  }
  CHECK(a.result.best_step == b.result.best_step);
  CHECK(a.result.best_score == b.result.best_score);
  REQUIRE(a.result.curve.size() == b.result.curve.size());
  for (size_t i = 0; i < a.result.curve.size(); ++i) {
    const auto &p = a.result.curve[i], &q = b.result.curve[i];
    CHECK(p.step == q.step);
    CHECK(p.val.score == q.val.score);
    CHECK(p.val.mse == q.val.mse);
    REQUIRE(p.val.sessions.size() == q.val.sessions.size());
    for (size_t s = 0; s < p.val.sessions.size(); ++s)
      CHECK(p.val.sessions[s].mse == q.val.sessions[s].mse);
    if (std::isnan(p.train_loss)) CHECK(std::isnan(q.train_loss));
    else CHECK(p.train_loss == q.train_loss);
  }
}

// Options that save a run's state to `file` in the test folder, under `identity`.
meta::ResumeOptions saving_state(const TempDir& dir, const char* file,
                                 const nlohmann::json& identity) {
  meta::ResumeOptions r;
  r.state_path = dir.file(file);
  r.identity = identity;
  return r;
}

struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};

}  // namespace

TEST_CASE("a resumed training run ends bitwise where the uninterrupted run ends",
          "[meta][training]") {
  const data::PreparedData d = tiny_data();
  for (const std::string method : {"standard", "fomaml"}) {
    DYNAMIC_SECTION(method) {
      TempDir dir("resume");
      const meta::TrainOptions o = options(method);
      const nlohmann::json identity = {{"method", method}, {"lr", o.lr}};
      auto saving_to = [&](const char* file) { return saving_state(dir, file, identity); };

      auto f_straight = tiny_poco(d);
      meta::ResumeOptions plain = saving_to("straight.safetensors");
      const Finished straight =
          finish(*f_straight, meta::train(*f_straight, d, {}, o, {}, {}, {}, plain));
      REQUIRE(straight.result.curve.size() == 4);  // steps 0, 4, 8, 12

      // The run stops while evaluating step 8 (before that point's state is written): the
      // state file holds step 4, and the resumed run redoes steps 5..8.
      meta::ResumeOptions saving = saving_to("state.safetensors");
      {
        auto f = tiny_poco(d);
        auto crash_at_8 = [](const meta::EvalPoint& p) {
          if (p.step == 8) throw Interrupted();
        };
        CHECK_THROWS_AS(meta::train(*f, d, {}, o, {}, crash_at_8, {}, saving), Interrupted);
      }
      CHECK(meta::read_train_state_metadata(saving.state_path)["step"] == 4);

      auto f_resumed = tiny_poco(d);  // fresh weights: the state replaces them
      meta::ResumeOptions resuming = saving;
      resuming.resume = true;
      std::vector<int64_t> new_points;
      const Finished resumed = finish(
          *f_resumed,
          meta::train(*f_resumed, d, {}, o, {},
                      [&](const meta::EvalPoint& p) { new_points.push_back(p.step); }, {},
                      resuming));
      CHECK(new_points == std::vector<int64_t>{8, 12});
      require_same(straight, resumed);
      CHECK(resumed.result.seconds > 0);
      CHECK(resumed.result.trainable_parameters == straight.result.trainable_parameters);

      // Asked to stop after step 6 (between evaluation points; the CLI's Ctrl-C), the run saves
      // its state there, training loss accumulators included, and resumes bitwise.
      meta::ResumeOptions stopping = saving_to("stopped.safetensors");
      stopping.stop_after = [](int64_t step) { return step == 6; };
      {
        auto f = tiny_poco(d);
        try {
          meta::train(*f, d, {}, o, {}, {}, {}, stopping);
          FAIL("train did not stop");
        } catch (const meta::TrainingStopped& e) {
          CHECK(e.step == 6);
          CHECK(e.state_saved);
        }
      }
      const nlohmann::json at6 = meta::read_train_state_metadata(stopping.state_path);
      CHECK(at6["step"] == 6);
      CHECK(at6["evaluated"] == false);
      CHECK(at6["loss_count"] == 2);  // steps 5 and 6 since the evaluation at 4
      auto f_after_stop = tiny_poco(d);
      meta::ResumeOptions continuing = stopping;
      continuing.resume = true;
      continuing.stop_after = {};
      require_same(straight, finish(*f_after_stop, meta::train(*f_after_stop, d, {}, o, {}, {}, {},
                                                               continuing)));

      // Stopped at 6 and resumed with train.steps = 6: the run ends with step 6's evaluation,
      // as a 6-step run does.
      {
        meta::TrainOptions six = o;
        six.steps = 6;
        auto f_six = tiny_poco(d);
        meta::ResumeOptions six_state = saving_to("six.safetensors");
        const Finished six_straight =
            finish(*f_six, meta::train(*f_six, d, {}, six, {}, {}, {}, six_state));
        REQUIRE(six_straight.result.curve.back().step == 6);
        meta::ResumeOptions stop6 = stopping;
        stop6.state_path = dir.file("stopped6.safetensors");
        auto f_stopped = tiny_poco(d);
        CHECK_THROWS_AS(meta::train(*f_stopped, d, {}, o, {}, {}, {}, stop6),
                        meta::TrainingStopped);
        stop6.resume = true;
        stop6.stop_after = {};
        auto f_six_resumed = tiny_poco(d);
        require_same(six_straight, finish(*f_six_resumed, meta::train(*f_six_resumed, d, {}, six,
                                                                      {}, {}, {}, stop6)));
      }

      // Training longer from the finished run's state (train.steps raised) continues it.
      meta::TrainOptions longer = o;
      longer.steps = 16;
      auto f_longer = tiny_poco(d);
      meta::ResumeOptions from_end = plain;
      from_end.resume = true;
      const meta::TrainResult more = meta::train(*f_longer, d, {}, longer, {}, {}, {}, from_end);
      REQUIRE(more.curve.size() == 5);
      CHECK(more.curve[3].val.score == straight.result.curve[3].val.score);
      CHECK(more.curve[4].step == 16);
    }
  }
}

TEST_CASE("meta-training draws dropout masks only with train.meta.dropout", "[meta][training]") {
  const data::PreparedData d = tiny_data();
  TempDir dir("meta_dropout");
  auto run = [&](bool dropout, const char* file) {
    meta::TrainOptions o = options("fomaml");
    o.meta.dropout = dropout;
    auto f = tiny_poco(d);
    meta::ResumeOptions r = saving_state(dir, file, {{"meta_dropout", dropout}});
    Finished out = finish(*f, meta::train(*f, d, {}, o, {}, {}, {}, r));
    return std::make_pair(std::move(out), meta::read_train_state_metadata(r.state_path));
  };
  const auto [with, with_state] = run(true, "with.safetensors");
  const auto [without, without_state] = run(false, "without.safetensors");
  // The training's dropout generator moved only with the setting (state: seed, offset) ...
  CHECK(with_state.at("dropout_generator").at(1).get<uint64_t>() > 0);
  CHECK(without_state.at("dropout_generator").at(1).get<uint64_t>() == 0);
  // ... and its masks changed the meta-losses from the first outer step on.
  REQUIRE(with.result.curve.size() > 1);
  CHECK(with.result.curve[1].train_loss != without.result.curve[1].train_loss);
}

TEST_CASE("a training state is refused for another run, past train.steps, or damaged",
          "[meta][training]") {
  const data::PreparedData d = tiny_data();
  TempDir dir("resume_refused");
  meta::TrainOptions o = options("standard");
  meta::ResumeOptions r;
  r.state_path = dir.file("state.safetensors");
  r.identity = {{"train", {{"lr", o.lr}}}};
  {
    auto f = tiny_poco(d);
    meta::train(*f, d, {}, o, {}, {}, {}, r);
  }
  r.resume = true;
  SECTION("another run's config") {
    meta::ResumeOptions other = r;
    other.identity = {{"train", {{"lr", 1.0}}}};
    auto f = tiny_poco(d);
    CHECK_THROWS_WITH(meta::train(*f, d, {}, o, {}, {}, {}, other),
                      Catch::Contains("state.safetensors") && Catch::Contains("/train/lr"));
  }
  SECTION("fewer steps than the state has done") {
    meta::TrainOptions shorter = o;
    shorter.steps = 8;
    auto f = tiny_poco(d);
    CHECK_THROWS_WITH(meta::train(*f, d, {}, shorter, {}, {}, {}, r),
                      Catch::Contains("past train.steps") && Catch::Contains("at least 12"));
  }
  SECTION("other trainable parameters") {
    meta::TrainOptions narrower = o;
    narrower.trainable = {"unit_emb."};
    auto f = tiny_poco(d);
    CHECK_THROWS_WITH(meta::train(*f, d, {}, narrower, {}, {}, {}, r),
                      Catch::Contains("other parameters"));
  }
  SECTION("metadata changed on disk (the data's CRC-32 does not cover it)") {
    std::string bytes;
    {
      std::ifstream in(r.state_path, std::ios::binary);
      bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    const size_t at = bytes.find("best_step\\\":");  // escaped inside the header's JSON string
    REQUIRE(at != std::string::npos);
    char& digit = bytes[at + 12];
    REQUIRE(std::isdigit(static_cast<unsigned char>(digit)));
    digit = digit == '9' ? '8' : char(digit + 1);
    std::ofstream(r.state_path, std::ios::binary | std::ios::trunc) << bytes;
    auto f = tiny_poco(d);
    CHECK_THROWS_WITH(meta::train(*f, d, {}, o, {}, {}, {}, r),
                      Catch::Contains("state.safetensors") &&
                          Catch::Contains("CRC-32 does not match"));
  }
  SECTION("a file that is not a training state") {
    meta::ResumeOptions missing = r;
    missing.state_path = dir.file("none.safetensors");
    auto f = tiny_poco(d);
    CHECK_THROWS_WITH(meta::train(*f, d, {}, o, {}, {}, {}, missing),
                      Catch::Contains("none.safetensors"));
  }
  SECTION("without a state path") {
    meta::ResumeOptions no_path;
    no_path.resume = true;
    auto f = tiny_poco(d);
    CHECK_THROWS_WITH(meta::train(*f, d, {}, o, {}, {}, {}, no_path),
                      Catch::Contains("state_path"));
  }
}

TEST_CASE("early stopping ends the run where `patience` evaluations did not improve, as a prefix "
          "of the full run, and resumes",
          "[meta][training]") {
  const data::PreparedData d = tiny_data();
  TempDir dir("patience");
  meta::TrainOptions o = options("standard");
  o.steps = 40;
  o.eval_every = 2;
  o.lr = 3e-2;  // a large step on a tiny model: the validation score stalls early
  const nlohmann::json identity = {{"lr", o.lr}};
  auto saving_to = [&](const char* file) { return saving_state(dir, file, identity); };
  auto f_full = tiny_poco(d);
  const Finished full = finish(*f_full, meta::train(*f_full, d, {}, o, {}, {}, {},
                                                    saving_to("full.safetensors")));
  CHECK_FALSE(full.result.stopped_early);
  CHECK(full.result.last_step == 40);

  // Where the rule stops: the first point (before the last step) at which `patience` points in
  // a row have followed the best score so far.
  const int64_t patience = 2;
  int64_t stop = -1;
  size_t points_kept = 0;
  {
    double best = -INFINITY;
    int64_t since = 0;
    for (const auto& p : full.result.curve) {
      ++points_kept;
      if (p.val.score > best) {
        best = p.val.score;
        since = 0;
      } else if (++since == patience && p.step < o.steps) {
        stop = p.step;
        break;
      }
    }
  }
  REQUIRE(stop > 0);  // the test needs a stall before the last step (else raise o.lr)
  INFO("stops at step " << stop);

  meta::TrainOptions early_options = o;
  early_options.patience = patience;
  meta::ResumeOptions early_state = saving_to("early.safetensors");
  auto f_early = tiny_poco(d);
  const Finished early =
      finish(*f_early, meta::train(*f_early, d, {}, early_options, {}, {}, {}, early_state));
  CHECK(early.result.stopped_early);
  CHECK(early.result.last_step == stop);
  CHECK(meta::evaluations_since_best(early.result.curve, early.result.best_step) == patience);
  CHECK(meta::read_train_state_metadata(early_state.state_path)["stopped_early"] == true);

  // Bitwise the run of `stop` steps without early stopping: same curve, best point and weights.
  {
    meta::TrainOptions short_options = o;
    short_options.steps = stop;
    auto f = tiny_poco(d);
    const Finished short_run = finish(*f, meta::train(*f, d, {}, short_options));
    REQUIRE(early.result.curve.size() == points_kept);
    require_same(short_run, early);
  }

  // Resumed with the same patience: the state already meets the rule, no step is taken.
  {
    meta::ResumeOptions again = early_state;
    again.resume = true;
    auto f = tiny_poco(d);
    const Finished resumed =
        finish(*f, meta::train(*f, d, {}, early_options, {}, {}, {}, again));
    CHECK(resumed.result.stopped_early);
    CHECK(resumed.result.last_step == stop);
    require_same(early, resumed);
  }
  // Resumed with early stopping off: the run continues to the end of the full run, bitwise.
  {
    meta::ResumeOptions on = early_state;
    on.resume = true;
    auto f = tiny_poco(d);
    const Finished resumed = finish(*f, meta::train(*f, d, {}, o, {}, {}, {}, on));
    CHECK_FALSE(resumed.result.stopped_early);
    CHECK(resumed.result.last_step == 40);
    require_same(full, resumed);
  }

  meta::TrainOptions negative = o;
  negative.patience = -1;
  auto f = tiny_poco(d);
  CHECK_THROWS_WITH(meta::train(*f, d, {}, negative), Catch::Contains("train.patience must be >= 0"));
}

TEST_CASE("the meta-learning methods step their initial weights at train.meta.lr, standard "
          "training at train.lr",
          "[meta][training]") {
  const data::PreparedData d = tiny_data();
  auto run = [&](const std::string& method, double lr, double meta_lr) {
    meta::TrainOptions o = options(method);
    o.steps = 2;
    o.eval_every = 2;
    o.lr = lr;
    o.meta.lr = meta_lr;
    auto f = tiny_poco(d);
    return finish(*f, meta::train(*f, d, {}, o));
  };
  // The weights after the last step, seen through its validation score (the model itself is put
  // back to the best validation point, which may be the start for both).
  auto differs = [](const Finished& a, const Finished& b) {
    REQUIRE(!a.result.curve.empty());
    REQUIRE(a.result.curve.size() == b.result.curve.size());
    REQUIRE(a.result.curve.back().step == 2);
    return a.result.curve.back().val.score != b.result.curve.back().val.score;
  };
  for (const std::string method : {"fomaml", "e2e-ttt"}) {
    DYNAMIC_SECTION(method) {
      const Finished base = run(method, 1e-3, 1e-4);
      require_same(base, run(method, 5e-2, 1e-4));    // train.lr is not theirs
      CHECK(differs(base, run(method, 1e-3, 5e-2)));  // train.meta.lr is
    }
  }
  const Finished standard = run("standard", 1e-3, 1e-4);
  require_same(standard, run("standard", 1e-3, 5e-2));
  CHECK(differs(standard, run("standard", 5e-2, 1e-4)));
}
