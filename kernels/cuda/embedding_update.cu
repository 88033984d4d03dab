// Sparse SGD and AdamW row updates of an embedding table (the CUDA side of
// engine/optim/sparse_rows.cpp). Positions are stably radix-sorted by index (sort_by_index,
// shared with the scatter-add in embedding.cu); then one warp per sorted position: a warp that
// starts a run of equal indices sums the run's gradient rows column by column in position order
// (the CPU kernel's order, so the summed gradient is bitwise the CPU's for f32 and f64) and
// applies one fused update to its row (weight, and AdamW's moments: each read and written
// once). No atomics: each distinct row belongs to exactly one warp. Lanes take neighbouring
// 16-byte chunks of the row when D and the pointers allow it, single elements otherwise. The
// arithmetic is the dense kernels' (optim.cu), operation by operation.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"  // m_sqrt

namespace mt::gpu {
namespace {

constexpr int kWarps = kBlock / kWarpSize;

// kVec neighbouring elements, loaded and stored as one (or, past 16 bytes, two) vector access.
template <class T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};
template <class T, int kVec>
__device__ __forceinline__ Pack<T, kVec> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, kVec>*>(p);
}
template <class T, int kVec>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, kVec>& v) {
  *reinterpret_cast<Pack<T, kVec>*>(p) = v;
}

// The run of equal keys starting at sorted position s, or end == s when s does not start one.
// An index outside [0, V) traps (it always starts a run: see sort_by_index).
struct Run {
  int64_t row, end;
};
__device__ __forceinline__ Run run_at(int64_t s, int64_t n, int64_t V, const uint64_t* keys) {
  const uint64_t key = keys[s];
  if (s > 0 && keys[s - 1] == key) return {0, s};  // not the start of a run
  if (key >= uint64_t(V)) __trap();                // negative indices are huge as uint64
  int64_t end = s + 1;
  while (end < n && keys[end] == key) ++end;
  return {int64_t(key), end};
}

// g[k] = sum over the run [s, end) of grad_rows[positions[t], j + k], in position order.
template <class T, int kVec>
__device__ __forceinline__ void sum_run(int64_t s, int64_t end, int64_t D, int64_t j,
                                        const int64_t* positions, const T* grad_rows,
                                        acc_t<T> (&g)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec; ++k) g[k] = 0;
  for (int64_t t = s; t < end; ++t) {
    const Pack<T, kVec> r = load_pack<T, kVec>(grad_rows + positions[t] * D + j);
#pragma unroll
    for (int k = 0; k < kVec; ++k) g[k] += load_acc(r.v[k]);
  }
}

template <class T, int kVec>
__global__ void __launch_bounds__(kBlock)
    sgd_rows(int64_t n, int64_t D, int64_t V, const uint64_t* keys, const int64_t* positions,
             const T* grad_rows, T* weight, SgdScalars s) {
  using A = acc_t<T>;
  const A weight_decay = A(s.weight_decay), neg_lr = A(s.neg_lr);
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t i = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; i < n;
       i += int64_t(gridDim.x) * kWarps) {
    const Run run = run_at(i, n, V, keys);
    if (run.end == i) continue;
    for (int64_t j = int64_t(lane) * kVec; j < D; j += int64_t(kWarpSize) * kVec) {
      A g[kVec];
      sum_run<T, kVec>(i, run.end, D, j, positions, grad_rows, g);
      T* w = weight + run.row * D + j;
      Pack<T, kVec> p = load_pack<T, kVec>(w);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        A gk = s.maximize ? -g[k] : g[k];
        const A pk = load_acc(p.v[k]);
        if (s.decay) gk = gk + weight_decay * pk;
        p.v[k] = store_acc<T>(pk + neg_lr * gk);
      }
      store_pack<T, kVec>(w, p);
    }
  }
}

