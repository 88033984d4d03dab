// The elementwise kernel templates shared by unary.cu, binary.cu and copy.cu: a vectorised
// grid-stride loop for the flat case (every operand contiguous or one broadcast element) and a
// strided grid-stride loop for everything else (broadcasts, permuted or narrowed views).
#pragma once

#include "kernels/cuda/common.cuh"

namespace mt::gpu {

// VEC consecutive elements moved by one load or store instruction (16 bytes when VEC * sizeof(T)
// is 16: one float4 for f32, eight halves for f16/bf16).
template <class T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <class T, int N>
struct Inputs {
  const T* p[N > 0 ? N : 1];
};

template <int N, class F, class A>
__device__ __forceinline__ A apply(const F& f, const A (&v)[N]) {
  if constexpr (N == 1) {
    return f(v[0]);
  } else if constexpr (N == 2) {
    return f(v[0], v[1]);
  } else {
    return f(v[0], v[1], v[2]);
  }
}

// Flat: out[i] = f(in_0[i], ...) for i < n; operand k with bit k of scalar_mask set is a single
// element read once. Threads own VEC consecutive elements per step, so loads and stores are
// 16-byte vector accesses (the launcher checks alignment and falls back to VEC = 1). `out` may
// alias an input (Tensor::add_): each element is read and written by the same thread.
template <class T, int N, int VEC, class F>
__global__ void __launch_bounds__(kBlock)
    flat_kernel(int64_t n, T* out, Inputs<T, N> in, unsigned scalar_mask, F f) {
  using A = acc_t<T>;
  A scalars[N];
#pragma unroll
  for (int k = 0; k < N; ++k) scalars[k] = (scalar_mask >> k) & 1u ? load_acc(in.p[k][0]) : A(0);
  const int64_t step = int64_t(gridDim.x) * blockDim.x * VEC;
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * VEC; base < n;
       base += step) {
    if (base + VEC <= n) {
      A v[N][VEC];
#pragma unroll
      for (int k = 0; k < N; ++k) {
        if ((scalar_mask >> k) & 1u) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) v[k][j] = scalars[k];
        } else {
          const Vec<T, VEC> x = *reinterpret_cast<const Vec<T, VEC>*>(in.p[k] + base);
#pragma unroll
          for (int j = 0; j < VEC; ++j) v[k][j] = load_acc(x.v[j]);
        }
      }
      Vec<T, VEC> o;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        A args[N];
#pragma unroll
        for (int k = 0; k < N; ++k) args[k] = v[k][j];
        o.v[j] = store_acc<T>(apply<N>(f, args));
      }
      *reinterpret_cast<Vec<T, VEC>*>(out + base) = o;
    } else {
      for (int64_t i = base; i < n; ++i) {
        A args[N];
#pragma unroll
        for (int k = 0; k < N; ++k)
          args[k] = (scalar_mask >> k) & 1u ? scalars[k] : load_acc(in.p[k][i]);
        out[i] = store_acc<T>(apply<N>(f, args));
      }
    }
  }
}

// Strided: element i of the iteration space, offsets per operand from `it` (operand 0 = out),
// computed in Index (int32_t when they fit).
template <class T, int N, class F, class Index>
__global__ void __launch_bounds__(kBlock)
    strided_kernel(Iter it, T* out, Inputs<T, N> in, F f) {
  using A = acc_t<T>;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < it.numel; i += step) {
    int64_t off[N + 1];
    offsets<N + 1, Index>(it, i, off);
    A args[N];
#pragma unroll
    for (int k = 0; k < N; ++k) args[k] = load_acc(in.p[k][off[k + 1]]);
    out[off[0]] = store_acc<T>(apply<N>(f, args));
  }
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Launches f over `it` with N inputs of storage type T.
template <class T, int N, class F>
void launch_elementwise(const Iter& it, void* out, const void* const (&ins)[N], F f,
                        cudaStream_t stream, int sm_count) {
  if (it.numel == 0) return;
  Inputs<T, N> in;
  for (int k = 0; k < N; ++k) in.p[k] = static_cast<const T*>(ins[k]);
  T* o = static_cast<T*>(out);
  if (it.flat) {
    unsigned scalar_mask = 0;
    bool vec_ok = aligned16(o);
    for (int k = 0; k < N; ++k) {
      if (it.rank == 0 || it.strides[k + 1][0] == 0) {
        scalar_mask |= 1u << k;
      } else {
        vec_ok = vec_ok && aligned16(in.p[k]);
      }
    }
    constexpr int kVec = 16 / int(sizeof(T));
    if (vec_ok && it.numel >= kVec) {
      flat_kernel<T, N, kVec, F><<<grid_for((it.numel + kVec - 1) / kVec, sm_count), kBlock, 0,
                                   stream>>>(it.numel, o, in, scalar_mask, f);
    } else {
      flat_kernel<T, N, 1, F>
          <<<grid_for(it.numel, sm_count), kBlock, 0, stream>>>(it.numel, o, in, scalar_mask, f);
    }
  } else {
    if (fits_int32(it)) {
      strided_kernel<T, N, F, int32_t>
          <<<grid_for(it.numel, sm_count), kBlock, 0, stream>>>(it, o, in, f);
    } else {
      strided_kernel<T, N, F, int64_t>
          <<<grid_for(it.numel, sm_count), kBlock, 0, stream>>>(it, o, in, f);
    }
  }
  MT_CUDA_CHECK(cudaGetLastError());
}

// Math in the accumulation type: the f32 functions for float, the f64 ones for double.
#define MT_CUDA_MATH1(name, f32fn, f64fn)                      \
  template <class A>                                           \
  __device__ __forceinline__ A name(A x) {                     \
    if constexpr (std::is_same_v<A, float>) {                  \
      return f32fn(x);                                         \
    } else {                                                   \
      return f64fn(x);                                         \
    }                                                          \
  }
MT_CUDA_MATH1(m_exp, expf, ::exp)
MT_CUDA_MATH1(m_log, logf, ::log)
MT_CUDA_MATH1(m_sqrt, sqrtf, ::sqrt)
MT_CUDA_MATH1(m_abs, fabsf, ::fabs)
MT_CUDA_MATH1(m_tanh, tanhf, ::tanh)
MT_CUDA_MATH1(m_erf, erff, ::erf)
MT_CUDA_MATH1(m_sin, sinf, ::sin)
MT_CUDA_MATH1(m_cos, cosf, ::cos)
#undef MT_CUDA_MATH1
template <class A>
__device__ __forceinline__ A m_pow(A x, A y) {
  if constexpr (std::is_same_v<A, float>) {
    return powf(x, y);
  } else {
    return ::pow(x, y);
  }
}

}  // namespace mt::gpu
