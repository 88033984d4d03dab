// Storage: one allocation shared by a tensor and all of its views, plus the version counter that
// autograd uses to detect in-place modification of a saved tensor. Allocators are per backend
// and keep the memory statistics that benchmarks report (current and peak bytes).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/core/device.h"

namespace mt {

struct MemoryStats {
  int64_t allocated_bytes = 0;       // bytes held by live tensors
  int64_t peak_allocated_bytes = 0;  // high-water mark since the last reset
  int64_t reserved_bytes = 0;        // bytes held from the system (>= allocated with caching)
  int64_t peak_reserved_bytes = 0;
  int64_t num_allocs = 0;            // allocations served since start
};

// One allocator per backend; `device` is the device index within it (the CPU has only 0).
// Statistics are kept per device.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes, int device) = 0;
  virtual void deallocate(void* ptr, size_t nbytes, int device) = 0;
  virtual MemoryStats stats(int device) const = 0;
  virtual void reset_peak(int device) = 0;
  virtual void empty_cache(int /*device*/) {}
};

// The allocator of a backend; the CPU one is always present. Other backends register theirs
// when first used: allocator_for(CUDA) runs init_cuda_backend() (engine/core/backend.h), which
// registers the CUDA caching allocator and kernels from kernels/cuda.
Allocator* allocator_for(DeviceType type);
void register_allocator(DeviceType type, Allocator* allocator);

MemoryStats memory_stats(Device device = Device{});
void reset_peak_memory_stats(Device device = Device{});
void empty_cache(Device device = Device{});

class Storage {
 public:
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  // Bumped by every in-place write; a saved tensor remembers the value it saw.
  uint32_t version() const { return version_; }
  void bump_version() { ++version_; }
  // Shared constants (scalar_like) refuse in-place writes and requires_grad: graphs that read
  // them are not theirs alone.
  bool read_only() const { return read_only_; }
  void set_read_only() { read_only_ = true; }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  uint32_t version_ = 0;
  bool read_only_ = false;
  Allocator* allocator_;
};

}  // namespace mt
