// Online adaptation on a stream of frames: every `stride` frames, at time t, the forecaster
// predicts frames t .. t+H-1 from the context before t with its current weights; once those
// frames have arrived (at the first prediction time >= t + H) it takes one SGD step of the
// test-time parameters on that delayed loss. Compared with offline adaptation (K steps on a
// calibration segment at the start of the stream, then frozen) and with the frozen model, all
// scored on the same predictions after the calibration segment.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "meta/forecaster.h"

namespace mt::meta {

struct OnlineOptions {
  double lr = 1e-3;  // SGD step size of the online and the offline updates
  std::vector<std::string> params = {"unit_emb.", "session_emb."};  // test-time parameters
  int64_t stride = 1;                                               // frames between predictions
  int64_t calibration_frames = 200;  // start of the stream used by the offline method
  int64_t calibration_steps = 50;    // its SGD steps (batches of windows of the segment)
  int64_t calibration_batch = 8;
  uint64_t seed = 0;
  // The last frames of each stream that are not streamed: no method learns from them. After the
  // stream, each method's final model forecasts them (every `stride` frames from the stream's
  // end, no update): how each would do if adaptation stopped there (OnlineScores::unseen).
  int64_t unseen_frames = 0;
};

// Positive rates and sizes; errors name the config fields (online.*) and the fix.
void check_online_options(const OnlineOptions& options);

// Whether frames [begin, end) of a session of `num_frames` hold a stream run_online can score
// with these options: the calibration segment, a context and a horizon before the held-back
// (unseen) frames, a prediction time the stride reaches, and a window in the unseen frames.
// Errors name the session, the setting (online.*) and a value that works.
void check_online_stream(const std::string& session, int64_t num_frames, int64_t begin, int64_t end,
                         int64_t context, int64_t horizon, const OnlineOptions& options);

// Milliseconds one kind of event took, over a stream: the median, the 95th percentile (nearest
// rank) and the slowest (the first events include one-time allocations).
struct LatencyMs {
  double median = 0, p95 = 0, max = 0;
  int64_t count = 0;
};
LatencyMs summarize_latency(std::vector<double> ms);

// The scores of one stretch of the scored stream: how they change as the stream goes on.
struct OnlineSegment {
  int64_t first_frame = 0, last_frame = 0;  // prediction times of its first and last window
  int64_t windows = 0;
  double frozen = 0, offline = 0, online = 0;
};

struct OnlineScores {
  double frozen = 0, offline = 0, online = 0;  // 1 - MSE / MSE of copy-last, same predictions
  int64_t predictions = 0;                     // windows scored per method
  int64_t online_steps = 0;  // the online method's SGD steps, the calibration segment's included
  // Its steps after the last prediction time, on the windows whose frames completed only then:
  // they change online_parameters, not the scores. Every predicted window is learned from once.
  int64_t final_steps = 0;
  double online_seconds = 0;  // wall time of the online pass
  // What a live system would wait for, on the forecaster's device (each waited for):
  // update: one online SGD step (the arrived window to tensors, forward, backward, step);
  // forecast: the online method's forecast of one window (to tensors, forward, to the host);
  // cycle: one scored prediction time, its update (if one was due) and its forecast.
  LatencyMs update_ms, forecast_ms, cycle_ms;
  // The scored windows in kSegments consecutive stretches of (nearly) equal counts (fewer when
  // there are fewer windows), each scored on its own.
  static constexpr int64_t kSegments = 10;
  std::vector<OnlineSegment> segments;
  // The options' unseen frames (windows 0 when there are none): each method's model as the
  // stream left it forecasts them, without updates; frames: the first and last prediction time.
  OnlineSegment unseen;
  // Whether the offline method took its calibration steps: false when the calibration segment
  // holds no complete window (context + horizon frames) or calibration_steps is 0; its scores are
  // then the frozen model's.
  bool offline_calibrated = false;
  // The online method's test-time parameters at the end of the stream (its copies, by name): with
  // the forecaster's other parameters, the model online adaptation leaves behind.
  nn::ParamMap online_parameters;
};

// The forecasts run_online scored, for a caller that keeps them: per window (in time order: the
// stream's scored prediction times, then the unseen ones), its first forecast frame and each
// method's forecast of the session's N neurons x H frames (the values it was fed: z-scored
// where the session was), N * H floats a window, neuron-major.
struct OnlineForecasts {
  std::vector<int64_t> start;
  std::vector<int64_t> unseen;  // 1 for a held-back window (forecast without updates), else 0
  std::vector<float> frozen, offline, online;
};

// Thrown by run_online when its `stop_requested` says so (Ctrl-C): no scores.
struct OnlineStopped : Error {
  OnlineStopped() : Error("online adaptation stopped") {}
};

// `session` is the (z-scored) recording; frames [begin, end) form the stream, its last
// options.unseen_frames held back (scored in `unseen`, never learned from); `model_session` is
// the forecaster's session index for it (POCO's embedding rows). The forecaster's own parameters
// are not modified: every method adapts copies. `stop_requested`, when given, is asked before
// every calibration step and every prediction time. `forecasts`, when given, receives every
// scored forecast (appended).
OnlineScores run_online(Forecaster& f, const data::Session& session, int64_t model_session,
                        int64_t begin, int64_t end, int64_t context, int64_t horizon,
                        const OnlineOptions& options,
                        const std::function<bool()>& stop_requested = {},
                        OnlineForecasts* forecasts = nullptr);

// How many windows run_online scores on frames [begin, end) (check_online_stream's conditions
// hold): the stream's and the unseen ones.
int64_t online_scored_windows(int64_t begin, int64_t end, int64_t context, int64_t horizon,
                              const OnlineOptions& options);

}  // namespace mt::meta
