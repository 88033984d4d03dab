// Tensor core: factories, metadata, dtypes, in-place writes, memory statistics, backends.
#include <catch2/catch.hpp>

#include <limits>

#include "engine/core/backend.h"
#include "engine/core/device_trace.h"
#include "engine/core/profiler.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

TEST_CASE("factories and metadata", "[tensor]") {
  Tensor z = zeros(Shape{2, 3});
  CHECK(z.dtype() == DType::f32);
  CHECK(z.numel() == 6);
  CHECK(z.dim() == 2);
  CHECK(z.size(-1) == 3);
  CHECK(z.stride(0) == 3);
  CHECK(z.device() == kCPU);
  CHECK(z.str() == "Tensor(f32, (2, 3), cpu)");
  CHECK(full(Shape{2}, 2.5, DType::f64).to_vector<double>() == std::vector<double>{2.5, 2.5});
  CHECK(scalar_tensor(4.0).dim() == 0);
  CHECK(scalar_tensor(4.0).item<float>() == 4.0f);
  CHECK(arange(4, DType::i64).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3});
  CHECK_THROWS_WITH(from_vector(std::vector<double>{1, 2, 3}, Shape{2, 2}),
                    Catch::Contains("3 values given for shape (2, 2)"));
  CHECK_THROWS_WITH(z.item<float>(), Catch::Contains("6 elements"));
  CHECK_THROWS_WITH(empty(Shape{1, 2, 3, 4, 5, 6, 7, 8, 9}), Catch::Contains("maximum of 8"));
  CHECK_THROWS_WITH(z.size(2), Catch::Contains("out of range"));
  CHECK(empty(Shape{4, 0}).is_contiguous());  // an empty tensor is contiguous whatever its strides
}

TEST_CASE("in-place writes bump the version and are refused on tensors requiring grad",
          "[tensor]") {
  Tensor x = zeros(Shape{3}, DType::f64);
  uint32_t v0 = x.storage().version();
  x.fill_(2.0);
  x.add_(ones(Shape{3}, DType::f64), 0.5);
  x.mul_(2.0);
  CHECK(x.to_vector<double>() == std::vector<double>{5, 5, 5});
  CHECK(x.storage().version() == v0 + 3);
  Tensor y = zeros(Shape{3}, DType::f64);
  y.copy_(arange(3, DType::f64));
  CHECK(y.to_vector<double>() == std::vector<double>{0, 1, 2});
  y.set_requires_grad(true);
  CHECK_THROWS_WITH(y.fill_(1.0), Catch::Contains("NoGradGuard"));
  {
    NoGradGuard no_grad;  // what an optimizer step does
    y.add_(ones(Shape{3}, DType::f64), -1.0);
  }
  CHECK(y.to_vector<double>() == std::vector<double>{-1, 0, 1});
  // An in-place write records no gradient: a source that requires grad is refused under grad
  // mode (what is computed from the result would not be differentiated through it).
  Tensor buffer = zeros(Shape{3}, DType::f64);
  CHECK_THROWS_WITH(buffer.copy_(mul(y, 2.0)), Catch::Contains("records no gradient"));
  CHECK_THROWS_WITH(buffer.add_(y), Catch::Contains("records no gradient"));
  buffer.copy_(mul(y, 2.0).detach());  // the value, on purpose
  CHECK(buffer.to_vector<double>() == std::vector<double>{-2, 0, 2});
}

TEST_CASE("an undefined tensor's autograd accessors throw instead of crashing", "[tensor]") {
  Tensor none;
  CHECK_THROWS_WITH(none.is_leaf(), Catch::Contains("undefined"));
  CHECK_THROWS_WITH(none.grad(), Catch::Contains("undefined"));
  CHECK_THROWS_WITH(none.grad_fn(), Catch::Contains("undefined"));
  CHECK_THROWS_WITH(none.zero_grad(), Catch::Contains("undefined"));
  CHECK_THROWS_WITH(none.set_requires_grad(), Catch::Contains("undefined"));
}

