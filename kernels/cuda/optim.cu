// Fused optimizer updates (the CUDA side of engine/optim's adamw and sgd kernels): one pass over
// a parameter and its state, operation by operation as the CPU kernels (which follow torch's
// single-tensor implementations), scalars precomputed on the host in double. f32 and f64 compute
// at the parameter's precision as the CPU does; f16 and bf16 compute in f32 and round each
// stored tensor once.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/elementwise.cuh"  // m_sqrt

namespace mt::gpu {
namespace {

// NaN-propagating maximum, as torch.maximum (and the CPU kernel).
template <class A>
__device__ __forceinline__ A maximum(A a, A b) {
  if (isnan(a) || isnan(b)) return a + b;
  return a < b ? b : a;
}

template <class T>
__global__ void __launch_bounds__(kBlock)
    adamw_kernel(int64_t n, T* p, const T* g, T* m, T* v, T* vmax, AdamWScalars s) {
  using A = acc_t<T>;
  const A decay_factor = A(s.decay_factor), w = A(s.w), beta2 = A(s.beta2);
  const A one_minus_beta2 = A(s.one_minus_beta2), eps = A(s.eps);
  A neg_step_size = A(s.neg_step_size), bias_correction2_sqrt = A(s.bias_correction2_sqrt);
  if (s.device_step != nullptr) {  // the host's formulas (ops.cpp adamw_scalars), in double
    const double t = double(*s.device_step);
    neg_step_size = A(-(s.lr / (1 - pow(s.beta1, t))));
    bias_correction2_sqrt = A(pow(1 - pow(s.beta2, t), 0.5));
  }
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const A gi = s.maximize ? -load_acc(g[i]) : load_acc(g[i]);
    A pi = load_acc(p[i]);
    if (s.decay) pi = pi * decay_factor;
    A mi = load_acc(m[i]);
    mi = s.small_w ? mi + w * (gi - mi) : gi - (gi - mi) * (A(1) - w);
    const A vi = load_acc(v[i]) * beta2 + one_minus_beta2 * gi * gi;
    A vn = vi;
    if (s.amsgrad) {
      vn = maximum(load_acc(vmax[i]), vi);
      vmax[i] = store_acc<T>(vn);
    }
    const A denom = m_sqrt(vn) / bias_correction2_sqrt + eps;
    p[i] = store_acc<T>(pi + neg_step_size * mi / denom);
    m[i] = store_acc<T>(mi);
    v[i] = store_acc<T>(vi);
  }
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
