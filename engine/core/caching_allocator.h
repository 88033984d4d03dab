// A caching allocator for device memory, independent of the device API: the policy (size bins,
// best-fit reuse per stream, splitting and merging, statistics, graph-capture pools) lives here
// and is tested without a GPU (tests/test_caching_allocator.cpp); a backend supplies the raw
// memory, its streams and its capture state through a SegmentSource (the CUDA one is in
// kernels/cuda/allocator.cpp).
//
// Sizes are rounded up to 512 bytes. Requests up to 1 MiB are carved out of 2 MiB segments
// (the small pool); larger ones get segments rounded up to 2 MiB (the large pool). A request is
// served by the smallest free block of the same stream and pool that fits, split when the rest
// is worth keeping (>= 512 B in the small pool, > 1 MiB in the large), and a freed block merges
// with the free neighbours of its segment. Memory goes back to the source only on empty_cache()
// (which does nothing while the device is capturing a graph: freeing waits for the device)
// or when the source is out of memory (then unused segments are released and the request is
// tried once more before an error that names the size and the statistics).
//
// Because a block is reused only on the stream it was allocated on, and every use of a block
// is queued on that stream, a freed block can be handed out again at once: the stream orders
// the new user after the old one. (A tensor used on another stream would need an event; the
// engine uses one stream per device.)
//
// Graph capture: while a device's stream is capturing, allocations come from a private pool
// owned by that capture (its capture id). Blocks the capture frees return to that pool, so only
// the same capture reuses them, and the pool keeps its memory after the capture ends, so a
// replay writes to the addresses it was captured with. Blocks allocated before the capture and
// freed during it are held back until the pool is released (the graph may still use them).
// release_graph_pool() returns a pool's memory once its graph is destroyed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/core/storage.h"

namespace mt {

// Raw memory, streams and capture state of one backend.
class SegmentSource {
 public:
  virtual ~SegmentSource() = default;
  // A new segment of `bytes`, or nullptr when the device is out of memory (other failures
  // throw).
  virtual void* allocate_segment(size_t bytes, int device) = 0;
  virtual void free_segment(void* ptr, size_t bytes, int device) = 0;
  // The stream allocations on `device` are made for (opaque), and the id of the graph capture
  // running on it (0 = none). capture_id must not throw (it runs when tensors are freed).
  virtual const void* stream(int device) = 0;
  virtual unsigned long long capture_id(int device) noexcept = 0;
  // Free and total device memory, for the out-of-memory message ("" when unknown).
  virtual std::string memory_info(int /*device*/) { return {}; }
  virtual const char* name() const = 0;  // "CUDA"
};

class CachingAllocator final : public Allocator {
 public:
  static constexpr size_t kRound = 512;                     // every size is a multiple of this
  static constexpr size_t kSmallRequest = size_t(1) << 20;  // <= 1 MiB: the small pool
  static constexpr size_t kSmallSegment = size_t(2) << 20;  // small-pool segments
  static constexpr size_t kLargeRound = size_t(2) << 20;    // large segments: multiples of this

  explicit CachingAllocator(SegmentSource& source) : source_(source) {}
  ~CachingAllocator() override;  // frees the cached segments (not those still held by tensors)

  void* allocate(size_t nbytes, int device) override;
  void deallocate(void* ptr, size_t nbytes, int device) override;
  MemoryStats stats(int device) const override;
  void reset_peak(int device) override;
  void empty_cache(int device) override;

  void release_graph_pool(int device, unsigned long long capture_id);
  // Bytes in the private pools of captures not yet released (free or held by tensors).
  int64_t graph_pool_bytes(int device) const;
  // Segments held from the source (for tests).
  int64_t num_segments(int device) const;

 private:
  struct Pool;
  // A range of one segment; neighbours in the segment are linked so that freed blocks merge.
  struct Block {
    const void* stream = nullptr;
    size_t size = 0;
    char* ptr = nullptr;
    Pool* pool = nullptr;
    Block* prev = nullptr;
    Block* next = nullptr;
    bool allocated = false;
    bool small = false;
  };
  // Free blocks by (stream, size, address): lower_bound finds the smallest that fits.
  struct BlockLess {
    bool operator()(const Block* a, const Block* b) const;
  };
  using FreeSet = std::set<Block*, BlockLess>;
  struct Pool {
    FreeSet small, large;
    unsigned long long capture_id = 0;  // 0: the ordinary pool
    bool released = false;              // a graph pool whose graph is gone
    std::vector<Block*> deferred;       // ordinary blocks freed during this capture
    FreeSet& free_set(bool is_small) { return is_small ? small : large; }
  };
  struct DeviceState {
    Pool pool;
    std::map<unsigned long long, std::unique_ptr<Pool>> graph_pools;
    std::unordered_map<void*, Block*> live;
    int64_t allocated = 0, peak_allocated = 0, reserved = 0, peak_reserved = 0, num_allocs = 0;
    int64_t segments = 0;
  };

  DeviceState& state(int device);
  static Pool& graph_pool(DeviceState& d, unsigned long long capture);
  static Block* take_free(Pool& pool, const void* stream, size_t size, bool is_small);
  Block* new_segment(DeviceState& d, int device, Pool& pool, const void* stream, size_t requested,
                     size_t size, bool is_small);
  static void maybe_split(Pool& pool, Block* b, size_t size);
  static void free_block(Block* b);
  void release_unused_segments(DeviceState& d, int device, Pool& pool);

  SegmentSource& source_;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<DeviceState>> states_;
};

}  // namespace mt
