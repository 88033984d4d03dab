// Multi-tensor ("foreach") ops: each entry bitwise what the single-tensor op gives (CPU, and the
// CUDA kernels against the same single-tensor kernels on the device), the f64 sum of squares,
// the launch plan of the CUDA kernels (checked here on the host), AdamW's multi-tensor update
// against the per-parameter one, the meta-gradient mean, and the errors.
#include <catch2/catch.hpp>

#include <cstring>
#include <numeric>

#include <fmt/format.h>

#include "engine/autograd/grad_mode.h"
#include "engine/optim/adamw.h"
#include "engine/optim/kernels.h"
#include "kernels/cuda/foreach_plan.h"
#include "meta/maml.h"
#include "support/cuda_compare.h"

using namespace mt;
using namespace mt::testing;

namespace {

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype() || a.device() != b.device())
    return false;
  const Tensor ca = a.to(kCPU).contiguous(), cb = b.to(kCPU).contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), size_t(ca.numel()) * itemsize(ca.dtype())) == 0;
}

// A list of mixed dtypes and shapes: an empty tensor, a 0-d one, a transposed (non-contiguous)
// one, 16-bit ones on CUDA (the CPU computes in f32 and f64 only), and (big) one long enough
// for several chunks of the CUDA kernels.
TensorList mixed_list(uint64_t seed, Device device, bool big = false) {
  TensorList out;
  const bool cpu = device.is_cpu();
  const std::vector<std::pair<Shape, DType>> specs = {
      {Shape{3, 4}, DType::f32},
      {Shape{0, 5}, DType::f32},
      {Shape{}, DType::f64},
      {Shape{17}, cpu ? DType::f32 : DType::bf16},
      {Shape{5, 3}, DType::f64},
      {Shape{9, 2}, cpu ? DType::f64 : DType::f16},
      {Shape{1000}, DType::f32},
      {Shape{2, 3, 4}, DType::f32}};
  uint64_t s = seed;
  for (const auto& [shape, dtype] : specs)
    out.push_back(random_tensor(shape, -2, 2, s++).to(dtype).to(device));
  out[4] = out[4].transpose(0, 1);  // (3, 5), not contiguous
  if (big) out.push_back(random_tensor(Shape{3 * 32768 + 11}, -2, 2, s++).to(DType::f32).to(device));
  return out;
}

// AdamW with foreach against one kernel per parameter on the same values: three steps
// (the second without a gradient for parameter 1), every parameter and state tensor bitwise.
void check_adamw_foreach(const TensorList& init, Device device, bool capturable, bool amsgrad) {
  TensorList a, b;
  optim::NamedParams pa, pb;
  for (size_t i = 0; i < init.size(); ++i) {
    a.push_back(init[i].contiguous().clone().set_requires_grad(true));
    b.push_back(init[i].contiguous().clone().set_requires_grad(true));
    pa.emplace_back(fmt::format("p{}", i), a[i]);
    pb.emplace_back(fmt::format("p{}", i), b[i]);
  }
  optim::AdamWOptions o{.lr = 0.05, .weight_decay = 0.01, .amsgrad = amsgrad,
                        .capturable = capturable};
  o.foreach = false;
  optim::AdamW one(pa, o);
  o.foreach = true;
  optim::AdamW list(pb, o);
  for (int step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < a.size(); ++i) {
      if (step == 2 && i == 1) continue;  // a parameter without a gradient: skipped
      NoGradGuard no_grad;
      const Tensor g =
          random_tensor(a[i].shape(), -1, 1, 100 * step + i).to(a[i].dtype()).to(device);
      a[i].set_grad(g);
      b[i].set_grad(g.clone());
    }
    one.step();
    list.step();
    for (size_t i = 0; i < a.size(); ++i) {
      INFO("step " << step << " parameter " << i);
      CHECK(same_bits(a[i], b[i]));
      a[i].set_grad(Tensor());
      b[i].set_grad(Tensor());
    }
    const auto sa = one.state_dict(), sb = list.state_dict();
    REQUIRE(sa.size() == sb.size());
    for (size_t k = 0; k < sa.size(); ++k) {
      INFO(sa[k].first);
      CHECK(same_bits(sa[k].second, sb[k].second));
    }
  }
}

}  // namespace

