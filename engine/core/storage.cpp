#include "engine/core/storage.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine/core/backend.h"
#include "engine/core/error.h"

namespace mt {
namespace {

// The CPU allocator: 64-byte aligned blocks (whole cache lines, full-width vector loads) and
// lock-free statistics for small blocks. Blocks of 256 KiB and more are cached in size bins
// (quarter-power-of-two steps, so at most 25% slack) instead of going back to the system: a
// training step allocates the same large intermediates every iteration, and returning them would
// cost fresh zeroed pages (page faults) on every reuse.
class CpuAllocator final : public Allocator {
 public:
  static constexpr size_t kCacheMin = size_t(256) << 10;

  ~CpuAllocator() override { release_cache(); }

  void* allocate(size_t nbytes, int) override {
    const size_t size = bin_size(nbytes);
    void* p = nullptr;
    if (size >= kCacheMin) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = cache_.find(size);
      if (it != cache_.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
      }
    }
    if (p == nullptr) {
      p = std::aligned_alloc(64, size);
      if (p == nullptr && size >= kCacheMin) {  // give the cache back and try once more
        release_cache();
        p = std::aligned_alloc(64, size);
      }
      if (p == nullptr) {
        MemoryStats s = stats(0);
        MT_FAIL("CPU out of memory: could not allocate {} bytes ({} bytes held by tensors, peak "
                "{}); reduce the batch or model size",
                nbytes, s.allocated_bytes, s.peak_allocated_bytes);
      }
      bump(reserved_, peak_reserved_, int64_t(size));
    }
    bump(allocated_, peak_, int64_t(size));
    num_allocs_.fetch_add(1, std::memory_order_relaxed);
    return p;
  }

  void deallocate(void* ptr, size_t nbytes, int) override {
    const size_t size = bin_size(nbytes);
    allocated_.fetch_sub(int64_t(size), std::memory_order_relaxed);
    if (size >= kCacheMin) {
      std::lock_guard<std::mutex> lock(mutex_);
      cache_[size].push_back(ptr);
      return;
    }
    std::free(ptr);
    reserved_.fetch_sub(int64_t(size), std::memory_order_relaxed);
  }

  MemoryStats stats(int) const override {
    MemoryStats s;
    s.allocated_bytes = allocated_.load(std::memory_order_relaxed);
    s.peak_allocated_bytes = peak_.load(std::memory_order_relaxed);
    s.reserved_bytes = reserved_.load(std::memory_order_relaxed);
    s.peak_reserved_bytes = peak_reserved_.load(std::memory_order_relaxed);
    s.num_allocs = num_allocs_.load(std::memory_order_relaxed);
    return s;
  }
  void reset_peak(int) override {
    peak_.store(allocated_.load());
    peak_reserved_.store(reserved_.load());
  }
  void empty_cache(int) override { release_cache(); }

 private:
  // 64-byte multiples below the cache threshold; above it, the next of 2^k * {1, 5/4, 6/4, 7/4}.
  static size_t bin_size(size_t nbytes) {
    size_t n = (std::max<size_t>(nbytes, 1) + 63) & ~size_t(63);
    if (n < kCacheMin) return n;
    size_t top = size_t(1) << (63 - __builtin_clzll(n));  // largest power of two <= n
    size_t step = top / 4;
    return (n + step - 1) / step * step;
  }
  static void bump(std::atomic<int64_t>& value, std::atomic<int64_t>& peak, int64_t by) {
    int64_t now = value.fetch_add(by, std::memory_order_relaxed) + by;
    int64_t p = peak.load(std::memory_order_relaxed);
    while (now > p && !peak.compare_exchange_weak(p, now, std::memory_order_relaxed)) {
    }
  }
  void release_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [size, blocks] : cache_) {
      for (void* p : blocks) std::free(p);
      reserved_.fetch_sub(int64_t(size * blocks.size()), std::memory_order_relaxed);
    }
    cache_.clear();
  }

  std::atomic<int64_t> allocated_{0}, peak_{0}, reserved_{0}, peak_reserved_{0}, num_allocs_{0};
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> cache_;  // bin size -> free blocks
};

Allocator*& slot(DeviceType type) {
  static CpuAllocator cpu;
  static Allocator* table[kNumDeviceTypes] = {&cpu, nullptr};
  return table[int(type)];
}

}  // namespace

Allocator* allocator_for(DeviceType type) {
  Allocator* a = slot(type);
  if (a == nullptr && type == DeviceType::CUDA) {
    init_cuda_backend();  // registers the allocator on first use (a no-op without CUDA)
    a = slot(type);
  }
  MT_CHECK(a != nullptr, "no allocator for device type {}: metatape was built without that backend",
           int(type));
  return a;
}

void register_allocator(DeviceType type, Allocator* allocator) { slot(type) = allocator; }

MemoryStats memory_stats(Device device) {
  return allocator_for(device.type)->stats(device.index);
}
void reset_peak_memory_stats(Device device) {
  allocator_for(device.type)->reset_peak(device.index);
}
void empty_cache(Device device) { allocator_for(device.type)->empty_cache(device.index); }

Storage::Storage(size_t nbytes, Device device)
    : nbytes_(nbytes), device_(device), allocator_(allocator_for(device.type)) {
  data_ = allocator_->allocate(nbytes, device.index);
}

Storage::~Storage() { allocator_->deallocate(data_, nbytes_, device_.index); }

}  // namespace mt
