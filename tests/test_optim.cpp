// engine/optim against PyTorch: AdamW (amsgrad off and on), SGD (momentum with dampening,
// Nesterov) and clip_grad_norm, 5 steps each on the problem of tools/reference/optim_reference.py
// (tests/golden/optim_v1.bin, float64); bitwise resumption through safetensors; skipped
// parameters, state validation, in-place semantics.
#include <cmath>
#include <cstring>
#include <memory>

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include "engine/io/checkpoint.h"
#include "engine/io/safetensors.h"
#include "engine/optim/kernels.h"
#include "engine/optim/optim.h"
#include "support/golden_file.h"
#include "support/gradcheck.h"
#include "support/temp_dir.h"

using namespace mt;
using namespace mt::testing;
using Catch::Contains;

namespace {

// f64 against torch's f64: the kernels do torch's operations in torch's order, so the only
// differences are where one side fuses a multiply-add (torch's vectorised lerp and add-with-alpha;
// the compiler here, depending on -march) and the loss's summation order: a few ulps per step.
// Measured: parameters, gradients and norms agree bit for bit or within 1 ulp, the loss within
// 2e-15. 1e-13 absolute + 1e-12 relative leaves over two orders of margin for other CPUs and
// builds and still fails on any wrong term (those are ~lr = 1e-2 in size).
constexpr Tolerance kOptimF64{1e-13, 1e-12};
// f32 run of the same problem against the f64 reference: f32 rounding (6e-8 relative) of
// parameters, gradients and moments of size ~1-5 through five steps. Measured worst error: 6%
// of this tolerance; 2e-6 absolute + 2e-6 relative stays far below a step (1e-2).
constexpr Tolerance kOptimF32{2e-6, 2e-6};

constexpr int kSteps = 5;

const GoldenFile& golden() {
  static const GoldenFile file =
      GoldenFile::load(golden_path("optim_v1.bin"));
  return file;
}

// Slice k (along the first dim) of a stacked golden tensor.
std::vector<double> golden_slice(const std::string& name, int64_t k) {
  const GoldenTensor& g = golden().at(name);
  const size_t n = g.values.size() / size_t(g.shape.at(0));
  return {g.values.begin() + ptrdiff_t(size_t(k) * n),
          g.values.begin() + ptrdiff_t(size_t(k + 1) * n)};
}
Shape golden_slice_shape(const std::string& name) {
  const GoldenTensor& g = golden().at(name);
  return Shape(std::vector<int64_t>(g.shape.begin() + 1, g.shape.end()));
}
Tensor golden_slice_tensor(const std::string& name, int64_t k, DType dtype) {
  return from_vector(golden_slice(name, k), golden_slice_shape(name), dtype);
}
double golden_scalar(const std::string& name) {
  return golden().at(name).values.at(0);
}

void expect_close(const std::string& what, const Tensor& actual,
                  const std::vector<double>& expected, Tolerance tol) {
  INFO(what);
  REQUIRE(size_t(actual.numel()) == expected.size());
  const std::vector<double> v = actual.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    const double err = std::abs(v[i] - expected[i]);
    const double allowed = tol.atol + tol.rtol * std::abs(expected[i]);
    worst = std::max(worst, err / allowed);
    if (!(err <= allowed))
      FAIL(fmt::format("{}[{}]: got {:.17g}, reference {:.17g} (|diff| {:.3g})", what, i, v[i],
                       expected[i], err));
  }
  SUCCEED(fmt::format("{}: worst error at {:.3g} of the tolerance", what, worst));
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!(a.shape() == b.shape()) || a.dtype() != b.dtype()) return false;
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), size_t(ca.numel()) * itemsize(ca.dtype())) == 0;
}

