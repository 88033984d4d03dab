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
}  // namespace

TEST_CASE("online adaptation: zero step size changes nothing", "[meta][online]") {
  auto f = small_mlp();
  meta::OnlineOptions opt;
  opt.lr = 0;
  opt.params = {};  // every parameter is a test-time parameter
  auto r = meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, opt);
  CHECK(r.predictions == 600 - 200 - 4 + 1);
  CHECK(r.online == r.frozen);
  CHECK(r.offline == r.frozen);
}

TEST_CASE("online adaptation follows a level shift better than frozen or calibrated models",
          "[meta][online]") {
  auto f = small_mlp();
  meta::OnlineOptions opt;
  opt.lr = 0.02;
  opt.params = {};
  auto r = meta::run_online(*f, drifting_session(), 0, 0, 600, 16, 4, opt);
  WARN("scores: frozen " << r.frozen << ", offline " << r.offline << ", online " << r.online);
  CHECK(r.offline > r.frozen);
  CHECK(r.online > r.offline);
  CHECK_THROWS_WITH(meta::run_online(*f, drifting_session(), 0, 0, 150, 16, 4, opt),
                    Catch::Contains("too short") && Catch::Contains("drift"));
}
