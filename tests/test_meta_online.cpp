// Online adaptation: with a zero step size the three methods make the same predictions; on a
// stream whose level shifts half-way, stepping on each delayed window beats both the frozen model
// and one calibrated on the start of the stream.
#include <catch2/catch.hpp>

#include <cmath>

#include "meta/online.h"

using namespace mt;

namespace {
data::Session drifting_session() {
  data::Session s;
  s.name = "drift";
  s.num_neurons = 6;
  s.num_frames = 600;
  for (int64_t n = 0; n < s.num_neurons; ++n)
    for (int64_t t = 0; t < s.num_frames; ++t)
      s.activity.push_back(float(std::sin(0.2 * double(t) + 0.7 * double(n)) + (t >= 300 ? 1.5 : 0.0)));
  for (int64_t t = 0; t < s.num_frames; ++t) s.timestamps.push_back(double(t));
  return s;
}

std::unique_ptr<meta::Forecaster> small_mlp() {
  meta::ModelSpec spec;
  spec.kind = "mlp";
  spec.mlp_hidden = 16;
  spec.poco = {{"seq_length", 20}, {"pred_length", 4}, {"patch", 4}};
  Generator gen(5);
  return meta::make_forecaster(spec, {6}, gen);  // f32, like the data windows
}

// Every parameter of the model is a test-time parameter, stepped at `lr`.
meta::OnlineOptions every_parameter(double lr) {
  meta::OnlineOptions opt;
  opt.lr = lr;
  opt.params = {};
  return opt;
}
}  // namespace

TEST_CASE("online adaptation: zero step size changes nothing", "[meta][online]") {
  auto f = small_mlp();
  const meta::OnlineOptions opt = every_parameter(0);
  auto r = meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, opt);
  CHECK(r.predictions == 600 - 200 - 4 + 1);
  CHECK(r.online == r.frozen);
  CHECK(r.offline == r.frozen);
  // Ten consecutive segments of the 397 scored windows (39 or 40 each), each scored alone.
  REQUIRE(r.segments.size() == 10);
  int64_t windows = 0, next = 200;
  for (const auto& seg : r.segments) {
    CHECK(seg.first_frame == next);
    CHECK(seg.last_frame == seg.first_frame + seg.windows - 1);
    CHECK((seg.windows == 39 || seg.windows == 40));
    CHECK(seg.online == seg.frozen);
    windows += seg.windows;
    next = seg.last_frame + 1;
  }
  CHECK(windows == r.predictions);
  CHECK(next == 597);
}

TEST_CASE("online adaptation follows a level shift better than frozen or calibrated models",
          "[meta][online]") {
  auto f = small_mlp();
  meta::OnlineOptions opt = every_parameter(0.02);
  nn::ParamMap before;
  for (const auto& [name, value] : f->module()->parameter_map()) before[name] = value.clone();
  auto r = meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, opt);
  WARN("scores: frozen " << r.frozen << ", offline " << r.offline << ", online " << r.online);
  CHECK(r.offline > r.frozen);
  CHECK(r.online > r.offline);
  // After the shift (frame 300) the online method has caught up by the last segment.
  CHECK(r.segments.back().online > r.segments.back().frozen);
  CHECK(r.segments.back().online > r.segments.back().offline);
  CHECK(r.online_steps == 600 - 16 - 4 - 4 + 1);  // windows at 16..592 learned at 20..596
  // One timed update per step, one timed forecast and cycle per scored window; every scored
  // prediction time (from 200 on) follows an update, so a cycle outlasts its forecast.
  CHECK(r.update_ms.count == r.online_steps);
  CHECK(r.forecast_ms.count == r.predictions);
  CHECK(r.cycle_ms.count == r.predictions);
  for (const meta::LatencyMs& l : {r.update_ms, r.forecast_ms, r.cycle_ms}) {
    CHECK(l.median > 0);
    CHECK(l.median <= l.p95);
    CHECK(l.p95 <= l.max);
  }
  CHECK(r.cycle_ms.median > r.forecast_ms.median);
  // The online parameters it leaves behind: every parameter of the model (every_parameter),
  // moved away from the forecaster's own, which run_online leaves as they were.
  CHECK(r.online_parameters.size() == before.size());
  double moved = 0, changed = 0;
  for (const auto& [name, value] : r.online_parameters) {
    moved += max(abs(value - before.at(name))).item<double>();
    changed += max(abs(f->module()->parameter_map().at(name) - before.at(name))).item<double>();
  }
  CHECK(moved > 0);
  CHECK(changed == 0);
  CHECK_THROWS_WITH(meta::run_online(*f, drifting_session(), 0, 0, 150, 16, 4, opt),
                    Catch::Contains("too short") && Catch::Contains("drift"));
  // A stride that jumps over every scorable prediction time (16, 416, ...: 416 + 4 > 400).
  opt.stride = 400;
  CHECK_THROWS_WITH(meta::run_online(*f, drifting_session(), 0, 0, 400, 16, 4, opt),
                    Catch::Contains("online.stride 400 leaves no prediction time"));
}

