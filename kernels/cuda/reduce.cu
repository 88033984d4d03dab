// Sum and max over dims (the CUDA side of engine/ops/reduce.cpp). Accumulation is in f32 (f64
// for f64); warps combine with shuffles, then the warps of a block through shared memory.
// Every output is reduced in an order fixed by the shape alone (fixed block shapes, fixed
// splits, partials combined in split order), so results are bitwise reproducible.
#include <cmath>

#include "kernels/cuda/common.cuh"

namespace mt::gpu {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = kBlock / kWarp;  // 8

struct SumOp {
  template <class A>
  __device__ __forceinline__ A init() const {
    return A(0);
  }
  template <class A>
  __device__ __forceinline__ A operator()(A a, A v) const {
    return a + v;
  }
};

// NaN wins, as on the CPU.
struct MaxOp {
  template <class A>
  __device__ __forceinline__ A init() const {
    return A(-INFINITY);
  }
  template <class A>
  __device__ __forceinline__ A operator()(A a, A v) const {
    return (v > a || isnan(v)) ? v : a;
  }
};

template <class A, class Op>
__device__ __forceinline__ A warp_reduce(A v, Op op) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  return v;  // complete in lane 0
}

// Reduces over the kBlock threads of a 1-D block; the result is complete in thread 0.
template <class A, class Op>
__device__ __forceinline__ A block_reduce(A v, Op op, A* shared) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_reduce(v, op);
  __syncthreads();  // shared may still be read by the previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? shared[lane] : op.template init<A>();
    v = warp_reduce(v, op);
  }
  return v;
}

// The result for output m from split `split`: the output itself, or a partial in the workspace.
template <class T, class A>
__device__ __forceinline__ void write(const ReduceDesc& d, T* out, A* ws, int64_t m, int split,
                                      A v) {
  if (d.splits == 1) {
    out[outer_out_offset(d, m)] = store_acc<T>(v);
  } else {
    ws[m * d.splits + split] = v;
  }
}

// Row reduction: the reduced elements of one output are walked by one warp (short rows) or one
// block (long rows); neighbouring lanes read neighbouring elements.
template <class T, class Op, bool kWarpPerRow>
__global__ void __launch_bounds__(kBlock)
    reduce_rows(ReduceDesc d, T* out, const T* x, acc_t<T>* ws, Op op) {
  using A = acc_t<T>;
  __shared__ A shared[kWarps];
  const int split = blockIdx.y;
  int64_t k0, k1;
  split_range(d, split, k0, k1);
  if constexpr (kWarpPerRow) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    for (int64_t m = int64_t(blockIdx.x) * kWarps + warp; m < d.outer;
         m += int64_t(gridDim.x) * kWarps) {
      const T* row = x + outer_x_offset(d, m);
      A acc = op.template init<A>();
      for (int64_t k = k0 + lane; k < k1; k += kWarp) acc = op(acc, load_acc(row[inner_offset(d, k)]));
      acc = warp_reduce(acc, op);
      if (lane == 0) write<T, A>(d, out, ws, m, split, acc);
    }
  } else {
    for (int64_t m = blockIdx.x; m < d.outer; m += gridDim.x) {
      const T* row = x + outer_x_offset(d, m);
      A acc = op.template init<A>();
      for (int64_t k = k0 + threadIdx.x; k < k1; k += kBlock)
        acc = op(acc, load_acc(row[inner_offset(d, k)]));
      acc = block_reduce(acc, op, shared);
      if (threadIdx.x == 0) write<T, A>(d, out, ws, m, split, acc);
    }
  }
}

// Column reduction: 32 neighbouring outputs per block (coalesced reads across threadIdx.x),
// their reduced elements split across the block's 8 rows of threads, then combined in row
// order through shared memory.
template <class T, class Op>
__global__ void __launch_bounds__(kBlock)
    reduce_cols(ReduceDesc d, T* out, const T* x, acc_t<T>* ws, Op op) {
  using A = acc_t<T>;
  __shared__ A shared[kWarps][kWarp + 1];
  const int tx = threadIdx.x % kWarp, ty = threadIdx.x / kWarp;
  const int split = blockIdx.y;
  int64_t k0, k1;
  split_range(d, split, k0, k1);
  for (int64_t base = int64_t(blockIdx.x) * kWarp; base < d.outer;
       base += int64_t(gridDim.x) * kWarp) {
    const int64_t m = base + tx;
    A acc = op.template init<A>();
    if (m < d.outer) {
      const T* col = x + outer_x_offset(d, m);
      for (int64_t k = k0 + ty; k < k1; k += kWarps) acc = op(acc, load_acc(col[inner_offset(d, k)]));
    }
    shared[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && m < d.outer) {
      A r = shared[0][tx];
#pragma unroll
      for (int j = 1; j < kWarps; ++j) r = op(r, shared[j][tx]);
      write<T, A>(d, out, ws, m, split, r);
    }
    __syncthreads();
  }
}

