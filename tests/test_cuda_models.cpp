// POCO, the baselines and the meta-gradients on a CUDA device against the CPU backend (the
// reference): a tiny POCO built on the CPU and moved with Module::to, its forward pass, the
// gradients of its loss, the second-order E2E-TTT meta-gradient through two inner steps (plain
// and checkpointed), FOMAML, the baselines, and the clip + AdamW update of the meta-step
// benchmark. The [cuda] cases skip, with a warning, when no CUDA device is present. The CPU-only
// cases check what can be checked here: Module::to(kCPU) changes nothing, buffers move with a
// module but are not parameters, the device-side clipping equals the host one, and the f32
// tolerances below hold between the CPU in f32 and in f64 (so a CUDA run, an f32 computation
// of the same function, is held to an error budget the CPU itself meets).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

#include "engine/autograd/engine.h"
#include "engine/autograd/grad_mode.h"
#include "engine/core/backend.h"
#include "engine/optim/adamw.h"
#include "engine/optim/optimizer.h"
#include "meta/maml.h"
#include "support/cuda_compare.h"

using namespace mt;
using namespace mt::testing;

namespace {

// ---- tolerances (|cuda - cpu| <= atol + rtol |cpu|, both f32) ----
// The two backends compute the same f32 function with sums in another order (GEMM tiling,
// tree reductions in softmax, layer_norm, mean and the embedding scatter-add) and other last
// bits of exp/erf/sin/cos: each result is off the exact value by a few f32 ulps per op, summed
// over the ~60 ops of a POCO forward (values O(1), eps_f32 = 1.2e-7). The CPU-only case below
// checks each budget holds at half its size between CPU f32 and CPU f64, so two f32 results
// that each meet it agree within it. (Measured there: the worst element of the forward pass and
// of the loss gradients uses a few percent of its budget; a wrong term is off by far more.)
constexpr Tolerance kF32Forward{1e-5, 1e-4};
// Loss gradients: one more pass over the graph and sums over all neurons of the batch.
constexpr Tolerance kF32Grad{2e-5, 1e-3};
// E2E-TTT meta-gradients: two inner steps with create_graph, then the backward through the
// backward (third-order sums of products); twice the gradient budget.
constexpr Tolerance kF32MetaGrad{4e-5, 2e-3};
// One AdamW step from equal gradients: the update is elementwise, its scale set by lr; the
// clipping factor comes from a norm summed in f64 in another order.
constexpr Tolerance kF32Update{1e-6, 1e-5};

const std::vector<int64_t> kSessionSizes{5, 3};

// A POCO small enough for a test, with two self-attention heads, one processing layer and
// patches of 4 frames (context 8 = 2 patches).
meta::ModelSpec tiny_spec(const std::string& kind) {
  meta::ModelSpec spec;
  spec.kind = kind;
  spec.poco = {{"dim", 16},        {"dim_head", 8},    {"cross_heads", 1},
               {"self_heads", 2},  {"num_latents", 4}, {"depth", 1},
               {"seq_length", 12}, {"pred_length", 4}, {"patch", 4},
               {"conditioning_dim", 16}};
  spec.mlp_hidden = 8;
  return spec;
}

// One sample per session (5 and 3 neurons: attention with unequal lengths), x and targets
// standard normal; on the CPU in `dtype`.
models::PocoBatch tiny_batch(Generator& gen, DType dtype) {
  models::PocoBatch b;
  b.sample_neurons = kSessionSizes;
  b.sample_sessions = {0, 1};
  std::vector<int64_t> units, sessions;
  for (int64_t s = 0, offset = 0; s < int64_t(kSessionSizes.size()); ++s) {
    for (int64_t j = 0; j < kSessionSizes[size_t(s)]; ++j) {
      units.push_back(offset + j);
      sessions.push_back(s);
    }
    offset += kSessionSizes[size_t(s)];
  }
  const int64_t n = int64_t(units.size());
  b.x = normal(Shape{n, 8}, 0, 1, gen, dtype);
  b.target = normal(Shape{n, 4}, 0, 1, gen, dtype);
  b.unit_index = from_indices(units, Shape{n});
  b.neuron_session = from_indices(sessions, Shape{n});
  return b;
}

// A forecaster of `kind` on the CPU in `dtype`. POCO's FiLM head starts at alpha = beta = 0,
// which makes every gradient above the head zero; the head gets random weights so the
// comparison sees the whole network.
std::unique_ptr<meta::Forecaster> tiny_forecaster(const std::string& kind, DType dtype) {
  Generator gen(7);
  auto f = meta::make_forecaster(tiny_spec(kind), kSessionSizes, gen, dtype);
  if (f->module() != nullptr) {
    NoGradGuard no_grad;
    Generator head(11);
    for (auto& [name, p] : f->module()->named_parameters())
      if (name.rfind("head.alpha.", 0) == 0 || name.rfind("head.beta.", 0) == 0)
        p.copy_(normal(p.shape(), 0, 0.3, head, dtype));
  }
  return f;
}

// Copies every parameter of `from` into `to` (same names), converting the dtype.
void copy_parameters(meta::Forecaster& from, meta::Forecaster& to) {
  NoGradGuard no_grad;
  const nn::ParamMap src = from.module()->parameter_map();
  for (auto& [name, p] : to.module()->named_parameters())
    p.copy_(src.at(name).to(kCPU).to(p.dtype()));
}

TensorList loss_gradients(meta::Forecaster& f, const models::PocoBatch& b, Tensor* loss_out) {
  TensorList params = f.module()->parameters();
  Tensor loss = mse_loss(f.predict(b), b.target);
  if (loss_out) *loss_out = loss;
  TensorList g = autograd::grad({loss}, params, {}, std::nullopt, false, /*allow_unused=*/true);
  for (size_t i = 0; i < g.size(); ++i)
    if (!g[i].defined()) g[i] = zeros_like(params[i]);
  return g;
}

meta::InnerLoopOptions two_steps(const std::string& kind) {
  meta::InnerLoopOptions opt;
  opt.steps = 2;
  opt.inner_lr = 0.05;  // large enough that the second-order terms matter
  if (kind != "poco") opt.params = {};  // the baselines have no embeddings: adapt everything
  return opt;
}

// Compares a forecaster on the device with the same one on the CPU: prediction, loss gradients,
// and the E2E-TTT meta-gradient of two inner steps (the first `checkpoint_steps` checkpointed on
// the device).
void compare_on_device(const std::string& kind, int64_t checkpoint_steps) {
  auto cpu = tiny_forecaster(kind, DType::f32);
  auto gpu = tiny_forecaster(kind, DType::f32);
  gpu->to(gpu0());
  REQUIRE(gpu->device() == gpu0());
  for (auto& [name, p] : gpu->module()->named_parameters()) {
    INFO(name);
    CHECK(p.device() == gpu0());
    CHECK(p.requires_grad());
  }
  Generator gen(3);
  const models::PocoBatch support = tiny_batch(gen, DType::f32), query = tiny_batch(gen, DType::f32);
  const models::PocoBatch support_gpu = support.to(gpu0()), query_gpu = query.to(gpu0());
  REQUIRE(support_gpu.device() == gpu0());

  check_close(gpu->predict(support_gpu), cpu->predict(support), kF32Forward, kind + " forward");

  Tensor loss_cpu, loss_gpu;
  const TensorList g_cpu = loss_gradients(*cpu, support, &loss_cpu);
  const TensorList g_gpu = loss_gradients(*gpu, support_gpu, &loss_gpu);
  check_close(loss_gpu, loss_cpu, kF32Forward, kind + " loss");
  const auto names = cpu->module()->named_parameters();
  for (size_t i = 0; i < names.size(); ++i) {
    CHECK(g_gpu[i].device() == gpu0());
    check_close(g_gpu[i], g_cpu[i], kF32Grad, kind + " loss gradient of " + names[i].first);
  }

  meta::InnerLoopOptions opt = two_steps(kind);
  const meta::MetaGradient m_cpu = meta::e2e_ttt_gradient(*cpu, {support}, query, opt);
  opt.checkpoint_steps = checkpoint_steps;
  const meta::MetaGradient m_gpu = meta::e2e_ttt_gradient(*gpu, {support_gpu}, query_gpu, opt);
  REQUIRE(m_gpu.names == m_cpu.names);
  check_close(m_gpu.meta_loss, m_cpu.meta_loss, kF32Forward, kind + " meta-loss");
  for (size_t i = 0; i < m_cpu.names.size(); ++i)
    check_close(m_gpu.grads[i], m_cpu.grads[i], kF32MetaGrad,
                kind + " E2E-TTT meta-gradient of " + m_cpu.names[i]);
}

}  // namespace