// Predictions every `stride` frames: each predicted window is learned from once its frames have
// arrived, at the first prediction time at or after its end, whether or not the stride divides
// the horizon (a stride of 8 with a horizon of 4 once took no step at all).
TEST_CASE("online adaptation learns from every predicted window at any stride",
          "[meta][online]") {
  auto f = small_mlp();
  meta::OnlineOptions opt = every_parameter(0.02);
  opt.calibration_steps = 0;  // offline = frozen; only the online method moves
  for (const auto& [stride, steps] : {std::pair<int64_t, int64_t>{8, 72}, {3, 192}, {4, 145}}) {
    CAPTURE(stride);
    opt.stride = stride;
    // Predictions at 16, 16 + stride, ... while t + 4 <= 600; those made at t >= 20 each follow
    // the completion of one earlier window.
    auto r = meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, opt);
    CHECK(r.online_steps == steps);
    // Every predicted window is learned from once: those whose frames arrive after the last
    // prediction time in final_steps.
    CHECK(r.online_steps + r.final_steps == (600 - 4 - 16) / stride + 1);
    CHECK(r.final_steps == (stride == 8 ? 1 : stride == 3 ? 2 : 1));
    CHECK(r.online > r.frozen);
    CHECK(r.offline == r.frozen);
  }
  // One prediction time (16; the next, 24, leaves no horizon in frames [0, 24)): no step inside
  // the stream, so every score is the frozen model's, and one step after it for the parameters
  // left behind.
  opt.stride = 8;
  opt.calibration_frames = 0;
  auto r = meta::run_online(*f, drifting_session(), 0, 0, 24, 16, 4, opt);
  CHECK(r.predictions == 1);
  CHECK(r.segments.size() == 1);
  CHECK(r.online_steps == 0);
  CHECK(r.final_steps == 1);
  CHECK(r.online == r.frozen);
  double moved = 0;
  for (const auto& [name, value] : r.online_parameters)
    moved += max(abs(value - f->module()->parameter_map().at(name))).item<double>();
  CHECK(moved > 0);
}

// Nearest-rank percentiles: the 95th of 20 values is the 19th smallest.
TEST_CASE("online latency summary: median, nearest-rank 95th percentile, max", "[meta][online]") {
  std::vector<double> ms;
  for (int i = 20; i >= 1; --i) ms.push_back(double(i));
  const meta::LatencyMs l = meta::summarize_latency(ms);
  CHECK(l.count == 20);
  CHECK(l.median == 10.5);
  CHECK(l.p95 == 19);
  CHECK(l.max == 20);
  CHECK(meta::summarize_latency({3.0, 1.0, 2.0}).median == 2.0);
  CHECK(meta::summarize_latency({}).count == 0);
}