// The per-step data of the problem, in a dtype.
struct Problem {
  TensorList t1, t2, w1, w2;
  explicit Problem(DType dtype) {
    for (int k = 0; k < kSteps; ++k) {
      t1.push_back(golden_slice_tensor("target1", k, dtype));
      t2.push_back(golden_slice_tensor("target2", k, dtype));
      w1.push_back(golden_slice_tensor("weight1", k, dtype));
      w2.push_back(golden_slice_tensor("weight2", k, dtype));
    }
  }
  Tensor loss(int k, const Tensor& p1, const Tensor& p2) const {
    return add(sum(mul(w1[size_t(k)], pow(sub(p1, t1[size_t(k)]), 2.0))),
               sum(mul(w2[size_t(k)], pow(sub(p2, t2[size_t(k)]), 2.0))));
  }
};

optim::NamedParams initial_params(DType dtype) {
  const GoldenTensor& p1 = golden().at("p1_init");
  const GoldenTensor& p2 = golden().at("p2_init");
  Tensor a = from_vector(p1.values, Shape(p1.shape), dtype);
  Tensor b = from_vector(p2.values, Shape(p2.shape), dtype);
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  return {{"p1", a}, {"p2", b}};
}

// The optimizer of a golden run, from the hyperparameters stored with it.
std::unique_ptr<optim::Optimizer> make_optimizer(const std::string& run,
                                                 const optim::NamedParams& params) {
  auto hp = [&](const char* name) { return golden_scalar(run + ".hp." + name); };
  if (run.rfind("adamw", 0) == 0) {
    optim::AdamWOptions o;
    o.lr = hp("lr");
    o.beta1 = hp("beta1");
    o.beta2 = hp("beta2");
    o.eps = hp("eps");
    o.weight_decay = hp("weight_decay");
    o.amsgrad = hp("amsgrad") != 0;
    return std::make_unique<optim::AdamW>(params, o);
  }
  optim::SGDOptions o;
  o.lr = hp("lr");
  o.momentum = hp("momentum");
  o.dampening = hp("dampening");
  o.weight_decay = hp("weight_decay");
  o.nesterov = hp("nesterov") != 0;
  return std::make_unique<optim::SGD>(params, o);
}

// Runs `run` for steps [from, to) on params, checking every value against the reference.
void run_against_reference(const std::string& run, DType dtype, Tolerance tol) {
  const Problem pb(dtype);
  const optim::NamedParams params = initial_params(dtype);
  const Tensor& p1 = params[0].second;
  const Tensor& p2 = params[1].second;
  auto opt = make_optimizer(run, params);
  const bool clip = golden().contains(run + ".hp.max_norm");
  for (int k = 0; k < kSteps; ++k) {
    const std::string at = fmt::format("{} ({}) step {}", run, dtype_name(dtype), k + 1);
    opt->zero_grad();
    Tensor loss = pb.loss(k, p1, p2);
    loss.backward();
    expect_close(at + " loss", loss, golden_slice(run + ".loss", k), tol);
    expect_close(at + " grad p1", p1.grad(), golden_slice(run + ".grad_p1", k), tol);
    expect_close(at + " grad p2", p2.grad(), golden_slice(run + ".grad_p2", k), tol);
    if (clip) {
      const double norm = optim::clip_grad_norm(opt->params(), golden_scalar(run + ".hp.max_norm"));
      expect_close(at + " norm", scalar_tensor(norm, DType::f64), golden_slice(run + ".norm", k),
                   tol);
    }
    opt->step();
    expect_close(at + " p1", p1, golden_slice(run + ".p1", k + 1), tol);
    expect_close(at + " p2", p2, golden_slice(run + ".p2", k + 1), tol);
  }
}

}  // namespace

TEST_CASE("optimizer kernels are registered behind dispatch stubs", "[optim]") {
  CHECK(optim::adamw_kernel.table[int(DeviceType::CPU)] != nullptr);
  CHECK(optim::sgd_kernel.table[int(DeviceType::CPU)] != nullptr);
}

TEST_CASE("AdamW, SGD and clip_grad_norm follow PyTorch step by step", "[optim][golden]") {
  for (const char* run : {"adamw", "adamw_amsgrad", "sgd_momentum", "sgd_nesterov", "adamw_clip"}) {
    SECTION(std::string(run) + " f64") {
      run_against_reference(run, DType::f64, kOptimF64);
    }
    SECTION(std::string(run) + " f32") {
      run_against_reference(run, DType::f32, kOptimF32);
    }
  }
}

