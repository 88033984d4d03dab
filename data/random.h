// Scalar random draws on top of the engine's Philox generator (mt::Generator), for the data
// library's host-side sampling (simulation, shuffles). All randomness in data/ goes through it,
// so a seed fixes every number on every machine.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "engine/core/generator.h"

namespace mt::data {

// splitmix64: derives independent stream seeds from (seed, stream id).
inline uint64_t mix_seed(uint64_t seed, uint64_t stream) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}

  uint32_t next_u32() {
    if (pos_ == 4) {
      block_ = Generator::philox(gen_.seed(), gen_.advance(1));
      pos_ = 0;
    }
    return block_[pos_++];
  }
  // Uniform in (0, 1), 24 random bits.
  double uniform() { return Generator::to_unit(next_u32()); }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [lo, hi] (inclusive).
  int64_t uniform_int(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    const uint64_t r = (static_cast<uint64_t>(next_u32()) << 32) | next_u32();
    return lo + static_cast<int64_t>(r % span);
  }
  // Standard normal (Box-Muller; the second value of each pair is kept for the next call).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = uniform(), u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double a = 2.0 * std::numbers::pi * u2;
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
  }

 private:
  Generator gen_;
  std::array<uint32_t, 4> block_{};
  int pos_ = 4;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace mt::data
