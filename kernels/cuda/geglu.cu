// GEGLU and its fused derivatives (the CUDA side of engine/ops/geglu.cpp, where the formulas are
// derived): one grid-stride pass over the (rows, F) elements, each thread reading the value and
// gate of its element from h (rows, 2F) (and t, g where the op has them) and writing one element
// of out (rows, F) or both halves of out (rows, 2F). Contiguous operands; math in f32 (f64 for
// f64), 16-bit types stored as they are. Indices are 32-bit when every offset fits (below
// 2^30, so the grid stride cannot overflow either): 64-bit division costs tens of instructions
// per element.
#include "kernels/cuda/elementwise.cuh"

namespace mt::gpu {
namespace {

template <class T, GegluOp op, class I>
__global__ void geglu_kernel(I rows, I F, const T* __restrict__ g, const T* __restrict__ h,
                             const T* __restrict__ t, T* __restrict__ out) {
  using A = acc_t<T>;
  const I n = rows * F;
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < n;
       i += I(gridDim.x) * I(blockDim.x)) {
    const I r = i / F, j = i - r * F;
    const I iv = r * 2 * F + j, iu = iv + F;
    const A v = load_acc(h[iv]), u = load_acc(h[iu]);
    const A cdf = A(0.5) * (A(1) + m_erf(u * A(0.70710678118654752440)));
    const A pdf = m_exp(A(-0.5) * u * u) * A(0.39894228040143267794);
    const A d1 = cdf + u * pdf;  // gelu'(u)
    if constexpr (op == GegluOp::forward) {
      out[i] = store_acc<T>(v * u * cdf);
    } else if constexpr (op == GegluOp::backward) {
      const A gr = load_acc(g[i]);
      out[iv] = store_acc<T>(gr * u * cdf);
      out[iu] = store_acc<T>(gr * v * d1);
    } else if constexpr (op == GegluOp::jvp) {
      out[i] = store_acc<T>(load_acc(t[iv]) * u * cdf + load_acc(t[iu]) * v * d1);
    } else {
      const A gr = load_acc(g[i]), tv = load_acc(t[iv]), tu = load_acc(t[iu]);
      out[iv] = store_acc<T>(gr * tu * d1);
      out[iu] = store_acc<T>(gr * (tv * d1 + tu * v * pdf * (A(2) - u * u)));
    }
  }
}

template <GegluOp op>
struct Launch {
  int64_t rows, F;
  const void *g, *h, *t;
  void* out;
  cudaStream_t stream;
  template <class T>
  void operator()() const {
    if constexpr (std::is_same_v<T, int64_t>) {
      return;  // refused by the launcher in ops.cpp
    } else {
      auto go = [&]<class I>() {
        geglu_kernel<T, op, I><<<grid_cover(rows * F), kBlock, 0, stream>>>(
            I(rows), I(F), static_cast<const T*>(g), static_cast<const T*>(h),
            static_cast<const T*>(t), static_cast<T*>(out));
      };
      if (2 * rows * F < (int64_t(1) << 30)) {  // h and the backward's out are (rows, 2F)
        go.template operator()<int32_t>();
      } else {
        go.template operator()<int64_t>();
      }
      MT_CUDA_CHECK(cudaGetLastError());
    }
  }
};

}  // namespace

void geglu(GegluOp op, ScalarType t, int64_t rows, int64_t F, const void* g, const void* h,
           const void* tangent, void* out, cudaStream_t stream) {
  if (rows == 0 || F == 0) return;
  switch (op) {
    case GegluOp::forward:
      dispatch_float_storage(t, Launch<GegluOp::forward>{rows, F, g, h, tangent, out, stream});
      break;
    case GegluOp::backward:
      dispatch_float_storage(t, Launch<GegluOp::backward>{rows, F, g, h, tangent, out, stream});
      break;
    case GegluOp::jvp:
      dispatch_float_storage(t, Launch<GegluOp::jvp>{rows, F, g, h, tangent, out, stream});
      break;
    case GegluOp::hvp:
      dispatch_float_storage(t, Launch<GegluOp::hvp>{rows, F, g, h, tangent, out, stream});
      break;
  }
}

}  // namespace mt::gpu