TEST_CASE("foreach ops: each entry equals the single-tensor op, bitwise", "[ops][foreach]") {
  const TensorList a = mixed_list(10, kCPU), b = mixed_list(20, kCPU);
  SECTION("foreach_add") {
    const TensorList out = foreach_add(a, b);
    REQUIRE(out.size() == a.size());
    for (size_t i = 0; i < a.size(); ++i) {
      INFO("entry " << i);
      CHECK(same_bits(out[i], add(a[i], b[i])));
      CHECK(out[i].is_contiguous());
    }
  }
  SECTION("foreach_add_ and foreach_mul_ in place") {
    TensorList x;
    for (const Tensor& t : a) x.push_back(t.contiguous().clone());
    std::vector<uint32_t> versions;
    for (const Tensor& t : x) versions.push_back(t.storage().version());
    foreach_add_(x, b);
    foreach_mul_(x, 0.3);
    for (size_t i = 0; i < a.size(); ++i) {
      INFO("entry " << i);
      Tensor ref = a[i].contiguous().clone();
      ref.add_(b[i]);
      ref.mul_(0.3);
      CHECK(same_bits(x[i], ref));
      CHECK(x[i].storage().version() > versions[i]);  // readers of the old values can tell
    }
  }
  SECTION("foreach_mul by a 0-d f64 factor") {
    const Tensor factor = scalar_tensor(0.7123456789, DType::f64);
    const TensorList out = foreach_mul(a, factor);
    for (size_t i = 0; i < a.size(); ++i) {
      INFO("entry " << i);
      CHECK(same_bits(out[i], mul(a[i], factor.to(a[i].dtype()))));
    }
  }
  SECTION("foreach_sum_squares") {
    double ref = 0;
    for (const Tensor& t : a) {
      const Tensor t64 = t.to(DType::f64).contiguous();
      for (int64_t i = 0; i < t64.numel(); ++i) ref += t64.data_ptr<double>()[i] * t64.data_ptr<double>()[i];
    }
    const Tensor got = foreach_sum_squares(a);
    CHECK(got.dtype() == DType::f64);
    CHECK(got.dim() == 0);
    // f64 sums of ~1,100 terms in two orders: a few ulps of the total.
    CHECK(got.item<double>() == Approx(ref).epsilon(1e-14));
    CHECK(foreach_sum_squares({}).item<double>() == 0);
  }
}

TEST_CASE("foreach ops: errors name the entry and the fix", "[ops][foreach]") {
  const TensorList a = mixed_list(10, kCPU);
  TensorList shorter(a.begin(), a.end() - 1);
  CHECK_THROWS_WITH(foreach_add(a, shorter), Catch::Contains("8 and 7 tensors"));
  TensorList other = mixed_list(20, kCPU);
  other[3] = zeros(Shape{16}, DType::f32);
  CHECK_THROWS_WITH(foreach_add(a, other), Catch::Contains("entry 3"));
  TensorList ints = a;
  ints[2] = zeros(Shape{2}, DType::i64);
  CHECK_THROWS_WITH(foreach_sum_squares(ints), Catch::Contains("float tensors"));
  TensorList tracked = a;
  tracked[1] = zeros(Shape{2}).set_requires_grad(true);
  CHECK_THROWS_WITH(foreach_mul_(tracked, 2.0), Catch::Contains("NoGradGuard"));
  {
    NoGradGuard no_grad;  // outside autograd, a tensor that requires grad is fine
    TensorList ok = {zeros(Shape{2}).set_requires_grad(true)};
    foreach_mul_(ok, 2.0);
  }
  TensorList strided = {zeros(Shape{3, 4}).transpose(0, 1)};
  CHECK_THROWS_WITH(foreach_mul_(strided, 2.0), Catch::Contains("not contiguous"));
  // An in-place target twice (or two views of one buffer that overlap) would be updated twice
  // on the CPU and race on a GPU.
  const Tensor shared = zeros(Shape{4, 3});
  TensorList twice = {zeros(Shape{2}), shared, zeros(Shape{5}), shared};
  CHECK_THROWS_WITH(foreach_mul_(twice, 2.0), Catch::Contains("entries 1 and 3 share memory"));
  TensorList overlapping = {shared, shared.view(Shape{12}).narrow(0, 6, 3)};
  CHECK_THROWS_WITH(foreach_add_(overlapping, {zeros(Shape{4, 3}), zeros(Shape{3})}),
                    Catch::Contains("entries 0 and 1 share memory"));
  TensorList disjoint = {shared.view(Shape{12}).narrow(0, 0, 6), shared.view(Shape{12}).narrow(0, 6, 6)};
  foreach_mul_(disjoint, 2.0);  // rows of one buffer that do not overlap are fine
  // The second list of foreach_add_ is read while the first is written: an entry may add itself
  // (one thread reads and writes each element), but may not read another entry's target, or a
  // shifted window of its own; a transposed view of its own is copied first, so it is fine.
  {
    Tensor p = full(Shape{3}, 1.0), q = full(Shape{3}, 2.0);
    foreach_add_({p, q}, {p, q});
    CHECK(p.to_vector<float>() == std::vector<float>{2, 2, 2});
    CHECK_THROWS_WITH(foreach_add_({p, q}, {q, p}),
                      Catch::Contains("entry 0 of the second list shares memory with entry 1"));
    Tensor row = zeros(Shape{8});
    CHECK_THROWS_WITH(foreach_add_({row.narrow(0, 0, 4)}, {row.narrow(0, 2, 4)}),
                      Catch::Contains("entry 0 of the second list shares memory with entry 0"));
    Tensor square = arange(9, DType::f32).reshape(Shape{3, 3}).contiguous();
    foreach_add_({square}, {square.transpose(0, 1)});  // a + a^T from a copy of a^T
    CHECK(square.to_vector<float>() == std::vector<float>{0, 4, 8, 4, 8, 12, 8, 12, 16});
    foreach_add_({row.narrow(0, 0, 4)}, {row.narrow(0, 4, 4)});  // apart: fine
  }
  CHECK_THROWS_WITH(foreach_mul(a, scalar_tensor(1.0, DType::f32)),
                    Catch::Contains("0-d f64 tensor"));
}