TEST_CASE("the amsgrad reference differs from plain AdamW", "[optim][golden]") {
  // Guards the golden case itself: amsgrad must change the trajectory.
  const auto& a = golden().at("adamw.p1").values;
  const auto& b = golden().at("adamw_amsgrad.p1").values;
  CHECK(a != b);
}

TEST_CASE("clip_grad_norm matches torch.nn.utils.clip_grad_norm_", "[optim][golden]") {
  for (DType dtype : {DType::f64, DType::f32}) {
    INFO(dtype_name(dtype));
    const Tolerance tol = dtype == DType::f64 ? kOptimF64 : kOptimF32;
    optim::NamedParams params = initial_params(dtype);
    Tensor none = zeros(Shape{2}, dtype).set_requires_grad(true);  // no gradient: ignored
    params.emplace_back("none", none);
    params[0].second.set_grad(from_vector(golden().at("clip.grad_p1").values, Shape{3, 4}, dtype));
    params[1].second.set_grad(from_vector(golden().at("clip.grad_p2").values, Shape{4}, dtype));
    const Tensor g1 = params[0].second.grad();
    const double total = optim::clip_grad_norm(params, golden_scalar("clip.max_norm"));
    CHECK_THAT(total, Catch::WithinRel(golden_scalar("clip.total_norm"), tol.rtol));
    expect_close("clipped p1", params[0].second.grad(), golden().at("clip.clipped_p1").values, tol);
    expect_close("clipped p2", params[1].second.grad(), golden().at("clip.clipped_p2").values, tol);
    CHECK(params[0].second.grad().impl() == g1.impl());  // scaled in place
    CHECK(!none.grad().defined());

    // Below max_norm nothing changes, bit for bit.
    const Tensor before = params[0].second.grad().clone();
    const double again = optim::clip_grad_norm(params, 1e3);
    CHECK_THAT(again, Catch::WithinRel(golden_scalar("clip.max_norm"), 1e-5));
    CHECK(same_bits(params[0].second.grad(), before));
  }

  // A broadcast gradient (stride 0) is replaced by a scaled copy, not scaled once per view.
  Tensor p = zeros(Shape{3}, DType::f64).set_requires_grad(true);
  Tensor two = scalar_tensor(2.0, DType::f64);
  p.set_grad(two.expand(Shape{3}));
  const double total = optim::clip_grad_norm(TensorList{p}, 1.0);
  CHECK(total == Approx(std::sqrt(12.0)).epsilon(1e-15));
  const double c = 2.0 * (1.0 / (std::sqrt(12.0) + 1e-6));
  for (double v : p.grad().to_vector<double>()) CHECK(v == Approx(c).epsilon(1e-15));
  CHECK(two.item<double>() == 2.0);

  // max_norm must be a finite number >= 0 (a negative one would flip every gradient).
  p.set_grad(from_vector(std::vector<double>{3, 4, 0}, Shape{3}, DType::f64));
  CHECK_THROWS_WITH(optim::clip_grad_norm(TensorList{p}, -1.0), Contains("max_norm must be"));
  CHECK_THROWS_WITH(optim::clip_grad_norm(TensorList{p}, NAN), Contains("max_norm must be"));
  // A NaN gradient: as torch, every gradient becomes NaN; with error_if_nonfinite, an error and
  // no gradient changed.
  Tensor q = zeros(Shape{2}, DType::f64).set_requires_grad(true);
  q.set_grad(from_vector(std::vector<double>{NAN, 1}, Shape{2}, DType::f64));
  CHECK_THROWS_WITH(optim::clip_grad_norm(TensorList{p, q}, 1.0, /*error_if_nonfinite=*/true),
                    Contains("holds NaN or inf") && Contains("no gradient was changed"));
  CHECK(p.grad().to_vector<double>() == std::vector<double>{3, 4, 0});
  CHECK(std::isnan(optim::clip_grad_norm(TensorList{p, q}, 1.0)));
  CHECK(std::isnan(p.grad().to_vector<double>()[0]));
}

