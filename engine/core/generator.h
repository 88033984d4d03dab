// Seeded random numbers. Philox4x32-10 is counter-based: element i of a draw depends only on the
// seed and (offset + i), so the CPU and CUDA backends produce the same numbers, draws can run in
// parallel, and a generator's state is two integers (cheap to checkpoint and restore).
#pragma once

#include <array>
#include <cstdint>

namespace mt {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}

  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }
  // Reserves n counter blocks and returns the first; block b gives philox(seed, b).
  uint64_t advance(uint64_t n) {
    uint64_t first = offset_;
    offset_ += n;
    return first;
  }

  static std::array<uint32_t, 4> philox(uint64_t seed, uint64_t counter) {
    uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
    uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
      const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
      const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
      const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
      c0 = n0;
      c1 = uint32_t(p1);
      c2 = n2;
      c3 = uint32_t(p0);
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    return {c0, c1, c2, c3};
  }
  // Uniform in (0, 1): 24 random bits for f32-exact values, never 0 (safe for log).
  static double to_unit(uint32_t bits) { return (double(bits >> 8) + 0.5) * (1.0 / 16777216.0); }
  // Uniform in (0, 1) with 53 random bits, for f64 draws.
  static double to_unit53(uint32_t hi, uint32_t lo) {
    uint64_t b = (uint64_t(hi) << 21) ^ (uint64_t(lo) >> 11);
    return (double(b & ((uint64_t(1) << 53) - 1)) + 0.5) * (1.0 / 9007199254740992.0);
  }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

}  // namespace mt
