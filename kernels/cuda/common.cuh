// Device helpers shared by the .cu files: the storage type of each ScalarType, conversion to and
// from the accumulation type (f32 for f32/f16/bf16, f64 for f64), strided offsets and launch
// sizing. Device code only; no engine headers (see launch.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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

}  // namespace mt::gpu
