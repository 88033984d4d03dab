// Device helpers shared by the .cu files: the storage type of each ScalarType, conversion to and
// from the accumulation type (f32 for f32/f16/bf16, f64 for f64), strided offsets and launch
// sizing. Device code only; no engine headers (see launch.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/indexing.h"
#include "kernels/cuda/launch.h"

namespace mt::gpu {

template <class T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <class T>
using acc_t = typename AccOf<T>::type;

template <class T>
inline constexpr bool is_16bit = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// Storage -> f32/f64, and back (round to nearest even, as Eigen's half/bfloat16 on the CPU).
template <class T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(v);
  } else {
    return static_cast<float>(v);
  }
}
template <class T>
__device__ __forceinline__ acc_t<T> load_acc(T v) {
  if constexpr (is_16bit<T>) {
    return to_float(v);
  } else {
    return v;
  }
}
template <class T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return static_cast<T>(v);
  }
}
template <class T, class A>
__device__ __forceinline__ T store_acc(A v) {
  if constexpr (is_16bit<T>) {
    return from_float<T>(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

inline constexpr int kBlock = 256;

// Grid for a grid-stride loop over `work` items of kBlock threads: enough blocks to fill the
// device several times over, never more than the work needs.
inline unsigned grid_for(int64_t work, int sm_count) {
  const int64_t needed = (work + kBlock - 1) / kBlock;
  const int64_t cap = int64_t(sm_count > 0 ? sm_count : 132) * 8;
  const int64_t g = needed < cap ? needed : cap;
  return unsigned(g > 0 ? g : 1);
}

// Grid for streaming kernels (elementwise, copies): one block per kBlock items, up to CUDA's
// limit, so that each thread handles its items once and exits. On an H100 this moved 3-5% more
// bytes per second than a grid capped at a few blocks per SM looping over the work. The kernels
// keep their grid-stride loops, so any grid is correct.
inline unsigned grid_cover(int64_t work) {
  const int64_t needed = (work + kBlock - 1) / kBlock;
  constexpr int64_t kMaxBlocks = 0x7fffffff;
  return unsigned(needed < 1 ? 1 : (needed < kMaxBlocks ? needed : kMaxBlocks));
}

// Calls fn.template operator()<T>() with the storage type of t.
template <class Fn>
void dispatch_storage(ScalarType t, Fn&& fn) {
  switch (t) {
    case ScalarType::f32: fn.template operator()<float>(); break;
    case ScalarType::f64: fn.template operator()<double>(); break;
    case ScalarType::f16: fn.template operator()<__half>(); break;
    case ScalarType::bf16: fn.template operator()<__nv_bfloat16>(); break;
    case ScalarType::i64: fn.template operator()<int64_t>(); break;
  }
}


// The same for the float types only (i64 is refused by the launchers in ops.cpp, never here).
template <class Fn>
void dispatch_float_storage(ScalarType t, Fn&& fn) {
  switch (t) {
    case ScalarType::f32: fn.template operator()<float>(); break;
    case ScalarType::f64: fn.template operator()<double>(); break;
    case ScalarType::f16: fn.template operator()<__half>(); break;
    case ScalarType::bf16: fn.template operator()<__nv_bfloat16>(); break;
    case ScalarType::i64: break;  // refused by the launcher in ops.cpp
  }
}

inline constexpr int kWarpSize = 32;

// Sum and max over the 32 lanes of a warp, the result in every lane (butterfly shuffles: the
// order of the additions is fixed, so results are reproducible).
template <class A>
__device__ __forceinline__ A warp_allsum(A v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
template <class A>
__device__ __forceinline__ A warp_allmax(A v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const A o = __shfl_xor_sync(0xffffffffu, v, offset);
    v = o > v ? o : v;
  }
  return v;
}
// The same over a 1-D block of blockDim.x (a multiple of 32, at most 1024) threads; `shared`
// holds 32 accumulators. Every thread gets the result.
template <class A, bool kMax>
__device__ __forceinline__ A block_allreduce(A v, A* shared) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = int(blockDim.x) / kWarpSize;
  v = kMax ? warp_allmax(v) : warp_allsum(v);
  __syncthreads();  // shared may still be read by the previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A r = lane < warps ? shared[lane] : (kMax ? A(-INFINITY) : A(0));
  return kMax ? warp_allmax(r) : warp_allsum(r);
}

}  // namespace mt::gpu