// ---- CPU-only ----

TEST_CASE("Module::to(kCPU) of a CPU model changes nothing and keeps names", "[nn][device]") {
  auto f = tiny_forecaster("poco", DType::f32);
  nn::Module& m = *f->module();
  const auto before = m.named_parameters();
  std::vector<const void*> data;
  std::vector<std::vector<float>> values;
  for (const auto& [name, p] : before) {
    data.push_back(p.raw_data());
    values.push_back(p.to_vector<float>());
  }
  CHECK(&m.to(kCPU) == &m);
  f->to(kCPU);
  CHECK(f->device() == kCPU);
  CHECK(m.device() == kCPU);
  const auto after = m.named_parameters();
  REQUIRE(after.size() == before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    INFO(after[i].first);
    CHECK(after[i].first == before[i].first);
    CHECK(after[i].second.impl() == before[i].second.impl());  // the same handle
    CHECK(after[i].second.raw_data() == data[i]);             // the same storage
    CHECK(after[i].second.requires_grad());
    CHECK(after[i].second.is_leaf());
    CHECK(after[i].second.to_vector<float>() == values[i]);
  }
  // The rotary frequencies are a buffer: they move with the model but are not trained.
  const auto buffers = m.named_buffers();
  REQUIRE(buffers.size() == 1);
  CHECK(buffers[0].first == "inv_freq");
  CHECK(!buffers[0].second.requires_grad());
  CHECK(m.parameter_map().count("inv_freq") == 0);
  // A batch already on the CPU is the same tensors after to(kCPU).
  Generator gen(3);
  const models::PocoBatch b = tiny_batch(gen, DType::f32);
  const models::PocoBatch c = b.to(kCPU);
  CHECK(c.x.impl() == b.x.impl());
  CHECK(c.unit_index.impl() == b.unit_index.impl());
  CHECK(c.target.impl() == b.target.impl());
  CHECK(c.sample_neurons == b.sample_neurons);
  CHECK(f->predict(c).to_vector<float>() == f->predict(b).to_vector<float>());
}