TEST_CASE("a run resumed from saved state is bitwise identical to a straight run", "[optim][io]") {
  TempDir dir("test_optim");
  for (const char* run : {"adamw_amsgrad", "sgd_momentum", "adamw_clip"}) {
    for (DType dtype : {DType::f32, DType::f64}) {
      INFO(run << " " << dtype_name(dtype));
      const Problem pb(dtype);
      const bool clip = golden().contains(std::string(run) + ".hp.max_norm");
      auto train = [&](optim::Optimizer& opt, int from, int to) {
        const optim::NamedParams& ps = opt.params();
        for (int k = from; k < to; ++k) {
          opt.zero_grad();
          pb.loss(k, ps[0].second, ps[1].second).backward();
          if (clip) optim::clip_grad_norm(ps, 3.0);
          opt.step();
        }
      };

      const optim::NamedParams straight = initial_params(dtype);
      auto opt_straight = make_optimizer(run, straight);
      train(*opt_straight, 0, kSteps);

      // 3 steps, save parameters and optimizer state, then start over in fresh objects.
      const std::string params_path = dir.file("params.safetensors");
      const std::string state_path = dir.file("optimizer.safetensors");
      {
        const optim::NamedParams first = initial_params(dtype);
        auto opt = make_optimizer(run, first);
        train(*opt, 0, 3);
        io::save_checkpoint(params_path, first, {{"step", 3}});
        io::save_safetensors(state_path, opt->state_dict(), opt->hyperparameters());
      }
      const optim::NamedParams resumed = initial_params(dtype);  // not the saved values
      const io::LoadReport report = io::load_parameters(resumed, params_path);
      CHECK(report.metadata.at("step") == 3);
      auto opt = make_optimizer(run, resumed);
      const io::SafetensorsContents state = io::load_safetensors(state_path);
      CHECK(state.metadata == opt->hyperparameters());
      opt->load_state_dict(state.tensors);
      train(*opt, 3, kSteps);

      for (size_t i = 0; i < straight.size(); ++i) {
        INFO(straight[i].first);
        CHECK(same_bits(resumed[i].second, straight[i].second));
      }
      const optim::NamedParams s1 = opt_straight->state_dict(), s2 = opt->state_dict();
      REQUIRE(s1.size() == s2.size());
      for (size_t i = 0; i < s1.size(); ++i) {
        INFO(s1[i].first);
        CHECK(s1[i].first == s2[i].first);
        CHECK(same_bits(s1[i].second, s2[i].second));
      }
    }
  }
}

TEST_CASE("optimizer state: names, step count, skipped parameters, zero_grad", "[optim]") {
  Tensor a =
      from_vector(std::vector<double>{1, 2, 3}, Shape{3}, DType::f64).set_requires_grad(true);
  Tensor b = from_vector(std::vector<double>{4, 5}, Shape{2}, DType::f64).set_requires_grad(true);
  optim::AdamW opt({{"a", a}, {"b", b}}, {.lr = 0.1, .amsgrad = true});
  CHECK(opt.state_dict().empty());

  // Only a has a gradient: b is skipped, unchanged and without state.
  const Tensor b_before = b.clone();
  sum(mul(a, a)).backward();
  opt.step();
  CHECK(same_bits(b, b_before));
  optim::NamedParams s = opt.state_dict();
  std::vector<std::string> names;
  for (const auto& [n, t] : s) names.push_back(n);
  CHECK(names ==
        std::vector<std::string>{"a.step", "a.exp_avg", "a.exp_avg_sq", "a.max_exp_avg_sq"});
  CHECK(s[0].second.dtype() == DType::i64);
  CHECK(s[0].second.item<int64_t>() == 1);
  // Adam's first step moves every coordinate by lr (times the decay of the weights).
  CHECK(a.to_vector<double>()[0] == Approx(1 * (1 - 0.1 * 0.01) - 0.1).epsilon(1e-8));

  opt.zero_grad();
  CHECK(!a.grad().defined());
  opt.step();  // no gradients at all: nothing happens
  CHECK(opt.state_dict()[0].second.item<int64_t>() == 1);

  sum(mul(a, sum(b))).backward();
  opt.step();
  s = opt.state_dict();
  REQUIRE(s.size() == 8);
  CHECK(s[0].second.item<int64_t>() == 2);  // a.step
  CHECK(s[4].first == "b.step");
  CHECK(s[4].second.item<int64_t>() == 1);

  // state_dict() returns copies.
  s[1].second.fill_(123.0);
  CHECK(opt.state_dict()[1].second.to_vector<double>()[0] != 123.0);

  // An update is an in-place write: graphs that saved the old value refuse to run.
  Tensor y = mul(a, a);
  a.set_grad(ones_like(a));
  opt.step();
  REQUIRE_THROWS_WITH(sum(y).backward(), Contains("modified in place"));

  // Hyperparameters and learning-rate changes.
  CHECK(opt.hyperparameters().at("lr") == "0.1");
  CHECK(opt.hyperparameters().at("amsgrad") == "true");
  opt.set_lr(0.05);
  CHECK(opt.lr() == 0.05);
  CHECK(std::string(opt.name()) == "AdamW");
}

