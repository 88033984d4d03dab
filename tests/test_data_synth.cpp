// The synthetic multi-session generator (data/synth.h): determinism by seed, session sizes,
// sane activity, drift, the npz export, config errors and speed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <set>
#include <span>
#include <string>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "data/load.h"
#include "data/synth.h"
#include "support/temp_dir.h"

using Catch::Contains;
using mt::testing::TempDir;
using namespace mt::data;

namespace {

SynthConfig small_config(uint64_t seed) {
  SynthConfig c;
  c.seed = seed;
  c.num_sessions = 3;
  c.n_total = 96;
  c.min_neurons = 20;
  c.max_neurons = 60;
  c.num_frames = 300;
  c.burn_in_frames = 50;
  return c;
}

double trace_std(std::span<const float> x) {
  double m = 0, q = 0;
  for (float v : x) m += v;
  m /= static_cast<double>(x.size());
  for (float v : x) q += (v - m) * (v - m);
  return std::sqrt(q / static_cast<double>(x.size()));
}

}  // namespace

TEST_CASE("synth: the same seed gives the same data, another seed other data", "[data][synth]") {
  const Dataset a = synthesize(small_config(7));
  const Dataset b = synthesize(small_config(7));
  const Dataset c = synthesize(small_config(8));
  REQUIRE(a.size() == 3);
  for (int64_t s = 0; s < a.size(); ++s) {
    CHECK(a[s].name == b[s].name);
    CHECK(a[s].num_neurons == b[s].num_neurons);
    CHECK(a[s].activity == b[s].activity);
    CHECK(a[s].timestamps == b[s].timestamps);
  }
  bool differs = false;
  for (int64_t s = 0; s < a.size(); ++s)
    differs = differs || a[s].num_neurons != c[s].num_neurons || a[s].activity != c[s].activity;
  CHECK(differs);
  // A session does not depend on how many sessions follow it.
  SynthConfig fewer = small_config(7);
  fewer.num_sessions = 1;
  CHECK(synthesize(fewer)[0].activity == a[0].activity);
}

TEST_CASE("synth: sessions differ in size, activity is finite and varied", "[data][synth]") {
  SynthConfig cfg = small_config(3);
  cfg.num_sessions = 8;
  SynthTruth truth;
  const Dataset d = synthesize(cfg, &truth);
  REQUIRE(d.size() == 8);
  REQUIRE(truth.units.size() == 8);
  std::set<int64_t> sizes;
  for (int64_t s = 0; s < d.size(); ++s) {
    const Session& x = d[s];
    INFO(x.describe());
    CHECK(x.name == fmt::format("synth_{:03d}", s));
    CHECK(x.num_neurons >= cfg.min_neurons);
    CHECK(x.num_neurons <= cfg.max_neurons);
    CHECK(x.num_frames == cfg.num_frames);
    sizes.insert(x.num_neurons);
    // Observed units: distinct, sorted, inside the network.
    const auto& u = truth.units[static_cast<size_t>(s)];
    CHECK(static_cast<int64_t>(u.size()) == x.num_neurons);
    CHECK(std::is_sorted(u.begin(), u.end()));
    CHECK(std::adjacent_find(u.begin(), u.end()) == u.end());
    CHECK(u.front() >= 0);
    CHECK(u.back() < cfg.n_total);
    const double c = truth.perturbation[static_cast<size_t>(s)];
    CHECK(c >= cfg.min_perturbation);
    CHECK(c <= cfg.max_perturbation);
    // Finite (validate() ran) and not constant: chaotic activity moves every unit.
    for (int64_t n = 0; n < x.num_neurons; ++n) CHECK(trace_std(x.trace(n)) > 0.05);
    CHECK(x.timestamps[1] == Approx(cfg.dt));
  }
  CHECK(sizes.size() > 1);
  // Bounded: the leak keeps |h| near the range of J tanh(h), a few units at g = 1.5.
  for (const auto& x : d.sessions)
    for (float v : x.activity) CHECK(std::abs(v) < 50.0f);
}

TEST_CASE("synth: drift changes the observed values, not the simulation", "[data][synth]") {
  SynthConfig cfg = small_config(11);
  cfg.num_sessions = 1;
  const Dataset plain = synthesize(cfg);
  cfg.drift = 0.3;
  const Dataset drifted = synthesize(cfg);
  REQUIRE(plain[0].num_neurons == drifted[0].num_neurons);
  CHECK(plain[0].activity != drifted[0].activity);
  // Without drift, frame 0 of the drifted session is gain * h + offset with |gain - 1| <= 0.3
  // and |offset| <= 0.3.
  for (int64_t n = 0; n < plain[0].num_neurons; ++n) {
    const float h = plain[0].at(n, 0), y = drifted[0].at(n, 0);
    CHECK(std::abs(y - h) <= 0.3f * std::abs(h) + 0.3f + 1e-4f);
  }
}

TEST_CASE("synth: config errors name the field", "[data][synth]") {
  SynthConfig c;
  c.min_neurons = 300;
  c.max_neurons = 200;
  REQUIRE_THROWS_WITH(synthesize(c), Contains("min_neurons") && Contains("max_neurons"));
  c = SynthConfig{};
  c.max_neurons = 1000;
  REQUIRE_THROWS_WITH(synthesize(c), Contains("n_total (512)"));
  c = SynthConfig{};
  c.max_perturbation = 1.5;
  REQUIRE_THROWS_WITH(synthesize(c), Contains("perturbation"));
  c = SynthConfig{};
  c.dt = 2.0;
  REQUIRE_THROWS_WITH(synthesize(c), Contains("dt (2) > tau (1)"));
  // Sizes past the machine's memory are refused before anything is allocated (they used to end
  // the process with std::bad_alloc inside the parallel simulation).
  c = SynthConfig{};
  c.num_frames = 2'000'000'000;
  REQUIRE_THROWS_WITH(synthesize(c), Contains("GiB, but this machine has") &&
                                         Contains("num_frames"));
  c = SynthConfig{};
  c.num_sessions = int64_t(1) << 40;
  REQUIRE_THROWS_WITH(synthesize(c), Contains("GiB, but this machine has"));
}

TEST_CASE("synth: write_dataset_npz exports POCO's format", "[data][synth][npz]") {
  const TempDir dir("test_data_synth");
  const Dataset d = synthesize(small_config(5));
  write_dataset_npz(d, dir.file("nested"));
  const Dataset r = load_folder(dir.file("nested"));
  REQUIRE(r.size() == d.size());
  for (int64_t s = 0; s < d.size(); ++s) {
    CHECK(r[s].name == d[s].name);
    CHECK(r[s].activity == d[s].activity);
    CHECK(r[s].timestamps == d[s].timestamps);
  }
}

TEST_CASE("synth: default network, 4 sessions x 256 neurons x 2000 frames, is fast",
          "[data][synth][speed]") {
  SynthConfig cfg;  // n_total 512, dt 0.1, g 1.5, burn-in 200
  cfg.num_sessions = 4;
  cfg.min_neurons = cfg.max_neurons = 256;
  cfg.num_frames = 2000;
  const auto t0 = std::chrono::steady_clock::now();
  const Dataset d = synthesize(cfg);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(d.size() == 4);
  CHECK(d[0].num_neurons == 256);
  WARN("synthesize: 4 sessions x 256 neurons x 2000 frames (512-unit network) in " << ms << " ms");
  CHECK(ms < 5000);  // generous: a loaded debug build; well under a second in Release
}