TEST_CASE("Module::to keeps gradients and buffers of every child", "[nn][device]") {
  auto f = tiny_forecaster("poco", DType::f64);
  Generator gen(3);
  models::PocoBatch b = tiny_batch(gen, DType::f64);
  autograd::backward({mse_loss(f->predict(b), b.target)});
  f->module()->to(kCPU);
  for (const auto& [name, p] : f->module()->named_parameters()) {
    INFO(name);
    CHECK(p.grad().defined());
  }
}

TEST_CASE("clip_grad_norm_on_device equals clip_grad_norm", "[optim][device]") {
  for (double max_norm : {1e-3, 1e3}) {  // clipped, and left alone
    INFO("max_norm " << max_norm);
    Generator gen(5);
    TensorList a, b;
    for (const Shape& s : {Shape{3, 4}, Shape{7}, Shape{2, 2, 2}}) {
      Tensor p = zeros(s), q = zeros(s);
      p.set_requires_grad(true);
      q.set_requires_grad(true);
      Tensor g = normal(s, 0, 1, gen);
      p.set_grad(g.clone());
      q.set_grad(g.clone());
      a.push_back(p);
      b.push_back(q);
    }
    Tensor no_grad_param = zeros(Shape{2});
    no_grad_param.set_requires_grad(true);
    a.push_back(no_grad_param);
    b.push_back(no_grad_param);
    const double total = optim::clip_grad_norm(a, max_norm);
    const Tensor total_dev = optim::clip_grad_norm_on_device(b, max_norm);
    CHECK(total_dev.dtype() == DType::f64);
    CHECK(total_dev.item<double>() == Approx(total).epsilon(1e-14));
    for (size_t i = 0; i + 1 < a.size(); ++i)
      check_close(b[i].grad(), a[i].grad(), Tolerance{0, 1e-6}, "clipped gradient");
    CHECK(!no_grad_param.grad().defined());
  }
}

