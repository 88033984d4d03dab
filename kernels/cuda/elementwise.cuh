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
// element read once. Threads own VEC consecutive elements per access, so loads and stores are
// 16-byte vector accesses (the launcher checks alignment and falls back to VEC = 1), and UNROLL
// such vectors per step, a block's width apart (coalesced), all loaded before the first is used:
// several independent loads in flight per thread are what keeps HBM busy when f costs more than
// an add (gelu, erf). `out` may alias an input (Tensor::add_): each element is read and written
// by the same thread.
template <class T, int N, int VEC, int UNROLL, class F>
__global__ void __launch_bounds__(kBlock)
    flat_kernel(int64_t n, T* out, Inputs<T, N> in, unsigned scalar_mask, F f) {
  using A = acc_t<T>;
  A scalars[N];
#pragma unroll
  for (int k = 0; k < N; ++k) scalars[k] = (scalar_mask >> k) & 1u ? load_acc(in.p[k][0]) : A(0);
  const int64_t width = int64_t(blockDim.x) * VEC;  // elements between a thread's vectors
  const int64_t step = int64_t(gridDim.x) * width * UNROLL;
  for (int64_t base = int64_t(blockIdx.x) * width * UNROLL + int64_t(threadIdx.x) * VEC; base < n;
       base += step) {
    if (base + (UNROLL - 1) * width + VEC <= n) {
      Vec<T, VEC> x[N][UNROLL];
#pragma unroll
      for (int k = 0; k < N; ++k)
        if (!((scalar_mask >> k) & 1u)) {
#pragma unroll
          for (int u = 0; u < UNROLL; ++u)
            x[k][u] = *reinterpret_cast<const Vec<T, VEC>*>(in.p[k] + base + u * width);
        }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        Vec<T, VEC> o;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          A args[N];
#pragma unroll
          for (int k = 0; k < N; ++k)
            args[k] = (scalar_mask >> k) & 1u ? scalars[k] : load_acc(x[k][u].v[j]);
          o.v[j] = store_acc<T>(apply<N>(f, args));
        }
        *reinterpret_cast<Vec<T, VEC>*>(out + base + u * width) = o;
      }
    } else {
      // The last, partial step: element by element.
      for (int u = 0; u < UNROLL; ++u)
        for (int64_t i = base + u * width; i < base + u * width + VEC && i < n; ++i) {
          A args[N];
#pragma unroll
          for (int k = 0; k < N; ++k)
            args[k] = (scalar_mask >> k) & 1u ? scalars[k] : load_acc(in.p[k][i]);
          out[i] = store_acc<T>(apply<N>(f, args));
        }
    }
  }
}

// Rows: a contiguous (rows, D) output whose inputs are read along a row either contiguously
// (column stride 1) or as one element per row (column stride 0: a per-row value), each with its
// own row stride (0 for a row vector such as a bias). The broadcasts a model makes (x + bias,
// x * gamma, x - mean) take this path instead of the strided one: one division per vector of VEC
// elements, in Index, instead of one per element and dimension. D and every contiguous input's
// row stride are multiples of VEC, so a vector never crosses a row.
template <int N>
struct RowStrides {
  int64_t row[N > 0 ? N : 1];
};
template <class T, int N, int VEC, class F, class Index>
__global__ void __launch_bounds__(kBlock)
    rows_kernel(int64_t vectors, int64_t D, T* out, Inputs<T, N> in, RowStrides<N> rs,
                unsigned per_row_mask, F f) {
  using A = acc_t<T>;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t v = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; v < vectors; v += step) {
    const Index base = Index(v) * Index(VEC);
    const Index r = base / Index(D), c = base - r * Index(D);
    A x[N][VEC];
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if ((per_row_mask >> k) & 1u) {
        const A s = load_acc(in.p[k][int64_t(r) * rs.row[k]]);
#pragma unroll
        for (int j = 0; j < VEC; ++j) x[k][j] = s;
      } else {
        const Vec<T, VEC> l =
            *reinterpret_cast<const Vec<T, VEC>*>(in.p[k] + int64_t(r) * rs.row[k] + c);
#pragma unroll
        for (int j = 0; j < VEC; ++j) x[k][j] = load_acc(l.v[j]);
      }
    }
    Vec<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      A args[N];
#pragma unroll
      for (int k = 0; k < N; ++k) args[k] = x[k][j];
      o.v[j] = store_acc<T>(apply<N>(f, args));
    }
    *reinterpret_cast<Vec<T, VEC>*>(out + int64_t(base)) = o;
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

// Whether rows_kernel can run `it`: a contiguous (rows, D) output, every input read along a row
// with column stride 1 or 0, vectors that never cross a row and 16-byte aligned vector accesses.
template <class T, int N>
bool rows_path_applies(const Iter& it, const T* out, const Inputs<T, N>& in) {
  constexpr int64_t kVec = 16 / int64_t(sizeof(T));
  if (it.rank != 2 || it.sizes[1] % kVec != 0) return false;
  if (it.strides[0][1] != 1 || it.strides[0][0] != it.sizes[1] || !aligned16(out)) return false;
  for (int k = 0; k < N; ++k) {
    const int64_t row = it.strides[k + 1][0], col = it.strides[k + 1][1];
    if (col == 1) {
      if (row < 0 || row % kVec != 0 || !aligned16(in.p[k])) return false;
    } else if (col != 0 || row < 0) {
      return false;
    }
  }
  return true;
}

// Launches f over `it` with N inputs of storage type T.
template <class T, int N, class F>
void launch_elementwise(const Iter& it, void* out, const void* const (&ins)[N], F f,
                        cudaStream_t stream, int sm_count) {
  if (it.numel == 0) return;
  Inputs<T, N> in;
  for (int k = 0; k < N; ++k) in.p[k] = static_cast<const T*>(ins[k]);
  T* o = static_cast<T*>(out);
  constexpr int kVec = 16 / int(sizeof(T));
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
    // Unary ops get more vectors in flight per thread than binary ones, whose two inputs
    // already double them (and whose registers would otherwise limit occupancy).
    constexpr int kUnroll = N == 1 ? 4 : 2;
    if (vec_ok && it.numel >= kVec) {
      flat_kernel<T, N, kVec, kUnroll, F>
          <<<grid_cover((it.numel + kVec * kUnroll - 1) / (kVec * kUnroll)), kBlock, 0, stream>>>(
              it.numel, o, in, scalar_mask, f);
    } else {
      flat_kernel<T, N, 1, 1, F>
          <<<grid_for(it.numel, sm_count), kBlock, 0, stream>>>(it.numel, o, in, scalar_mask, f);
    }
  } else if (rows_path_applies<T, N>(it, o, in)) {
    const int64_t D = it.sizes[1], vectors = it.numel / kVec;
    RowStrides<N> rs;
    unsigned per_row_mask = 0;
    for (int k = 0; k < N; ++k) {
      rs.row[k] = it.strides[k + 1][0];
      if (it.strides[k + 1][1] == 0) per_row_mask |= 1u << k;
    }
    if (fits_int32(it)) {
      rows_kernel<T, N, kVec, F, int32_t><<<grid_cover(vectors), kBlock, 0, stream>>>(
          vectors, D, o, in, rs, per_row_mask, f);
    } else {
      rows_kernel<T, N, kVec, F, int64_t><<<grid_cover(vectors), kBlock, 0, stream>>>(
          vectors, D, o, in, rs, per_row_mask, f);
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
