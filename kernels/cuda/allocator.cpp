// The CUDA caching allocator: size-binned, stream-aware free lists per device, statistics, and
// private pools for CUDA-graph captures. See allocator.h for the policy.
#include "kernels/cuda/allocator.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "engine/core/backend.h"
#include "engine/core/error.h"
#include "engine/core/storage.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/stream.h"

namespace mt::gpu {
namespace {

constexpr size_t kRound = 512;                      // every size is a multiple of this
constexpr size_t kSmallRequest = size_t(1) << 20;   // <= 1 MiB: served from the small pool
constexpr size_t kSmallSegment = size_t(2) << 20;   // small-pool segments are 2 MiB
constexpr size_t kLargeRound = size_t(2) << 20;     // large segments are multiples of 2 MiB

struct Pool;

// A range of one cudaMalloc'ed segment; neighbours in the segment are linked so that freed
// blocks merge back.
struct Block {
  cudaStream_t stream = nullptr;
  size_t size = 0;
  char* ptr = nullptr;
  Pool* pool = nullptr;
  Block* prev = nullptr;
  Block* next = nullptr;
  bool allocated = false;
  bool small = false;  // from the small pool
};

// Free blocks ordered by (stream, size, address): lower_bound finds the smallest block of a
// stream that fits.
struct BlockLess {
  bool operator()(const Block* a, const Block* b) const {
    return std::make_tuple(uintptr_t(a->stream), a->size, uintptr_t(a->ptr)) <
           std::make_tuple(uintptr_t(b->stream), b->size, uintptr_t(b->ptr));
  }
};

struct Pool {
  std::set<Block*, BlockLess> small, large;
  unsigned long long capture_id = 0;  // 0: the ordinary pool
  bool released = false;              // a graph pool whose graph is gone
  std::vector<Block*> deferred;       // ordinary blocks freed during this capture
  std::set<Block*, BlockLess>& free_set(bool is_small) { return is_small ? small : large; }
};

struct DeviceState {
  Pool pool;
  std::map<unsigned long long, std::unique_ptr<Pool>> graph_pools;
  std::unordered_map<void*, Block*> live;
  int64_t allocated = 0, peak_allocated = 0, reserved = 0, peak_reserved = 0, num_allocs = 0;
};

size_t round_size(size_t nbytes) {
  return (std::max<size_t>(nbytes, 1) + kRound - 1) / kRound * kRound;
}

std::string describe(const MemoryStats& s) {
  auto mib = [](int64_t b) { return double(b) / double(1 << 20); };
  return fmt::format("{:.1f} MiB allocated by tensors (peak {:.1f} MiB), {:.1f} MiB reserved "
                     "(peak {:.1f} MiB)",
                     mib(s.allocated_bytes), mib(s.peak_allocated_bytes), mib(s.reserved_bytes),
                     mib(s.peak_reserved_bytes));
}

class CudaCachingAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes, int device) override {
    cudaStream_t s = stream(device);  // checks that the device exists
    const unsigned long long capture = capture_id(s);
    const size_t size = round_size(nbytes);
    const bool is_small = size <= kSmallRequest;
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceState& d = state(device);
    Pool& pool = capture ? graph_pool(d, capture) : d.pool;
    Block* b = take_free(pool, s, size, is_small);
    if (b == nullptr) b = new_segment(d, device, pool, s, nbytes, size, is_small);
    maybe_split(pool, b, size);
    b->allocated = true;
    d.live.emplace(b->ptr, b);
    d.allocated += int64_t(b->size);
    d.peak_allocated = std::max(d.peak_allocated, d.allocated);
    d.num_allocs++;
    return b->ptr;
  }

  void deallocate(void* ptr, size_t, int device) override {
    if (ptr == nullptr) return;
    const unsigned long long capture = capture_id_if_created(device);
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceState& d = state(device);
    auto it = d.live.find(ptr);
    if (it == d.live.end()) return;  // not ours (cannot happen through Storage)
    Block* b = it->second;
    d.live.erase(it);
    d.allocated -= int64_t(b->size);
    b->allocated = false;
    if (capture != 0 && b->pool->capture_id != capture) {
      // Allocated outside this capture: the graph may use it, so it waits for the pool's release.
      graph_pool(d, capture).deferred.push_back(b);
      return;
    }
    if (b->pool->released) {
      // Its graph is gone: the block goes back to the ordinary pool.
      move_to_pool(b, d.pool);
    }
    free_block(b);
  }