TEST_CASE("foreach launch plan: every chunk once, in order, within the table limits",
          "[ops][foreach]") {
  using gpu::kForeachChunk;
  // Empty tensors, small ones, one over many launches' worth of chunks, many tensors.
  std::vector<int64_t> n = {0, 5, kForeachChunk, kForeachChunk + 1, 40 * kForeachChunk - 3, 0};
  for (int i = 0; i < 100; ++i) n.push_back(1 + 37 * i);
  for (const auto& [max_tensors, max_blocks] : {std::pair{48, 320}, std::pair{32, 256},
                                                std::pair{3, 7}}) {
    INFO("limits " << max_tensors << " tensors, " << max_blocks << " blocks");
    const std::vector<gpu::ForeachLaunch> plan = gpu::plan_foreach(n, max_tensors, max_blocks);
    std::vector<int64_t> covered(n.size(), 0);  // chunks seen per entry, in order
    int64_t chunks = 0;
    for (const gpu::ForeachLaunch& l : plan) {
      CHECK(!l.blocks.empty());
      CHECK(int(l.entries.size()) <= max_tensors);
      CHECK(int(l.blocks.size()) <= max_blocks);
      CHECK(l.first_chunk == chunks);
      for (const auto& [slot, chunk] : l.blocks) {
        REQUIRE(slot < int(l.entries.size()));
        const int entry = l.entries[size_t(slot)];
        CHECK(chunk == covered[size_t(entry)]);  // the next chunk of that entry
        ++covered[size_t(entry)];
        ++chunks;
      }
    }
    for (size_t i = 0; i < n.size(); ++i) {
      INFO("entry " << i);
      CHECK(covered[i] == (n[i] + kForeachChunk - 1) / kForeachChunk);
    }
  }
  CHECK(gpu::plan_foreach({0, 0}, 48, 320).empty());
}

TEST_CASE("AdamW foreach: the same updates as one kernel per parameter", "[optim][foreach]") {
  TensorList init = mixed_list(30, kCPU);
  init.erase(init.begin() + 2);  // 0-d
  for (bool capturable : {false, true})
    for (bool amsgrad : {false, true}) {
      INFO("capturable " << capturable << " amsgrad " << amsgrad);
      check_adamw_foreach(init, kCPU, capturable, amsgrad);
    }
  optim::AdamW adam({{"p", zeros(Shape{2}).set_requires_grad(true)}}, {});
  CHECK(adam.hyperparameters().at("foreach") == "true");
}

TEST_CASE("MetaGradientMean: bitwise the one-by-one clone, add_ and mul_", "[meta][foreach]") {
  for (int sessions : {1, 2, 3}) {
    INFO(sessions << " sessions");
    std::vector<meta::MetaGradient> gs(static_cast<size_t>(sessions));
    for (int s = 0; s < sessions; ++s) {
      gs[size_t(s)].names = {"a", "b", "c"};
      gs[size_t(s)].grads = mixed_list(40 + 10 * uint64_t(s), kCPU);
      gs[size_t(s)].grads.resize(3);
    }
    meta::MetaGradientMean mean;
    for (const auto& g : gs) mean.add(g);
    CHECK(mean.count() == sessions);
    const std::vector<std::string> names = mean.names();
    const TensorList got = mean.mean();
    CHECK(names == gs[0].names);
    for (size_t i = 0; i < 3; ++i) {
      Tensor ref = gs[0].grads[i].clone();
      for (int s = 1; s < sessions; ++s) ref.add_(gs[size_t(s)].grads[i]);
      ref.mul_(1.0 / double(sessions));
      CHECK(same_bits(got[i], ref));
    }
    // The first session's gradients are never written to.
    CHECK(same_bits(gs[0].grads[0], mixed_list(40, kCPU)[0]));
  }
  meta::MetaGradientMean empty;
  CHECK_THROWS_WITH(empty.mean(), Catch::Contains("no meta-gradient"));
  meta::MetaGradientMean mismatch;
  meta::MetaGradient g1, g2;
  g1.names = {"a"};
  g1.grads = {zeros(Shape{2})};
  g2.names = {"b"};
  g2.grads = {zeros(Shape{2})};
  mismatch.add(g1);
  CHECK_THROWS_WITH(mismatch.add(g2), Catch::Contains("different parameters"));
}

