// How the multi-tensor kernels (foreach.cu, optim.cu's adamw_foreach) cut a list of tensors
// into launches: chunks of kForeachChunk elements, one CTA each, at most max_tensors tensors and
// max_blocks chunks per launch (their tables are kernel arguments, 4 KiB at most). Plain C++:
// the CPU tests check it (tests/test_ops_foreach.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace mt::gpu {

inline constexpr int64_t kForeachChunk = 32768;

// One launch: the entries (indices into the caller's list) given slots 0, 1, ..., and the chunks.
struct ForeachLaunch {
  std::vector<int> entries;
  std::vector<std::pair<int, int32_t>> blocks;  // (slot, chunk)
  int64_t first_chunk = 0;                     // chunks of the earlier launches
};

// Cuts the entries (n[i] elements each; empty ones take no chunk) into launches, in order.
inline std::vector<ForeachLaunch> plan_foreach(const std::vector<int64_t>& n, int max_tensors,
                                               int max_blocks) {
  std::vector<ForeachLaunch> plan(1);
  int64_t chunks_so_far = 0;
  for (size_t i = 0; i < n.size(); ++i) {
    const int64_t chunks = (n[i] + kForeachChunk - 1) / kForeachChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      ForeachLaunch* l = &plan.back();
      bool here = !l->entries.empty() && l->entries.back() == int(i);
      if (int(l->blocks.size()) == max_blocks ||
          (!here && int(l->entries.size()) == max_tensors)) {
        plan.emplace_back();
        l = &plan.back();
        l->first_chunk = chunks_so_far;
        here = false;
      }
      if (!here) l->entries.push_back(int(i));
      l->blocks.emplace_back(int(l->entries.size()) - 1, int32_t(c));
      ++chunks_so_far;
    }
  }
  if (plan.back().blocks.empty()) plan.pop_back();
  return plan;
}

}  // namespace mt::gpu
