#include "data/session.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "data/check.h"

namespace mt::data {

double Session::frame_interval() const {
  if (timestamps.size() < 2) return 0.0;
  std::vector<double> d(timestamps.size() - 1);
  for (size_t i = 0; i + 1 < timestamps.size(); ++i) d[i] = timestamps[i + 1] - timestamps[i];
  auto mid = d.begin() + static_cast<std::ptrdiff_t>(d.size() / 2);
  std::nth_element(d.begin(), mid, d.end());
  return *mid;
}

std::string Session::describe() const {
  if (source.empty()) return fmt::format("session '{}'", name);
  return fmt::format("session '{}' ({})", name, source);
}

const Session& Dataset::at(int64_t i) const {
  MT_DATA_CHECK(i >= 0 && i < size(),
                "dataset: session index {} is out of range: the dataset has "
                "{} session(s)",
                i, size());
  return sessions[static_cast<size_t>(i)];
}

int64_t Dataset::find(const std::string& name) const {
  for (size_t i = 0; i < sessions.size(); ++i)
    if (sessions[i].name == name) return static_cast<int64_t>(i);
  return -1;
}

std::vector<std::string> Dataset::names() const {
  std::vector<std::string> out;
  out.reserve(sessions.size());
  for (const auto& s : sessions) out.push_back(s.name);
  return out;
}

int64_t Dataset::total_neurons() const {
  int64_t n = 0;
  for (const auto& s : sessions) n += s.num_neurons;
  return n;
}

int64_t Dataset::max_neurons() const {
  int64_t n = 0;
  for (const auto& s : sessions) n = std::max(n, s.num_neurons);
  return n;
}

int64_t Dataset::total_frames() const {
  int64_t n = 0;
  for (const auto& s : sessions) n += s.num_frames;
  return n;
}

void validate(const Session& s) {
  const std::string who = s.describe();
  MT_DATA_CHECK(s.num_neurons > 0 && s.num_frames > 0,
                "{} is empty: {} neuron(s) x {} frame(s); a session needs at least one neuron and "
                "one frame: check that the file holds the activity matrix you meant to load",
                who, s.num_neurons, s.num_frames);
  MT_DATA_CHECK(static_cast<int64_t>(s.activity.size()) == s.num_neurons * s.num_frames,
                "{}: activity holds {} values but num_neurons x num_frames = {} x {} = {}; fill "
                "activity neuron-major (activity[n * T + t])",
                who, s.activity.size(), s.num_neurons, s.num_frames, s.num_neurons * s.num_frames);
  MT_DATA_CHECK(static_cast<int64_t>(s.timestamps.size()) == s.num_frames,
                "{}: {} timestamps for {} frames; give one timestamp (seconds) per frame", who,
                s.timestamps.size(), s.num_frames);
  for (int64_t t = 0; t < s.num_frames; ++t) {
    const double ts = s.timestamps[static_cast<size_t>(t)];
    MT_DATA_CHECK(std::isfinite(ts), "{}: timestamp of frame {} is {}; timestamps must be finite",
                  who, t, ts);
    if (t > 0) {
      const double prev = s.timestamps[static_cast<size_t>(t - 1)];
      MT_DATA_CHECK(ts > prev,
                    "{}: timestamps are not increasing at frame {} ({} s after {} s at frame {}); "
                    "frames must be in time order with distinct times: sort the frames or fix the "
                    "timestamps (the npz's t, the HDF5 timestamps data set, data.csv.time_column)",
                    who, t, ts, prev, t - 1);
    }
  }
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < s.activity.size(); ++i) {
    if (!std::isfinite(s.activity[i])) [[unlikely]] {
      if (first < 0) first = static_cast<int64_t>(i);
      ++bad;
    }
  }
  if (bad > 0) {
    const int64_t n = first / s.num_frames, t = first % s.num_frames;
    MT_DATA_FAIL(
        "{}: neuron {}, frame {} is {} ({} non-finite value(s) in the {} x {} activity, "
        "indices from 0); "
        "metatape does not train on missing values: interpolate the gaps or drop the "
        "neuron before loading",
        who, n, t, s.activity[static_cast<size_t>(first)], bad, s.num_neurons, s.num_frames);
  }
}

void validate(const Dataset& dataset) {
  std::map<std::string, const Session*> seen;
  for (const auto& s : dataset.sessions) {
    validate(s);
    const auto [it, fresh] = seen.emplace(s.name, &s);
    MT_DATA_CHECK(fresh,
                  "dataset: two sessions are named '{}' ({} and {}); session names must be "
                  "unique: rename one of the files",
                  s.name, it->second->describe(), s.describe());
  }
}

}  // namespace mt::data