// ---- CUDA: the multi-tensor kernels against the device's single-tensor kernels ----

TEST_CASE("CUDA foreach ops: each entry bitwise the single-tensor kernels", "[cuda][foreach]") {
  MT_SKIP_WITHOUT_CUDA();
  // Past the per-launch limits (48 tensors and 320 chunks of 32768 in one launch), counted per
  // dtype group, as the launcher plans each dtype apart, and empty tensors not counted: 17 lists
  // of 8 give 51 non-empty f32 entries (and a few long ones), then a long f32 tensor of 336
  // chunks split across launches (the table refilled, slots renumbered, the sum of squares'
  // partials written at first_chunk > 0).
  TensorList a, b;
  for (uint64_t k = 0; k < 17; ++k) {
    for (const Tensor& t : mixed_list(10 + 100 * k, gpu0(), k == 3)) a.push_back(t);
    for (const Tensor& t : mixed_list(20 + 100 * k, gpu0(), k == 3)) b.push_back(t);
  }
  a.push_back(random_tensor(Shape{336 * 32768 - 5}, -2, 2, 1001).to(DType::f32).to(gpu0()));
  b.push_back(random_tensor(Shape{336 * 32768 - 5}, -2, 2, 1002).to(DType::f32).to(gpu0()));
  const TensorList sum = foreach_add(a, b);
  const Tensor factor = scalar_tensor(0.7123456789, DType::f64).to(gpu0());
  const TensorList prod = foreach_mul(a, factor);
  TensorList x;
  for (const Tensor& t : a) x.push_back(t.contiguous().clone());
  foreach_add_(x, b);
  foreach_mul_(x, 0.3);
  long double ref_sq = 0;  // 64-bit significand: the reference's own rounding far below 1e-12
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("entry " << i << " " << a[i].str());
    CHECK(same_bits(sum[i], add(a[i], b[i])));
    CHECK(same_bits(prod[i], mul(a[i], factor.to(a[i].dtype()))));
    Tensor ref = a[i].contiguous().clone();
    ref.add_(b[i]);
    ref.mul_(0.3);
    CHECK(same_bits(x[i], ref));
    const Tensor t64 = a[i].to(kCPU).to(DType::f64).contiguous();
    const double* v = t64.data_ptr<double>();
    for (int64_t j = 0; j < t64.numel(); ++j) ref_sq += (long double)v[j] * v[j];
  }
  const Tensor sq = foreach_sum_squares(a);
  CHECK(sq.device() == gpu0());
  // ~11.5 M positive f64 terms: the device sums at most 128 in a row per thread, then trees of
  // 2^k, so its error is under ~150 f64 roundings (2e-14 relative); the reference's, in long
  // double, under 11.5e6 x 2^-64 = 6e-13. Both bounds are worst cases.
  constexpr double kSumSquaresRel = 1e-12;
  CHECK(sq.item<double>() == Approx(double(ref_sq)).epsilon(kSumSquaresRel));
  CHECK(same_bits(foreach_sum_squares(a), sq));  // a fixed order: reproducible
}

TEST_CASE("CUDA AdamW foreach: the same updates as one kernel per parameter",
          "[cuda][optim][foreach]") {
  MT_SKIP_WITHOUT_CUDA();
  // 97 parameters of mixed dtypes, among them 37 non-empty f32 (the launcher plans each dtype
  // apart and skips empty tensors: two launches of at most 32 tensors), one of 9 M elements (288
  // chunks: past a launch's 256).
  TensorList init;
  for (uint64_t k = 0; k < 12; ++k)
    for (const Tensor& t : mixed_list(50 + 10 * k, gpu0())) init.push_back(t);
  init.push_back(random_tensor(Shape{9 << 20}, -1, 1, 7).to(DType::f32).to(gpu0()));
  for (bool capturable : {false, true})
    for (bool amsgrad : {false, true}) {
      INFO("capturable " << capturable << " amsgrad " << amsgrad);
      check_adamw_foreach(init, gpu0(), capturable, amsgrad);
    }
}
