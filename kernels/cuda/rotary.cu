// rotate_pairs (the CUDA side of engine/ops/attention.cpp's fused rotary): each pair
// (x[2k], x[2k+1]) of every head of row i rotated by the angle whose cosine and sine are
// c[i, k] and sign * s[i, k]. One thread per pair, grid-stride; math in f32 (f64 for f64).
// Indices are 32-bit when every offset fits (below 2^30, so the grid stride cannot overflow
// either): 64-bit division costs tens of instructions per pair.
#include "kernels/cuda/elementwise.cuh"

namespace mt::gpu {
namespace {

template <class T, class I>
__global__ void rotate_pairs_kernel(I n, I heads, I half, const T* __restrict__ x,
                                    const T* __restrict__ c, const T* __restrict__ s, double sign,
                                    T* __restrict__ out) {
  using A = acc_t<T>;
  const I pairs = n * heads * half;
  const A sg = A(sign);
  for (I p = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); p < pairs;
       p += I(gridDim.x) * I(blockDim.x)) {
    const I k = p % half, row_head = p / half, i = row_head / heads;
    const I at = row_head * 2 * half + 2 * k;
    const A x0 = load_acc(x[at]), x1 = load_acc(x[at + 1]);
    const A ck = load_acc(c[i * half + k]), sk = sg * load_acc(s[i * half + k]);
    // (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)
    out[at] = store_acc<T>(x0 * ck - x1 * sk);
    out[at + 1] = store_acc<T>(x1 * ck + x0 * sk);
  }
}

}  // namespace

void rotate_pairs(ScalarType t, int64_t n, int64_t heads, int64_t half, const void* x,
                  const void* c, const void* s, double sign, void* out, cudaStream_t stream) {
  const int64_t pairs = n * heads * half;
  if (pairs == 0) return;
  dispatch_float_storage(t, [&]<class T>() {
    auto go = [&]<class I>() {
      rotate_pairs_kernel<T, I><<<grid_cover(pairs), kBlock, 0, stream>>>(
          I(n), I(heads), I(half), static_cast<const T*>(x), static_cast<const T*>(c),
          static_cast<const T*>(s), sign, static_cast<T*>(out));
    };
    if (2 * pairs < (int64_t(1) << 30)) {
      go.template operator()<int32_t>();
    } else {
      go.template operator()<int64_t>();
    }
    MT_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace mt::gpu
