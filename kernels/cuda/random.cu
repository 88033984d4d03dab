// Seeded random tensors on the device (the CUDA side of engine/ops/random.cpp): one thread per
// Philox counter block, block i filling elements [i*lanes, i*lanes + lanes) exactly as the CPU
// kernel does (philox.h), so both backends give the same numbers for the same generator state.
// The transforms run in double like the CPU's (Box-Muller's log, cos and sin included) and round
// once to the storage type.
#include <math_constants.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/philox.h"

namespace mt::gpu {
namespace {

template <class T>
__device__ __forceinline__ T from_double(double v) {
  if constexpr (is_16bit<T>) {
    return from_float<T>(float(v));  // through f32, as the CPU's 16-bit conversions
  } else {
    return T(v);
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    random_kernel(RandomDist dist, int64_t n, double a, double b, uint64_t seed,
                  uint64_t first_block, T* out) {
  constexpr bool wide = std::is_same_v<T, double>;
  const int64_t lanes = philox_lanes(wide);
  const int64_t blocks = (n + lanes - 1) / lanes;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < blocks;
       i += int64_t(gridDim.x) * blockDim.x) {
    double u[4], z[4] = {};
    philox_uniforms(seed, first_block + uint64_t(i), wide, u);
    if (dist == RandomDist::normal) {
      for (int64_t k = 0; k < lanes; k += 2) {
        const double radius = sqrt(-2.0 * ::log(u[k]));
        const double angle = 2.0 * CUDART_PI * u[k + 1];
        z[k] = radius * ::cos(angle);
        z[k + 1] = radius * ::sin(angle);
      }
    }
    for (int64_t k = 0; k < lanes && i * lanes + k < n; ++k) {
      T& v = out[i * lanes + k];
      switch (dist) {
        // Explicit fused multiply-adds, as the CPU kernel (no compiler-dependent contraction).
        case RandomDist::normal: v = from_double<T>(fma(b, z[k], a)); break;
        case RandomDist::uniform: v = from_double<T>(fma(b - a, u[k], a)); break;
        case RandomDist::bernoulli: v = u[k] < a ? from_double<T>(b) : from_double<T>(0.0); break;
      }
    }
  }
}

}  // namespace

void random(ScalarType t, RandomDist dist, int64_t n, double a, double b, uint64_t seed,
            uint64_t first_block, void* out, cudaStream_t stream, int sm_count) {
  if (n == 0) return;
  const int64_t lanes = philox_lanes(t == ScalarType::f64);
  const unsigned grid = grid_for((n + lanes - 1) / lanes, sm_count);
  auto go = [&]<class T>() {
    random_kernel<T><<<grid, kBlock, 0, stream>>>(dist, n, a, b, seed, first_block,
                                                  static_cast<T*>(out));
    MT_CUDA_CHECK(cudaGetLastError());
  };
  switch (t) {
    case ScalarType::f32: go.template operator()<float>(); break;
    case ScalarType::f64: go.template operator()<double>(); break;
    case ScalarType::f16: go.template operator()<__half>(); break;
    case ScalarType::bf16: go.template operator()<__nv_bfloat16>(); break;
    case ScalarType::i64: break;  // refused by the launcher in ops.cpp
  }
}

}  // namespace mt::gpu