TEST_CASE("load_state_dict checks everything first and lists every problem", "[optim]") {
  Tensor a = zeros(Shape{3}).set_requires_grad(true);
  Tensor b = zeros(Shape{2}).set_requires_grad(true);
  optim::AdamW opt({{"a", a}, {"b", b}});
  a.set_grad(ones(Shape{3}));
  opt.step();
  const optim::NamedParams before = opt.state_dict();

  const optim::NamedParams bad = {
      {"a.step", from_indices(std::vector<int64_t>{4}, Shape{})},
      {"a.exp_avg", zeros(Shape{3})},
      {"a.exp_avg_sq", zeros(Shape{4})},                           // wrong shape
      {"b.exp_avg", zeros(Shape{2})},                              // b lacks step and exp_avg_sq
      {"a.max_exp_avg_sq", zeros(Shape{3})},                       // amsgrad is off
      {"c.step", from_indices(std::vector<int64_t>{1}, Shape{})},  // no such parameter
  };
  REQUIRE_THROWS_WITH(
      opt.load_state_dict(bad),
      Contains("4 problems, the state was not changed") &&
          Contains("'a.exp_avg_sq' is Tensor(f32, (4,), cpu) but must be f32 (3,)") &&
          Contains("parameter 'b' has state but lacks 'step', 'exp_avg_sq'") &&
          Contains("'a.max_exp_avg_sq' is not a state of this AdamW") &&
          Contains("'c.step' is not a state of this AdamW"));
  const optim::NamedParams after = opt.state_dict();
  REQUIRE(after.size() == before.size());
  for (size_t i = 0; i < after.size(); ++i) CHECK(same_bits(after[i].second, before[i].second));

  REQUIRE_THROWS_WITH(opt.load_state_dict({{"a.step", zeros(Shape{})},
                                           {"a.exp_avg", zeros(Shape{3})},
                                           {"a.exp_avg_sq", zeros(Shape{3})}}),
                      Contains("'a.step' is Tensor(f32, (), cpu) but must be i64 ()"));

  // Values: a negative second moment would make the next step's sqrt NaN; a non-finite moment
  // or a negative step is a damaged state.
  REQUIRE_THROWS_WITH(opt.load_state_dict({{"a.step", from_indices(std::vector<int64_t>{-1}, Shape{})},
                                           {"a.exp_avg", from_vector(std::vector<float>{0, NAN, 0}, Shape{3})},
                                           {"a.exp_avg_sq", from_vector(std::vector<float>{1, 2, -3}, Shape{3})}}),
                      Contains("3 problems") && Contains("'a.step' is -1; a step count is >= 0") &&
                          Contains("'a.exp_avg' holds nan at element 1") &&
                          Contains("'a.exp_avg_sq' holds -3 at element 2; a second moment is >= 0"));
  for (size_t i = 0; i < opt.state_dict().size(); ++i)
    CHECK(same_bits(opt.state_dict()[i].second, before[i].second));

  // An empty state resets the optimizer (every parameter starts again at step 0).
  opt.load_state_dict({});
  CHECK(opt.state_dict().empty());
}

