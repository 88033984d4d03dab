// softmax and log_softmax over the last dim of a contiguous (rows, D) tensor (the CUDA side of
// engine/ops/softmax.cpp, which moves any other dim last first). Accumulation in f32 (f64 for
// f64) for every storage type.
//   D <= 1024: one warp per row, the row held in registers (kPerLane values per lane), so x is
//              read once;
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

template <class T, int kPerLane>
__global__ void __launch_bounds__(kBlock)
    softmax_warp(int64_t rows, int D, const T* x, T* y, bool log) {
  using A = acc_t<T>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full
  const T* xr = x + row * D;
  T* yr = y + row * D;
  A v[kPerLane];
  A m = A(-INFINITY);
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    v[k] = j < D ? load_acc(xr[j]) : A(-INFINITY);
    m = v[k] > m ? v[k] : m;
  }
  m = shift_of(warp_allmax(m));
  A s = 0;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) {
    const int j = lane + k * kWarpSize;
    if (j < D) s += m_exp(v[k] - m);
  }
  s = warp_allsum(s);
  if (log) {
    const A lse = m_log(s) + m;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int j = lane + k * kWarpSize;
      if (j < D) yr[j] = store_acc<T>(v[k] - lse);
    }
  } else {
    const A inv = A(1) / s;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int j = lane + k * kWarpSize;
      if (j < D) yr[j] = store_acc<T>(m_exp(v[k] - m) * inv);
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
      const A lse = m_log(s) + m;
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        yr[j] = store_acc<T>(load_acc(xr[j]) - lse);
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
    if (D <= 32) {
      softmax_warp<T, 1><<<grid, kBlock, 0, s>>>(rows, d, x, y, log);
    } else if (D <= 64) {
      softmax_warp<T, 2><<<grid, kBlock, 0, s>>>(rows, d, x, y, log);
    } else if (D <= 128) {
      softmax_warp<T, 4><<<grid, kBlock, 0, s>>>(rows, d, x, y, log);
    } else if (D <= 256) {
      softmax_warp<T, 8><<<grid, kBlock, 0, s>>>(rows, d, x, y, log);
    } else if (D <= 512) {
      softmax_warp<T, 16><<<grid, kBlock, 0, s>>>(rows, d, x, y, log);
    } else {
      softmax_warp<T, 32><<<grid, kBlock, 0, s>>>(rows, d, x, y, log);
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