// T: the table's type; M: the moments' (T, or f32 for a 16-bit table).
template <class T, class M, int kVec>
__global__ void __launch_bounds__(kBlock)
    adamw_rows(int64_t n, int64_t D, int64_t V, const uint64_t* keys, const int64_t* positions,
               const T* grad_rows, T* weight, M* exp_avg, M* exp_avg_sq, AdamWScalars s) {
  using A = acc_t<T>;
  const A decay_factor = A(s.decay_factor), w = A(s.w), beta2 = A(s.beta2);
  const A one_minus_beta2 = A(s.one_minus_beta2), neg_step_size = A(s.neg_step_size);
  const A bias_correction2_sqrt = A(s.bias_correction2_sqrt), eps = A(s.eps);
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t i = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; i < n;
       i += int64_t(gridDim.x) * kWarps) {
    const Run run = run_at(i, n, V, keys);
    if (run.end == i) continue;
    for (int64_t j = int64_t(lane) * kVec; j < D; j += int64_t(kWarpSize) * kVec) {
      A g[kVec];
      sum_run<T, kVec>(i, run.end, D, j, positions, grad_rows, g);
      const int64_t at = run.row * D + j;
      Pack<T, kVec> p = load_pack<T, kVec>(weight + at);
      Pack<M, kVec> m = load_pack<M, kVec>(exp_avg + at);
      Pack<M, kVec> v = load_pack<M, kVec>(exp_avg_sq + at);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const A gk = s.maximize ? -g[k] : g[k];
        A pk = load_acc(p.v[k]);
        if (s.decay) pk = pk * decay_factor;
        A mk = A(load_acc(m.v[k]));
        mk = s.small_w ? mk + w * (gk - mk) : gk - (gk - mk) * (A(1) - w);
        const A vk = A(load_acc(v.v[k])) * beta2 + one_minus_beta2 * gk * gk;
        const A denom = m_sqrt(vk) / bias_correction2_sqrt + eps;
        p.v[k] = store_acc<T>(pk + neg_step_size * mk / denom);
        m.v[k] = store_acc<M>(mk);
        v.v[k] = store_acc<M>(vk);
      }
      store_pack<T, kVec>(weight + at, p);
      store_pack<M, kVec>(exp_avg + at, m);
      store_pack<M, kVec>(exp_avg_sq + at, v);
    }
  }
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// 16-byte chunks of T (4 f32, 2 f64, 8 f16/bf16) when every row starts on a chunk boundary.
template <class T>
constexpr int vec_of() {
  return int(16 / sizeof(T));
}

}  // namespace

void sparse_sgd_rows(ScalarType t, int64_t n, int64_t D, int64_t V, void* weight,
                     const int64_t* indices, const void* grad_rows, const SgdScalars& s,
                     void* workspace, size_t workspace_bytes, cudaStream_t stream, int sm_count) {
  if (n == 0 || D == 0) return;
  const IndexSort sorted =
      sort_by_index(n, V, indices, workspace, workspace_bytes, stream, sm_count);
  const unsigned grid = grid_for(n * kWarpSize, sm_count);
  dispatch_float_storage(t, [&]<class T>() {
    constexpr int kVec = vec_of<T>();
    const bool vec = D % kVec == 0 && aligned(weight, 16) && aligned(grad_rows, 16);
    auto launch = [&]<int V_>() {
      sgd_rows<T, V_><<<grid, kBlock, 0, stream>>>(n, D, V, sorted.keys, sorted.positions,
                                                   static_cast<const T*>(grad_rows),
                                                   static_cast<T*>(weight), s);
    };
    if (vec) {
      launch.template operator()<kVec>();
    } else {
      launch.template operator()<1>();
    }
    MT_CUDA_CHECK(cudaGetLastError());
  });
}

void sparse_adamw_rows(ScalarType t, ScalarType moment_t, int64_t n, int64_t D, int64_t V,
                       void* weight, void* exp_avg, void* exp_avg_sq, const int64_t* indices,
                       const void* grad_rows, const AdamWScalars& s, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream, int sm_count) {
  if (n == 0 || D == 0) return;
  const IndexSort sorted =
      sort_by_index(n, V, indices, workspace, workspace_bytes, stream, sm_count);
  const unsigned grid = grid_for(n * kWarpSize, sm_count);
  dispatch_float_storage(t, [&]<class T>() {
    constexpr int kVec = vec_of<T>();
    auto launch = [&]<class M>() {
      const bool vec = D % kVec == 0 && aligned(weight, 16) && aligned(grad_rows, 16) &&
                       aligned(exp_avg, sizeof(M) * kVec) && aligned(exp_avg_sq, sizeof(M) * kVec);
      auto go = [&]<int V_>() {
        adamw_rows<T, M, V_><<<grid, kBlock, 0, stream>>>(
            n, D, V, sorted.keys, sorted.positions, static_cast<const T*>(grad_rows),
            static_cast<T*>(weight), static_cast<M*>(exp_avg), static_cast<M*>(exp_avg_sq), s);
      };
      if (vec) {
        go.template operator()<kVec>();
      } else {
        go.template operator()<1>();
      }
      MT_CUDA_CHECK(cudaGetLastError());
    };
    if constexpr (is_16bit<T>) {
      if (moment_t == ScalarType::f32) {
        launch.template operator()<float>();
        return;
      }
    }
    launch.template operator()<T>();
  });
}

}  // namespace mt::gpu
