// The caching allocator's policy; see caching_allocator.h.
#include "engine/core/caching_allocator.h"

#include <algorithm>
#include <tuple>

#include "engine/core/error.h"

namespace mt {
namespace {

size_t round_size(size_t nbytes) {
  const size_t r = CachingAllocator::kRound;
  return (std::max<size_t>(nbytes, 1) + r - 1) / r * r;
}

double mib(int64_t bytes) { return double(bytes) / double(1 << 20); }

}  // namespace

bool CachingAllocator::BlockLess::operator()(const Block* a, const Block* b) const {
  return std::make_tuple(uintptr_t(a->stream), a->size, uintptr_t(a->ptr)) <
         std::make_tuple(uintptr_t(b->stream), b->size, uintptr_t(b->ptr));
}

CachingAllocator::~CachingAllocator() {
  for (size_t device = 0; device < states_.size(); ++device) {
    if (!states_[device]) continue;
    DeviceState& d = *states_[device];
    try {
      release_unused_segments(d, int(device), d.pool);
      for (auto& [id, gp] : d.graph_pools) release_unused_segments(d, int(device), *gp);
    } catch (...) {  // a destructor does not throw; the process is ending anyway
    }
  }
}

void* CachingAllocator::allocate(size_t nbytes, int device) {
  const void* stream = source_.stream(device);  // checks that the device exists
  const unsigned long long capture = source_.capture_id(device);
  const size_t size = round_size(nbytes);
  const bool is_small = size <= kSmallRequest;
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceState& d = state(device);
  Pool& pool = capture ? graph_pool(d, capture) : d.pool;
  Block* b = take_free(pool, stream, size, is_small);
  if (b == nullptr) b = new_segment(d, device, pool, stream, nbytes, size, is_small);
  maybe_split(pool, b, size);
  b->allocated = true;
  d.live.emplace(b->ptr, b);
  d.allocated += int64_t(b->size);
  d.peak_allocated = std::max(d.peak_allocated, d.allocated);
  d.num_allocs++;
  return b->ptr;
}

void CachingAllocator::deallocate(void* ptr, size_t, int device) {
  if (ptr == nullptr) return;
  const unsigned long long capture = source_.capture_id(device);
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
  if (b->pool->released) b->pool = &d.pool;  // its graph is gone: back to the ordinary pool
  free_block(b);
}

MemoryStats CachingAllocator::stats(int device) const {
  std::lock_guard<std::mutex> lock(mutex_);
  MemoryStats s;
  if (device >= 0 && size_t(device) < states_.size() && states_[size_t(device)]) {
    const DeviceState& d = *states_[size_t(device)];
    s.allocated_bytes = d.allocated;
    s.peak_allocated_bytes = d.peak_allocated;
    s.reserved_bytes = d.reserved;
    s.peak_reserved_bytes = d.peak_reserved;
    s.num_allocs = d.num_allocs;
  }
  return s;
}

void CachingAllocator::reset_peak(int device) {
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceState& d = state(device);
  d.peak_allocated = d.allocated;
  d.peak_reserved = d.reserved;
}

void CachingAllocator::empty_cache(int device) {
  // Returning segments (cudaFree) waits for the device, which a capture on it forbids: during
  // a capture the cache stays as it is.
  if (source_.capture_id(device) != 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceState& d = state(device);
  release_unused_segments(d, device, d.pool);
}

void CachingAllocator::release_graph_pool(int device, unsigned long long capture) {
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceState& d = state(device);
  auto it = d.graph_pools.find(capture);
  if (it == d.graph_pools.end()) return;
  Pool& gp = *it->second;
  gp.released = true;
  // Blocks of other pools held back during the capture; one whose pool's graph is gone by now
  // returns to the ordinary pool (its own pool is never allocated from again).
  for (Block* b : gp.deferred) {
    if (b->pool->released) b->pool = &d.pool;
    free_block(b);
  }
  gp.deferred.clear();
  // Free blocks move to the ordinary pool. A block still held by a tensor keeps pointing at
  // the released pool and moves when it is freed. A block only merges with neighbours of its
  // own pool, so a neighbour still in the graph pool merges when its turn comes.
  for (bool is_small : {true, false}) {
    std::vector<Block*> blocks(gp.free_set(is_small).begin(), gp.free_set(is_small).end());
    gp.free_set(is_small).clear();
    for (Block* b : blocks) {
      b->pool = &d.pool;
      free_block(b);
    }
  }
}

int64_t CachingAllocator::graph_pool_bytes(int device) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (device < 0 || size_t(device) >= states_.size() || !states_[size_t(device)]) return 0;
  const DeviceState& d = *states_[size_t(device)];
  int64_t total = 0;
  for (const auto& [id, gp] : d.graph_pools) {
    if (gp->released) continue;
    for (bool is_small : {true, false})
      for (const Block* b : gp->free_set(is_small)) total += int64_t(b->size);
  }
  for (const auto& [ptr, b] : d.live)
    if (b->pool->capture_id != 0 && !b->pool->released) total += int64_t(b->size);
  return total;
}

int64_t CachingAllocator::num_segments(int device) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (device < 0 || size_t(device) >= states_.size() || !states_[size_t(device)]) return 0;
  return states_[size_t(device)]->segments;
}

