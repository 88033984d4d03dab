// Fused optimizer updates (the CUDA side of engine/optim's adamw and sgd kernels): one pass over
// a parameter and its state, operation by operation as the CPU kernels (which follow torch's
// single-tensor implementations), scalars precomputed on the host in double. f32 and f64 compute
// at the parameter's precision as the CPU does; f16 and bf16 compute in f32 and round each
// stored tensor once.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"  // m_sqrt
#include "kernels/cuda/foreach.cuh"

namespace mt::gpu {
namespace {

// NaN-propagating maximum, as torch.maximum (and the CPU kernel).
template <class A>
__device__ __forceinline__ A maximum(A a, A b) {
  if (isnan(a) || isnan(b)) return a + b;
  return a < b ? b : a;
}

// One element's values: read, updated in registers, written back.
template <class A>
struct AdamWValues {
  A g, p, m, v, vmax;
};

template <class T, class A>
__device__ __forceinline__ AdamWValues<A> adamw_load(int64_t i, const T* p, const T* g,
                                                     const T* m, const T* v, const T* vmax,
                                                     const AdamWScalars& s) {
  AdamWValues<A> x;
  x.g = load_acc(g[i]);
  x.p = load_acc(p[i]);
  x.m = load_acc(m[i]);
  x.v = load_acc(v[i]);
  x.vmax = s.amsgrad ? load_acc(vmax[i]) : A(0);
  return x;
}

// The CPU's AdamWElementStep (engine/optim/adamw_math.h) in the accumulation type A, on loaded
// values: x.p, x.m, x.v (and x.vmax with amsgrad) become the values to store.
template <class A>
__device__ __forceinline__ void adamw_update(AdamWValues<A>& x, const AdamWScalars& s,
                                             A decay_factor, A w, A beta2, A one_minus_beta2,
                                             A eps, A neg_step_size, A bias_correction2_sqrt) {
  const A gi = s.maximize ? -x.g : x.g;
  A pi = x.p;
  if (s.decay) pi = pi * decay_factor;
  A mi = x.m;
  mi = s.small_w ? mi + w * (gi - mi) : gi - (gi - mi) * (A(1) - w);
  const A vi = x.v * beta2 + one_minus_beta2 * gi * gi;
  A vn = vi;
  if (s.amsgrad) {
    vn = maximum(x.vmax, vi);
    x.vmax = vn;
  }
  const A denom = m_sqrt(vn) / bias_correction2_sqrt + eps;
  x.p = pi + neg_step_size * mi / denom;
  x.m = mi;
  x.v = vi;
}

template <class T, class A>
__device__ __forceinline__ void adamw_store(int64_t i, const AdamWValues<A>& x, T* p, T* m, T* v,
                                            T* vmax, const AdamWScalars& s) {
  if (s.amsgrad) vmax[i] = store_acc<T>(x.vmax);
  p[i] = store_acc<T>(x.p);
  m[i] = store_acc<T>(x.m);
  v[i] = store_acc<T>(x.v);
}

// One element's update at index i: load, update, store.
template <class T, class A>
__device__ __forceinline__ void adamw_element(int64_t i, T* p, const T* g, T* m, T* v, T* vmax,
                                              const AdamWScalars& s, A decay_factor, A w,
                                              A beta2, A one_minus_beta2, A eps, A neg_step_size,
                                              A bias_correction2_sqrt) {
  AdamWValues<A> x = adamw_load<T, A>(i, p, g, m, v, vmax, s);
  adamw_update(x, s, decay_factor, w, beta2, one_minus_beta2, eps, neg_step_size,
               bias_correction2_sqrt);
  adamw_store(i, x, p, m, v, vmax, s);
}

// The step-dependent scalars from a count on the device: the host's formulas (ops.cpp
// adamw_scalars), in double.
__device__ __forceinline__ void adamw_step_scalars(const AdamWScalars& s, double t,
                                                   double& neg_step_size,
                                                   double& bias_correction2_sqrt) {
  neg_step_size = -(s.lr / (1 - pow(s.beta1, t)));
  // sqrt, not pow(., 0.5): correctly rounded, so it equals the host's pow(., 0.5) (glibc's is
  // correctly rounded in practice) where the device pow may differ by an ulp.
  bias_correction2_sqrt = sqrt(1 - pow(s.beta2, t));
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    adamw_kernel(int64_t n, T* p, const T* g, T* m, T* v, T* vmax, AdamWScalars s) {
  using A = acc_t<T>;
  double neg_step_size = s.neg_step_size, bias_correction2_sqrt = s.bias_correction2_sqrt;
  if (s.device_step != nullptr)
    adamw_step_scalars(s, double(*s.device_step), neg_step_size, bias_correction2_sqrt);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    adamw_element<T, A>(i, p, g, m, v, vmax, s, A(s.decay_factor), A(s.w), A(s.beta2),
                        A(s.one_minus_beta2), A(s.eps), A(neg_step_size),
                        A(bias_correction2_sqrt));
}

// AdamW over a list (adamw_foreach): one CTA per chunk of a parameter (foreach.cuh).
constexpr int kAdamWMaxTensors = 32, kAdamWMaxBlocks = 256;
struct AdamWTable {
  int64_t n[kAdamWMaxTensors];
  void* p[5][kAdamWMaxTensors];  // param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq
  int64_t* step[kAdamWMaxTensors];
  double neg_step_size[kAdamWMaxTensors], bias_correction2_sqrt[kAdamWMaxTensors];
  ForeachBlocks<kAdamWMaxBlocks> blocks;
};
static_assert(sizeof(AdamWTable) + sizeof(AdamWScalars) <= 4096,
              "kernel arguments are limited to 4 KiB");

template <class T>
__global__ void __launch_bounds__(kForeachThreads) adamw_foreach_kernel(AdamWTable t,
                                                                       AdamWScalars s) {
  using A = acc_t<T>;
  int64_t begin, end;
  const int k = foreach_block(t.blocks, t.n, begin, end);
  double neg_step_size = t.neg_step_size[k], bias_correction2_sqrt = t.bias_correction2_sqrt[k];
  // The count is incremented after the whole list (adamw_foreach): this update's count is + 1.
  if (t.step[k] != nullptr)
    adamw_step_scalars(s, double(*t.step[k] + 1), neg_step_size, bias_correction2_sqrt);
  T* p = static_cast<T*>(t.p[0][k]);
  const T* g = static_cast<const T*>(t.p[1][k]);
  T* m = static_cast<T*>(t.p[2][k]);
  T* v = static_cast<T*>(t.p[3][k]);
  T* vmax = static_cast<T*>(t.p[4][k]);
  const A decay_factor = A(s.decay_factor), w = A(s.w), beta2 = A(s.beta2);
  const A one_minus_beta2 = A(s.one_minus_beta2), eps = A(s.eps);
  // kForeachUnroll elements in flight per thread: every load of the group before the first
  // store (one CTA per chunk and few CTAs per launch: the loads' latency must overlap).
  for (int64_t base = begin + threadIdx.x; base < end;
       base += int64_t(kForeachThreads) * kForeachUnroll) {
    AdamWValues<A> x[kForeachUnroll];
#pragma unroll
    for (int u = 0; u < kForeachUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kForeachThreads;
      if (i < end) x[u] = adamw_load<T, A>(i, p, g, m, v, vmax, s);
    }
#pragma unroll
    for (int u = 0; u < kForeachUnroll; ++u) {
      const int64_t i = base + int64_t(u) * kForeachThreads;
      if (i >= end) continue;
      adamw_update(x[u], s, decay_factor, w, beta2, one_minus_beta2, eps, A(neg_step_size),
                   A(bias_correction2_sqrt));
      adamw_store(i, x[u], p, m, v, vmax, s);
    }
  }
}

// Adds one to every count of the list (after its updates).
constexpr int kMaxCounts = 256;
struct Counts {
  int64_t* step[kMaxCounts];
  int n;
};
__global__ void increment_steps_kernel(Counts c) {
  if (int(threadIdx.x) < c.n) *c.step[threadIdx.x] += 1;
}

__global__ void increment_step_kernel(int64_t* step) { *step += 1; }

template <class T>
__global__ void __launch_bounds__(kBlock)
    sgd_kernel(int64_t n, T* p, const T* g, T* buf, SgdScalars s) {
  using A = acc_t<T>;
  const A weight_decay = A(s.weight_decay), momentum = A(s.momentum);
  const A one_minus_dampening = A(s.one_minus_dampening), neg_lr = A(s.neg_lr);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    A gi = s.maximize ? -load_acc(g[i]) : load_acc(g[i]);
    const A pi = load_acc(p[i]);
    if (s.decay) gi = gi + weight_decay * pi;
    if (buf) {
      const A b = s.first ? gi : load_acc(buf[i]) * momentum + one_minus_dampening * gi;
      buf[i] = store_acc<T>(b);
      // The CPU reads the buffer back at its precision before using it.
      const A stored = load_acc(buf[i]);
      gi = s.nesterov ? gi + momentum * stored : stored;
    }
    p[i] = store_acc<T>(pi + neg_lr * gi);
  }
}

}  // namespace

void adamw(ScalarType t, int64_t n, void* param, const void* grad, void* exp_avg,
           void* exp_avg_sq, void* max_exp_avg_sq, const AdamWScalars& s, cudaStream_t stream,
           int sm_count) {
  if (s.device_step != nullptr) {  // counted even for an empty parameter, as on the host
    increment_step_kernel<<<1, 1, 0, stream>>>(s.device_step);
    MT_CUDA_CHECK(cudaGetLastError());
  }
  if (n == 0) return;
  dispatch_float_storage(t, [&]<class T>() {
    adamw_kernel<T><<<grid_for(n, sm_count), kBlock, 0, stream>>>(
        n, static_cast<T*>(param), static_cast<const T*>(grad), static_cast<T*>(exp_avg),
        static_cast<T*>(exp_avg_sq), static_cast<T*>(max_exp_avg_sq), s);
    MT_CUDA_CHECK(cudaGetLastError());
  });
}

void adamw_foreach(ScalarType st, const std::vector<AdamWForeachEntry>& e, const AdamWScalars& s,
                   cudaStream_t stream) {
  std::vector<int64_t> n;
  for (const AdamWForeachEntry& x : e) n.push_back(x.n);
  dispatch_float_storage(st, [&]<class T>() {
    for (const ForeachLaunch& l : plan_foreach(n, kAdamWMaxTensors, kAdamWMaxBlocks)) {
      AdamWTable t{};
      for (size_t k = 0; k < l.entries.size(); ++k) {
        const AdamWForeachEntry& x = e[size_t(l.entries[k])];
        t.n[k] = x.n;
        t.p[0][k] = x.param;
        t.p[1][k] = const_cast<void*>(x.grad);
        t.p[2][k] = x.exp_avg;
        t.p[3][k] = x.exp_avg_sq;
        t.p[4][k] = x.max_exp_avg_sq;
        t.step[k] = x.step;
        t.neg_step_size[k] = x.neg_step_size;
        t.bias_correction2_sqrt[k] = x.bias_correction2_sqrt;
      }
      fill_blocks(l, t.blocks);
      adamw_foreach_kernel<T><<<unsigned(l.blocks.size()), kForeachThreads, 0, stream>>>(t, s);
      MT_CUDA_CHECK(cudaGetLastError());
    }
  });
  // Every count of the list, empty parameters included (as adamw() counts them), once.
  Counts c{};
  for (const AdamWForeachEntry& x : e) {
    if (x.step == nullptr) continue;
    c.step[c.n++] = x.step;
    if (c.n == kMaxCounts) {
      increment_steps_kernel<<<1, kMaxCounts, 0, stream>>>(c);
      MT_CUDA_CHECK(cudaGetLastError());
      c.n = 0;
    }
  }
  if (c.n > 0) {
    increment_steps_kernel<<<1, kMaxCounts, 0, stream>>>(c);
    MT_CUDA_CHECK(cudaGetLastError());
  }
}

void sgd(ScalarType t, int64_t n, void* param, const void* grad, void* momentum_buffer,
         const SgdScalars& s, cudaStream_t stream, int sm_count) {
  if (n == 0) return;
  dispatch_float_storage(t, [&]<class T>() {
    sgd_kernel<T><<<grid_for(n, sm_count), kBlock, 0, stream>>>(
        n, static_cast<T*>(param), static_cast<const T*>(grad), static_cast<T*>(momentum_buffer),
        s);
    MT_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace mt::gpu