// The error budgets of the [cuda] cases, met by the CPU in f32 against the CPU in f64 at half
// their size (see the tolerances above).
TEST_CASE("the f32 model tolerances hold between CPU f32 and CPU f64", "[meta][device]") {
  for (const std::string kind : {"poco", "mlp"}) {
    INFO(kind);
    auto f32 = tiny_forecaster(kind, DType::f32);
    auto f64 = tiny_forecaster(kind, DType::f64);
    copy_parameters(*f32, *f64);
    Generator gen(3);
    const models::PocoBatch s32 = tiny_batch(gen, DType::f32), q32 = tiny_batch(gen, DType::f32);
    models::PocoBatch s64 = s32, q64 = q32;
    s64.x = s32.x.to(DType::f64);
    s64.target = s32.target.to(DType::f64);
    q64.x = q32.x.to(DType::f64);
    q64.target = q32.target.to(DType::f64);
    auto half = [](Tolerance t) { return Tolerance{t.atol / 2, t.rtol / 2}; };
    check_close(f32->predict(s32), f64->predict(s64), half(kF32Forward), "forward");
    const TensorList g32 = loss_gradients(*f32, s32, nullptr), g64 = loss_gradients(*f64, s64, nullptr);
    for (size_t i = 0; i < g32.size(); ++i) check_close(g32[i], g64[i], half(kF32Grad), "gradient");
    const meta::MetaGradient m32 = meta::e2e_ttt_gradient(*f32, {s32}, q32, two_steps(kind));
    const meta::MetaGradient m64 = meta::e2e_ttt_gradient(*f64, {s64}, q64, two_steps(kind));
    for (size_t i = 0; i < m32.grads.size(); ++i)
      check_close(m32.grads[i], m64.grads[i], half(kF32MetaGrad),
                  "meta-gradient of " + m32.names[i]);
  }
}

// ---- CUDA ----

TEST_CASE("CUDA: moving a model keeps names, flags and values, and back again", "[cuda][nn]") {
  MT_SKIP_WITHOUT_CUDA();
  auto f = tiny_forecaster("poco", DType::f32);
  nn::Module& m = *f->module();
  const auto before = m.named_parameters();
  std::vector<std::vector<float>> values;
  for (const auto& [name, p] : before) values.push_back(p.to_vector<float>());
  const std::vector<float> inv_freq = m.named_buffers().at(0).second.to_vector<float>();
  f->to(gpu0());
  CHECK(m.device() == gpu0());
  CHECK(m.named_buffers().at(0).second.device() == gpu0());
  CHECK(m.named_buffers().at(0).second.to_vector<float>() == inv_freq);
  auto after = m.named_parameters();
  REQUIRE(after.size() == before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    INFO(after[i].first);
    CHECK(after[i].first == before[i].first);
    CHECK(after[i].second.impl() == before[i].second.impl());  // handles held elsewhere see it
    CHECK(after[i].second.device() == gpu0());
    CHECK(after[i].second.requires_grad());
    CHECK(after[i].second.is_leaf());
    CHECK(after[i].second.is_contiguous());
    CHECK(after[i].second.to_vector<float>() == values[i]);
  }
  // A batch left on the CPU is refused with the fix in the message.
  Generator gen(3);
  const models::PocoBatch b = tiny_batch(gen, DType::f32);
  CHECK_THROWS_WITH(f->predict(b), Catch::Contains("batch.to(device)"));
  // Gradients move along; and back to the CPU, bitwise.
  autograd::backward({mse_loss(f->predict(b.to(gpu0())), b.target.to(gpu0()))});
  f->to(kCPU);
  after = m.named_parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    INFO(after[i].first);
    CHECK(after[i].second.device() == kCPU);
    CHECK(after[i].second.to_vector<float>() == values[i]);
    REQUIRE(after[i].second.grad().defined());
    CHECK(after[i].second.grad().device() == kCPU);
  }
}

