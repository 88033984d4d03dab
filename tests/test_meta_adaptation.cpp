// Adaptation to unseen sessions (meta/adaptation.h): the steps-to-95% rules, the transfer of a
// trained model to new sessions' embedding tables, the adaptation loop (it leaves the model
// untouched, moves only the chosen parameters, and fine-tuning improves a fresh model), and the
// validation of meta-learned models after their inner loop.
#include <catch2/catch.hpp>

#include <cmath>

#include "engine/autograd/grad_mode.h"
#include "data/synth.h"
#include "meta/adaptation.h"
#include "meta/training.h"

using namespace mt;

namespace {

data::Dataset tiny_sessions(int64_t num_sessions, uint64_t seed, int64_t num_frames = 360) {
  data::SynthConfig c;
  c.seed = seed;
  c.num_sessions = num_sessions;
  c.n_total = 48;
  c.min_neurons = 6;
  c.max_neurons = 9;
  c.num_frames = num_frames;
  return data::synthesize(c);
}

data::PrepConfig tiny_prep() {
  data::PrepConfig p;
  p.window.seq_length = 16;
  p.window.pred_length = 4;
  p.window.stride = 2;
  return p;
}

meta::ModelSpec tiny_poco() {
  meta::ModelSpec spec;
  spec.kind = "poco";
  spec.preset = "poco-paper";
  spec.poco = {{"dim", 16},       {"dim_head", 8},   {"self_heads", 2}, {"conditioning_dim", 16},
               {"num_latents", 4}, {"seq_length", 16}, {"pred_length", 4}, {"patch", 4}};
  return spec;
}

std::vector<int64_t> sizes(const data::Dataset& d) {
  std::vector<int64_t> v;
  for (const auto& s : d.sessions) v.push_back(s.num_neurons);
  return v;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  auto x = a.to_vector<double>(), y = b.to_vector<double>();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

}  // namespace

TEST_CASE("steps to 95% of the final score and of the gain", "[meta][adaptation]") {
  using Curve = std::vector<std::pair<int64_t, double>>;
  const Curve rising = {{0, 0.10}, {10, 0.30}, {20, 0.48}, {30, 0.50}};
  CHECK(meta::steps_to_fraction_of_final(rising, 0.95) == 20);  // 0.475 first reached at 20
  CHECK(meta::steps_to_fraction_of_gain(rising, 0.95) == 20);   // 0.10 + 0.95 * 0.40 = 0.48
  const Curve flat = {{0, 0.40}, {10, 0.40}, {20, 0.40}};
  CHECK(meta::steps_to_fraction_of_final(flat, 0.95) == 0);
  CHECK(meta::steps_to_fraction_of_gain(flat, 0.95) == -1);  // no gain to reach
  const Curve falling = {{0, 0.50}, {10, 0.30}};
  CHECK(meta::steps_to_fraction_of_final(falling, 0.95) == 0);
  CHECK(meta::steps_to_fraction_of_gain(falling, 0.95) == -1);  // worse, not instant
  const Curve negative = {{0, -0.5}, {10, -0.2}};
  CHECK(meta::steps_to_fraction_of_final(negative, 0.95) == -1);
  CHECK(meta::steps_to_fraction_of_gain(negative, 0.95) == 10);
  // Touching the goal and falling back is not reaching it: the step from which it holds counts.
  const Curve dip = {{0, 0.10}, {10, 0.50}, {20, 0.30}, {30, 0.50}};
  CHECK(meta::steps_to_fraction_of_final(dip, 0.95) == 30);  // 0.475 held from 30, not 10
  CHECK(meta::steps_to_fraction_of_gain(dip, 0.95) == 30);   // 0.48 likewise
}

TEST_CASE("transfer to new sessions: backbone copied, embedding rows by the chosen init",
          "[meta][adaptation]") {
  data::Dataset train = tiny_sessions(3, 1), fresh_data = tiny_sessions(2, 2);
  Generator g1(1), g2(2), g3(3);
  auto trained = meta::make_forecaster(tiny_poco(), sizes(train), g1);
  auto fresh = meta::make_forecaster(tiny_poco(), sizes(fresh_data), g2);
  const int64_t copied = meta::transfer_to_new_sessions(*trained, *fresh, meta::NewSessionInit::mean);
  nn::ParamMap from = trained->module()->parameter_map(), to = fresh->module()->parameter_map();
  CHECK(copied == int64_t(from.size()) - 2);  // everything but the two per-session tables
  for (const auto& [name, t] : to) {
    if (name.rfind("unit_emb.", 0) == 0 || name.rfind("session_emb.", 0) == 0) {
      NoGradGuard no_grad;
      Tensor mean_row = mean(from.at(name), {0}, true);
      for (int64_t r = 0; r < t.size(0); ++r)
        CHECK(max_abs_diff(t.narrow(0, r, 1), mean_row) < 1e-7);  // f32 mean of a few rows
    } else {
      CHECK(max_abs_diff(t, from.at(name)) == 0);
    }
  }
  // random keeps the fresh table's own initialisation.
  auto other = meta::make_forecaster(tiny_poco(), sizes(fresh_data), g3);
  const Tensor before = other->module()->parameter_map().at("unit_emb.weight").clone();
  meta::transfer_to_new_sessions(*trained, *other, meta::NewSessionInit::random);
  CHECK(max_abs_diff(other->module()->parameter_map().at("unit_emb.weight"), before) == 0);
  CHECK_THROWS_WITH(meta::parse_new_session_init("zeros"), Catch::Contains("random or mean"));
}

TEST_CASE("adaptation moves only the chosen parameters and leaves the model untouched",
          "[meta][adaptation]") {
  data::PreparedData data(tiny_sessions(1, 4), tiny_prep());
  Generator gen(7);
  auto f = meta::make_forecaster(tiny_poco(), {data.session(0).num_neurons}, gen);
  const nn::ParamMap before = [&] {
    nn::ParamMap m;
    for (auto& [n, t] : f->module()->named_parameters()) m[n] = t.clone();
    return m;
  }();
  meta::AdaptOptions opt;
  opt.procedure = "finetune";
  opt.params = {};  // everything
  opt.steps = 30;
  opt.lr = 1e-2;
  opt.batch_size = 8;
  opt.eval_every = 10;
  meta::AdaptResult r = meta::adapt_session(*f, data, 0, opt);
  REQUIRE(r.curve.size() == 4);  // steps 0, 10, 20, 30
  CHECK(r.curve.back().step == 30);
  // A fresh model fitted for 30 steps forecasts its own session better than before.
  WARN("fine-tuning all: score " << r.initial_score << " -> " << r.final_score);
  CHECK(r.final_score > r.initial_score);
  CHECK(r.seconds > 0);
  CHECK(r.peak_bytes > 0);
  for (auto& [n, t] : f->module()->named_parameters()) CHECK(max_abs_diff(t, before.at(n)) == 0);

  // The SGD procedure with no step leaves the score where it was.
  meta::AdaptOptions none = opt;
  none.procedure = "inner";
  none.steps = 0;
  meta::AdaptResult z = meta::adapt_session(*f, data, 0, none);
  CHECK(z.curve.size() == 1);
  CHECK(z.final_score == r.initial_score);

  // A step size that blows up: the run stops at the first non-finite loss and reports it.
  meta::AdaptOptions huge = opt;
  huge.procedure = "inner";
  huge.lr = 1e6;
  meta::AdaptResult d = meta::adapt_session(*f, data, 0, huge);
  CHECK(d.diverged_at > 0);
  CHECK(d.diverged_at <= huge.steps);
  CHECK(std::isnan(d.final_score));
  CHECK(std::isnan(d.test_score));

  // Early stopping's readout: the best validation point and the test score there, which is the
  // final test score of the same run cut at that step (same seed: the same batches up to it).
  {
    // The case needs a run whose best validation point is strictly inside it: the first of
    // these step sizes that gives one (large steps make the curve rise, then fall or wobble).
    meta::AdaptOptions noisy = opt;
    noisy.params = {"unit_emb.", "session_emb.", "head."};
    noisy.steps = 40;
    noisy.eval_every = 5;
    meta::AdaptResult full;
    double best = -INFINITY;
    int64_t best_step = -1;
    for (double lr : {3e-2, 1e-1, 5e-2, 2e-1, 1e-2}) {
      noisy.lr = lr;
      full = meta::adapt_session(*f, data, 0, noisy);
      best = -INFINITY;
      for (const auto& p : full.curve)
        if (p.val_score > best) {
          best = p.val_score;
          best_step = p.step;
        }
      if (best_step > 0 && best_step < noisy.steps) break;
    }
    INFO("lr " << noisy.lr << ": best validation at step " << best_step << " of 40");
    REQUIRE(best_step > 0);
    REQUIRE(best_step < 40);
    CHECK(full.best_step == best_step);
    CHECK(full.best_score == best);
    meta::AdaptOptions cut = noisy;
    cut.steps = best_step;
    const meta::AdaptResult at_best = meta::adapt_session(*f, data, 0, cut);
    CHECK(full.test_score_at_best == at_best.test_score);
    CHECK(full.test_score_initial == z.test_score);  // z: no step
    CHECK(z.test_score_at_best == z.test_score);
    CHECK(z.best_step == 0);
    CHECK(full.test_score_at_best != full.test_score);
    // `adapted` receives the values at the best point: bitwise those the cut run ends with, and
    // the test score with them is the readout.
    nn::ParamMap kept, cut_values;
    meta::adapt_session(*f, data, 0, noisy, &kept);
    meta::adapt_session(*f, data, 0, cut, &cut_values);
    REQUIRE(kept.size() == cut_values.size());
    size_t selected = 0;
    for (const auto& [name, t] : f->module()->named_parameters())
      for (const auto& prefix : noisy.params) selected += name.rfind(prefix, 0) == 0;
    CHECK(selected > 2);
    CHECK(kept.size() == selected);
    for (const auto& [name, value] : cut_values) CHECK(max_abs_diff(kept.at(name), value) == 0);
    CHECK(meta::evaluate(*f, data, data::Split::Test, {0}, noisy.eval_batch_size, {}, &kept)
              .score == full.test_score_at_best);

    // The summary's readouts are the means over sessions; a diverged session makes the final
    // and test means NaN but keeps its best point's readout (early stopping would have).
    const meta::AdaptSummary both = meta::summarize_adaptation({full, d});
    CHECK(both.test_score_at_best == full.test_score_at_best / 2 + d.test_score_at_best / 2);  // the summary's order of sums
    CHECK(both.test_score_initial == full.test_score_initial / 2 + d.test_score_initial / 2);  // the summary's order of sums
    CHECK(both.best_score == full.best_score / 2 + d.best_score / 2);  // the summary's order of sums
    CHECK(both.diverged_sessions == 1);
    CHECK(std::isnan(both.test_score));
  }
  // A diverged run keeps the readout of its best point before the divergence: step 0's here if
  // its first evaluation after step 0 came after the divergence.
  CHECK(std::isfinite(d.test_score_at_best));
  if (d.best_step == 0) CHECK(d.test_score_at_best == d.test_score_initial);

  // Further validation points: the first steps, in order with the regular ones, each once; a
  // step beyond the run is not reached. The updates (same seed, same batches) do not change.
  meta::AdaptOptions early = opt;
  early.eval_steps = {3, 1, 2, 5, 10, 12, 99};
  const meta::AdaptResult e = meta::adapt_session(*f, data, 0, early);
  std::vector<int64_t> steps;
  for (const auto& p : e.curve) steps.push_back(p.step);
  CHECK(steps == std::vector<int64_t>{0, 1, 2, 3, 5, 10, 12, 20, 30});
  CHECK(e.final_score == r.final_score);
  CHECK(e.curve[5].val_score == r.curve[1].val_score);  // step 10

  meta::AdaptOptions bad = opt;
  bad.eval_steps = {0};
  CHECK_THROWS_WITH(meta::adapt_session(*f, data, 0, bad), Catch::Contains("eval_steps holds 0"));
  bad = opt;
  bad.procedure = "adam";
  CHECK_THROWS_WITH(meta::adapt_session(*f, data, 0, bad), Catch::Contains("finetune or inner"));
  bad = opt;
  bad.params = {"no_such."};
  CHECK_THROWS_WITH(meta::adapt_session(*f, data, 0, bad), Catch::Contains("no parameter"));
}

TEST_CASE("the mean adaptation curve is taken at the steps every session was validated at",
          "[meta][adaptation]") {
  auto run = [](std::vector<std::pair<int64_t, double>> points) {
    meta::AdaptResult r;
    for (const auto& [step, score] : points) r.curve.push_back({step, 0, 0, score, 1 - score});
    r.initial_score = points.front().second;
    r.final_score = points.back().second;
    return r;
  };
  // A run validated on a finer grid (bench.adapt_eval_steps) pooled with one on the plain grid,
  // as a resumed benchmark of an earlier metatape may hold.
  const meta::AdaptResult plain = run({{0, 0.1}, {10, 0.3}, {20, 0.4}});
  const meta::AdaptResult fine = run({{0, 0.2}, {1, 0.5}, {3, 0.6}, {10, 0.5}, {20, 0.6}});
  const meta::AdaptSummary m = meta::summarize_adaptation({plain, fine});
  REQUIRE(m.mean_curve.size() == 3);
  CHECK(m.mean_curve[0] == std::pair<int64_t, double>{0, 0.1 / 2 + 0.2 / 2});
  CHECK(m.mean_curve[1] == std::pair<int64_t, double>{10, 0.3 / 2 + 0.5 / 2});
  CHECK(m.mean_curve[2] == std::pair<int64_t, double>{20, 0.4 / 2 + 0.6 / 2});
  // The finer run alone keeps its every point; a diverged run (its curve ends early) cuts the
  // mean curve where it ends.
  CHECK(meta::summarize_adaptation({fine}).mean_curve.size() == 5);
  meta::AdaptResult diverged = run({{0, 0.2}, {1, 0.1}, {3, 0.0}});
  diverged.diverged_at = 4;
  const meta::AdaptSummary cut = meta::summarize_adaptation({fine, diverged});
  REQUIRE(cut.mean_curve.size() == 3);
  CHECK(cut.mean_curve.back().first == 3);
  CHECK(cut.diverged_sessions == 1);
  CHECK(cut.steps_to_95 == -1);
}

TEST_CASE("validation after the inner loop", "[meta][adaptation]") {
  data::PreparedData data(tiny_sessions(2, 5), tiny_prep());
  Generator gen(8);
  auto f = meta::make_forecaster(tiny_poco(), sizes(data.dataset()), gen);
  // A fresh POCO's FiLM head is zero, so its output does not depend on the embeddings yet: adapt
  // the head as well.
  const std::vector<std::string> params = {"unit_emb.", "session_emb.", "head."};
  meta::Metrics plain = meta::evaluate(*f, data, data::Split::Val, {}, 32);
  meta::Metrics zero = meta::evaluate_after_inner_loop(*f, data, {}, 0, 0.5, params, 8, 32, 0);
  REQUIRE(zero.sessions.size() == 2);
  for (size_t s = 0; s < 2; ++s) CHECK(zero.sessions[s].mse == plain.sessions[s].mse);
  meta::Metrics adapted = meta::evaluate_after_inner_loop(*f, data, {}, 3, 0.5, params, 8, 32, 0);
  for (size_t s = 0; s < 2; ++s) CHECK(adapted.sessions[s].mse != plain.sessions[s].mse);
  // The same support batch at every call: the result is reproducible.
  meta::Metrics again = meta::evaluate_after_inner_loop(*f, data, {}, 3, 0.5, params, 8, 32, 0);
  CHECK(again.mse == adapted.mse);
}

TEST_CASE("a flat recording's metrics: score and R^2 are 0 by convention, not a rounding "
          "residue", "[meta][adaptation]") {
  // Sessions 1-5 hold every neuron at its frame-2799 value from frame 2800 on (their
  // validation and test splits): the copy-last forecast is exact and no target varies. R^2's
  // sums of y and y^2 cancelled to a residue of either sign there (an R^2 of -1e13 was
  // reported); with over a thousand targets per neuron in each of ten flat splits, a positive
  // residue is all but certain for that formula.
  data::Dataset d = tiny_sessions(6, 5, 4000);
  for (size_t s = 1; s < d.sessions.size(); ++s) {
    data::Session& flat = d.sessions[s];
    for (int64_t n = 0; n < flat.num_neurons; ++n)
      for (int64_t t = 2800; t < flat.num_frames; ++t)
        flat.activity[size_t(n * flat.num_frames + t)] = flat.at(n, 2799);
  }
  data::PreparedData data(d, tiny_prep());
  Generator gen(8);
  auto f = meta::make_forecaster(tiny_poco(), sizes(data.dataset()), gen);
  for (const data::Split split : {data::Split::Val, data::Split::Test}) {
    const meta::Metrics m = meta::evaluate(*f, data, split, {}, 32);
    REQUIRE(m.sessions.size() == 6);
    for (size_t s = 1; s < 6; ++s) {
      INFO(m.sessions[s].name << " " << data::split_name(split));
      CHECK(m.sessions[s].copy_mse == 0.0);
      CHECK(m.sessions[s].mse > 0.0);
      CHECK(m.sessions[s].score == 0.0);
      CHECK(m.sessions[s].r2 == 0.0);
    }
    CHECK(m.sessions[0].r2 != 0.0);
    CHECK(std::isfinite(m.r2));
  }
}

TEST_CASE("training refuses sessions without validation windows before it starts",
          "[meta][adaptation]") {
  data::PrepConfig prep = tiny_prep();
  prep.split.train = 1.0;
  prep.split.val = 0.0;
  prep.split.test = 0.0;
  data::PreparedData data(tiny_sessions(2, 5), prep);
  Generator gen(8);
  auto f = meta::make_forecaster(tiny_poco(), sizes(data.dataset()), gen);
  meta::TrainOptions o;
  o.steps = 2;
  const std::string first = data.session(0).name;
  CHECK_THROWS_WITH(meta::check_training(*f, data, {}, o),
                    Catch::Contains("session '" + first + "' has no validation windows") &&
                        Catch::Contains("data.val_fraction > 0"));
}

TEST_CASE("an adaptation result survives its JSON form, a diverged one included",
          "[meta][adaptation]") {
  meta::AdaptResult r;
  r.session = "animal_3";
  r.curve = {{0, 0.0, NAN, 0.125, 0.5}, {10, 0.25, 0.75, 0.375, 0.25}, {20, 0.5, NAN, NAN, NAN}};
  r.diverged_at = 17;
  r.initial_score = 0.125;
  r.final_score = NAN;
  r.test_score = NAN;
  r.test_mse = NAN;
  r.best_step = 10;
  r.best_score = 0.375;
  r.test_score_at_best = 0.25;
  r.test_score_initial = -0.5;
  r.steps_to_95 = -1;
  r.steps_to_95_gain = 10;
  r.seconds = 1.5;
  r.ms_per_step = 0.0625;
  r.peak_bytes = 123456789012;
  r.adapted_parameters = 34176;
  // Through text, as a resumed benchmark reads it (NaN is written as null).
  const nlohmann::json text = nlohmann::json::parse(r.to_json().dump());
  const meta::AdaptResult back = meta::AdaptResult::from_json(text);
  CHECK(back.to_json().dump() == r.to_json().dump());
  CHECK(back.session == "animal_3");
  CHECK(back.diverged_at == 17);
  CHECK(std::isnan(back.final_score));
  CHECK(back.peak_bytes == 123456789012);
  CHECK(back.best_step == 10);
  CHECK(back.test_score_at_best == 0.25);
  CHECK(back.test_score_initial == -0.5);
  // A run written before the early-stopping readouts existed reads them as not a number.
  nlohmann::json older = text;
  for (const char* key : {"best_step", "best_score", "test_score_at_best", "test_score_initial"})
    older.erase(key);
  const meta::AdaptResult old_run = meta::AdaptResult::from_json(older);
  CHECK(std::isnan(old_run.test_score_at_best));
  CHECK(std::isnan(old_run.test_score_initial));
  REQUIRE(back.curve.size() == 3);
  CHECK(std::isnan(back.curve[0].train_loss));
  CHECK(back.curve[1].train_loss == 0.75);
  CHECK(std::isnan(back.curve[2].val_score));
  REQUIRE_THROWS(meta::AdaptResult::from_json(nlohmann::json::parse(R"({"session": "x"})")));
}
