// The CUDA caching allocator: statistics (current and peak, allocated and reserved), reuse of
// freed blocks, splitting and merging inside a segment, empty_cache, the out-of-memory message,
// and the private pool of a CUDA-graph capture (a captured step replays with new inputs);
// CudaGraph (engine/core/backend.h): host-to-device copies inside a capture, the errors of a host
// read or synchronize() inside one, capturable AdamW replayed, optimizer steps refused in a
// capture whose replays would be wrong. The [cuda] cases skip, with a
// warning, when no CUDA device is present; the last case checks CudaGraph's errors without one.
#include <catch2/catch.hpp>

#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/core/backend.h"
#include "engine/core/generator.h"
#include "engine/core/profiler.h"
#include "engine/optim/adamw.h"
#include "engine/nn/module.h"
#include "engine/optim/sgd.h"
#include "support/cuda_compare.h"

#if METATAPE_WITH_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/allocator.h"
#include "kernels/cuda/stream.h"
#endif

using namespace mt;
using namespace mt::testing;

namespace {
constexpr int64_t kMiB = int64_t(1) << 20;
}

TEST_CASE("CUDA allocator: allocated and peak bytes rise and fall, reset_peak works", "[cuda][memory]") {
  MT_SKIP_WITHOUT_CUDA();
  const Device d = gpu0();
  const MemoryStats cpu_before = memory_stats(kCPU);
  const MemoryStats before = memory_stats(d);
  {
    Tensor big = empty(Shape{4 * kMiB / 4}, DType::f32, d);  // 4 MiB: a large-pool segment
    Tensor small = empty(Shape{25}, DType::f32, d);           // 100 bytes, rounded to 512
    const MemoryStats during = memory_stats(d);
    CHECK(during.allocated_bytes - before.allocated_bytes == 4 * kMiB + 512);
    CHECK(during.peak_allocated_bytes >= during.allocated_bytes);
    CHECK(during.reserved_bytes >= during.allocated_bytes);
    CHECK(during.num_allocs - before.num_allocs == 2);
    // Device memory is not counted on the CPU.
    CHECK(memory_stats(kCPU).allocated_bytes == cpu_before.allocated_bytes);
  }
  const MemoryStats after = memory_stats(d);
  CHECK(after.allocated_bytes == before.allocated_bytes);
  CHECK(after.peak_allocated_bytes >= before.allocated_bytes + 4 * kMiB + 512);
  CHECK(after.reserved_bytes >= after.allocated_bytes);  // kept in the cache
  reset_peak_memory_stats(d);
  CHECK(memory_stats(d).peak_allocated_bytes == memory_stats(d).allocated_bytes);
  CHECK(memory_stats(d).peak_reserved_bytes == memory_stats(d).reserved_bytes);
}

TEST_CASE("CUDA allocator: freed blocks are reused and empty_cache releases them", "[cuda][memory]") {
  MT_SKIP_WITHOUT_CUDA();
  const Device d = gpu0();
  empty_cache(d);
  const MemoryStats s0 = memory_stats(d);
  void* first = nullptr;
  {
    Tensor t = empty(Shape{3 * kMiB}, DType::f32, d);  // 12 MiB
    first = t.raw_data();
  }
  const MemoryStats s1 = memory_stats(d);
  CHECK(s1.reserved_bytes - s0.reserved_bytes == 12 * kMiB);
  {
    Tensor t = empty(Shape{3 * kMiB}, DType::f32, d);
    CHECK(t.raw_data() == first);                        // the cached block, no cudaMalloc
    CHECK(memory_stats(d).reserved_bytes == s1.reserved_bytes);
  }
  // Small blocks share one 2 MiB segment: split on allocation, merged back when all are free.
  {
    std::vector<Tensor> pieces;
    for (int i = 0; i < 8; ++i) pieces.push_back(empty(Shape{1000}, DType::f32, d));  // 4000 B
    const MemoryStats s2 = memory_stats(d);
    CHECK(s2.reserved_bytes - s1.reserved_bytes <= 2 * kMiB);
    CHECK(s2.allocated_bytes - s1.allocated_bytes == 8 * 4096);  // 4000 rounded up to 4096
  }
  empty_cache(d);
  CHECK(memory_stats(d).reserved_bytes == s0.reserved_bytes);  // whole segments went back
}