TEST_CASE("CUDA: POCO forward, gradients and E2E-TTT meta-gradient equal the CPU's",
          "[cuda][meta]") {
  MT_SKIP_WITHOUT_CUDA();
  SECTION("inner steps kept") { compare_on_device("poco", /*checkpoint_steps=*/0); }
  SECTION("first inner step checkpointed") { compare_on_device("poco", /*checkpoint_steps=*/1); }
  SECTION("inner steps checkpointed") { compare_on_device("poco", /*checkpoint_steps=*/2); }
}

TEST_CASE("CUDA: the baselines equal the CPU's", "[cuda][meta]") {
  MT_SKIP_WITHOUT_CUDA();
  compare_on_device("nlinear", 0);
  compare_on_device("mlp", 0);
  auto cpu = tiny_forecaster("copy_last", DType::f32);
  auto gpu = tiny_forecaster("copy_last", DType::f32);
  gpu->to(gpu0());
  Generator gen(3);
  const models::PocoBatch b = tiny_batch(gen, DType::f32);
  check_equal(gpu->predict(b.to(gpu0())), cpu->predict(b), "copy_last");
}

TEST_CASE("CUDA: FOMAML and the meta-step's clip + AdamW equal the CPU's", "[cuda][meta]") {
  MT_SKIP_WITHOUT_CUDA();
  auto cpu = tiny_forecaster("poco", DType::f32);
  auto gpu = tiny_forecaster("poco", DType::f32);
  gpu->to(gpu0());
  Generator gen(3);
  const models::PocoBatch support = tiny_batch(gen, DType::f32), query = tiny_batch(gen, DType::f32);
  const meta::InnerLoopOptions opt = two_steps("poco");
  const meta::MetaGradient m_cpu = meta::fomaml_gradient(*cpu, {support}, query, opt);
  const meta::MetaGradient m_gpu =
      meta::fomaml_gradient(*gpu, {support.to(gpu0())}, query.to(gpu0()), opt);
  for (size_t i = 0; i < m_cpu.names.size(); ++i)
    check_close(m_gpu.grads[i], m_cpu.grads[i], kF32Grad, "FOMAML gradient of " + m_cpu.names[i]);

  // As bench/meta_step_bench.cpp: the same gradients set on both, clipped, one AdamW step.
  auto p_cpu = cpu->module()->named_parameters(), p_gpu = gpu->module()->named_parameters();
  {
    NoGradGuard no_grad;
    for (size_t i = 0; i < p_cpu.size(); ++i) {
      p_cpu[i].second.set_grad(m_cpu.grads[i].detach().clone());
      p_gpu[i].second.set_grad(m_cpu.grads[i].detach().to(gpu0()));
    }
  }
  optim::AdamWOptions ao;
  ao.lr = 1e-2;
  ao.weight_decay = 1e-4;
  optim::AdamW adam_cpu(p_cpu, ao), adam_gpu(p_gpu, ao);
  const double total = optim::clip_grad_norm(p_cpu, 0.1);
  const Tensor total_gpu = optim::clip_grad_norm_on_device(p_gpu, 0.1);
  CHECK(total_gpu.device() == gpu0());
  CHECK(total_gpu.item<double>() == Approx(total).epsilon(1e-12));
  {
    // Parameters without gradients: the zero total is on their device too.
    Tensor bare = zeros(Shape{3}).to(gpu0());
    bare.set_requires_grad(true);
    const Tensor none = optim::clip_grad_norm_on_device(TensorList{bare}, 0.1);
    CHECK(none.device() == gpu0());
    CHECK(none.item<double>() == 0.0);
  }
  adam_cpu.step();
  adam_gpu.step();
  for (size_t i = 0; i < p_cpu.size(); ++i)
    check_close(p_gpu[i].second, p_cpu[i].second, kF32Update, "AdamW update of " + p_cpu[i].first);
}