// Combines the splits' partials of every output, in split order.
template <class T, class Op>
__global__ void __launch_bounds__(kBlock)
    reduce_partials(ReduceDesc d, T* out, const acc_t<T>* ws, Op op) {
  using A = acc_t<T>;
  for (int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; m < d.outer;
       m += int64_t(gridDim.x) * blockDim.x) {
    A r = ws[m * d.splits];
    for (int s = 1; s < d.splits; ++s) r = op(r, ws[m * d.splits + s]);
    out[outer_out_offset(d, m)] = store_acc<T>(r);
  }
}

template <class T, class Op>
__global__ void __launch_bounds__(kBlock) fill_init(ReduceDesc d, T* out, Op op) {
  for (int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; m < d.outer;
       m += int64_t(gridDim.x) * blockDim.x)
    out[outer_out_offset(d, m)] = store_acc<T>(op.template init<acc_t<T>>());
}

constexpr int64_t kMaxGridX = 65535;
int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

template <class T, class Op>
void run(const ReduceDesc& d, void* out_v, const void* x_v, void* ws_v, cudaStream_t s, int sms,
         Op op) {
  using A = acc_t<T>;
  T* out = static_cast<T*>(out_v);
  const T* x = static_cast<const T*>(x_v);
  A* ws = static_cast<A*>(ws_v);
  if (d.outer == 0) return;
  if (d.inner == 0) {  // the reduction of nothing: the identity
    fill_init<T, Op><<<grid_for(d.outer, sms), kBlock, 0, s>>>(d, out, op);
    MT_CUDA_CHECK(cudaGetLastError());
    return;
  }
  if (d.rows) {
    if (d.inner <= 512) {
      const dim3 grid(unsigned(min64((d.outer + kWarps - 1) / kWarps, kMaxGridX)),
                      unsigned(d.splits));
      reduce_rows<T, Op, true><<<grid, kBlock, 0, s>>>(d, out, x, ws, op);
    } else {
      const dim3 grid(unsigned(min64(d.outer, kMaxGridX)), unsigned(d.splits));
      reduce_rows<T, Op, false><<<grid, kBlock, 0, s>>>(d, out, x, ws, op);
    }
  } else {
    const dim3 grid(unsigned(min64((d.outer + kWarp - 1) / kWarp, kMaxGridX)), unsigned(d.splits));
    reduce_cols<T, Op><<<grid, kBlock, 0, s>>>(d, out, x, ws, op);
  }
  MT_CUDA_CHECK(cudaGetLastError());
  if (d.splits > 1) {
    reduce_partials<T, Op><<<grid_for(d.outer, sms), kBlock, 0, s>>>(d, out, ws, op);
    MT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

int reduce_splits(const ReduceDesc& d) {
  // Aim for about a thousand blocks in all; a split never gets fewer than a few thousand
  // elements (rows) or 512 elements per column (columns).
  if (d.inner == 0 || d.outer == 0) return 1;
  const int64_t blocks_per_split =
      d.rows ? (d.inner <= 512 ? (d.outer + kWarps - 1) / kWarps : d.outer)
             : (d.outer + kWarp - 1) / kWarp;
  const int64_t by_size = d.rows ? (d.inner + 8191) / 8192 : (d.inner + 511) / 512;
  const int64_t by_blocks = (1024 + blocks_per_split - 1) / blocks_per_split;
  const int64_t s = min64(min64(by_size, by_blocks), 1024);
  return int(s < 1 ? 1 : s);
}

void reduce(ReduceOp op, ScalarType t, const ReduceDesc& d, void* out, const void* x,
            void* workspace, cudaStream_t stream, int sm_count) {
  auto go = [&]<class T>() {
    if (op == ReduceOp::sum) {
      run<T>(d, out, x, workspace, stream, sm_count, SumOp{});
    } else {
      run<T>(d, out, x, workspace, stream, sm_count, MaxOp{});
    }
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
