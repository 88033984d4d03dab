// Fill and copy kernels: Tensor::fill_, and the copy stub behind contiguous(), clone(), dtype
// conversion, narrow_scatter, cat and copy_ (strided source broadcast into a strided
// destination, any pair of dtypes).
#include "kernels/cuda/elementwise.cuh"

namespace mt::gpu {
namespace {

// Floating point -> i64 as the CPU converts it (engine/core/dtype.h to_i64): toward zero,
// NaN -> 0, and saturated beyond the range; spelled out rather than left to the cast, whose C++
// meaning is undefined there.
template <class Tf>
__device__ __forceinline__ int64_t float_to_i64(Tf v) {
  constexpr Tf kLimit = Tf(9223372036854775808.0);  // 2^63
  if (isnan(v)) return 0;
  if (v >= kLimit) return INT64_MAX;
  if (v < -kLimit) return INT64_MIN;
  return static_cast<int64_t>(v);
}

// Conversions as the CPU does them: 16-bit types go through f32 (round to nearest even), the
// others are plain casts (floating point -> i64 by float_to_i64).
template <class Td, class Ts>
__device__ __forceinline__ Td convert(Ts v) {
  if constexpr (std::is_same_v<Td, Ts>) {
    return v;
  } else if constexpr (is_16bit<Ts>) {
    const float f = to_float(v);
    if constexpr (is_16bit<Td>) {
      return from_float<Td>(f);
    } else if constexpr (std::is_same_v<Td, int64_t>) {
      return float_to_i64(f);
    } else {
      return static_cast<Td>(f);
    }
  } else if constexpr (is_16bit<Td>) {
    return from_float<Td>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<Td, int64_t> && std::is_floating_point_v<Ts>) {
    return float_to_i64(v);
  } else {
    return static_cast<Td>(v);
  }
}

template <class T>
__device__ __forceinline__ T from_double(double v) {
  if constexpr (is_16bit<T>) {
    return from_float<T>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, int64_t>) {
    return float_to_i64(v);  // fill_ of an i64 tensor: the CPU's to_i64
  } else {
    return static_cast<T>(v);
  }
}

template <class T, int VEC>
__global__ void __launch_bounds__(kBlock) fill_flat(int64_t n, T* out, double value) {
  const T v = from_double<T>(value);
  Vec<T, VEC> o;
#pragma unroll
  for (int j = 0; j < VEC; ++j) o.v[j] = v;
  const int64_t step = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; base < n;
       base += step) {
    if (base + VEC <= n) {
      *reinterpret_cast<Vec<T, VEC>*>(out + base) = o;
    } else {
      for (int64_t i = base; i < n; ++i) out[i] = v;
    }
  }
}

template <class T, class Index>
__global__ void __launch_bounds__(kBlock) fill_strided(Iter it, T* out, double value) {
  const T v = from_double<T>(value);
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < it.numel; i += step) {
    int64_t off[1];
    offsets<1, Index>(it, i, off);
    out[off[0]] = v;
  }
}

// Flat copy: both contiguous over n (or the source one broadcast element), VEC elements of each
// per access.
template <class Td, class Ts, int VEC>
__global__ void __launch_bounds__(kBlock)
    copy_flat(int64_t n, Td* dst, const Ts* src, bool src_scalar) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; base < n;
       base += step) {
    if (base + VEC <= n && !src_scalar) {
      const Vec<Ts, VEC> s = *reinterpret_cast<const Vec<Ts, VEC>*>(src + base);
      Vec<Td, VEC> d;
#pragma unroll
      for (int j = 0; j < VEC; ++j) d.v[j] = convert<Td>(s.v[j]);
      *reinterpret_cast<Vec<Td, VEC>*>(dst + base) = d;
    } else {
      const int64_t end = base + VEC < n ? base + VEC : n;
      for (int64_t i = base; i < end; ++i) dst[i] = convert<Td>(src[src_scalar ? 0 : i]);
    }
  }
}

template <class Td, class Ts, class Index>
__global__ void __launch_bounds__(kBlock) copy_strided(Iter it, Td* dst, const Ts* src) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < it.numel; i += step) {
    int64_t off[2];
    offsets<2, Index>(it, i, off);
    dst[off[0]] = convert<Td>(src[off[1]]);
  }
}

template <class Td, class Ts>
void run_copy(const Iter& it, void* dst, const void* src, cudaStream_t s, int sms) {
  Td* d = static_cast<Td*>(dst);
  const Ts* p = static_cast<const Ts*>(src);
  if (it.flat) {
    const bool scalar = it.rank == 0 || it.strides[1][0] == 0;
    constexpr int kVec = 4;
    const bool vec_ok = !scalar && it.numel >= kVec &&
                        reinterpret_cast<uintptr_t>(d) % (sizeof(Td) * kVec) == 0 &&
                        reinterpret_cast<uintptr_t>(p) % (sizeof(Ts) * kVec) == 0;
    if (vec_ok) {
      copy_flat<Td, Ts, kVec>
          <<<grid_cover((it.numel + kVec - 1) / kVec), kBlock, 0, s>>>(it.numel, d, p, false);
    } else {
      copy_flat<Td, Ts, 1><<<grid_for(it.numel, sms), kBlock, 0, s>>>(it.numel, d, p, scalar);
    }
  } else {
    if (fits_int32(it)) {
      copy_strided<Td, Ts, int32_t><<<grid_for(it.numel, sms), kBlock, 0, s>>>(it, d, p);
    } else {
      copy_strided<Td, Ts, int64_t><<<grid_for(it.numel, sms), kBlock, 0, s>>>(it, d, p);
    }
  }
  MT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void fill(ScalarType t, const Iter& it, void* out, double value, cudaStream_t stream,
          int sm_count) {
  if (it.numel == 0) return;
  dispatch_storage(t, [&]<class T>() {
    T* o = static_cast<T*>(out);
    constexpr int kVec = 16 / int(sizeof(T));
    if (it.flat && aligned16(o) && it.numel >= kVec) {
      fill_flat<T, kVec><<<grid_for((it.numel + kVec - 1) / kVec, sm_count), kBlock, 0, stream>>>(
          it.numel, o, value);
    } else if (it.flat) {
      fill_flat<T, 1><<<grid_for(it.numel, sm_count), kBlock, 0, stream>>>(it.numel, o, value);
    } else {
      if (fits_int32(it)) {
        fill_strided<T, int32_t><<<grid_for(it.numel, sm_count), kBlock, 0, stream>>>(it, o, value);
      } else {
        fill_strided<T, int64_t><<<grid_for(it.numel, sm_count), kBlock, 0, stream>>>(it, o, value);
      }
    }
    MT_CUDA_CHECK(cudaGetLastError());
  });
}

void copy(ScalarType dst_t, ScalarType src_t, const Iter& it, void* dst, const void* src,
          cudaStream_t stream, int sm_count) {
  if (it.numel == 0) return;
  dispatch_storage(dst_t, [&]<class Td>() {
    dispatch_storage(src_t, [&]<class Ts>() { run_copy<Td, Ts>(it, dst, src, stream, sm_count); });
  });
}

}  // namespace mt::gpu