TEST_CASE("CUDA allocator: out of memory names the size and the statistics", "[cuda][memory]") {
  MT_SKIP_WITHOUT_CUDA();
  const int64_t n = int64_t(1) << 48;  // 1 PiB of f32: more than any device has
  try {
    Tensor t = empty(Shape{n}, DType::f32, gpu0());
    FAIL("allocating 1 PiB did not throw");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("CUDA out of memory on device 0") != std::string::npos);
    CHECK(msg.find(std::to_string(n * 4) + " bytes") != std::string::npos);
    CHECK(msg.find("allocated by tensors") != std::string::npos);
    CHECK(msg.find("reserved") != std::string::npos);
  }
  // The allocator still works after the failure.
  CHECK(full(Shape{3}, 1.0, DType::f32, gpu0()).to_vector<float>() == std::vector<float>{1, 1, 1});
}

TEST_CASE("CUDA allocator: a captured graph uses a private pool and replays", "[cuda][memory]") {
  MT_SKIP_WITHOUT_CUDA();
#if METATAPE_WITH_CUDA
  const Device d = gpu0();
  cudaStream_t s = gpu::stream(d.index);
  Tensor x = from_vector(std::vector<double>{1, 2, 3, 4}, Shape{4}, DType::f32).to(d);
  // Warm up: the kernels and the scalar operands run once outside the capture.
  Tensor warm = add(mul(x, 2.0), 1.0);
  gpu::synchronize(d.index);

  Tensor y;
  cudaGraph_t graph = nullptr;
  REQUIRE(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess);
  const unsigned long long id = gpu::current_capture_id(d.index);
  CHECK(id != 0);
  {
    Tensor tmp = mul(x, 2.0);  // freed inside the capture: back to the private pool
    y = add(tmp, 1.0);
  }
  REQUIRE(cudaStreamEndCapture(s, &graph) == cudaSuccess);
  CHECK(gpu::current_capture_id(d.index) == 0);
  CHECK(gpu::graph_pool_bytes(d.index) > 0);
  cudaGraphExec_t exec = nullptr;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);

  // Memory allocated after the capture never lands in the graph's blocks.
  Tensor other = full(Shape{4}, 9.0, DType::f32, d);
  REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
  check_equal(y, from_vector(std::vector<double>{3, 5, 7, 9}, Shape{4}), "first replay");
  {
    NoGradGuard no_grad;
    x.copy_(from_vector(std::vector<double>{10, 20, 30, 40}, Shape{4}, DType::f32));
  }
  REQUIRE(cudaGraphLaunch(exec, s) == cudaSuccess);
  check_equal(y, from_vector(std::vector<double>{21, 41, 61, 81}, Shape{4}), "replay, new input");
  check_equal(other, full(Shape{4}, 9.0, DType::f64), "memory allocated after the capture");

  REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
  REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);
  y = Tensor();
  gpu::release_graph_pool(d.index, id);
  CHECK(gpu::graph_pool_bytes(d.index) == 0);
#endif
}

TEST_CASE("CudaGraph: host-to-device copies replay their capture-time values", "[cuda][graph]") {
  MT_SKIP_WITHOUT_CUDA();
  const Device d = gpu0();
  Tensor x = full(Shape{3}, 1.0, DType::f32, d);
  Tensor warm = add(x, x);
  synchronize(d);
  Tensor y;
  CudaGraph g;
  g.capture(d, [&] {
    CHECK(is_capturing(d));
    const std::vector<double> host{10, 20, 30};  // gone when the capture ends
    y = add(x, from_vector(host, Shape{3}, DType::f32).to(d));
  });
  CHECK(g.captured());
  CHECK(g.device() == d);
  CHECK_FALSE(is_capturing(d));
  CHECK(g.pool_bytes() > 0);
  // Later transfers reuse the staging buffers; the graph's copy reads its own buffer.
  for (int i = 0; i < 8; ++i)
    Tensor junk = from_vector(std::vector<double>{-1, -1, -1}, Shape{3}, DType::f32).to(d);
  g.replay();
  check_equal(y, from_vector(std::vector<double>{11, 21, 31}, Shape{3}), "first replay");
  {
    NoGradGuard no_grad;
    x.fill_(2.0);
  }
  g.replay();
  check_equal(y, from_vector(std::vector<double>{12, 22, 32}, Shape{3}), "replay, new input");
  y = Tensor();
  g.reset();
  CHECK_FALSE(g.captured());
}

