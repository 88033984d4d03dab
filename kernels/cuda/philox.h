// Philox4x32-10 and the mapping from output elements to counter blocks, shared by the random
// kernel (random.cu) and the host-side test that replays it against engine/core/generator.h
// (tests/test_cuda_launch.cpp): the CPU and CUDA backends must draw the same numbers for the same
// seed and offset, so this is the generator's arithmetic, word for word.
#pragma once

#include <cstdint>

#include "kernels/cuda/indexing.h"  // MT_HOST_DEVICE

namespace mt::gpu {

struct Philox4 {
  uint32_t w[4];
};

// Generator::philox(seed, counter): key = seed, counter = (counter lo, counter hi, 0, 0).
MT_HOST_DEVICE Philox4 philox4x32_10(uint64_t seed, uint64_t counter) {
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
  return {{c0, c1, c2, c3}};
}

// Generator::to_unit and Generator::to_unit53: uniforms in (0, 1), never 0.
MT_HOST_DEVICE double philox_unit(uint32_t bits) {
  return (double(bits >> 8) + 0.5) * (1.0 / 16777216.0);
}
MT_HOST_DEVICE double philox_unit53(uint32_t hi, uint32_t lo) {
  const uint64_t b = (uint64_t(hi) << 21) ^ (uint64_t(lo) >> 11);
  return (double(b & ((uint64_t(1) << 53) - 1)) + 0.5) * (1.0 / 9007199254740992.0);
}

// Values per counter block: 2 for f64 (a word pair per 53-bit uniform), else 4.
MT_HOST_DEVICE int64_t philox_lanes(bool f64) { return f64 ? 2 : 4; }

// The uniforms of counter block `block` (first `lanes` entries used).
MT_HOST_DEVICE void philox_uniforms(uint64_t seed, uint64_t block, bool f64, double (&u)[4]) {
  const Philox4 r = philox4x32_10(seed, block);
  if (f64) {
    u[0] = philox_unit53(r.w[0], r.w[1]);
    u[1] = philox_unit53(r.w[2], r.w[3]);
    u[2] = u[3] = 0;
  } else {
    for (int k = 0; k < 4; ++k) u[k] = philox_unit(r.w[k]);
  }
}

}  // namespace mt::gpu
