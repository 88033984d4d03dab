// Synthetic multi-session population activity with known dynamics (POCO's simulator family):
// one shared random recurrent network, observed through a different random subset of its units
// in every session, with a per-session perturbation of the connectivity.
//
//   h <- h + dt/tau (-h + J tanh(h)) + noise_std xi,    xi ~ N(0, I), once per step
//   J  = g / sqrt(n_total) (sqrt(1 - c^2) Template + c R_session)
//
// Template (shared by all sessions) and R_session (one per session) have N(0, 1) entries, so J's
// entries have variance g^2 / n_total whatever c; g > 1 makes the network chaotic. Each session
// starts from its own random state, runs burn_in_frames frames that are discarded, then records
// num_frames frames. Session s observes units U_s (a random subset of min_neurons..max_neurons
// units, in increasing unit order) as
//
//   activity[n, t] = gain_n(t) h[U_s[n]](t) + offset_n(t) + obs_noise_std eta
//   gain_n(t) = 1 + drift sin(2 pi t / P_n + phi_n),  offset_n(t) = drift sin(2 pi t / Q_n + psi_n)
//
// with periods P_n, Q_n drawn in [1, 3] x num_frames (slow, under one cycle per session) and
// random phases; drift = 0 gives gain 1 and offset 0. Timestamps: frame x dt x steps_per_frame.
//
// All randomness comes from mt::Generator (Philox) streams derived from `seed`: the template
// from one stream, each session from its own, so a session's data does not depend on how many
// sessions follow it. The random draws are the same everywhere; the simulated values are the
// same for a given build whatever the thread count (float sums may round differently on
// another compiler or SIMD target).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/session.h"

namespace mt::data {

struct SynthConfig {
  uint64_t seed = 0;
  int64_t num_sessions = 4;
  int64_t n_total = 512;           // units in the shared network
  int64_t min_neurons = 128;       // observed units per session, drawn uniformly in
  int64_t max_neurons = 256;       //   [min_neurons, max_neurons] (inclusive)
  int64_t num_frames = 2000;       // recorded frames per session
  int64_t burn_in_frames = 200;    // simulated then discarded, so the state forgets its start
  int64_t steps_per_frame = 1;     // Euler steps per recorded frame
  double g = 1.5;                  // coupling gain; > 1 is chaotic
  double tau = 1.0;                // time constant
  double dt = 0.1;                 // Euler step (same unit as tau; timestamps count it as seconds)
  double noise_std = 0.05;         // sigma: std of the noise added to h at every step
  double min_perturbation = 0.05;  // c, per session, drawn uniformly in
  double max_perturbation = 0.25;  //   [min_perturbation, max_perturbation], each in [0, 1]
  double drift = 0.0;              // magnitude of the slow gain/offset drift; 0 = none
  double obs_noise_std = 0.0;      // std of independent noise added to each observed value
  std::string name_prefix = "synth";  // sessions are named synth_000, synth_001, ...
};

// What the generator drew for each session, for tests and analyses that need the ground truth.
struct SynthTruth {
  std::vector<std::vector<int64_t>> units;  // per session: observed unit of each neuron
  std::vector<double> perturbation;         // per session: c
};

// Refuses a config synthesize() cannot run, naming the field and the allowed range.
void check_config(const SynthConfig& config);

// Validates the config (errors name the field and the allowed range) and simulates. Sessions run
// in parallel (OpenMP); the result does not depend on the thread count.
Dataset synthesize(const SynthConfig& config, SynthTruth* truth = nullptr);

// Writes every session to folder/<name>.npz in POCO's format (save_npz), creating the folder.
void write_dataset_npz(const Dataset& dataset, const std::string& folder);

}  // namespace mt::data
