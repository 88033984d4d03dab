// The launch plan of the multi-tensor kernels (foreach.cu, optim.cu's adamw_foreach): a list of
// tensors cut into chunks of kForeachChunk elements, one CTA per chunk; each launch covers at
// most kMaxTensors tensors and kMaxBlocks chunks, described by a table passed by value as the
// kernel's argument (at most 4 KiB with the other arguments: static_asserts at the kernels).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/foreach_plan.h"

namespace mt::gpu {

inline constexpr int kForeachThreads = 256;
inline constexpr int kForeachUnroll = 4;  // independent elements in flight per thread

// Which tensor of the launch (slot) and which of its chunks each CTA takes.
template <int kMaxBlocks>
struct ForeachBlocks {
  uint8_t slot[kMaxBlocks];
  int32_t chunk[kMaxBlocks];
};

template <int kMaxBlocks>
inline void fill_blocks(const ForeachLaunch& l, ForeachBlocks<kMaxBlocks>& b) {
  for (size_t k = 0; k < l.blocks.size(); ++k) {
    b.slot[k] = uint8_t(l.blocks[k].first);
    b.chunk[k] = l.blocks[k].second;
  }
}

// The element range [begin, end) of this CTA's chunk of a tensor of n elements.
template <int kMaxBlocks>
__device__ __forceinline__ int foreach_block(const ForeachBlocks<kMaxBlocks>& b,
                                             const int64_t* n, int64_t& begin, int64_t& end) {
  const int slot = b.slot[blockIdx.x];
  begin = int64_t(b.chunk[blockIdx.x]) * kForeachChunk;
  end = begin + kForeachChunk < n[slot] ? begin + kForeachChunk : n[slot];
  return slot;
}

}  // namespace mt::gpu
