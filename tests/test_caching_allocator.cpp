// The device caching allocator's policy (engine/core/caching_allocator.h), run on a fake
// segment source so it is tested on every machine: size rounding and pools, best-fit reuse,
// splitting and merging, per-device and per-stream separation, statistics, empty_cache, the
// release-and-retry on out of memory and its message, and graph-capture pools. The CUDA
// allocator is this class over cudaMalloc (tests/test_cuda_memory.cpp checks it on a GPU).
#include <catch2/catch.hpp>

#include <map>
#include <set>

#include "engine/core/caching_allocator.h"
#include "engine/core/error.h"

using namespace mt;

namespace {

constexpr int64_t kMiB = int64_t(1) << 20;

// Hands out address ranges (never dereferenced) up to `limit` bytes in all.
class FakeSource final : public SegmentSource {
 public:
  int64_t limit = int64_t(1) << 40;
  int64_t in_use = 0;
  int64_t allocations = 0;
  unsigned long long capture = 0;
  std::map<uintptr_t, size_t> segments;

  void* allocate_segment(size_t bytes, int) override {
    if (in_use + int64_t(bytes) > limit) return nullptr;
    const uintptr_t p = next_;
    next_ += bytes + 4096;  // a gap, so neighbouring segments are never contiguous
    in_use += int64_t(bytes);
    ++allocations;
    segments[p] = bytes;
    return reinterpret_cast<void*>(p);
  }
  void free_segment(void* ptr, size_t bytes, int) override {
    auto it = segments.find(reinterpret_cast<uintptr_t>(ptr));
    REQUIRE(it != segments.end());  // only whole segments come back
    REQUIRE(it->second == bytes);
    segments.erase(it);
    in_use -= int64_t(bytes);
  }
  const void* stream(int device) override { return &streams_[device]; }
  unsigned long long capture_id(int) noexcept override { return capture; }
  const char* name() const override { return "FAKE"; }

 private:
  uintptr_t next_ = uintptr_t(1) << 32;
  int streams_[4] = {};
};

}  // namespace

TEST_CASE("caching allocator: sizes round to 512 B, small requests share 2 MiB segments", "[memory]") {
  FakeSource src;
  CachingAllocator a(src);
  void* p = a.allocate(100, 0);
  CHECK(a.stats(0).allocated_bytes == 512);
  CHECK(a.stats(0).reserved_bytes == 2 * kMiB);
  void* q = a.allocate(kMiB, 0);  // the largest small request: same segment
  CHECK(a.num_segments(0) == 1);
  CHECK(static_cast<char*>(q) - static_cast<char*>(p) == 512);
  void* r = a.allocate(kMiB, 0);  // 1 MiB - 512 left in the segment: a new one
  CHECK(a.num_segments(0) == 2);
  CHECK(a.stats(0).allocated_bytes == 512 + 2 * kMiB);
  CHECK(a.stats(0).num_allocs == 3);
  for (void* x : {p, q, r}) a.deallocate(x, 0, 0);
  CHECK(a.stats(0).allocated_bytes == 0);
  CHECK(a.stats(0).reserved_bytes == 4 * kMiB);  // cached
  a.empty_cache(0);
  CHECK(a.stats(0).reserved_bytes == 0);
  CHECK(src.in_use == 0);
}

TEST_CASE("caching allocator: large requests get 2 MiB-multiple segments, split when worth it", "[memory]") {
  FakeSource src;
  CachingAllocator a(src);
  void* p = a.allocate(3 * kMiB, 0);  // 4 MiB segment; the 1 MiB rest is not kept apart
  CHECK(a.stats(0).allocated_bytes == 4 * kMiB);
  void* q = a.allocate(5 * kMiB / 2, 0);  // 4 MiB segment, the 1.5 MiB rest is split off
  CHECK(a.stats(0).allocated_bytes == 4 * kMiB + 5 * kMiB / 2);
  CHECK(a.num_segments(0) == 2);
  void* r = a.allocate(6 * kMiB / 5, 0);  // fits the 1.5 MiB rest: no new segment
  CHECK(a.num_segments(0) == 2);
  CHECK(static_cast<char*>(r) - static_cast<char*>(q) == 5 * kMiB / 2);
  for (void* x : {p, q, r}) a.deallocate(x, 0, 0);
  a.empty_cache(0);  // q and r merged back into one whole segment
  CHECK(a.num_segments(0) == 0);
  CHECK(src.in_use == 0);
}

TEST_CASE("caching allocator: freed blocks are reused best-fit and merge with their neighbours", "[memory]") {
  FakeSource src;
  CachingAllocator a(src);
  void* x = a.allocate(4096, 0);
  void* y = a.allocate(8192, 0);
  void* z = a.allocate(4096, 0);
  void* keep = a.allocate(512, 0);  // keeps the segment's tail from merging with z
  a.deallocate(y, 0, 0);
  a.deallocate(x, 0, 0);  // merges with y: one free block of 12288 at x
  void* w = a.allocate(12288, 0);
  CHECK(w == x);
  a.deallocate(w, 0, 0);
  a.deallocate(z, 0, 0);
  // Best fit: of the free 16384 block at x and the tail of the segment, the smaller that fits.
  void* v = a.allocate(16384, 0);
  CHECK(v == x);
  CHECK(src.allocations == 1);
  a.empty_cache(0);  // v and keep still allocated: the segment stays
  CHECK(a.num_segments(0) == 1);
  a.deallocate(v, 0, 0);
  a.deallocate(keep, 0, 0);
  a.empty_cache(0);
  CHECK(a.num_segments(0) == 0);
}