TEST_CASE("memory statistics track current and peak bytes", "[tensor][memory]") {
  reset_peak_memory_stats();
  const MemoryStats before = memory_stats();
  {
    Tensor a = empty(Shape{1024, 256}, DType::f32);  // 1 MiB
    MemoryStats during = memory_stats();
    CHECK(during.allocated_bytes - before.allocated_bytes == 1 << 20);
    CHECK(during.peak_allocated_bytes >= during.allocated_bytes);
    CHECK(during.num_allocs > before.num_allocs);
  }
  MemoryStats after = memory_stats();
  CHECK(after.allocated_bytes == before.allocated_bytes);
  CHECK(after.peak_allocated_bytes >= before.allocated_bytes + (1 << 20));
  reset_peak_memory_stats();
  CHECK(memory_stats().peak_allocated_bytes == memory_stats().allocated_bytes);
}

TEST_CASE("large CPU blocks are cached and reused, empty_cache returns them", "[tensor][memory]") {
  empty_cache();
  const MemoryStats s0 = memory_stats();
  const void* first = nullptr;
  {
    Tensor a = empty(Shape{1 << 18}, DType::f32);  // 1 MiB: above the 256 KiB cache threshold
    first = a.raw_data();
  }
  const MemoryStats s1 = memory_stats();
  CHECK(s1.allocated_bytes == s0.allocated_bytes);
  CHECK(s1.reserved_bytes - s0.reserved_bytes == 1 << 20);  // kept for reuse
  {
    Tensor b = empty(Shape{1 << 18}, DType::f32);
    CHECK(b.raw_data() == first);  // the same block came back
    CHECK(memory_stats().reserved_bytes == s1.reserved_bytes);
  }
  // A size in the same quarter-power-of-two bin reuses the block too (1 MiB - 4 KiB).
  {
    Tensor c = empty(Shape{(1 << 18) - 1024}, DType::f32);
    CHECK(c.raw_data() == first);
  }
  empty_cache();
  CHECK(memory_stats().reserved_bytes == s0.reserved_bytes);
}

TEST_CASE("backend queries work without a GPU", "[tensor][backend]") {
  // Builds with nvcc report built_with_cuda; the device count is 0 on machines without a GPU and
  // must never throw.
  const int n = cuda_device_count();
  CHECK(n >= 0);
  CHECK(cuda_device_description(n).empty());  // out of range
  if (n == 0) SUCCEED("no CUDA device here: CUDA device cases are skipped");
}

TEST_CASE("kernel profiler: counts dispatched kernels only while on, report lists them",
          "[profiler]") {
  const bool was_on = profiler::enabled();
  Tensor a = ones(Shape{8, 8}), b = ones(Shape{8, 8});
  profiler::enable(false);
  profiler::reset();
  (void)add(a, b);
  CHECK(profiler::entries().empty());
  profiler::enable(true);
  for (int i = 0; i < 3; ++i) (void)matmul(add(a, b), b);
  profiler::enable(was_on);
  profiler::enable(true);
  (void)linear(ones(Shape{4, 5}), ones(Shape{3, 5}), ones(Shape{3}));  // the CPU's fused linear
  profiler::enable(was_on);
  int64_t add_calls = 0, matmul_calls = 0;
  double add_flops = -1, matmul_flops = 0, linear_flops = 0;
  for (const auto& e : profiler::entries()) {
    CHECK(e.seconds >= 0);
    if (e.kernel == "add") add_calls = e.calls, add_flops = e.flops;
    if (e.kernel == "matmul") matmul_calls = e.calls, matmul_flops = e.flops;
    if (e.kernel == "linear") linear_flops = e.flops;
  }
  CHECK(add_calls == 3);
  CHECK(matmul_calls == 3);
  // Products count 2 M N K each; elementwise ops count nothing.
  CHECK(matmul_flops == 3 * 2.0 * 8 * 8 * 8);
  CHECK(linear_flops == 2.0 * 4 * 3 * 5);
  CHECK(add_flops == 0);
  const std::string r = profiler::report();
  CHECK_THAT(r, Catch::Contains("matmul") && Catch::Contains("us/call") &&
                    Catch::Contains("GFLOP"));
  profiler::reset();
  CHECK(profiler::entries().empty());
}

