#include "data/synth.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <filesystem>
#include <numbers>

#include <Eigen/Core>

#include <nlohmann/json.hpp>

#include "data/check.h"
#include "data/npz.h"
#include "data/random.h"

namespace mt::data {

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
using Vector = Eigen::VectorXf;

}  // namespace

void check_config(const SynthConfig& c) {
  auto finite_pos = [](double v) { return std::isfinite(v) && v > 0; };
  MT_DATA_CHECK(c.num_sessions >= 1, "synthesize: num_sessions is {}; it must be >= 1",
                c.num_sessions);
  MT_DATA_CHECK(c.n_total >= 1, "synthesize: n_total is {}; it must be >= 1", c.n_total);
  MT_DATA_CHECK(c.min_neurons >= 1 && c.min_neurons <= c.max_neurons && c.max_neurons <= c.n_total,
                "synthesize: neurons per session in [min_neurons, max_neurons] = [{}, {}] must "
                "satisfy 1 <= min_neurons <= max_neurons <= n_total ({})",
                c.min_neurons, c.max_neurons, c.n_total);
  MT_DATA_CHECK(c.num_frames >= 1, "synthesize: num_frames is {}; it must be >= 1", c.num_frames);
  MT_DATA_CHECK(c.burn_in_frames >= 0, "synthesize: burn_in_frames is {}; it must be >= 0",
                c.burn_in_frames);
  MT_DATA_CHECK(c.steps_per_frame >= 1, "synthesize: steps_per_frame is {}; it must be >= 1",
                c.steps_per_frame);
  MT_DATA_CHECK(std::isfinite(c.g) && c.g >= 0, "synthesize: g is {}; it must be >= 0", c.g);
  MT_DATA_CHECK(finite_pos(c.tau), "synthesize: tau is {}; it must be > 0", c.tau);
  MT_DATA_CHECK(finite_pos(c.dt), "synthesize: dt is {}; it must be > 0", c.dt);
  MT_DATA_CHECK(c.dt <= c.tau,
                "synthesize: dt ({}) > tau ({}) makes the Euler step unstable; use "
                "dt <= tau (0.1 tau is the default)",
                c.dt, c.tau);
  MT_DATA_CHECK(std::isfinite(c.noise_std) && c.noise_std >= 0,
                "synthesize: noise_std is {}; it must be >= 0", c.noise_std);
  MT_DATA_CHECK(0 <= c.min_perturbation && c.min_perturbation <= c.max_perturbation &&
                    c.max_perturbation <= 1,
                "synthesize: perturbation range [{}, {}] must satisfy 0 <= min_perturbation <= "
                "max_perturbation <= 1",
                c.min_perturbation, c.max_perturbation);
  MT_DATA_CHECK(std::isfinite(c.drift) && c.drift >= 0, "synthesize: drift is {}; it must be >= 0",
                c.drift);
  MT_DATA_CHECK(std::isfinite(c.obs_noise_std) && c.obs_noise_std >= 0,
                "synthesize: obs_noise_std is {}; it must be >= 0", c.obs_noise_std);
  // The sessions' file names start with it: a name the loaders read back (not hidden, no
  // folder, UTF-8).
  const std::string& prefix = c.name_prefix;
  bool utf8 = true;
  try {
    (void)nlohmann::json(prefix).dump();
  } catch (const nlohmann::json::exception&) {
    utf8 = false;
  }
  MT_DATA_CHECK(!prefix.empty() && prefix[0] != '.' && utf8 &&
                    std::none_of(prefix.begin(), prefix.end(),
                                 [](char ch) {
                                   return ch == '/' || ch == '\\' ||
                                          static_cast<unsigned char>(ch) < 0x20;
                                 }),
                "synthesize: name_prefix {} cannot start the sessions' file names (<prefix>_000."
                "npz): give UTF-8 text without '/' or '\\' that does not start with '.', e.g. "
                "synth",
                nlohmann::json(prefix).dump(-1, ' ', false,
                                            nlohmann::json::error_handler_t::replace));
  // The template (n_total^2), then per session its connectivity (max_neurons^2), activity
  // (max_neurons x num_frames f32) and timestamps (num_frames f64), in doubles so huge settings
  // cannot wrap.
  const double n = double(c.max_neurons), frames = double(c.num_frames);
  const double bytes = 4.0 * double(c.n_total) * double(c.n_total) +
                       double(c.num_sessions) * (4.0 * n * n + 4.0 * n * frames + 8.0 * frames);
  detail::check_fits_in_memory(
      bytes,
      fmt::format("synthesize: {} sessions of up to {} neurons x {} frames (n_total {})",
                  c.num_sessions, c.max_neurons, c.num_frames, c.n_total),
      "lower data.synthetic.num_sessions, max_neurons, num_frames or n_total");
}