TEST_CASE("caching allocator: devices keep separate pools and statistics, peaks reset", "[memory]") {
  FakeSource src;
  CachingAllocator a(src);
  void* p0 = a.allocate(10 * kMiB, 0);
  void* p1 = a.allocate(2 * kMiB, 1);
  CHECK(a.stats(0).allocated_bytes == 10 * kMiB);
  CHECK(a.stats(1).allocated_bytes == 2 * kMiB);
  a.deallocate(p0, 0, 0);
  void* q1 = a.allocate(4 * kMiB, 1);  // device 0's free 10 MiB block is not device 1's
  CHECK(a.num_segments(1) == 2);
  CHECK(a.stats(0).peak_allocated_bytes == 10 * kMiB);
  CHECK(a.stats(0).allocated_bytes == 0);
  a.reset_peak(0);
  CHECK(a.stats(0).peak_allocated_bytes == 0);
  CHECK(a.stats(0).peak_reserved_bytes == 10 * kMiB);  // still cached
  a.empty_cache(0);
  a.reset_peak(0);
  CHECK(a.stats(0).peak_reserved_bytes == 0);
  CHECK(a.stats(1).peak_allocated_bytes == 6 * kMiB);
  CHECK(a.stats(3).allocated_bytes == 0);  // a device never used
  a.deallocate(p1, 0, 1);
  a.deallocate(q1, 0, 1);
}

TEST_CASE("caching allocator: out of memory releases the cache, retries, then names the size", "[memory]") {
  FakeSource src;
  src.limit = 8 * kMiB;
  CachingAllocator a(src);
  a.deallocate(a.allocate(6 * kMiB, 0), 0, 0);  // 6 MiB cached
  void* big = a.allocate(8 * kMiB, 0);           // fits only once the cache is released
  CHECK(a.stats(0).reserved_bytes == 8 * kMiB);
  CHECK(a.num_segments(0) == 1);
  try {
    a.allocate(4 * kMiB, 0);
    FAIL("no out-of-memory error");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("FAKE out of memory on device 0") != std::string::npos);
    CHECK(msg.find("could not allocate 4194304 bytes") != std::string::npos);
    CHECK(msg.find("8.0 MiB allocated by tensors") != std::string::npos);
    CHECK(msg.find("8.0 MiB reserved") != std::string::npos);
  }
  CHECK(a.stats(0).allocated_bytes == 8 * kMiB);  // the failure changed nothing
  a.deallocate(big, 0, 0);
}

TEST_CASE("caching allocator: a graph capture allocates from its own pool until released", "[memory]") {
  FakeSource src;
  CachingAllocator a(src);
  void* before = a.allocate(4096, 0);  // ordinary pool
  src.capture = 7;                     // capture begins
  void* t1 = a.allocate(4096, 0);
  CHECK(a.num_segments(0) == 2);  // the capture's pool has its own segments
  a.deallocate(t1, 0, 0);
  void* t2 = a.allocate(4096, 0);
  CHECK(t2 == t1);  // reused within the same capture
  a.deallocate(before, 0, 0);  // allocated outside, freed during: held back
  void* t3 = a.allocate(4096, 0);
  CHECK(t3 != before);
  CHECK(a.graph_pool_bytes(0) >= 2 * 4096);
  a.deallocate(t3, 0, 0);
  src.capture = 0;  // capture ends; the pool keeps its blocks for replays
  void* after = a.allocate(4096, 0);
  CHECK(after != t1);
  CHECK(after != t3);
  CHECK(after != before);  // still held back for the graph
  CHECK(a.num_segments(0) == 2);
  a.release_graph_pool(0, 7);
  CHECK(a.graph_pool_bytes(0) == 0);
  a.deallocate(t2, 0, 0);  // held by a "tensor" past the release: joins the ordinary pool
  a.deallocate(after, 0, 0);
  a.empty_cache(0);  // every block merged back into whole segments
  CHECK(a.num_segments(0) == 0);
  CHECK(src.in_use == 0);
  CHECK(a.stats(0).allocated_bytes == 0);
}

TEST_CASE("caching allocator: a block of a released graph pool freed during another capture "
          "returns to the ordinary pool", "[memory]") {
  FakeSource src;
  CachingAllocator a(src);
  src.capture = 7;                       // graph G captures and makes an output
  void* output = a.allocate(4096, 0);
  src.capture = 0;
  a.release_graph_pool(0, 7);            // G is destroyed; its output is still held
  src.capture = 8;                       // capture X: the old output is freed (reassigned)
  a.deallocate(output, 0, 0);
  void* x = a.allocate(4096, 0);         // X's own pool
  CHECK(x != output);                    // held back for X
  a.deallocate(x, 0, 0);
  src.capture = 0;
  a.release_graph_pool(0, 8);            // X is destroyed: the held-back block is freed
  a.empty_cache(0);                      // every block is back in the ordinary pool
  CHECK(a.num_segments(0) == 0);
  CHECK(src.in_use == 0);
  CHECK(a.stats(0).reserved_bytes == 0);
  // During a capture empty_cache returns nothing (it would wait for the device).
  void* kept = a.allocate(4096, 0);
  a.deallocate(kept, 0, 0);
  src.capture = 9;
  a.empty_cache(0);
  CHECK(a.num_segments(0) == 1);
  src.capture = 0;
  a.empty_cache(0);
  CHECK(a.num_segments(0) == 0);
}

TEST_CASE("caching allocator: destruction returns the cached segments", "[memory]") {
  FakeSource src;
  {
    CachingAllocator a(src);
    a.deallocate(a.allocate(3 * kMiB, 0), 0, 0);
    a.deallocate(a.allocate(100, 2), 0, 2);
    CHECK(src.in_use == 6 * kMiB);
  }
  CHECK(src.in_use == 0);
}
