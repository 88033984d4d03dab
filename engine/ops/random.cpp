// Seeded random tensors and dropout. Element i of a draw comes from Philox block
// (offset + i / lanes), lane i % lanes (engine/core/generator.h), so any backend and any thread
// split produce the same numbers.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "engine/core/generator.h"
#include "engine/cpu/loops.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/kernels.h"

namespace mt {

DispatchStub<RandomKernel> random_kernel("random");

namespace {

// Values per Philox block (4 x 32 random bits): f32 uses one word per uniform and a word pair
// per two normals (Box-Muller gives both the cos and the sin branch); f64 uses two words per
// uniform.
int64_t values_per_block(DType dtype) { return dtype == DType::f64 ? 2 : 4; }

template <class T, Distribution dist>
void random_fill(T* o, int64_t n, double a, double b, uint64_t seed, uint64_t first_block) {
  constexpr bool wide = std::is_same_v<T, double>;
  constexpr int64_t lanes = wide ? 2 : 4;
  const int64_t blocks = (n + lanes - 1) / lanes;
  // Block i fills elements [i*lanes, i*lanes + lanes): independent of the thread split.
  if constexpr (!wide && dist == Distribution::bernoulli) {
    // u = (j + 0.5) 2^-24 with j = bits >> 8, so u < a exactly when j < ceil(a 2^24 - 0.5)
    // (both sides exact in double): one integer compare per value, the same masks.
    const double threshold = std::ceil(a * 16777216.0 - 0.5);
    const uint32_t keep_below = uint32_t(std::clamp(threshold, 0.0, 16777216.0));
    const T kept = T(b);
    cpu::parallel_range(blocks, lanes * 8, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const auto r = Generator::philox(seed, first_block + uint64_t(i));
        for (int64_t k = 0; k < lanes && i * lanes + k < n; ++k)
          o[i * lanes + k] = (r[size_t(k)] >> 8) < keep_below ? kept : T(0);
      }
    });
    return;
  }
  auto fill_block = [&](int64_t i, const std::array<uint32_t, 4>& r) {
    double u[4] = {}, z[4] = {};
    if constexpr (wide) {
      u[0] = Generator::to_unit53(r[0], r[1]);
      u[1] = Generator::to_unit53(r[2], r[3]);
    } else {
      for (int k = 0; k < 4; ++k) u[k] = Generator::to_unit(r[size_t(k)]);
    }
    if constexpr (dist == Distribution::normal) {
      for (int64_t k = 0; k < lanes; k += 2) {
        // Box-Muller on (u[k], u[k+1]); u is never 0, so the log is finite.
        const double radius = std::sqrt(-2.0 * std::log(u[k]));
        const double angle = 2.0 * std::numbers::pi * u[k + 1];
        z[k] = radius * std::cos(angle);
        z[k + 1] = radius * std::sin(angle);
      }
    }
    for (int64_t k = 0; k < lanes && i * lanes + k < n; ++k) {
      T& v = o[i * lanes + k];
      // Explicit fused multiply-adds: the same rounding whatever the compiler contracts (the
      // CUDA kernel uses the same two, random.cu).
      if constexpr (dist == Distribution::normal) v = T(std::fma(b, z[k], a));
      if constexpr (dist == Distribution::uniform) v = T(std::fma(b - a, u[k], a));
      if constexpr (dist == Distribution::bernoulli) v = T(b * double(u[k] < a));  // no branch
    }
  };
  cpu::parallel_range(blocks, lanes * 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      fill_block(i, Generator::philox(seed, first_block + uint64_t(i)));
  });
}

void random_cpu(Tensor& out, Distribution dist, double a, double b, uint64_t seed,
                uint64_t first_block) {
  dispatch_float(out.dtype(), "random", [&]<class T>() {
    T* o = out.data_ptr<T>();
    const int64_t n = out.numel();
    switch (dist) {
      case Distribution::normal:
        random_fill<T, Distribution::normal>(o, n, a, b, seed, first_block);
        break;
      case Distribution::uniform:
        random_fill<T, Distribution::uniform>(o, n, a, b, seed, first_block);
        break;
      case Distribution::bernoulli:
        random_fill<T, Distribution::bernoulli>(o, n, a, b, seed, first_block);
        break;
    }
  });
}
[[maybe_unused]] const bool registered = (random_kernel.set(DeviceType::CPU, &random_cpu), true);

Tensor draw(const Shape& shape, DType dtype, Distribution dist, double a, double b,
            Generator& gen, Device device) {
  Tensor out = empty(shape, dtype, device);
  const int64_t blocks = (out.numel() + values_per_block(dtype) - 1) / values_per_block(dtype);
  // The generator moves only once the draw is launched: a refused draw (inside a CUDA-graph
  // capture) leaves it where it was, so the eager run after an abandoned capture draws what it
  // would have drawn without the attempt.
  random_kernel(out.device(), out, dist, a, b, gen.seed(), gen.offset());
  gen.advance(uint64_t(blocks));
  return out;
}

}  // namespace

Tensor normal(const Shape& shape, double mean, double std, Generator& gen, DType dtype,
              Device device) {
  MT_CHECK(std >= 0, "normal: std must be non-negative, got {}", std);
  return draw(shape, dtype, Distribution::normal, mean, std, gen, device);
}

Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen, DType dtype,
               Device device) {
  MT_CHECK(lo <= hi, "uniform: lo {} exceeds hi {}", lo, hi);
  return draw(shape, dtype, Distribution::uniform, lo, hi, gen, device);
}

Tensor bernoulli_mask(const Shape& shape, double keep_prob, Generator& gen, DType dtype,
                      Device device) {
  MT_CHECK(keep_prob >= 0 && keep_prob <= 1, "bernoulli_mask: probability {} is not in [0, 1]",
           keep_prob);
  return draw(shape, dtype, Distribution::bernoulli, keep_prob, 1.0, gen, device);
}

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  MT_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got {}", p);
  if (!training || p == 0) return x;
  // Kept elements are scaled by 1/(1-p) so the expectation is unchanged; the mask is a constant,
  // so the gradient is the same mask times the incoming gradient.
  Tensor scaled_mask = empty(x.shape(), x.dtype(), x.device());
  const int64_t per = values_per_block(x.dtype());
  random_kernel(x.device(), scaled_mask, Distribution::bernoulli, 1.0 - p, 1.0 / (1.0 - p),
                gen.seed(), gen.offset());
  gen.advance(uint64_t((x.numel() + per - 1) / per));  // once drawn, as in draw()
  return mul(x, scaled_mask);
}

}  // namespace mt
