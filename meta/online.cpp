#include "meta/online.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/core/backend.h"

namespace mt::meta {

namespace {

// The window whose context is [t - context, t) and target [t, t + horizon) as a batch.
models::PocoBatch window(const Forecaster& f, const data::Session& s, int64_t model_session,
                         int64_t t, int64_t context, int64_t horizon) {
  data::WindowBatch w;
  w.context_length = context;
  w.pred_length = horizon;
  w.session = {0};
  w.start = {t - context};
  w.neuron_offset = {0, s.num_neurons};
  for (int64_t n = 0; n < s.num_neurons; ++n) {
    auto trace = s.trace(n);
    w.context.insert(w.context.end(), trace.begin() + (t - context), trace.begin() + t);
    w.target.insert(w.target.end(), trace.begin() + t, trace.begin() + t + horizon);
  }
  return to_batch(w, f, {model_session});
}

// Test-time parameters as fresh leaves (copies), plus the override map that uses them.
struct Adapted {
  std::vector<std::string> names;
  TensorList leaves;
  nn::ParamMap overrides;
};
Adapted copy_params(Forecaster& f, const std::vector<std::string>& prefixes) {
  Adapted a;
  nn::Module* m = f.module();
  MT_CHECK(m != nullptr, "online adaptation needs a forecaster with parameters");
  for (auto& [name, t] : m->named_parameters()) {
    if (!matches_prefixes(name, prefixes)) continue;
    Tensor leaf = t.detach().clone();
    leaf.set_requires_grad(true);
    a.names.push_back(name);
    a.leaves.push_back(leaf);
    a.overrides[name] = leaf;
  }
  MT_CHECK(!a.names.empty(), "online adaptation: no parameter matches the test-time prefixes");
  return a;
}

void sgd_step(const Forecaster& f, Adapted& a, const models::PocoBatch& b, double lr) {
  Tensor loss = mse_loss(f.predict(b, &a.overrides), b.target);
  TensorList g = autograd::grad({loss}, a.leaves, {}, std::nullopt, false, /*allow_unused=*/true);
  NoGradGuard no_grad;
  for (size_t i = 0; i < a.leaves.size(); ++i)
    if (g[i].defined()) a.leaves[i].add_(g[i], -lr);
}

// Squared errors of forecasts of frames [t, t + H) of `s` (N x H, host values), and those of
// repeating frame t - 1.
struct Score {
  double sse = 0, copy_sse = 0;
  void add(const std::vector<double>& pred, const data::Session& s, int64_t t, int64_t H) {
    for (int64_t n = 0; n < s.num_neurons; ++n)
      for (int64_t h = 0; h < H; ++h) {
        const double y = s.at(n, t + h), p = pred[size_t(n * H + h)], last = s.at(n, t - 1);
        sse += (p - y) * (p - y);
        copy_sse += (last - y) * (last - y);
      }
  }
  double value() const { return copy_sse > 0 ? 1.0 - sse / copy_sse : 0.0; }
};

void keep_forecasts(OnlineForecasts& out, int64_t t, bool unseen, const std::vector<double>& frozen,
                    const std::vector<double>& offline, const std::vector<double>& online) {
  out.start.push_back(t);
  out.unseen.push_back(unseen ? 1 : 0);
  out.frozen.insert(out.frozen.end(), frozen.begin(), frozen.end());
  out.offline.insert(out.offline.end(), offline.begin(), offline.end());
  out.online.insert(out.online.end(), online.begin(), online.end());
}

// The prediction times of a stream of frames [begin, end): begin + context + k * stride, the
// stride capped at the stream's length (a longer one predicts once, at the start, and keeps the
// frame arithmetic far from overflow); scored from scored_from (after the calibration segment
// and a context), the first of them at scored_first.
struct StreamGrid {
  int64_t first, stride, scored_from, scored_first;
  // Scored prediction times with a horizon before `end`.
  int64_t scored(int64_t end, int64_t horizon) const {
    return scored_first + horizon <= end ? (end - horizon - scored_first) / stride + 1 : 0;
  }
};
StreamGrid stream_grid(int64_t begin, int64_t end, int64_t context, const OnlineOptions& opt) {
  StreamGrid g;
  g.first = begin + context;
  g.stride = std::min<int64_t>(opt.stride, end - begin + 1);
  g.scored_from = begin + std::max(opt.calibration_frames, context);
  g.scored_first = g.first + (g.scored_from - g.first + g.stride - 1) / g.stride * g.stride;
  return g;
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

}  // namespace

LatencyMs summarize_latency(std::vector<double> ms) {
  LatencyMs out;
  out.count = int64_t(ms.size());
  if (ms.empty()) return out;
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  out.median = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  out.p95 = ms[size_t(std::ceil(0.95 * double(n))) - 1];
  out.max = ms.back();
  return out;
}

void check_online_options(const OnlineOptions& o) {
  MT_CHECK(std::isfinite(o.lr) && o.lr >= 0,
           "online.lr must be a number >= 0 (0: no update, the frozen model), got {}", o.lr);
  MT_CHECK(o.stride > 0, "online.stride must be positive (frames between predictions), got {}",
           o.stride);
  MT_CHECK(o.calibration_frames >= 0 && o.calibration_steps >= 0,
           "online.calibration_frames ({}) and online.calibration_steps ({}) must be >= 0",
           o.calibration_frames, o.calibration_steps);
  MT_CHECK(o.calibration_batch > 0,
           "online.calibration_batch must be positive (windows per calibration step), got {}",
           o.calibration_batch);
  MT_CHECK(o.unseen_frames >= 0,
           "online.unseen_frames must be >= 0 (frames at the end of each stream held back from "
           "adaptation, 0: none), got {}",
           o.unseen_frames);
}

void check_online_stream(const std::string& name, int64_t num_frames, int64_t begin, int64_t end,
                         int64_t context, int64_t horizon, const OnlineOptions& opt) {
  check_online_options(opt);
  MT_CHECK(begin >= 0 && end <= num_frames && begin < end,
           "online: frames [{}, {}) are not inside session '{}' ({} frames)", begin, end, name,
           num_frames);
  // The unseen frames need one window; the streamed ones, the calibration segment, a context and
  // one horizon.
  if (opt.unseen_frames > 0) {
    MT_CHECK(opt.unseen_frames >= horizon,
             "online: online.unseen_frames {} holds no forecast of {} frames; hold back at least "
             "{} (or 0: none)",
             opt.unseen_frames, horizon, horizon);
    // The most frames that leave the stream a scored prediction time: its first at or after
    // the calibration segment and a context, and a horizon after it.
    const int64_t most = end - stream_grid(begin, end, context, opt).scored_first - horizon;
    MT_CHECK(opt.unseen_frames <= most,
             "online: session '{}' frames [{}, {}) less its {} unseen frames leave no prediction "
             "time to score after the calibration segment ({}) and the context ({}) at "
             "online.stride {}; {}",
             name, begin, end, opt.unseen_frames, opt.calibration_frames, context, opt.stride,
             most >= horizon
                 ? fmt::format("an online.unseen_frames of at most {} leaves one", most)
                 : std::string("the stream has no frames to spare: set online.unseen_frames to "
                               "0 (or shorten online.calibration_frames or online.stride)"));
  }
  const int64_t stream_end = end - opt.unseen_frames;
  const StreamGrid g = stream_grid(begin, stream_end, context, opt);
  MT_CHECK(g.scored_from + horizon <= stream_end,
           "online: session '{}' frames [{}, {}) are too short for the calibration segment ({}), "
           "the context ({}) and one horizon ({})",
           name, begin, stream_end, opt.calibration_frames, context, horizon);
  // The first prediction time at or after scored_from must leave a horizon in the stream; any
  // stride up to the length of the scored range does.
  MT_CHECK(g.scored(stream_end, horizon) > 0,
           "online: online.stride {} leaves no prediction time to score in session '{}' (its "
           "predictions start at frame {}, scored from frame {}, the last one possible at "
           "frame {}); an online.stride of at most {} leaves at least one",
           opt.stride, name, g.first, g.scored_from, stream_end - horizon,
           stream_end - horizon - g.scored_from + 1);
}

int64_t online_scored_windows(int64_t begin, int64_t end, int64_t context, int64_t horizon,
                              const OnlineOptions& opt) {
  const int64_t unseen_end = end;
  end -= opt.unseen_frames;
  int64_t windows = stream_grid(begin, end, context, opt).scored(end, horizon);
  if (opt.unseen_frames >= horizon)
    windows +=
        (unseen_end - horizon - end) / std::min<int64_t>(opt.stride, unseen_end - end + 1) + 1;
  return windows;
}

OnlineScores run_online(Forecaster& f, const data::Session& session, int64_t model_session,
                        int64_t begin, int64_t end, int64_t context, int64_t horizon,
                        const OnlineOptions& opt, const std::function<bool()>& stop_requested,
                        OnlineForecasts* forecasts) {
  auto stop_if_asked = [&] {
    if (stop_requested && stop_requested()) throw OnlineStopped();
  };
  check_online_stream(session.name, session.num_frames, begin, end, context, horizon, opt);
  check_prefixes(f, opt.params, "online.params");
  if (forecasts) {  // their exact size, not a doubling vector's
    const size_t windows = size_t(online_scored_windows(begin, end, context, horizon, opt));
    const size_t values = windows * size_t(session.num_neurons * horizon);
    forecasts->start.reserve(forecasts->start.size() + windows);
    forecasts->unseen.reserve(forecasts->unseen.size() + windows);
    for (auto* v : {&forecasts->frozen, &forecasts->offline, &forecasts->online})
      v->reserve(v->size() + values);
  }
  // The unseen frames: after the stream, scored without updates.
  const int64_t unseen_end = end;
  end -= opt.unseen_frames;
  const StreamGrid grid = stream_grid(begin, end, context, opt);
  const int64_t scored_from = grid.scored_from;
  OnlineScores out;

  // Frozen and offline: the same predictions, with the initial or the calibrated parameters.
  Adapted offline = copy_params(f, opt.params);
  {
    const int64_t first = begin + context, last = begin + opt.calibration_frames - horizon;
    out.offline_calibrated = last >= first && opt.calibration_steps > 0;
    if (out.offline_calibrated) {
      std::mt19937_64 rng(opt.seed);
      std::uniform_int_distribution<int64_t> pick(first, last);
      for (int64_t step = 0; step < opt.calibration_steps; ++step) {
        stop_if_asked();
        // A batch of calibration windows: several samples of the same session.
        std::vector<models::PocoBatch> parts;
        for (int64_t i = 0; i < opt.calibration_batch; ++i)
          parts.push_back(window(f, session, model_session, pick(rng), context, horizon));
        models::PocoBatch b = parts[0];
        TensorList xs, ts, us, ss;
        for (auto& p : parts) {
          xs.push_back(p.x);
          ts.push_back(p.target);
          us.push_back(p.unit_index);
          ss.push_back(p.neuron_session);
        }
        b.x = cat(xs, 0);
        b.target = cat(ts, 0);
        b.unit_index = cat(us, 0);
        b.neuron_session = cat(ss, 0);
        b.sample_neurons.assign(parts.size(), session.num_neurons);
        b.sample_sessions.assign(parts.size(), model_session);
        sgd_step(f, offline, b, opt.lr);
      }
    }
  }
  Score frozen, offline_score, online_score;
  Adapted online = copy_params(f, opt.params);
  struct SegmentScores {
    Score frozen, offline, online;
    OnlineSegment segment;
  };
  std::vector<SegmentScores> segments;
  std::vector<double> update_ms, forecast_ms, cycle_ms;
  const Device device = f.device();
  const int64_t first = grid.first, stride = grid.stride;
  // Prediction times scored (check_online_stream: at least one).
  const int64_t scored_count = grid.scored(end, horizon);
  segments.resize(size_t(std::min(scored_count, OnlineScores::kSegments)));
  const auto start = std::chrono::steady_clock::now();
  int64_t learned = first - stride;  // the last predicted window learned from
  int64_t last_predicted = first - stride;
  for (int64_t t = first; t + horizon <= end; t += stride) {
    stop_if_asked();
    // Learn first from the window whose frames completed since the previous prediction: the
    // last one predicted at or before t - horizon (one per stride, whether or not the stride
    // divides the horizon).
    double cycle = 0;
    if (const int64_t ready = t - horizon; ready >= first) {
      const auto step_start = std::chrono::steady_clock::now();
      const int64_t done = ready - (ready - first) % stride;
      sgd_step(f, online, window(f, session, model_session, done, context, horizon), opt.lr);
      synchronize(device);
      cycle = ms_since(step_start);
      update_ms.push_back(cycle);
      ++out.online_steps;
      learned = done;
    }
    last_predicted = t;
    if (t < scored_from) continue;
    NoGradGuard no_grad;
    const auto forecast_start = std::chrono::steady_clock::now();
    models::PocoBatch b = window(f, session, model_session, t, context, horizon);
    const std::vector<double> online_pred = f.predict(b, &online.overrides).to_vector<double>();
    forecast_ms.push_back(ms_since(forecast_start));
    cycle_ms.push_back(cycle + forecast_ms.back());
    const std::vector<double> offline_pred = f.predict(b, &offline.overrides).to_vector<double>(),
                              frozen_pred = f.predict(b).to_vector<double>();
    online_score.add(online_pred, session, t, horizon);
    offline_score.add(offline_pred, session, t, horizon);
    frozen.add(frozen_pred, session, t, horizon);
    if (forecasts) keep_forecasts(*forecasts, t, false, frozen_pred, offline_pred, online_pred);
    // Scored window i of n falls in segment i * segments / n.
    SegmentScores& seg =
        segments[size_t(out.predictions * int64_t(segments.size()) / scored_count)];
    if (seg.segment.windows++ == 0) seg.segment.first_frame = t;
    seg.segment.last_frame = t;
    seg.online.add(online_pred, session, t, horizon);
    seg.offline.add(offline_pred, session, t, horizon);
    seg.frozen.add(frozen_pred, session, t, horizon);
    ++out.predictions;
  }
  out.update_ms = summarize_latency(std::move(update_ms));
  out.forecast_ms = summarize_latency(std::move(forecast_ms));
  out.cycle_ms = summarize_latency(std::move(cycle_ms));
  out.online_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The windows predicted last complete when the stream ends: the parameters left behind learn
  // from them too (after the scores, which they cannot change).
  for (int64_t t = learned + stride; t <= last_predicted; t += stride) {
    stop_if_asked();
    sgd_step(f, online, window(f, session, model_session, t, context, horizon), opt.lr);
    ++out.final_steps;
  }
  // The held-back frames: each method's model as the stream left it, no update (the online one
  // after its final steps: all it learned from the stream), every stride frames from its end.
  if (end < unseen_end) {
    NoGradGuard no_grad;
    Score unseen_frozen, unseen_offline, unseen_online;
    // (A stride longer than the unseen frames predicts once, and keeps t from overflowing.)
    const int64_t unseen_stride = std::min<int64_t>(opt.stride, unseen_end - end + 1);
    for (int64_t t = end; t + horizon <= unseen_end; t += unseen_stride) {
      stop_if_asked();
      models::PocoBatch b = window(f, session, model_session, t, context, horizon);
      const std::vector<double> online_pred = f.predict(b, &online.overrides).to_vector<double>(),
                                offline_pred = f.predict(b, &offline.overrides).to_vector<double>(),
                                frozen_pred = f.predict(b).to_vector<double>();
      unseen_online.add(online_pred, session, t, horizon);
      unseen_offline.add(offline_pred, session, t, horizon);
      unseen_frozen.add(frozen_pred, session, t, horizon);
      if (forecasts) keep_forecasts(*forecasts, t, true, frozen_pred, offline_pred, online_pred);
      if (out.unseen.windows++ == 0) out.unseen.first_frame = t;
      out.unseen.last_frame = t;
    }
    out.unseen.frozen = unseen_frozen.value();
    out.unseen.offline = unseen_offline.value();
    out.unseen.online = unseen_online.value();
  }
  for (size_t i = 0; i < online.names.size(); ++i)
    out.online_parameters[online.names[i]] = online.leaves[i].detach();
  for (SegmentScores& seg : segments) {
    seg.segment.frozen = seg.frozen.value();
    seg.segment.offline = seg.offline.value();
    seg.segment.online = seg.online.value();
    out.segments.push_back(seg.segment);
  }
  out.frozen = frozen.value();
  out.offline = offline_score.value();
  out.online = online_score.value();
  return out;
}

}  // namespace mt::meta
