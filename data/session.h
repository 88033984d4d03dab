// Sessions: one recording (or one simulated recording) of a population of neurons. Every loader
// returns them in one layout, neuron-major (N, T) float activity plus T timestamps in seconds,
// whatever layout the file stored them in. A Dataset is an ordered list of sessions; sessions
// differ in neuron count and length, and neurons are never matched across sessions.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/core/error.h"  // mt::Error, thrown by every function of the data library

namespace mt::data {

struct Session {
  std::string name;  // unique within a dataset: the file stem for loaded sessions
  int64_t num_neurons = 0;
  int64_t num_frames = 0;
  std::vector<float> activity;     // (N, T) row-major: neuron-major, activity[n * T + t]
  std::vector<double> timestamps;  // (T) seconds, strictly increasing
  std::string source;              // the file it came from ("synthetic ..." for generated ones)

  float at(int64_t neuron, int64_t frame) const {
    return activity[static_cast<size_t>(neuron * num_frames + frame)];
  }
  // One neuron's trace, T values.
  std::span<const float> trace(int64_t neuron) const {
    return {activity.data() + neuron * num_frames, static_cast<size_t>(num_frames)};
  }
  std::span<float> trace(int64_t neuron) {
    return {activity.data() + neuron * num_frames, static_cast<size_t>(num_frames)};
  }
  // Median spacing of the timestamps (seconds per frame); 0 for fewer than two frames.
  double frame_interval() const;
  // "name (source)" for messages.
  std::string describe() const;
};

struct Dataset {
  std::vector<Session> sessions;

  int64_t size() const { return static_cast<int64_t>(sessions.size()); }
  bool empty() const { return sessions.empty(); }
  const Session& operator[](int64_t i) const { return sessions[static_cast<size_t>(i)]; }
  Session& operator[](int64_t i) { return sessions[static_cast<size_t>(i)]; }
  // Throws mt::Error naming the index and the number of sessions when out of range.
  const Session& at(int64_t i) const;
  // Index of the session called `name`, or -1.
  int64_t find(const std::string& name) const;
  std::vector<std::string> names() const;
  int64_t total_neurons() const;  // sum of N over sessions
  int64_t max_neurons() const;
  int64_t total_frames() const;  // sum of T over sessions
};

// Throws mt::Error when the session is unusable: no neurons or no frames, activity or timestamp
// array of the wrong length, a NaN or infinite value (naming the session, file, neuron and frame
// of the first one and how many there are), non-finite or non-increasing timestamps (naming the
// frame). Every loader calls it on what it returns.
void validate(const Session& session);
// validate() on every session, plus unique session names.
void validate(const Dataset& dataset);

}  // namespace mt::data
