// Multi-tensor kernels (the CUDA side of engine/ops/foreach.cpp): add, scale by a host or a
// device factor, and the f64 sum of squares, over lists of contiguous tensors of one storage
// type, a launch per kMaxTensors tensors / kMaxBlocks chunks (kernels/cuda/foreach.cuh). Each
// element is computed as the single-tensor kernel computes it (binary.cu, unary.cu, copy.cu).
#include "kernels/cuda/foreach.cuh"

namespace mt::gpu {
namespace {

constexpr int kMaxTensors = 48, kMaxBlocks = 320;

template <int kLists>
struct Table {
  int64_t n[kMaxTensors];
  void* p[kLists][kMaxTensors];
  ForeachBlocks<kMaxBlocks> blocks;
  int64_t first_chunk;  // the sum of squares: where this launch's partials start
};
static_assert(sizeof(Table<3>) + 16 <= 4096, "kernel arguments are limited to 4 KiB");

enum class Op : uint8_t { add, scale, mul };

// out[i] = f(a[i], b[i]) over this CTA's chunk, kForeachUnroll elements in flight per thread.
// add: a + b in A (AddF); scale: A(double(a) * factor) (ScaleF); mul: a * c in A with c the
// device factor converted to T (copy.cu's convert, then MulF).
template <class T, Op kOp, int kLists>
__global__ void __launch_bounds__(kForeachThreads)
    foreach_kernel(Table<kLists> t, double factor, const double* device_factor) {
  using A = acc_t<T>;
  int64_t begin, end;
  const int slot = foreach_block(t.blocks, t.n, begin, end);
  T* out = static_cast<T*>(t.p[0][slot]);
  const T* a = static_cast<const T*>(t.p[1][slot]);
  const T* b = kLists > 2 ? static_cast<const T*>(t.p[kLists - 1][slot]) : nullptr;
  A c = A(0);
  if constexpr (kOp == Op::mul) {
    const double d = *device_factor;
    if constexpr (is_16bit<T>) {
      c = load_acc(from_float<T>(static_cast<float>(d)));
    } else {
      c = A(static_cast<T>(d));
    }
  }
  for (int64_t base = begin + threadIdx.x; base < end;
       base += int64_t(kForeachThreads) * kForeachUnroll) {
    A x[kForeachUnroll], y[kForeachUnroll];
#pragma unroll
    for (int u = 0; u < kForeachUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kForeachThreads;
      if (i < end) {
        x[u] = load_acc(a[i]);
        if constexpr (kOp == Op::add) y[u] = load_acc(b[i]);
      }
    }
#pragma unroll
    for (int u = 0; u < kForeachUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kForeachThreads;
      if (i >= end) continue;
      A r;
      if constexpr (kOp == Op::add) {
        r = x[u] + y[u];
      } else if constexpr (kOp == Op::scale) {
        r = A(double(x[u]) * factor);
      } else {
        r = x[u] * c;
      }
      out[i] = store_acc<T>(r);
    }
  }
}

// partials[first_chunk + blockIdx.x] = sum of double(x)^2 over the chunk (fixed order).
template <class T>
__global__ void __launch_bounds__(kForeachThreads)
    sum_squares_kernel(Table<1> t, double* partials) {
  __shared__ double shared[32];
  int64_t begin, end;
  const int slot = foreach_block(t.blocks, t.n, begin, end);
  const T* a = static_cast<const T*>(t.p[0][slot]);
  double acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kForeachThreads) {
    const double x = double(load_acc(a[i]));
    acc += x * x;
  }
  acc = block_allreduce<double, false>(acc, shared);
  if (threadIdx.x == 0) partials[t.first_chunk + blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kForeachThreads)
    sum_partials_kernel(const double* partials, int64_t count, double* out) {
  __shared__ double shared[32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += kForeachThreads) acc += partials[i];
  acc = block_allreduce<double, false>(acc, shared);
  if (threadIdx.x == 0) *out = acc;
}

std::vector<int64_t> sizes_of(const std::vector<ForeachEntry>& e) {
  std::vector<int64_t> n;
  for (const ForeachEntry& x : e) n.push_back(x.n);
  return n;
}

// Lists: 1 = a (sum of squares); 2 = out, a; 3 = out, a, b.
template <int kLists, class LaunchFn>
void run(const std::vector<ForeachEntry>& e, LaunchFn launch) {
  for (const ForeachLaunch& l : plan_foreach(sizes_of(e), kMaxTensors, kMaxBlocks)) {
    Table<kLists> t{};
    for (size_t s = 0; s < l.entries.size(); ++s) {
      const ForeachEntry& x = e[size_t(l.entries[s])];
      t.n[s] = x.n;
      if constexpr (kLists == 1) {
        t.p[0][s] = const_cast<void*>(x.a);
      } else {
        t.p[0][s] = x.out;
        t.p[1][s] = const_cast<void*>(x.a);
        if constexpr (kLists == 3) t.p[2][s] = const_cast<void*>(x.b);
      }
    }
    fill_blocks(l, t.blocks);
    t.first_chunk = l.first_chunk;
    launch(t, unsigned(l.blocks.size()));
    MT_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

void foreach_add(ScalarType st, const std::vector<ForeachEntry>& e, cudaStream_t stream) {
  dispatch_float_storage(st, [&]<class T>() {
    run<3>(e, [&](const Table<3>& t, unsigned blocks) {
      foreach_kernel<T, Op::add, 3><<<blocks, kForeachThreads, 0, stream>>>(t, 0.0, nullptr);
    });
  });
}

void foreach_scale(ScalarType st, const std::vector<ForeachEntry>& e, double factor,
                   cudaStream_t stream) {
  dispatch_float_storage(st, [&]<class T>() {
    run<2>(e, [&](const Table<2>& t, unsigned blocks) {
      foreach_kernel<T, Op::scale, 2><<<blocks, kForeachThreads, 0, stream>>>(t, factor, nullptr);
    });
  });
}

void foreach_mul(ScalarType st, const std::vector<ForeachEntry>& e, const double* factor,
                 cudaStream_t stream) {
  dispatch_float_storage(st, [&]<class T>() {
    run<2>(e, [&](const Table<2>& t, unsigned blocks) {
      foreach_kernel<T, Op::mul, 2><<<blocks, kForeachThreads, 0, stream>>>(t, 0.0, factor);
    });
  });
}

int64_t foreach_chunks(const std::vector<ForeachEntry>& e) {
  int64_t chunks = 0;
  for (const ForeachEntry& x : e) chunks += (x.n + kForeachChunk - 1) / kForeachChunk;
  return chunks;
}

void foreach_sum_squares(ScalarType st, const std::vector<ForeachEntry>& e, double* partials,
                         cudaStream_t stream) {
  dispatch_float_storage(st, [&]<class T>() {
    run<1>(e, [&](const Table<1>& t, unsigned blocks) {
      sum_squares_kernel<T><<<blocks, kForeachThreads, 0, stream>>>(t, partials);
    });
  });
}

void foreach_sum_partials(const double* partials, int64_t count, double* out,
                          cudaStream_t stream) {
  sum_partials_kernel<<<1, kForeachThreads, 0, stream>>>(partials, count, out);
  MT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace mt::gpu