TEST_CASE("kernel profiler: the device trace refuses, with the reason, where it cannot run",
          "[profiler]") {
  // Without a GPU (this build's CI machine) CUPTI or the build says why; with one, the [cuda]
  // case in test_cuda_memory.cpp checks what it records.
  if (cuda_device_count() > 0) {
    SUCCEED("a CUDA device is present: see 'kernel profiler: device times ...' [cuda]");
    return;
  }
  std::string why;
  CHECK_FALSE(profiler::enable_device_trace(true, &why));
  CHECK_FALSE(profiler::device_trace_enabled());
  CHECK_FALSE(why.empty());
  // The host profile is unchanged: no device columns, an empty device summary.
  const bool was_on = profiler::enabled();
  profiler::reset();
  profiler::enable(true);
  (void)add(ones(Shape{4}), ones(Shape{4}));
  profiler::enable(was_on);
  const std::string r = profiler::report();
  CHECK_THAT(r, Catch::Contains("add") && !Catch::Contains("device ms"));
  const profiler::DeviceSummary d = profiler::device_summary();
  CHECK(d.activities == 0);
  CHECK(d.kernels.empty());
  profiler::reset();
}

TEST_CASE("kernel profiler: CUPTI is loaded at run time, and a library that is not CUPTI is refused "
          "with its name", "[profiler]") {
  // start() checks each place it looks for CUPTI this way (METATAPE_CUPTI_LIBRARY, then the
  // toolkit's soname, then the configured file) and names every refusal.
  std::string why;
  CHECK_FALSE(device_trace::library_loads("/nonexistent/libcupti.so.99", &why));
  CHECK_THAT(why, Catch::Contains("/nonexistent/libcupti.so.99"));
  why.clear();
  CHECK_FALSE(device_trace::library_loads("libm.so.6", &why));  // loads, has no CUPTI functions
  CHECK_THAT(why, Catch::Contains("libm.so.6") && Catch::Contains("cuptiGetResultString"));
}