TEST_CASE("CUDA: an E2E-TTT meta-step captured as a CUDA graph replays as eager meta-steps",
          "[cuda][meta][graph]") {
  MT_SKIP_WITHOUT_CUDA();
  // Two equal models on the device: one takes eager meta-steps (AdamW counting on the host),
  // the other one eager step, then replays of one captured step (AdamW counting on the device),
  // as bench/meta_step_bench.cpp --graph. Batches with unequal lengths: the fused attention's
  // host-built tables are copied inside the capture.
  auto eager = tiny_forecaster("poco", DType::f32);
  auto graphed = tiny_forecaster("poco", DType::f32);
  eager->to(gpu0());
  graphed->to(gpu0());
  Generator gen(3);
  const models::PocoBatch support = tiny_batch(gen, DType::f32).to(gpu0());
  const models::PocoBatch query = tiny_batch(gen, DType::f32).to(gpu0());
  const meta::InnerLoopOptions opt = two_steps("poco");
  auto p_eager = eager->module()->named_parameters();
  auto p_graphed = graphed->module()->named_parameters();
  optim::AdamWOptions ao;
  ao.lr = 1e-2;
  ao.weight_decay = 1e-4;
  optim::AdamW adam_eager(p_eager, ao);
  ao.capturable = true;
  optim::AdamW adam_graphed(p_graphed, ao);
  auto meta_step = [&](meta::Forecaster& f, optim::AdamW& adam, optim::NamedParams& params,
                       Tensor& loss) {
    adam.zero_grad();
    const meta::MetaGradient m = meta::e2e_ttt_gradient(f, {support}, query, opt);
    {
      NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) params[i].second.set_grad(m.grads[i].detach());
    }
    optim::clip_grad_norm_on_device(params, 0.1);
    adam.step();
    loss = m.meta_loss.detach();
  };
  Tensor loss_eager, loss_graphed;
  meta_step(*eager, adam_eager, p_eager, loss_eager);
  meta_step(*graphed, adam_graphed, p_graphed, loss_graphed);
  CudaGraph graph;
  graph.capture(gpu0(), [&] { meta_step(*graphed, adam_graphed, p_graphed, loss_graphed); });
  // The same kernels on the same values: equal to rounding noise of the device-side AdamW
  // scalars (a stale step count, input or table would be off by orders of magnitude more).
  constexpr Tolerance kReplay{1e-6, 1e-5};
  std::vector<double> losses;
  for (int r = 1; r <= 3; ++r) {
    meta_step(*eager, adam_eager, p_eager, loss_eager);
    graph.replay();
    const std::string what = "replay " + std::to_string(r);
    check_close(loss_graphed, loss_eager, kReplay, what + ": meta-loss");
    losses.push_back(loss_graphed.item<double>());
    for (size_t i = 0; i < p_eager.size(); ++i)
      check_close(p_graphed[i].second.detach(), p_eager[i].second.detach(), kReplay,
                  what + ": " + p_eager[i].first);
  }
  CHECK(adam_graphed.state_dict()[0].second.item<int64_t>() == 4);
  // Each replay starts from the weights the previous one left: the meta-loss moves.
  CHECK(losses[0] != losses[2]);
}
