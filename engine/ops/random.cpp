// Seeded random tensors and dropout. Element i of a draw uses Philox block (offset + i) of the
// generator (engine/core/generator.h), so a CUDA kernel can produce the same numbers in parallel.
#include <cmath>
#include <numbers>

#include "engine/core/generator.h"
#include "engine/ops/elementwise.h"

namespace mt {


enum class Distribution { normal, uniform, bernoulli };
// out contiguous; (a, b) = (mean, std), (lo, hi) or (keep_prob, value when kept).
using RandomKernel = void(Tensor& out, Distribution dist, double a, double b, uint64_t seed,
                          uint64_t first_block);
DispatchStub<RandomKernel> random_kernel("random");

namespace {

void random_cpu(Tensor& out, Distribution dist, double a, double b, uint64_t seed,
                uint64_t first_block) {
  dispatch_float(out.dtype(), "random", [&]<class T>() {
    T* o = out.data_ptr<T>();
    const bool wide = std::is_same_v<T, double>;
    for (int64_t i = 0, n = out.numel(); i < n; ++i) {
      auto r = Generator::philox(seed, first_block + uint64_t(i));
      double u1 = wide ? Generator::to_unit53(r[0], r[1]) : Generator::to_unit(r[0]);
      switch (dist) {
        case Distribution::normal: {
          double u2 = wide ? Generator::to_unit53(r[2], r[3]) : Generator::to_unit(r[1]);
          // Box-Muller; u1 is never 0.
          o[i] = T(a + b * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
          break;
        }
        case Distribution::uniform: o[i] = T(a + (b - a) * u1); break;
        case Distribution::bernoulli: o[i] = u1 < a ? T(b) : T(0); break;
      }
    }
  });
}
[[maybe_unused]] const bool registered = (random_kernel.set(DeviceType::CPU, &random_cpu), true);

Tensor draw(const Shape& shape, DType dtype, Distribution dist, double a, double b,
            Generator& gen) {
  Tensor out = empty(shape, dtype);
  random_kernel(out.device(), out, dist, a, b, gen.seed(), gen.advance(uint64_t(out.numel())));
  return out;
}

}  // namespace

Tensor normal(const Shape& shape, double mean, double std, Generator& gen, DType dtype) {
  MT_CHECK(std >= 0, "normal: std must be non-negative, got {}", std);
  return draw(shape, dtype, Distribution::normal, mean, std, gen);
}

Tensor uniform(const Shape& shape, double lo, double hi, Generator& gen, DType dtype) {
  MT_CHECK(lo <= hi, "uniform: lo {} exceeds hi {}", lo, hi);
  return draw(shape, dtype, Distribution::uniform, lo, hi, gen);
}

Tensor bernoulli_mask(const Shape& shape, double keep_prob, Generator& gen, DType dtype) {
  MT_CHECK(keep_prob >= 0 && keep_prob <= 1, "bernoulli_mask: probability {} is not in [0, 1]",
           keep_prob);
  return draw(shape, dtype, Distribution::bernoulli, keep_prob, 1.0, gen);
}

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen) {
  MT_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got {}", p);
  if (!training || p == 0) return x;
  // Kept elements are scaled by 1/(1-p) so the expectation is unchanged; the mask is a constant,
  // so the gradient is the same mask times the incoming gradient.
  Tensor scaled_mask = empty(x.shape(), x.dtype(), x.device());
  random_kernel(x.device(), scaled_mask, Distribution::bernoulli, 1.0 - p, 1.0 / (1.0 - p),
                gen.seed(), gen.advance(uint64_t(x.numel())));
  return mul(x, scaled_mask);
}

}  // namespace mt