TEST_CASE("misuse of tensors is an error, not a crash or a wrong value", "[tensor]") {
  // An undefined tensor: every op reads it through the checked accessors.
  const Tensor undefined;
  CHECK_THROWS_WITH(sum(undefined), Catch::Contains("undefined tensor"));
  CHECK_THROWS_WITH(undefined.reshape(Shape{2}), Catch::Contains("undefined tensor"));
  CHECK_THROWS_WITH(undefined.numel(), Catch::Contains("undefined tensor"));
  Tensor x = zeros(Shape{2});
  CHECK_THROWS_WITH(x.copy_(undefined), Catch::Contains("undefined tensor"));
  CHECK_THROWS_WITH(x.add_(undefined), Catch::Contains("undefined tensor"));
  // Element and byte counts that do not fit in 64 bits.
  const int64_t big = int64_t(1) << 40;
  CHECK_THROWS_WITH(zeros(Shape{big, big}), Catch::Contains("more than 2^63"));
  CHECK_THROWS_WITH(ones(Shape{1, 1}).expand(Shape{int64_t(1) << 32, int64_t(1) << 32}),
                    Catch::Contains("more than 2^63"));
  // narrow: a start or length past the end, however large.
  const Tensor m = zeros(Shape{2, 3});
  const int64_t huge = std::numeric_limits<int64_t>::max();
  CHECK_THROWS_WITH(m.narrow(1, huge, 1), Catch::Contains("narrow: start"));
  CHECK_THROWS_WITH(m.narrow(1, 2, huge), Catch::Contains("narrow: start"));
  CHECK(m.narrow(1, 3, 0).numel() == 0);  // an empty slice at the end is fine
  // make_view inside the storage only.
  CHECK_THROWS_WITH(make_view(m, Shape{10}, Shape{1}, 0), Catch::Contains("reaches elements"));
  CHECK(make_view(m, Shape{3}, Shape{2}, 1).numel() == 3);  // elements 1, 3, 5
  // In-place writes that would read what they already overwrote, or write an element twice.
  Tensor base = from_vector(std::vector<float>{1, 2, 3}, Shape{1, 3});
  CHECK_THROWS_WITH(base.expand(Shape{2, 3}).add_(ones(Shape{2, 3})),
                    Catch::Contains("repeats elements"));
  CHECK_THROWS_WITH(base.expand(Shape{2, 3}).mul_(2.0), Catch::Contains("repeats elements"));
  Tensor b = from_vector(std::vector<float>{1, 2, 3, 4, 5}, Shape{5});
  CHECK_THROWS_WITH(b.narrow(0, 1, 4).copy_(b.narrow(0, 0, 4)),
                    Catch::Contains("shares memory with the tensor written to"));
  CHECK_THROWS_WITH(b.narrow(0, 1, 4).add_(b.narrow(0, 0, 4)),
                    Catch::Contains("shares memory with the tensor written to"));
  Tensor sq = from_vector(std::vector<float>{1, 2, 3, 4}, Shape{2, 2});
  CHECK_THROWS_WITH(sq.copy_(sq.transpose(0, 1)),
                    Catch::Contains("shares memory with the tensor written to"));
  CHECK(b.to_vector<float>() == std::vector<float>{1, 2, 3, 4, 5});  // nothing was written
  b.add_(b);  // the same layout reads each element before writing it
  CHECK(b.to_vector<float>() == std::vector<float>{2, 4, 6, 8, 10});
  b.narrow(0, 0, 2).copy_(b.narrow(0, 3, 2));  // disjoint parts of one buffer
  CHECK(b.to_vector<float>() == std::vector<float>{8, 10, 6, 8, 10});
  // A gradient of another shape.
  Tensor p = zeros(Shape{2}).set_requires_grad(true);
  CHECK_THROWS_WITH(p.set_grad(zeros(Shape{3})), Catch::Contains("set_grad"));
  CHECK_THROWS_WITH(autograd::grad({sum(p)}, {undefined}),
                    Catch::Contains("inputs[0] is an undefined tensor"));
  // Attention and embedding arguments that used to fail deep inside (or not at all).
  const Tensor q = zeros(Shape{3, 4}), kv = zeros(Shape{4, 4});
  VarlenAttention spec;
  spec.heads = 2;
  spec.q_lengths = {3};
  spec.k_lengths = {4};
  spec.q_times = zeros(Shape{3});
  spec.k_times = zeros(Shape{4});
  CHECK_THROWS_WITH(varlen_attention(q, kv, kv, spec), Catch::Contains("inv_freq is not"));
  spec.q_times = Tensor();
  spec.k_times = Tensor();
  CHECK_THROWS_WITH(varlen_attention(q.to(DType::f64), kv, kv, spec),
                    Catch::Contains("give them one dtype"));
  CHECK_THROWS_WITH(flash_attention(q.reshape(Shape{3, 2, 2}), kv.reshape(Shape{4, 2, 2}),
                                    kv.reshape(Shape{4, 2, 2}), {0, 3}, {0, 4}, NAN),
                    Catch::Contains("scale is nan"));
  const std::vector<int64_t> rows{0, 1};
  CHECK_THROWS_WITH(embedding_backward(zeros(Shape{2, 3}), from_indices(rows, Shape{2}), -1),
                    Catch::Contains("num_rows is -1"));
}