TEST_CASE("CudaGraph: a host read, synchronize() or a replay inside the capture is an error",
          "[cuda][graph]") {
  MT_SKIP_WITHOUT_CUDA();
  const Device d = gpu0();
  Tensor x = full(Shape{4}, 1.0, DType::f32, d);
  synchronize(d);
  CudaGraph g;
  CHECK_THROWS_WITH(g.capture(d, [&] { (void)sum(add(x, 3.0)).item<double>(); }),
                    Catch::Contains("captured into a CUDA graph") &&
                        Catch::Contains("after CudaGraph::replay()"));
  CHECK_FALSE(g.captured());
  CHECK_FALSE(is_capturing(d));
  CHECK_THROWS_WITH(g.capture(d, [&] { synchronize(d); }),
                    Catch::Contains("synchronize(cuda:0) while its stream is being captured"));
  CHECK_FALSE(is_capturing(d));
  Generator gen(1);
  CHECK_THROWS_WITH(g.capture(d, [&] { (void)normal(Shape{4}, 0, 1, gen, DType::f32, d); }),
                    Catch::Contains("every replay would repeat the numbers"));
  CHECK_FALSE(is_capturing(d));
  CHECK(gen.offset() == 0);  // the refused draw did not move the generator
  const Tensor ones_on_device = ones(Shape{4}).to(d);
  CHECK_THROWS_WITH(
      g.capture(d, [&] { (void)dropout(ones_on_device, 0.5, /*training=*/true, gen); }),
      Catch::Contains("every replay would repeat the numbers"));
  CHECK(gen.offset() == 0);  // nor did the refused dropout mask
  CHECK_THROWS_WITH(g.replay(), Catch::Contains("nothing was captured"));
  // A graph replayed inside another capture.
  Tensor y;
  g.capture(d, [&] { y = add(x, 1.0); });
  CudaGraph outer;
  CHECK_THROWS_WITH(outer.capture(d, [&] { g.replay(); }),
                    Catch::Contains("being captured into another CUDA graph"));
  CHECK_FALSE(is_capturing(d));
  g.replay();
  check_equal(y, full(Shape{4}, 2.0, DType::f64), "replayed after the refused capture");
  // The stream works after the abandoned captures.
  check_equal(add(x, 3.0), full(Shape{4}, 4.0, DType::f64), "after the abandoned captures");
}

TEST_CASE("CudaGraph: capturable AdamW replayed equals host-counted AdamW", "[cuda][graph]") {
  MT_SKIP_WITHOUT_CUDA();
  const Device d = gpu0();
  Generator gen(5);
  const Tensor init = normal(Shape{1000}, 0, 1, gen);
  Tensor a = init.to(d).set_requires_grad(true), b = init.to(d).set_requires_grad(true);
  optim::AdamW plain({{"p", a}}, {.lr = 0.05, .weight_decay = 0.01});
  optim::AdamW capturable({{"p", b}}, {.lr = 0.05, .weight_decay = 0.01, .capturable = true});
  // g = p (the gradient of |p|^2 / 2) each step, set without autograd.
  auto step = [](Tensor& p, optim::AdamW& opt) {
    {
      NoGradGuard no_grad;
      p.set_grad(mul(p, 1.0));
    }
    opt.step();
  };
  step(a, plain);
  step(b, capturable);  // eager: creates the state (the count on the device)
  CHECK(capturable.state_dict()[0].second.device() == d);
  CudaGraph g;
  g.capture(d, [&] { step(b, capturable); });
  for (int i = 0; i < 4; ++i) {
    step(a, plain);
    g.replay();
    // The bias corrections change every step: a count frozen at capture time would move b by
    // a different amount (step size lr / (1 - 0.9^t): 0.26 at t = 2, 0.12 at t = 5).
    // Both compute the scalars in double; the device's pow may differ in the last bit.
    check_close(b.detach(), a.detach(), Tolerance{1e-7, 1e-6},
                "capturable AdamW, replay " + std::to_string(i + 1));
  }
  CHECK(capturable.state_dict()[0].second.item<int64_t>() == 5);  // 1 eager + 4 replays
}