  MemoryStats stats(int device) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    MemoryStats s;
    if (size_t(device) < states_.size() && states_[size_t(device)]) {
      const DeviceState& d = *states_[size_t(device)];
      s.allocated_bytes = d.allocated;
      s.peak_allocated_bytes = d.peak_allocated;
      s.reserved_bytes = d.reserved;
      s.peak_reserved_bytes = d.peak_reserved;
      s.num_allocs = d.num_allocs;
    }
    return s;
  }

  void reset_peak(int device) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceState& d = state(device);
    d.peak_allocated = d.allocated;
    d.peak_reserved = d.reserved;
  }

  void empty_cache(int device) override {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceState& d = state(device);
    DeviceGuard guard(device);
    release_unused_segments(d, d.pool);
  }

  unsigned long long capture_id_of(int device) { return capture_id(stream(device)); }

  void release_graph(int device, unsigned long long capture) {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceState& d = state(device);
    auto it = d.graph_pools.find(capture);
    if (it == d.graph_pools.end()) return;
    Pool& gp = *it->second;
    gp.released = true;
    for (Block* b : gp.deferred) free_block(b);  // ordinary blocks held back during the capture
    gp.deferred.clear();
    // Free blocks move to the ordinary pool. A block of a graph segment that is still held by a
    // tensor keeps pointing at the released pool and moves when it is freed. Free blocks only
    // merge with free neighbours, so neighbours live in the same pool after this loop.
    for (bool is_small : {true, false}) {
      std::vector<Block*> blocks(gp.free_set(is_small).begin(), gp.free_set(is_small).end());
      gp.free_set(is_small).clear();
      for (Block* b : blocks) {
        b->pool = &d.pool;
        free_block(b);
      }
    }
  }

  int64_t graph_bytes(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceState& d = state(device);
    int64_t total = 0;
    for (auto& [id, gp] : d.graph_pools) {
      if (gp->released) continue;
      for (bool is_small : {true, false})
        for (Block* b : gp->free_set(is_small)) total += int64_t(b->size);
    }
    for (auto& [ptr, b] : d.live)
      if (b->pool->capture_id != 0 && !b->pool->released) total += int64_t(b->size);
    return total;
  }

 private:
  static unsigned long long capture_id(cudaStream_t s) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    unsigned long long id = 0;
    MT_CUDA_CHECK(cudaStreamGetCaptureInfo(s, &status, &id));
    return status == cudaStreamCaptureStatusActive ? id : 0;
  }
  // Frees happen in destructors: never throw there, and do not create a stream to ask.
  unsigned long long capture_id_if_created(int device) {
    cudaStream_t s = stream(device);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    unsigned long long id = 0;
    if (cudaStreamGetCaptureInfo(s, &status, &id) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return status == cudaStreamCaptureStatusActive ? id : 0;
  }

  DeviceState& state(int device) {
    if (size_t(device) >= states_.size()) states_.resize(size_t(device) + 1);
    auto& d = states_[size_t(device)];
    if (!d) d = std::make_unique<DeviceState>();
    return *d;
  }

  static Pool& graph_pool(DeviceState& d, unsigned long long capture) {
    auto& p = d.graph_pools[capture];
    if (!p) {
      p = std::make_unique<Pool>();
      p->capture_id = capture;
    }
    return *p;
  }

  static Block* take_free(Pool& pool, cudaStream_t s, size_t size, bool is_small) {
    auto& set = pool.free_set(is_small);
    Block key;
    key.stream = s;
    key.size = size;
    auto it = set.lower_bound(&key);
    if (it == set.end() || (*it)->stream != s) return nullptr;
    Block* b = *it;
    set.erase(it);
    return b;
  }

  Block* new_segment(DeviceState& d, int device, Pool& pool, cudaStream_t s, size_t requested,
                     size_t size, bool is_small) {
    const size_t seg = is_small ? kSmallSegment : (size + kLargeRound - 1) / kLargeRound * kLargeRound;
    DeviceGuard guard(device);
    void* p = nullptr;
    cudaError_t status = cudaMalloc(&p, seg);
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear it, give the cache back and try once more
      release_unused_segments(d, d.pool);
      status = cudaMalloc(&p, seg);
    }
    if (status == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      (void)cudaMemGetInfo(&free_bytes, &total_bytes);
      (void)cudaGetLastError();
      MemoryStats st;
      st.allocated_bytes = d.allocated;
      st.peak_allocated_bytes = d.peak_allocated;
      st.reserved_bytes = d.reserved;
      st.peak_reserved_bytes = d.peak_reserved;
      MT_FAIL("CUDA out of memory on cuda:{}: could not allocate {} bytes ({:.1f} MiB; a segment "
              "of {} bytes); {}; the device has {:.1f} MiB free of {:.1f} MiB. Reduce the batch "
              "or model size, or free tensors and call empty_cache()",
              device, requested, double(requested) / double(1 << 20), seg, describe(st),
              double(free_bytes) / double(1 << 20), double(total_bytes) / double(1 << 20));
    }
    MT_CUDA_CHECK(status);
    d.reserved += int64_t(seg);
    d.peak_reserved = std::max(d.peak_reserved, d.reserved);
    Block* b = new Block;
    b->stream = s;
    b->size = seg;
    b->ptr = static_cast<char*>(p);
    b->pool = &pool;
    b->small = is_small;
    return b;
  }

  // Splits b to `size` when the rest is worth keeping; the rest goes to the free list.
  static void maybe_split(Pool& pool, Block* b, size_t size) {
    const size_t rest = b->size - size;
    const bool worth = b->small ? rest >= kRound : rest > kSmallRequest;
    if (!worth) return;
    Block* r = new Block;
    r->stream = b->stream;
    r->size = rest;
    r->ptr = b->ptr + size;
    r->pool = &pool;
    r->small = b->small;
    r->prev = b;
    r->next = b->next;
    if (b->next) b->next->prev = r;
    b->next = r;
    b->size = size;
    pool.free_set(r->small).insert(r);
  }

  // Returns a block to its pool's free list, merged with its free neighbours.
  static void free_block(Block* b) {
    auto& set = b->pool->free_set(b->small);
    for (Block* n : {b->prev, b->next}) {
      if (n == nullptr || n->allocated || n->pool != b->pool) continue;
      auto it = set.find(n);
      if (it == set.end()) continue;  // held back (deferred), not free yet
      set.erase(it);
      if (n == b->prev) {
        b->ptr = n->ptr;
        b->prev = n->prev;
        if (n->prev) n->prev->next = b;
      } else {
        b->next = n->next;
        if (n->next) n->next->prev = b;
      }
      b->size += n->size;
      delete n;
    }
    set.insert(b);
  }

  static void move_to_pool(Block* b, Pool& pool) { b->pool = &pool; }

  // cudaFree every free block that is a whole segment (cudaFree waits for the device).
  static void release_unused_segments(DeviceState& d, Pool& pool) {
    for (bool is_small : {true, false}) {
      auto& set = pool.free_set(is_small);
      for (auto it = set.begin(); it != set.end();) {
        Block* b = *it;
        if (b->prev == nullptr && b->next == nullptr) {
          MT_CUDA_CHECK(cudaFree(b->ptr));
          d.reserved -= int64_t(b->size);
          delete b;
          it = set.erase(it);
        } else {
          ++it;
        }
      }
    }
  }

  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<DeviceState>> states_;
};

// Never destroyed: tensors freed during static destruction still find it, and no cudaFree runs
// after the CUDA runtime has shut down.
CudaCachingAllocator& the_allocator() {
  static auto* a = new CudaCachingAllocator;
  return *a;
}

}  // namespace

Allocator* caching_allocator() { return &the_allocator(); }

unsigned long long current_capture_id(int device) { return the_allocator().capture_id_of(device); }

void release_graph_pool(int device, unsigned long long capture_id) {
  the_allocator().release_graph(device, capture_id);
}

int64_t graph_pool_bytes(int device) { return the_allocator().graph_bytes(device); }

}  // namespace mt::gpu
