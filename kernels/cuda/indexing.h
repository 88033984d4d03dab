// Offsets of an element in the iteration spaces of launch.h, shared by the kernels (device) and
// by the host-side tests of the launch descriptors (tests/test_cuda_launch.cpp), so the index
// arithmetic the kernels use is checked on machines without a GPU too.
#pragma once

#include <cstdint>

#include "kernels/cuda/launch.h"

#if defined(__CUDACC__)
#define MT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MT_HOST_DEVICE inline
#endif

namespace mt::gpu {

// Offsets of every operand of element `linear` (row-major over it.sizes). Index is the type the
// division runs in: int32_t where every index and offset fits (fits_int32), which is several
// times cheaper on a GPU than 64-bit division.
template <int N, class Index = int64_t>
MT_HOST_DEVICE void offsets(const Iter& it, int64_t linear_in, int64_t (&off)[N]) {
  Index linear = Index(linear_in);
  Index o[N];
  for (int k = 0; k < N; ++k) o[k] = 0;
  for (int d = it.rank - 1; d >= 0; --d) {
    const Index size = Index(it.sizes[d]);
    const Index idx = linear % size;
    linear /= size;
    for (int k = 0; k < N; ++k) o[k] += idx * Index(it.strides[k][d]);
  }
  for (int k = 0; k < N; ++k) off[k] = o[k];
}

// Whether every element index and every operand offset of `it` fits in int32_t.
inline bool fits_int32(const Iter& it) {
  constexpr int64_t kMax = 0x7fffffff;
  if (it.numel > kMax) return false;
  for (int k = 0; k < it.num_operands; ++k) {
    int64_t reach = 0;
    for (int d = 0; d < it.rank; ++d)
      reach += (it.strides[k][d] < 0 ? -it.strides[k][d] : it.strides[k][d]) * (it.sizes[d] - 1);
    if (reach > kMax) return false;
  }
  return true;
}

// Offset of index `linear` in a (sizes, strides) space of `rank` dims.
MT_HOST_DEVICE int64_t offset_of(int64_t linear, int rank, const int64_t* sizes,
                                 const int64_t* strides) {
  int64_t off = 0;
  for (int d = rank - 1; d >= 0; --d) {
    const int64_t size = sizes[d];
    off += (linear % size) * strides[d];
    linear /= size;
  }
  return off;
}

// The reduction's offsets: element k of output m is at x[outer_x_offset(m) + inner_offset(k)],
// output m at out[outer_out_offset(m)].
MT_HOST_DEVICE int64_t inner_offset(const ReduceDesc& d, int64_t k) {
  return d.inner_rank == 1 ? k * d.inner_x_strides[0]
                           : offset_of(k, d.inner_rank, d.inner_sizes, d.inner_x_strides);
}
MT_HOST_DEVICE int64_t outer_x_offset(const ReduceDesc& d, int64_t m) {
  return offset_of(m, d.outer_rank, d.outer_sizes, d.outer_x_strides);
}
MT_HOST_DEVICE int64_t outer_out_offset(const ReduceDesc& d, int64_t m) {
  return offset_of(m, d.outer_rank, d.outer_sizes, d.outer_out_strides);
}

// The elements [k0, k1) of each output that split `split` of d.splits reduces.
MT_HOST_DEVICE void split_range(const ReduceDesc& d, int split, int64_t& k0, int64_t& k1) {
  const int64_t chunk = (d.inner + d.splits - 1) / d.splits;
  k0 = split * chunk;
  k1 = k0 + chunk < d.inner ? k0 + chunk : d.inner;
  if (k0 > d.inner) k0 = d.inner;
}

}  // namespace mt::gpu