TEST_CASE("CudaGraph: optimizer steps whose replays would be wrong are refused in the capture",
          "[cuda][graph]") {
  MT_SKIP_WITHOUT_CUDA();
  const Device d = gpu0();
  Generator gen(6);
  Tensor p = normal(Shape{100}, 0, 1, gen).to(d).set_requires_grad(true);
  auto set_grad = [&] {
    NoGradGuard no_grad;
    p.set_grad(mul(p, 1.0));
  };
  set_grad();
  CudaGraph g;
  // Host-counted AdamW, one kernel per parameter or one for the list: the bias corrections of
  // the capture's step would be replayed forever.
  for (bool foreach : {true, false}) {
    INFO("foreach " << foreach);
    optim::AdamW host_counted({{"p", p}}, {.lr = 0.05, .foreach = foreach});
    host_counted.step();  // eager: the state exists
    CHECK_THROWS_WITH(g.capture(d, [&] { host_counted.step(); }),
                      Catch::Contains("step count of parameter 'p' on the host") &&
                          Catch::Contains("AdamWOptions::capturable"));
    CHECK_FALSE(is_capturing(d));
    CHECK(host_counted.state_dict()[0].second.item<int64_t>() == 1);  // refused before counting
  }
  // State created inside the capture would be reset by every replay.
  optim::AdamW fresh({{"p", p}}, {.lr = 0.05, .capturable = true});
  CHECK_THROWS_WITH(g.capture(d, [&] { fresh.step(); }),
                    Catch::Contains("state of parameter 'p' would be created") &&
                        Catch::Contains("take one step before the capture"));
  CHECK_FALSE(is_capturing(d));
  // After one eager step the same optimizer captures.
  fresh.step();
  g.capture(d, [&] { fresh.step(); });
  g.replay();
  synchronize(d);
  CHECK(fresh.state_dict()[0].second.item<int64_t>() == 2);
  // SGD with momentum: the first step creates the buffer (and sets it to the gradient).
  Tensor q = normal(Shape{100}, 0, 1, gen).to(d).set_requires_grad(true);
  {
    NoGradGuard no_grad;
    q.set_grad(full(Shape{100}, 1.0, DType::f32, d));
  }
  optim::SGD sgd({{"q", q}}, {.lr = 0.1, .momentum = 0.9});
  const Tensor q0 = q.detach().clone();
  CHECK_THROWS_WITH(g.capture(d, [&] { sgd.step(); }),
                    Catch::Contains("state of parameter 'q' would be created"));
  CHECK_FALSE(is_capturing(d));
  check_equal(q.detach(), q0, "SGD refused: the parameter is untouched");
  sgd.step();  // eager: buffer = g, q -= 0.1
  g.capture(d, [&] { sgd.step(); });
  g.replay();  // buffer = 0.9 * 1 + 1 = 1.9, q -= 0.19
  check_close(q.detach(), sub(q0, 0.29), Tolerance{1e-6, 1e-6}, "SGD with momentum replayed");
}

TEST_CASE("CudaGraph: a cached constant the graph reads outlives the constants cache",
          "[cuda][graph]") {
  MT_SKIP_WITHOUT_CUDA();
  const Device d = gpu0();
  Tensor x = full(Shape{3}, 2.0, DType::f32, d);
  Tensor warm = mul(x, 0.5);  // 0.5 on d is cached eagerly: the capture reads that tensor
  synchronize(d);
  Tensor y;
  CudaGraph g;
  g.capture(d, [&] { y = mul(x, 0.5); });
  // More distinct constants than the cache holds (it is cleared), then many small tensors
  // that would take the freed blocks.
  for (int i = 0; i < 5000; ++i) Tensor junk = mul(x, 1000.0 + i);
  std::vector<Tensor> small;
  for (int i = 0; i < 3000; ++i) small.push_back(full(Shape{}, 7.0, DType::f32, d));
  g.replay();
  check_equal(y, full(Shape{3}, 1.0, DType::f64), "replay after the cache was cleared");
}