CachingAllocator::DeviceState& CachingAllocator::state(int device) {
  MT_CHECK(device >= 0, "{} device index {} is negative", source_.name(), device);
  if (size_t(device) >= states_.size()) states_.resize(size_t(device) + 1);
  auto& d = states_[size_t(device)];
  if (!d) d = std::make_unique<DeviceState>();
  return *d;
}

CachingAllocator::Pool& CachingAllocator::graph_pool(DeviceState& d, unsigned long long capture) {
  auto& p = d.graph_pools[capture];
  if (!p) {
    p = std::make_unique<Pool>();
    p->capture_id = capture;
  }
  return *p;
}

CachingAllocator::Block* CachingAllocator::take_free(Pool& pool, const void* stream, size_t size,
                                                     bool is_small) {
  FreeSet& set = pool.free_set(is_small);
  Block key;
  key.stream = stream;
  key.size = size;
  auto it = set.lower_bound(&key);
  if (it == set.end() || (*it)->stream != stream) return nullptr;
  Block* b = *it;
  set.erase(it);
  return b;
}

CachingAllocator::Block* CachingAllocator::new_segment(DeviceState& d, int device, Pool& pool,
                                                       const void* stream, size_t requested,
                                                       size_t size, bool is_small) {
  const size_t seg =
      is_small ? kSmallSegment : (size + kLargeRound - 1) / kLargeRound * kLargeRound;
  void* p = source_.allocate_segment(seg, device);
  // Give the cache back and try once more; not during a graph capture, where freeing memory
  // would wait for the device and invalidate the capture (the message says what to do).
  const bool capturing = pool.capture_id != 0;
  if (p == nullptr && !capturing) {
    release_unused_segments(d, device, d.pool);
    p = source_.allocate_segment(seg, device);
  }
  if (p == nullptr) {
    const std::string info = source_.memory_info(device);
    MT_FAIL("{} out of memory on device {}: could not allocate {} bytes ({:.1f} MiB; a segment of "
            "{} bytes); {:.1f} MiB allocated by tensors (peak {:.1f} MiB), {:.1f} MiB reserved "
            "(peak {:.1f} MiB){}{}. Reduce the batch or model size, or free tensors and call "
            "empty_cache(){}",
            source_.name(), device, requested, mib(int64_t(requested)), seg, mib(d.allocated),
            mib(d.peak_allocated), mib(d.reserved), mib(d.peak_reserved),
            info.empty() ? "" : "; ", info,
            capturing ? ". This happened during a CUDA-graph capture, which cannot return cached "
                        "memory: call empty_cache() before capturing"
                      : "");
  }
  d.reserved += int64_t(seg);
  d.peak_reserved = std::max(d.peak_reserved, d.reserved);
  d.segments++;
  Block* b = new Block;
  b->stream = stream;
  b->size = seg;
  b->ptr = static_cast<char*>(p);
  b->pool = &pool;
  b->small = is_small;
  return b;
}

void CachingAllocator::maybe_split(Pool& pool, Block* b, size_t size) {
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

void CachingAllocator::free_block(Block* b) {
  FreeSet& set = b->pool->free_set(b->small);
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

void CachingAllocator::release_unused_segments(DeviceState& d, int device, Pool& pool) {
  for (bool is_small : {true, false}) {
    FreeSet& set = pool.free_set(is_small);
    for (auto it = set.begin(); it != set.end();) {
      Block* b = *it;
      if (b->prev == nullptr && b->next == nullptr) {  // a whole segment
        source_.free_segment(b->ptr, b->size, device);
        d.reserved -= int64_t(b->size);
        d.segments--;
        delete b;
        it = set.erase(it);
      } else {
        ++it;
      }
    }
  }
}

}  // namespace mt