// Held-back frames: the stream stops online.unseen_frames before the end, so everything learned
// is what a stream of the earlier frames alone learns; each method's final model then forecasts
// the held-back frames without updates.
TEST_CASE("online adaptation: unseen frames are held back and scored without updates",
          "[meta][online]") {
  auto f = small_mlp();
  meta::OnlineOptions opt = every_parameter(0.02);
  meta::OnlineOptions held_back = opt;
  held_back.unseen_frames = 100;
  const auto shorter = meta::run_online(*f, drifting_session(), 0, 0, 500, 16, 4, opt);
  const auto r = meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, held_back);
  // The stream part: the same scores, steps and final parameters as the stream of [0, 500).
  CHECK(r.predictions == shorter.predictions);
  CHECK(r.frozen == shorter.frozen);
  CHECK(r.offline == shorter.offline);
  CHECK(r.online == shorter.online);
  CHECK(r.online_steps == shorter.online_steps);
  CHECK(r.final_steps == shorter.final_steps);
  REQUIRE(r.online_parameters.size() == shorter.online_parameters.size());
  for (const auto& [name, value] : r.online_parameters)
    CHECK(max(abs(value - shorter.online_parameters.at(name))).item<double>() == 0);
  CHECK(shorter.unseen.windows == 0);
  // Prediction times 500 .. 596, every frame; after the level shift at 300 the online model has
  // followed it, the frozen and the calibrated ones have not.
  CHECK(r.unseen.windows == 97);
  CHECK(r.unseen.first_frame == 500);
  CHECK(r.unseen.last_frame == 596);
  WARN("unseen: frozen " << r.unseen.frozen << ", offline " << r.unseen.offline << ", online "
                         << r.unseen.online);
  CHECK(r.unseen.online > r.unseen.frozen);
  CHECK(r.unseen.online > r.unseen.offline);
  // With a zero step size the three final models are the same one.
  held_back.lr = 0;
  meta::OnlineForecasts kept;
  const auto still =
      meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, held_back, {}, &kept);
  CHECK(still.unseen.online == still.unseen.frozen);
  CHECK(still.unseen.offline == still.unseen.frozen);
  // The forecasts it scored: the stream's windows (200 .. 496), then the unseen ones (500 ..
  // 596), 6 neurons x 4 frames each; the same values from every method at a zero step size.
  const int64_t windows = still.predictions + still.unseen.windows;
  CHECK(meta::online_scored_windows(0, 600, 16, 4, held_back) == windows);
  REQUIRE(int64_t(kept.start.size()) == windows);
  CHECK(kept.start.front() == 200);
  CHECK(kept.start[size_t(still.predictions)] == 500);
  CHECK(kept.start.back() == 596);
  for (size_t i = 0; i < kept.start.size(); ++i)
    CHECK(kept.unseen[i] == (int64_t(i) >= still.predictions ? 1 : 0));
  CHECK(kept.online.size() == size_t(windows * 6 * 4));
  CHECK(kept.online == kept.frozen);
  CHECK(kept.offline == kept.frozen);
  // A stride of 40: prediction times 500, 540, 580 (596 + 4 > 600 for the next); on the stream
  // 216, 256, ..., 496 (the first at or after 200 on the grid from 16; 496 + 4 = 500).
  held_back.stride = 40;
  const auto strided = meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, held_back);
  CHECK(strided.unseen.windows == 3);
  CHECK(strided.predictions == 8);
  CHECK(meta::online_scored_windows(0, 600, 16, 4, held_back) == 11);
  // Fewer unseen frames than one horizon, or too many to leave a stream: refused, naming the
  // setting and a value that works.
  held_back.stride = 1;
  held_back.unseen_frames = 3;
  CHECK_THROWS_WITH(meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, held_back),
                    Catch::Contains("online.unseen_frames 3 holds no forecast") &&
                        Catch::Contains("at least 4"));
  held_back.unseen_frames = 450;
  CHECK_THROWS_WITH(meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, held_back),
                    Catch::Contains("online.unseen_frames of at most 396 leaves one"));
  // At a stride of 40 the first scored prediction time is 216: at most 600 - 216 - 4 = 380,
  // which works.
  held_back.stride = 40;
  CHECK_THROWS_WITH(meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, held_back),
                    Catch::Contains("online.unseen_frames of at most 380 leaves one"));
  held_back.unseen_frames = 380;
  CHECK(meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, held_back).predictions == 1);
  held_back.stride = 1;
  // A stream with no frame to spare: none can be held back.
  held_back.unseen_frames = 4;
  CHECK_THROWS_WITH(meta::run_online(*f, drifting_session(), 0, 0, 204, 16, 4, held_back),
                    Catch::Contains("the stream has no frames to spare"));
  held_back.unseen_frames = -1;
  CHECK_THROWS_WITH(meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, held_back),
                    Catch::Contains("online.unseen_frames must be >= 0"));
}