TEST_CASE("CudaGraph: forward and backward of one attention call captured as two graphs",
          "[cuda][graph]") {
  MT_SKIP_WITHOUT_CUDA();
  // The fused attention copies its block tables to the device once per call and reuses them in
  // the call's backward: a second capture must make its own copy (the first graph's is written
  // only by that graph's replays). Three samples of unequal lengths.
  const Device d = gpu0();
  const std::vector<int64_t> cu_q{0, 5, 5, 23}, cu_k{0, 7, 8, 40};
  const Tensor q = random_tensor(Shape{23, 2, 32}, -1, 1, 11).to(DType::f32).to(d);
  const Tensor k = random_tensor(Shape{40, 2, 32}, -1, 1, 12).to(DType::f32).to(d);
  const Tensor v = random_tensor(Shape{40, 2, 32}, -1, 1, 13).to(DType::f32).to(d);
  const Tensor w = random_tensor(Shape{23, 2, 32}, -1, 1, 14).to(DType::f32).to(d);
  auto forward = [&](const Tensor& qq) { return flash_attention(qq, k, v, cu_q, cu_k, 0.17); };
  Tensor q_eager = q.detach().set_requires_grad(true);
  const Tensor dq_eager = autograd::grad({sum(mul(forward(q_eager), w))}, {q_eager})[0];
  // Graph A: the forward (its autograd graph kept); graph B: the backward through it.
  Tensor q_graph = q.detach().set_requires_grad(true);
  Tensor loss, dq;
  CudaGraph a, b;
  {  // warm-up, eagerly, as the pattern asks
    Tensor l = sum(mul(forward(q_graph), w));
    (void)autograd::grad({l}, {q_graph});
  }
  synchronize(d);
  a.capture(d, [&] { loss = sum(mul(forward(q_graph), w)); });
  b.capture(d, [&] { dq = autograd::grad({loss}, {q_graph}, {}, /*retain_graph=*/true)[0]; });
  for (int i = 0; i < 2; ++i) {
    a.replay();
    b.replay();
    check_close(dq, dq_eager, Tolerance{1e-6, 1e-5}, "dq from the two graphs");
  }
}

TEST_CASE("CudaGraph: a graph destroyed inside another capture is released after it",
          "[cuda][graph]") {
  MT_SKIP_WITHOUT_CUDA();
#if METATAPE_WITH_CUDA
  // Releasing a graph waits for the stream and hands its pool back: inside another capture on
  // the same stream that would invalidate the capture, so the release waits for its end.
  const Device d = gpu0();
  Tensor x = full(Shape{4}, 3.0, DType::f32, d);
  Tensor warm = add(mul(x, 2.0), 1.0);
  synchronize(d);
  Tensor ya, yb;
  auto first = std::make_unique<CudaGraph>();
  first->capture(d, [&] { ya = mul(x, 2.0); });
  first->replay();
  check_equal(ya, full(Shape{4}, 6.0, DType::f64), "the first graph");
  ya = Tensor();  // the graph's own tensor: its block stays in the pool until the release
  const int64_t pool_with_first = first->pool_bytes();
  CHECK(pool_with_first > 0);
  CHECK(cuda_graphs_awaiting_release() == 0);
  CudaGraph second;
  size_t awaiting_inside = 0;
  int64_t pools_inside = 0;
  second.capture(d, [&] {
    yb = add(x, 1.0);
    first.reset();  // destroyed mid-capture: deferred
    awaiting_inside = cuda_graphs_awaiting_release();
    pools_inside = gpu::graph_pool_bytes(d.index);  // both pools
  });
  CHECK(awaiting_inside == 1);
  CHECK(cuda_graphs_awaiting_release() == 0);  // released when the capture ended
  CHECK(pools_inside >= pool_with_first);
  CHECK(second.pool_bytes() == pools_inside - pool_with_first);  // the first pool is gone
  second.replay();
  check_equal(yb, full(Shape{4}, 4.0, DType::f64), "the graph captured meanwhile replays");
#endif
}