namespace {

Matrix normal_matrix(int64_t n, Rng& rng) {
  Matrix m(n, n);
  float* p = m.data();
  for (int64_t i = 0; i < n * n; ++i) p[i] = static_cast<float>(rng.normal());
  return m;
}

struct SessionDraw {
  Session session;
  std::vector<int64_t> units;
  double c = 0;
};

SessionDraw simulate_session(const SynthConfig& cfg, const Matrix& templ, int64_t index) {
  Rng rng(mix_seed(cfg.seed, static_cast<uint64_t>(index) + 1));
  const int64_t n = cfg.n_total;
  SessionDraw out;

  // Per-session draws, in a fixed order.
  out.c = rng.uniform(cfg.min_perturbation, cfg.max_perturbation);
  const int64_t count = rng.uniform_int(cfg.min_neurons, cfg.max_neurons);
  {
    std::vector<int64_t> perm(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) perm[static_cast<size_t>(i)] = i;
    for (int64_t i = 0; i < count; ++i) {  // partial Fisher-Yates
      const int64_t j = rng.uniform_int(i, n - 1);
      std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
    }
    out.units.assign(perm.begin(), perm.begin() + count);
    std::sort(out.units.begin(), out.units.end());
  }
  const float scale = static_cast<float>(cfg.g / std::sqrt(static_cast<double>(n)));
  Matrix J = normal_matrix(n, rng);  // R
  J *= scale * static_cast<float>(out.c);
  J += (scale * static_cast<float>(std::sqrt(1.0 - out.c * out.c))) * templ;

  Vector h(n);
  for (int64_t i = 0; i < n; ++i) h[i] = static_cast<float>(rng.normal());

  std::vector<double> gain_w(static_cast<size_t>(count)), gain_p(static_cast<size_t>(count));
  std::vector<double> off_w(static_cast<size_t>(count)), off_p(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    const auto i = static_cast<size_t>(k);
    gain_w[i] =
        2 * std::numbers::pi / (rng.uniform(1.0, 3.0) * static_cast<double>(cfg.num_frames));
    gain_p[i] = rng.uniform(0.0, 2 * std::numbers::pi);
    off_w[i] = 2 * std::numbers::pi / (rng.uniform(1.0, 3.0) * static_cast<double>(cfg.num_frames));
    off_p[i] = rng.uniform(0.0, 2 * std::numbers::pi);
  }

  Session& s = out.session;
  s.name = fmt::format("{}_{:03d}", cfg.name_prefix, index);
  s.source = fmt::format("synthetic (seed {}, session {})", cfg.seed, index);
  s.num_neurons = count;
  s.num_frames = cfg.num_frames;
  s.activity.assign(static_cast<size_t>(count * cfg.num_frames), 0.0f);
  s.timestamps.resize(static_cast<size_t>(cfg.num_frames));
  const double frame_dt = cfg.dt * static_cast<double>(cfg.steps_per_frame);
  for (int64_t t = 0; t < cfg.num_frames; ++t)
    s.timestamps[static_cast<size_t>(t)] = static_cast<double>(t) * frame_dt;

  const auto leak = static_cast<float>(cfg.dt / cfg.tau);
  const auto sigma = static_cast<float>(cfg.noise_std);
  Vector x(n), jx(n);
  const int64_t total = cfg.burn_in_frames + cfg.num_frames;
  for (int64_t frame = 0; frame < total; ++frame) {
    for (int64_t step = 0; step < cfg.steps_per_frame; ++step) {
      x = h.array().tanh();
      jx.noalias() = J * x;
      h += leak * (jx - h);
      if (sigma > 0)
        for (int64_t i = 0; i < n; ++i) h[i] += sigma * static_cast<float>(rng.normal());
    }
    const int64_t t = frame - cfg.burn_in_frames;
    if (t < 0) continue;
    for (int64_t k = 0; k < count; ++k) {
      float v = h[out.units[static_cast<size_t>(k)]];
      if (cfg.drift > 0) {
        const auto i = static_cast<size_t>(k);
        const double td = static_cast<double>(t);
        const double gain = 1.0 + cfg.drift * std::sin(gain_w[i] * td + gain_p[i]);
        const double off = cfg.drift * std::sin(off_w[i] * td + off_p[i]);
        v = static_cast<float>(gain * v + off);
      }
      s.activity[static_cast<size_t>(k * cfg.num_frames + t)] = v;
    }
  }
  if (cfg.obs_noise_std > 0) {
    for (float& v : s.activity) v += static_cast<float>(cfg.obs_noise_std * rng.normal());
  }
  return out;
}

}  // namespace

Dataset synthesize(const SynthConfig& config, SynthTruth* truth) {
  check_config(config);
  Rng template_rng(mix_seed(config.seed, 0));
  const Matrix templ = normal_matrix(config.n_total, template_rng);

  std::vector<SessionDraw> draws(static_cast<size_t>(config.num_sessions));
  // An exception may not leave an OpenMP region (it would end the process): the first one is
  // kept and rethrown after the loop.
  std::exception_ptr failure;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t s = 0; s < config.num_sessions; ++s) {
    try {
      draws[static_cast<size_t>(s)] = simulate_session(config, templ, s);
    } catch (...) {
#pragma omp critical(synthesize_failure)
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);

  Dataset d;
  if (truth) *truth = {};
  for (auto& draw : draws) {
    if (truth) {
      truth->units.push_back(std::move(draw.units));
      truth->perturbation.push_back(draw.c);
    }
    d.sessions.push_back(std::move(draw.session));
  }
  validate(d);
  return d;
}

void write_dataset_npz(const Dataset& dataset, const std::string& folder) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(folder, ec);
  MT_DATA_CHECK(!ec && fs::is_directory(folder),
                "write_dataset_npz: cannot create folder {} ({}); check the path and permissions",
                folder, ec.message());
  for (const auto& s : dataset.sessions) {
    MT_DATA_CHECK(
        !s.name.empty() && s.name.find('/') == std::string::npos && s.name != "." && s.name != "..",
        "write_dataset_npz: session name '{}' cannot be a file name; rename the session", s.name);
    save_npz(s, (fs::path(folder) / (s.name + ".npz")).string());
  }
}

}  // namespace mt::data
