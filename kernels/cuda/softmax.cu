// softmax and log_softmax over the last dim of a contiguous (rows, D) tensor (the CUDA side of
// engine/ops/softmax.cpp, which moves any other dim last first). Accumulation in f32 (f64 for
// f64) for every storage type.
//   D <= 1024: one warp per row, the row held in registers (16-byte vectors where D and the
//              pointers allow), so x is read once and each element costs one exp;
//   D > 1024:  one block per row, three passes over the row (max, sum of exp, write), which L2
//              serves after the first.
// A row of -inf shifts by 0 instead of -inf, as the CPU kernel does, so it gives NaN only where
// the CPU does.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"  // m_exp, m_log

namespace mt::gpu {
namespace {

constexpr int kWarps = kBlock / kWarpSize;  // rows per block on the warp path

template <class A>
__device__ __forceinline__ A shift_of(A m) {
  return (isinf(m) && m < A(0)) ? A(0) : m;
}

// One warp per row; lane l holds vectors l, l + 32, ... of VEC consecutive elements (16-byte
// loads when VEC * sizeof(T) == 16), kVecs of them, so the row is read once. exp(x - max) is
// kept from the sum for the write, so each element costs one exp.
template <class T, int VEC, int kVecs>
__global__ void __launch_bounds__(kBlock)
    softmax_warp(int64_t rows, int D, const T* x, T* y, bool log) {
  using A = acc_t<T>;
  using V = Vec<T, VEC>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full
  const T* xr = x + row * D;
  T* yr = y + row * D;
  A v[kVecs][VEC];
  A m = A(-INFINITY);
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int j = (lane + k * kWarpSize) * VEC;
    if (j < D) {
      const V l = *reinterpret_cast<const V*>(xr + j);
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[k][e] = load_acc(l.v[e]);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[k][e] = A(-INFINITY);
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) m = v[k][e] > m ? v[k][e] : m;
  }
  m = shift_of(warp_allmax(m));
  A s = 0;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int j = (lane + k * kWarpSize) * VEC;
    if (j < D) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const A shifted = v[k][e] - m;
        const A p = m_exp(shifted);
        s += p;
        v[k][e] = log ? shifted : p;
      }
    }
  }
  s = warp_allsum(s);
  const A log_s = m_log(s), inv = A(1) / s;
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int j = (lane + k * kWarpSize) * VEC;
    if (j < D) {
      V o;
#pragma unroll
      for (int e = 0; e < VEC; ++e) o.v[e] = store_acc<T>(log ? v[k][e] - log_s : v[k][e] * inv);
      *reinterpret_cast<V*>(yr + j) = o;
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    softmax_block(int64_t rows, int64_t D, const T* x, T* y, bool log) {
  using A = acc_t<T>;
  __shared__ A shared[kWarpSize];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * D;
    T* yr = y + row * D;
    A m = A(-INFINITY);
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const A v = load_acc(xr[j]);
      m = v > m ? v : m;
    }
    m = shift_of(block_allreduce<A, true>(m, shared));
    A s = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += m_exp(load_acc(xr[j]) - m);
    s = block_allreduce<A, false>(s, shared);
    if (log) {
      const A log_s = m_log(s);  // (x - m) - log s: see the CPU kernel
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        yr[j] = store_acc<T>((load_acc(xr[j]) - m) - log_s);
    } else {
      const A inv = A(1) / s;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        yr[j] = store_acc<T>(m_exp(load_acc(xr[j]) - m) * inv);
    }
  }
}

constexpr int64_t kMaxGrid = 0x7fffffff;

template <class T>
void run(int64_t rows, int64_t D, const void* x_v, void* y_v, bool log, cudaStream_t s) {
  const T* x = static_cast<const T*>(x_v);
  T* y = static_cast<T*>(y_v);
  if (rows == 0 || D == 0) return;
  if (D <= 1024) {
    const unsigned grid = unsigned((rows + kWarps - 1) / kWarps);
    const int d = int(D);
    constexpr int kVec = 16 / int(sizeof(T));
    const bool vec_ok = D % kVec == 0 && (reinterpret_cast<uintptr_t>(x) & 15u) == 0 &&
                        (reinterpret_cast<uintptr_t>(y) & 15u) == 0;
    // Elements per lane: the smallest power of two that covers the row.
    const int64_t per_lane = (D + kWarpSize - 1) / kWarpSize;
    auto go = [&](auto vec, auto vecs) {
      softmax_warp<T, decltype(vec)::value, decltype(vecs)::value>
          <<<grid, kBlock, 0, s>>>(rows, d, x, y, log);
    };
    using I1 = std::integral_constant<int, 1>;
    using IV = std::integral_constant<int, kVec>;
    if (vec_ok && per_lane >= kVec) {
      // per_lane / kVec vectors per lane (kVec is 2, 4 or 8; per_lane at most 32).
      if (per_lane <= kVec) {
        go(IV{}, I1{});
      } else if (per_lane <= 2 * kVec) {
        go(IV{}, std::integral_constant<int, 2>{});
      } else if (per_lane <= 4 * kVec) {
        go(IV{}, std::integral_constant<int, 4>{});
      } else if (per_lane <= 8 * kVec) {
        go(IV{}, std::integral_constant<int, 8>{});
      } else {
        go(IV{}, std::integral_constant<int, 16>{});
      }
    } else if (per_lane <= 1) {
      go(I1{}, I1{});
    } else if (per_lane <= 2) {
      go(I1{}, std::integral_constant<int, 2>{});
    } else if (per_lane <= 4) {
      go(I1{}, std::integral_constant<int, 4>{});
    } else if (per_lane <= 8) {
      go(I1{}, std::integral_constant<int, 8>{});
    } else if (per_lane <= 16) {
      go(I1{}, std::integral_constant<int, 16>{});
    } else {
      go(I1{}, std::integral_constant<int, 32>{});
    }
  } else {
    const unsigned grid = unsigned(rows < kMaxGrid ? rows : kMaxGrid);
    softmax_block<T><<<grid, kBlock, 0, s>>>(rows, D, x, y, log);
  }
  MT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void softmax(ScalarType t, int64_t rows, int64_t D, const void* x, void* out, bool log,
             cudaStream_t stream, int /*sm_count*/) {
  switch (t) {
    case ScalarType::f32: run<float>(rows, D, x, out, log, stream); break;
    case ScalarType::f64: run<double>(rows, D, x, out, log, stream); break;
    case ScalarType::f16: run<__half>(rows, D, x, out, log, stream); break;
    case ScalarType::bf16: run<__nv_bfloat16>(rows, D, x, out, log, stream); break;
    case ScalarType::i64: break;  // refused by the launcher in ops.cpp
  }
}

}  // namespace mt::gpu
