#include "data/preprocess.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "data/check.h"
#include "data/random.h"

namespace mt::data {

const char* split_name(Split split) {
  switch (split) {
    case Split::Train:
      return "train";
    case Split::Val:
      return "val";
    case Split::Test:
      return "test";
  }
  return "?";
}

const std::vector<FrameRange>& SessionSplits::operator[](Split s) const {
  return s == Split::Train ? train : s == Split::Val ? val : test;
}

int64_t SessionSplits::frames(const std::vector<FrameRange>& ranges) {
  int64_t n = 0;
  for (const auto& r : ranges) n += r.length();
  return n;
}

SessionSplits split_frames(int64_t num_frames, const SplitConfig& c) {
  const bool ok = std::isfinite(c.train) && std::isfinite(c.val) && std::isfinite(c.test) &&
                  c.train >= 0 && c.val >= 0 && c.test >= 0 &&
                  std::abs(c.train + c.val + c.test - 1.0) < 1e-6;
  MT_DATA_CHECK(ok, "split: fractions train {} + val {} + test {} must each be >= 0 and sum to 1",
                c.train, c.val, c.test);
  MT_DATA_CHECK(num_frames >= 0, "split: num_frames is {}", num_frames);
  SessionSplits out;
  auto cut = [&](int64_t begin, int64_t end) {
    const auto len = static_cast<double>(end - begin);
    // Both clamped: fractions summing to 1 + 1e-6 must not reach past the recording.
    const int64_t b1 = std::min(end, begin + static_cast<int64_t>(std::llround(len * c.train)));
    const int64_t b2 =
        std::min(end, begin + static_cast<int64_t>(std::llround(len * (c.train + c.val))));
    if (b1 > begin) out.train.push_back({begin, b1});
    if (b2 > b1) out.val.push_back({b1, b2});
    if (end > b2) out.test.push_back({b2, end});
  };
  if (c.mode == SplitMode::Chronological) {
    cut(0, num_frames);
  } else {
    MT_DATA_CHECK(c.block_length >= 1, "split: block_length is {}; it must be >= 1",
                  c.block_length);
    for (int64_t b = 0; b < num_frames; b += c.block_length)
      cut(b, std::min(num_frames, b + c.block_length));
  }
  return out;
}

NormStats compute_stats(const Session& s, const std::vector<FrameRange>& frames) {
  const int64_t count = SessionSplits::frames(frames);
  MT_DATA_CHECK(count > 0,
                "z-score: {}: no frames to compute the statistics from; give the train "
                "split a non-zero fraction or turn z-scoring off",
                s.describe());
  NormStats st;
  st.mean.resize(static_cast<size_t>(s.num_neurons));
  st.std.resize(static_cast<size_t>(s.num_neurons));
  for (int64_t n = 0; n < s.num_neurons; ++n) {
    const auto tr = s.trace(n);
    double sum = 0;
    for (const auto& r : frames)
      for (int64_t t = r.begin; t < r.end; ++t) sum += tr[static_cast<size_t>(t)];
    const double mean = sum / static_cast<double>(count);
    double sq = 0;
    for (const auto& r : frames)
      for (int64_t t = r.begin; t < r.end; ++t) {
        const double d = tr[static_cast<size_t>(t)] - mean;
        sq += d * d;
      }
    double sd = std::sqrt(sq / static_cast<double>(count));
    // Constant: a spread of at most one f32 rounding step at the mean's magnitude (the values
    // are f32: a trace that only flickers between neighbouring floats carries no signal),
    // whatever the data's units: 1e-6-scale traces or a 1e6 offset are not constant.
    const double resolution =
        std::ldexp(std::max(std::abs(mean), double(std::numeric_limits<float>::min())), -24);
    if (!(sd > resolution)) {
      sd = 1.0;
      st.constant_neurons.push_back(n);
    }
    st.mean[static_cast<size_t>(n)] = static_cast<float>(mean);
    st.std[static_cast<size_t>(n)] = static_cast<float>(sd);
  }
  return st;
}

void apply_zscore(Session& s, const NormStats& st) {
  MT_DATA_CHECK(static_cast<int64_t>(st.mean.size()) == s.num_neurons &&
                    static_cast<int64_t>(st.std.size()) == s.num_neurons,
                "z-score: {}: statistics for {} neurons, session has {}", s.describe(),
                st.mean.size(), s.num_neurons);
  for (int64_t n = 0; n < s.num_neurons; ++n) {
    const double m = st.mean[static_cast<size_t>(n)];
    const double inv = 1.0 / st.std[static_cast<size_t>(n)];
    for (float& v : s.trace(n)) v = static_cast<float>((v - m) * inv);
  }
}

std::vector<int64_t> window_starts(const std::vector<FrameRange>& ranges, int64_t seq_length,
                                   int64_t stride) {
  MT_DATA_CHECK(seq_length >= 1 && stride >= 1,
                "windows: seq_length {} and stride {} must both be >= 1", seq_length, stride);
  std::vector<int64_t> out;
  for (const auto& r : ranges)
    for (int64_t s = r.begin; s + seq_length <= r.end; s += stride) out.push_back(s);
  return out;
}

std::pair<std::vector<FrameRange>, std::vector<FrameRange>> support_query_frames(
    const std::vector<FrameRange>& train, double fraction) {
  MT_DATA_CHECK(std::isfinite(fraction) && fraction >= 0 && fraction <= 1,
                "support/query: support fraction {} must be in [0, 1]", fraction);
  int64_t total = 0;
  for (const auto& r : train) total += r.length();
  int64_t left = std::llround(fraction * static_cast<double>(total));  // support frames to place
  std::vector<FrameRange> support, query;
  for (const auto& r : train) {
    const int64_t take = std::min(left, r.length());
    if (take > 0) support.push_back({r.begin, r.begin + take});
    if (take < r.length()) query.push_back({r.begin + take, r.end});
    left -= take;
  }
  return {std::move(support), std::move(query)};
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> support_query_split(
    const std::vector<int64_t>& windows, double fraction, uint64_t seed) {
  MT_DATA_CHECK(std::isfinite(fraction) && fraction >= 0 && fraction <= 1,
                "support/query: support fraction {} must be in [0, 1]", fraction);
  std::vector<int64_t> order = windows;
  Rng rng(seed);
  for (size_t i = order.size(); i > 1; --i) {
    const auto j = static_cast<size_t>(rng.uniform_int(0, static_cast<int64_t>(i) - 1));
    std::swap(order[i - 1], order[j]);
  }
  const auto n = static_cast<int64_t>(order.size());
  auto k = static_cast<int64_t>(std::llround(fraction * static_cast<double>(n)));
  if (n >= 2 && fraction > 0 && fraction < 1) k = std::clamp<int64_t>(k, 1, n - 1);
  std::vector<int64_t> support(order.begin(), order.begin() + k);
  std::vector<int64_t> query(order.begin() + k, order.end());
  std::sort(support.begin(), support.end());
  std::sort(query.begin(), query.end());
  return {std::move(support), std::move(query)};
}

int64_t WindowBatch::num_neurons(int64_t b) const {
  return neuron_offset[static_cast<size_t>(b + 1)] - neuron_offset[static_cast<size_t>(b)];
}

std::span<const float> WindowBatch::context_of(int64_t b) const {
  const auto off = static_cast<size_t>(neuron_offset[static_cast<size_t>(b)] * context_length);
  return {context.data() + off, static_cast<size_t>(num_neurons(b) * context_length)};
}

std::span<const float> WindowBatch::target_of(int64_t b) const {
  const auto off = static_cast<size_t>(neuron_offset[static_cast<size_t>(b)] * pred_length);
  return {target.data() + off, static_cast<size_t>(num_neurons(b) * pred_length)};
}

WindowBatch make_batch(const Dataset& dataset, std::span<const WindowRef> windows,
                       const WindowConfig& w) {
  MT_DATA_CHECK(w.pred_length >= 1 && w.seq_length > w.pred_length,
                "batch: seq_length {} must exceed pred_length {} (>= 1): a window is context "
                "followed by targets",
                w.seq_length, w.pred_length);
  WindowBatch b;
  b.context_length = w.context_length();
  b.pred_length = w.pred_length;
  b.neuron_offset.push_back(0);
  int64_t total = 0;
  for (const auto& ref : windows) {
    const Session& s = dataset.at(ref.session);
    MT_DATA_CHECK(ref.start >= 0 && ref.start + w.seq_length <= s.num_frames,
                  "batch: window start {} of {} is out of range: a window of {} frames must start "
                  "in [0, {}]",
                  ref.start, s.describe(), w.seq_length, s.num_frames - w.seq_length);
    total += s.num_neurons;
    b.session.push_back(ref.session);
    b.start.push_back(ref.start);
    b.neuron_offset.push_back(total);
  }
  b.context.resize(static_cast<size_t>(total * b.context_length));
  b.target.resize(static_cast<size_t>(total * b.pred_length));
  float* ctx = b.context.data();
  float* tgt = b.target.data();
  for (const auto& ref : windows) {
    const Session& s = dataset[ref.session];
    for (int64_t n = 0; n < s.num_neurons; ++n) {
      const float* src = s.activity.data() + n * s.num_frames + ref.start;
      ctx = std::copy(src, src + b.context_length, ctx);
      tgt = std::copy(src + b.context_length, src + w.seq_length, tgt);
    }
  }
  return b;
}

PreparedData::PreparedData(Dataset dataset, const PrepConfig& config)
    : config_(config), dataset_(std::move(dataset)) {
  const WindowConfig& w = config_.window;
  MT_DATA_CHECK(w.pred_length >= 1 && w.seq_length > w.pred_length && w.stride >= 1,
                "prepare: seq_length {} must exceed pred_length {} (>= 1), and stride {} must be "
                ">= 1",
                w.seq_length, w.pred_length, w.stride);
  MT_DATA_CHECK(std::isfinite(config_.support_fraction) && config_.support_fraction >= 0 &&
                    config_.support_fraction <= 1,
                "prepare: support_fraction {} must be in [0, 1]", config_.support_fraction);
  MT_DATA_CHECK(!dataset_.empty(), "prepare: the dataset has no sessions");
  validate(dataset_);

  const double fractions[3] = {config_.split.train, config_.split.val, config_.split.test};
  per_session_.resize(static_cast<size_t>(dataset_.size()));
  for (int64_t si = 0; si < dataset_.size(); ++si) {
    Session& s = dataset_[si];
    PerSession& p = per_session_[static_cast<size_t>(si)];
    p.splits = split_frames(s.num_frames, config_.split);
    for (int k = 0; k < 3; ++k) {
      const auto split = static_cast<Split>(k);
      const auto& ranges = p.splits[split];
      p.windows[k] = window_starts(ranges, w.seq_length, w.stride);
      if (fractions[k] == 0 || !p.windows[k].empty()) continue;
      int64_t longest = 0;
      for (const auto& r : ranges) longest = std::max(longest, r.length());
      std::string fix;
      if (s.num_frames < w.seq_length) {
        // No fraction or block length gives a window: only a shorter window would.
        fix = fmt::format("the whole recording ({} frames) is shorter than one window, so no "
                          "split fraction can hold one: leave this session out",
                          s.num_frames);
        if (longest > w.pred_length)
          fix += fmt::format(", or use windows of at most {} frames, this split's length (the "
                             "CLI's model.poco.seq_length, of which model.poco.pred_length, now "
                             "{}, are forecast)",
                             longest, w.pred_length);
      } else {
        if (longest > w.pred_length)
          fix = fmt::format("use seq_length <= {} (the CLI's model.poco.seq_length), ", longest);
        fix += fmt::format("use a larger {} fraction (now {}){}, or leave this session out",
                           split_name(split), fractions[k],
                           config_.split.mode == SplitMode::Blocks ? ", a longer block_length"
                                                                   : "");
      }
      if (s.num_neurons > s.num_frames)  // the likeliest cause: said first
        fix = fmt::format("the session has more neurons, {}, than frames, {}: is its matrix "
                          "transposed? recordings are read as (neurons, frames): see "
                          "data.csv.time_axis / data.hdf5.time_axis; otherwise {}",
                          s.num_neurons, s.num_frames, fix);
      if (config_.split.mode == SplitMode::Chronological) {
        const std::string span =
            ranges.empty() ? fmt::format("{} of {} frames, rounded", fractions[k], s.num_frames)
                           : fmt::format("frames {}..{} of {}", ranges.front().begin,
                                         ranges.front().end, s.num_frames);
        MT_DATA_FAIL(
            "prepare: {}: the {} split is {} frames long ({}), shorter than one window "
            "of seq_length {}; {}",
            s.describe(), split_name(split), longest, span, w.seq_length, fix);
      }
      MT_DATA_FAIL(
          "prepare: {}: the {} split's longest stretch is {} frames ({} frames in {} "
          "block(s) of up to {}), shorter than one window of seq_length {}; {}",
          s.describe(), split_name(split), longest, SessionSplits::frames(ranges), ranges.size(),
          config_.split.block_length, w.seq_length, fix);
    }
    if (config_.zscore) {
      p.stats = compute_stats(s, p.splits.train);
      // One note per session, naming up to 8 neurons.
      const auto& constant = p.stats.constant_neurons;
      if (constant.size() == 1) {
        notes_.push_back(fmt::format(
            "{}: neuron {} is constant over the train split (value {}); its std is set to 1",
            s.describe(), constant[0], p.stats.mean[static_cast<size_t>(constant[0])]));
      } else if (!constant.empty()) {
        const size_t shown = std::min<size_t>(constant.size(), 8);
        notes_.push_back(fmt::format(
            "{}: {} of its {} neurons are constant over the train split (neurons {}{}); their "
            "std is set to 1{}",
            s.describe(), constant.size(), s.num_neurons,
            fmt::join(constant.begin(), constant.begin() + std::ptrdiff_t(shown), ", "),
            constant.size() > shown ? ", ..." : "",
            int64_t(constant.size()) == s.num_neurons
                ? "; the whole session is flat: check the recording (or leave it out)"
                : ""));
      }
      apply_zscore(s, p.stats);
    }
    if (config_.support_split == SupportSplit::Chronological) {
      const auto [sup, qry] = support_query_frames(p.splits.train, config_.support_fraction);
      p.support = window_starts(sup, w.seq_length, w.stride);
      p.query = window_starts(qry, w.seq_length, w.stride);
    } else {
      auto [sup, qry] = support_query_split(p.windows[0], config_.support_fraction,
                                            mix_seed(config_.seed, static_cast<uint64_t>(si)));
      p.support = std::move(sup);
      p.query = std::move(qry);
    }
  }
}

const PreparedData::PerSession& PreparedData::per(int64_t s) const {
  MT_DATA_CHECK(s >= 0 && s < num_sessions(),
                "prepared data: session index {} is out of range: "
                "there are {} session(s)",
                s, num_sessions());
  return per_session_[static_cast<size_t>(s)];
}

const NormStats& PreparedData::stats(int64_t s) const {
  return per(s).stats;
}
const SessionSplits& PreparedData::splits(int64_t s) const {
  return per(s).splits;
}
const std::vector<int64_t>& PreparedData::windows(int64_t s, Split split) const {
  return per(s).windows[static_cast<int>(split)];
}
const std::vector<int64_t>& PreparedData::support(int64_t s) const {
  return per(s).support;
}
const std::vector<int64_t>& PreparedData::query(int64_t s) const {
  return per(s).query;
}

std::vector<WindowRef> PreparedData::all_windows(Split split) const {
  std::vector<WindowRef> out;
  for (int64_t s = 0; s < num_sessions(); ++s)
    for (int64_t start : windows(s, split)) out.push_back({s, start});
  return out;
}

WindowBatch PreparedData::batch(std::span<const WindowRef> windows) const {
  return make_batch(dataset_, windows, config_.window);
}

}  // namespace mt::data