TEST_CASE("optimizers check their parameters and options", "[optim]") {
  Tensor p = zeros(Shape{2}).set_requires_grad(true);
  CHECK_THROWS_WITH(optim::SGD({}), Contains("parameter list is empty"));
  CHECK_THROWS_WITH(optim::SGD({{"p", p}, {"p", zeros(Shape{1})}}), Contains("'p' is given twice"));
  CHECK_THROWS_WITH(optim::SGD({{"p", p}, {"q", p}}), Contains("'p' and 'q' are the same tensor"));
  CHECK_THROWS_WITH(optim::AdamW({{"y", mul(p, 2.0)}}), Contains("'y' is not a leaf"));
  CHECK_THROWS_WITH(optim::AdamW({{"i", arange(3, DType::i64)}}), Contains("dtype i64"));
  CHECK_THROWS_WITH(optim::AdamW({{"p", p}}, {.beta2 = 1.0}), Contains("beta2 = 1"));
  CHECK_THROWS_WITH(optim::SGD({{"p", p}}, {.momentum = 0.9, .dampening = 0.1, .nesterov = true}),
                    Contains("Nesterov"));
  CHECK_THROWS_WITH(optim::AdamW({{"t", zeros(Shape{2, 3}).transpose(0, 1)}}),
                    Contains("not contiguous"));

  // Gradients must match their parameters (set_grad refuses another shape before any step);
  // f16 parameters have no CPU kernel.
  CHECK_THROWS_WITH(p.set_grad(zeros(Shape{3})),
                    Contains("set_grad: the gradient is Tensor(f32, (3,), cpu)"));
  Tensor h = zeros(Shape{2}).to(DType::f16).set_requires_grad(true);
  optim::AdamW adamw({{"h", h}});
  h.set_grad(zeros(Shape{2}).to(DType::f16));
  CHECK_THROWS_WITH(adamw.step(), Contains("adamw: dtype f16 is not supported"));
}

TEST_CASE("AdamW capturable: the step count on the parameter's device; on the CPU nothing changes",
          "[optim][graph]") {
  // Two equal parameters, one optimizer each; the capturable one counts through
  // adamw_device_step_kernel (the count lives where the parameter does: here the CPU).
  auto make = [] {
    return from_vector(std::vector<double>{1, -2, 3, 0.5}, Shape{4}, DType::f32)
        .set_requires_grad(true);
  };
  Tensor a = make(), b = make();
  optim::AdamW plain({{"p", a}}, {.lr = 0.1, .weight_decay = 0.01});
  optim::AdamW capturable({{"p", b}}, {.lr = 0.1, .weight_decay = 0.01, .capturable = true});
  CHECK(capturable.hyperparameters().at("capturable") == "true");
  CHECK(plain.hyperparameters().at("capturable") == "false");
  for (int step = 1; step <= 4; ++step) {
    for (Tensor* p : {&a, &b}) {
      NoGradGuard no_grad;
      p->set_grad(mul(*p, double(step)));
    }
    plain.step();
    capturable.step();
    INFO("step " << step);
    CHECK(same_bits(a, b));  // the same scalars, computed by the same code
    const optim::NamedParams s = capturable.state_dict();
    CHECK(s[0].first == "p.step");
    CHECK(s[0].second.device() == kCPU);
    CHECK(s[0].second.item<int64_t>() == step);
  }
  // Its state loads into a plain optimizer and back (the count moves to where it belongs).
  optim::AdamW reloaded({{"p", a}}, {.lr = 0.1, .weight_decay = 0.01, .capturable = true});
  reloaded.load_state_dict(plain.state_dict());
  CHECK(reloaded.state_dict()[0].second.item<int64_t>() == 4);
}