TEST_CASE("CudaGraph: errors without a capture or a device", "[graph]") {
  CudaGraph g;
  CHECK_FALSE(g.captured());
  CHECK_FALSE(is_capturing(kCPU));
  CHECK_THROWS_WITH(g.replay(), Catch::Contains("nothing was captured"));
  CHECK_THROWS_WITH(g.capture(kCPU, [] {}), Catch::Contains("CudaGraph::capture on cpu") ||
                                                Catch::Contains("cpu is not a CUDA device"));
  if (!cuda_is_available() && built_with_cuda())
    CHECK_THROWS_WITH(g.capture(cuda(0), [] {}), Catch::Contains("does not exist on this machine"));
  CHECK_FALSE(g.captured());
}

TEST_CASE("kernel profiler: device times of CUDA kernels, credited to the engine kernel that "
          "launched them", "[cuda][profiler]") {
  MT_SKIP_WITHOUT_CUDA();
  const Device d = gpu0();
  std::string why;
  const bool traced = profiler::enable_device_trace(true, &why);
  INFO(why);
  REQUIRE(traced);
  const bool was_on = profiler::enabled();
  Tensor a = ones(Shape{1024, 1024}, DType::f32).to(d), b = ones(Shape{1024, 1024}, DType::f32).to(d);
  synchronize(d);
  profiler::reset();  // the copies above are dropped
  profiler::enable(true);
  for (int i = 0; i < 4; ++i) (void)matmul(add(a, b), b);  // 4 adds, 4 GEMMs on the device
  profiler::enable(was_on);
  const std::vector<profiler::Entry> all = profiler::entries();  // waits for the device
  profiler::Entry add_e, matmul_e;
  for (const auto& e : all) {
    if (e.kernel == "add") add_e = e;
    if (e.kernel == "matmul") matmul_e = e;
  }
  CHECK(add_e.calls == 4);
  CHECK(add_e.device_launches == 4);  // one elementwise kernel per add
  CHECK(add_e.device_seconds > 0);
  CHECK(matmul_e.calls == 4);
  CHECK(matmul_e.device_launches >= 4);  // cuBLASLt may split a GEMM into several kernels
  // A 1024^3 f32 GEMM is ~2 GFLOP: far longer on the device than an add of 4 MiB.
  CHECK(matmul_e.device_seconds > add_e.device_seconds);
  const profiler::DeviceSummary s = profiler::device_summary();
  CHECK(s.activities == add_e.device_launches + matmul_e.device_launches);
  CHECK(s.busy_seconds > 0);
  CHECK(s.busy_seconds <= s.span_seconds + 1e-9);
  CHECK(s.busy_seconds <= s.kernel_seconds + 1e-9);
  REQUIRE_FALSE(s.kernels.empty());
  const std::string r = profiler::report();
  CHECK_THAT(r, Catch::Contains("device ms") && Catch::Contains("busy"));
  // Off again: nothing more is collected.
  profiler::enable_device_trace(false);
  CHECK_FALSE(profiler::device_trace_enabled());
  profiler::reset();
  profiler::enable(true);
  (void)add(a, b);
  profiler::enable(was_on);
  for (const auto& e : profiler::entries()) CHECK(e.device_launches == 0);
  profiler::reset();
}

TEST_CASE("an optimizer whose model moved to the GPU after its first step refuses to step, "
          "before updating anything",
          "[cuda][optim]") {
  MT_SKIP_WITHOUT_CUDA();
  Generator gen(5);
  nn::Linear lin(3, 2, /*bias=*/true, gen);
  optim::AdamW adam(lin.named_parameters());
  optim::SGDOptions so;
  so.momentum = 0.9;
  optim::SGD sgd(lin.named_parameters(), so);
  auto set_grads = [&] {
    for (auto& [name, p] : lin.named_parameters()) p.set_grad(ones_like(p));
  };
  set_grads();
  adam.step();
  sgd.step();
  lin.to(gpu0());  // the parameters move; the optimizers' state stays on the CPU
  set_grads();
  const std::vector<float> before = lin.weight().to(kCPU).to_vector<float>();
  CHECK_THROWS_WITH(adam.step(), Catch::Contains("the model moved after the optimizer's first"));
  CHECK_THROWS_WITH(sgd.step(), Catch::Contains("the model moved after the optimizer's first"));
  CHECK(lin.weight().to(kCPU).to_vector<float>() == before);
  // The remedy the message gives: the state copied onto the parameters' devices.
  adam.load_state_dict(adam.state_dict());
  adam.step();
  CHECK(lin.weight().to(kCPU).to_vector<float>() != before);
}
