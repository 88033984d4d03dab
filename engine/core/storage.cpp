#include "engine/core/storage.h"

#include <cstdlib>
#include <new>

#include "engine/core/error.h"

namespace mt {
namespace {

// The CPU allocator: 64-byte aligned blocks (whole cache lines, full-width vector loads) and
// lock-free statistics.
class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    size_t rounded = (std::max<size_t>(nbytes, 1) + 63) & ~size_t(63);
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) {
      MemoryStats s = stats();
      MT_FAIL("CPU out of memory: could not allocate {} bytes ({} bytes already held by tensors, "
              "peak {}); reduce the batch or model size",
              nbytes, s.allocated_bytes, s.peak_allocated_bytes);
    }
    int64_t now = allocated_.fetch_add(int64_t(nbytes), std::memory_order_relaxed) + int64_t(nbytes);
    int64_t peak = peak_.load(std::memory_order_relaxed);
    while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    num_allocs_.fetch_add(1, std::memory_order_relaxed);
    return p;
  }
  void deallocate(void* ptr, size_t nbytes) override {
    std::free(ptr);
    allocated_.fetch_sub(int64_t(nbytes), std::memory_order_relaxed);
  }
  MemoryStats stats() const override {
    MemoryStats s;
    s.allocated_bytes = allocated_.load(std::memory_order_relaxed);
    s.peak_allocated_bytes = peak_.load(std::memory_order_relaxed);
    // The CPU allocator does not cache: reserved equals allocated.
    s.reserved_bytes = s.allocated_bytes;
    s.peak_reserved_bytes = s.peak_allocated_bytes;
    s.num_allocs = num_allocs_.load(std::memory_order_relaxed);
    return s;
  }
  void reset_peak() override { peak_.store(allocated_.load()); }

 private:
  std::atomic<int64_t> allocated_{0}, peak_{0}, num_allocs_{0};
};

Allocator*& slot(DeviceType type) {
  static CpuAllocator cpu;
  static Allocator* table[kNumDeviceTypes] = {&cpu, nullptr};
  return table[int(type)];
}

}  // namespace

Allocator* allocator_for(DeviceType type) {
  Allocator* a = slot(type);
  MT_CHECK(a != nullptr, "no allocator for device type {}: metatape was built without that backend",
           int(type));
  return a;
}

void register_allocator(DeviceType type, Allocator* allocator) { slot(type) = allocator; }

MemoryStats memory_stats(Device device) { return allocator_for(device.type)->stats(); }
void reset_peak_memory_stats(Device device) { allocator_for(device.type)->reset_peak(); }
void empty_cache(Device device) { allocator_for(device.type)->empty_cache(); }

Storage::Storage(size_t nbytes, Device device)
    : nbytes_(nbytes), device_(device), allocator_(allocator_for(device.type)) {
  data_ = allocator_->allocate(nbytes);
}

Storage::~Storage() { allocator_->deallocate(data_, nbytes_); }

}  // namespace mt
