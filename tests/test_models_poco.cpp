// The POCO model against the PyTorch reference (tools/reference/poco_reference.py): same weights
// (tests/golden/poco_tiny_v1.safetensors), same batch, same prediction, loss, gradient of every
// parameter, and the second-order meta-gradient of one inner step on the embeddings. Plus the
// parameter count of poco-paper and config validation.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>

#include "engine/core/profiler.h"
#include "support/kernel_calls.h"
#include "engine/io/safetensors.h"
#include "models/baselines.h"
#include "models/poco.h"
#include "support/golden_file.h"
#include "support/poco_golden.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {

// f64 against torch f64. The two differ in summation order (GEMM blocking, softmax and
// layer-norm reductions) and in the last bit of exp/erf/sin/cos; through the ~60 ops of a
// forward and backward pass on O(1) values that stays below ~1e-13 relative. 1e-11 absolute plus
// 1e-9 relative keeps two orders of margin and fails on any wrong term.
constexpr Tolerance kPocoGolden{1e-11, 1e-9};

struct Loaded {
  std::unique_ptr<models::Poco> model;
  GoldenFile golden;
};

Loaded load_golden() {
  auto st = io::load_safetensors(golden_path("poco_tiny_v1.safetensors"));
  auto config = models::PocoConfig::from_json(nlohmann::json::parse(st.metadata.at("config")));
  auto sizes = nlohmann::json::parse(st.metadata.at("session_sizes")).get<std::vector<int64_t>>();
  Generator gen(0);
  Loaded out{std::make_unique<models::Poco>(config, sizes, gen, DType::f64),
             GoldenFile::load(golden_path("poco_tiny_v1.bin"))};
  NoGradGuard no_grad;
  for (auto& [name, param] : out.model->named_parameters()) {
    const Tensor* t = st.find(name);
    INFO("parameter " << name);
    REQUIRE(t != nullptr);
    REQUIRE(t->shape() == param.shape());
    param.copy_(*t);
  }
  REQUIRE(out.model->named_parameters().size() == st.tensors.size());
  return out;
}

void expect_close(const GoldenFile& g, const std::string& name, const Tensor& actual) {
  const GoldenTensor& ref = g.at(name);
  INFO("tensor " << name);
  REQUIRE(actual.shape() == Shape(ref.shape));
  auto v = actual.to_vector<double>();
  for (size_t i = 0; i < v.size(); ++i) {
    const double err = std::abs(v[i] - ref.values[i]);
    if (err > kPocoGolden.atol + kPocoGolden.rtol * std::abs(ref.values[i]))
      FAIL(fmt::format("{}[{}]: got {:.17g}, golden {:.17g}", name, i, v[i], ref.values[i]));
  }
}

}  // namespace

TEST_CASE("POCO configs: named ones, parameter count, validation", "[models][poco]") {
  Generator gen(1);
  models::Poco paper(models::PocoConfig::paper(), {40, 30}, gen);
  CHECK(paper.backbone_parameter_count() == 1518480);  // models/POCO.md
  auto j = models::PocoConfig::seed().to_json();
  CHECK(models::PocoConfig::from_json(j).dim == 512);
  CHECK_THROWS_WITH(models::PocoConfig::from_json(nlohmann::json{{"dimm", 3}}),
                    Catch::Contains("unknown key 'dimm'") && Catch::Contains("dim_head"));
  CHECK_THROWS_WITH(models::PocoConfig::from_json(nlohmann::json{{"patch", 5}}),
                    Catch::Contains("multiple of patch 5"));
  CHECK_THROWS_WITH(models::PocoConfig::from_json(nlohmann::json{{"depth", 1.5}}),
                    Catch::Contains("'depth' must be an integer"));
  CHECK_THROWS_WITH(models::PocoConfig::named("poco-large"), Catch::Contains("poco-paper"));
}

TEST_CASE("POCO forward, loss and every gradient match PyTorch", "[models][poco][golden]") {
  Loaded L = load_golden();
  models::PocoBatch b = golden_batch(L.golden, "x_all", "targets");
  Tensor pred = L.model->forward(b);
  Tensor loss = mse_loss(pred, b.target);
  expect_close(L.golden, "prediction", pred);
  expect_close(L.golden, "loss", loss);
  auto named = L.model->named_parameters();
  TensorList params;
  for (auto& [n, p] : named) params.push_back(p);
  TensorList grads = autograd::grad({loss}, params);
  for (size_t i = 0; i < named.size(); ++i) expect_close(L.golden, "grad." + named[i].first, grads[i]);
}

TEST_CASE("POCO second-order meta-gradient through an embedding step matches PyTorch",
          "[models][poco][golden][meta]") {
  Loaded L = load_golden();
  const models::Poco& m = *L.model;
  models::PocoBatch support = golden_batch(L.golden, "x_all", "targets");
  models::PocoBatch query = golden_batch(L.golden, "query.x_all", "query.targets");
  const double lr = L.golden.at("inner_lr").values.at(0);
  nn::ParamMap params = m.parameter_map();
  Tensor loss = mse_loss(m.forward(support), support.target);
  TensorList inner = autograd::grad({loss}, {params["unit_emb.weight"], params["session_emb.weight"]},
                                    {}, std::nullopt, /*create_graph=*/true);
  nn::ParamMap fast{{"unit_emb.weight", sub(params["unit_emb.weight"], mul(inner[0], lr))},
                    {"session_emb.weight", sub(params["session_emb.weight"], mul(inner[1], lr))}};
  expect_close(L.golden, "fast.unit_emb.weight", fast["unit_emb.weight"]);
  Tensor q_pred = m.forward(query, &fast);
  Tensor q_loss = mse_loss(q_pred, query.target);
  expect_close(L.golden, "query.prediction", q_pred);
  expect_close(L.golden, "query_loss", q_loss);
  auto named = m.named_parameters();
  TensorList all;
  for (auto& [n, p] : named) all.push_back(p);
  TensorList meta = autograd::grad({q_loss}, all);
  for (size_t i = 0; i < named.size(); ++i) expect_close(L.golden, "meta_grad." + named[i].first, meta[i]);
}

TEST_CASE("POCO: samples do not see each other, batch errors are clear", "[models][poco]") {
  Loaded L = load_golden();
  models::PocoBatch b = golden_batch(L.golden, "x_all", "targets");
  Tensor full = L.model->forward(b);
  // Changing sample 1's data leaves sample 0's predictions unchanged (block-diagonal attention).
  models::PocoBatch changed = b;
  changed.x = b.x.clone();
  {
    NoGradGuard no_grad;
    changed.x.narrow(0, b.sample_neurons[0], b.sample_neurons[1]).fill_(3.0);
  }
  Tensor other = L.model->forward(changed);
  CHECK(max_abs_diff(full.narrow(0, 0, b.sample_neurons[0]),
                     other.narrow(0, 0, b.sample_neurons[0])) == 0);
  CHECK(max_abs_diff(full, other) > 1e-6);
  models::PocoBatch bad = b;
  bad.sample_neurons[0] += 1;
  CHECK_THROWS_WITH(L.model->forward(bad), Catch::Contains("sample_neurons add up to"));
  bad = b;
  bad.sample_sessions[0] = 9;
  CHECK_THROWS_WITH(L.model->forward(bad), Catch::Contains("session 9 does not exist"));
  // An empty sample (it failed deep in the attention op: "queries but no keys").
  bad = b;
  bad.sample_neurons.push_back(0);
  bad.sample_sessions.push_back(b.sample_sessions[0]);
  CHECK_THROWS_WITH(L.model->forward(bad), Catch::Contains("has 0 neurons") &&
                                               Catch::Contains("at least one"));
}

namespace {
// Calls of the `linear` kernel (the head's input layer is one of them) during fn.
template <class Fn>
int64_t linear_calls(Fn&& fn) {
  return kernel_calls("linear", std::forward<Fn>(fn));
}
}  // namespace

TEST_CASE("POCO: a batch's PocoReuse computes the head input once, for the same parameters",
          "[models][poco]") {
  Loaded L = load_golden();
  models::Poco& m = *L.model;
  const models::PocoBatch b = golden_batch(L.golden, "x_all", "targets");
  Tensor plain;
  const int64_t per_forward = linear_calls([&] { plain = m.forward(b); });
  REQUIRE(per_forward > 1);
  models::PocoBatch rb = b;
  rb.reuse = std::make_shared<models::PocoReuse>();
  Tensor y1, y2;
  // The first forward fills the entry, the second reads it: one linear call fewer, same values.
  CHECK(linear_calls([&] { y1 = m.forward(rb); }) == per_forward);
  CHECK(linear_calls([&] { y2 = m.forward(rb); }) == per_forward - 1);
  // The FiLM shift's two products (W_out W_beta, W_out b_beta) likewise.
  const int64_t matmuls = kernel_calls("matmul", [&] { (void)m.forward(b); });
  CHECK(kernel_calls("matmul", [&] { (void)m.forward(rb); }) == matmuls - 2);
  CHECK(max_abs_diff(y1, plain) == 0);
  CHECK(max_abs_diff(y2, plain) == 0);
  CHECK(rb.to(kCPU).reuse == rb.reuse);  // same device: the same batch, entry shared

  // Gradients through the shared entries: two forwards that share the head input (W_in) and
  // the FiLM shift (W_out, W_beta, b_beta) give twice one forward's gradient (one rounding of
  // the sum: 1e-12 relative is ample in f64).
  nn::ParamMap params;
  for (const auto& [name, t] : m.named_parameters()) params[name] = t;
  const Tensor w_in = params.at("head.in_proj.weight");
  for (const char* name :
       {"head.in_proj.weight", "head.out_proj.weight", "head.beta.weight", "head.beta.bias"}) {
    INFO(name);
    REQUIRE(params.count(name) == 1);
    const Tensor w = params.at(name);
    auto grad_of = [&](const Tensor& loss) {
      return autograd::grad({loss}, {w}, {}, std::nullopt, false, false)[0];
    };
    Tensor g1 = grad_of(sum(mul(m.forward(b), m.forward(b))));
    models::PocoBatch shared = b;
    shared.reuse = std::make_shared<models::PocoReuse>();
    Tensor g2 = grad_of(sum(mul(m.forward(shared), m.forward(shared))));
    CHECK(max_abs_diff(g1, g2) <= 1e-12 * (1 + max_abs_diff(g1, zeros_like(g1))));
  }

  // Another W_in (a fast weight) is not the cached one: recomputed, and the entry follows it.
  nn::ParamMap ov = params;
  ov["head.in_proj.weight"] = mul(w_in, 1.5);
  Tensor expected = m.forward(b, &ov);
  Tensor got;
  CHECK(linear_calls([&] { got = m.forward(rb, &ov); }) == per_forward);
  CHECK(max_abs_diff(got, expected) == 0);
  CHECK(linear_calls([&] { got = m.forward(rb, &ov); }) == per_forward - 1);
  // An in-place update of the parameter (an optimizer step bumps its version): recomputed.
  CHECK(linear_calls([&] { m.forward(rb); }) == per_forward);
  {
    NoGradGuard no_grad;
    Tensor(w_in).add_(scalar_like(w_in, 0.25));
  }
  expected = m.forward(b);
  CHECK(linear_calls([&] { got = m.forward(rb); }) == per_forward);
  CHECK(max_abs_diff(got, expected) == 0);
  // Grad mode off: not the recorded entry (its result must not carry a graph).
  {
    NoGradGuard no_grad;
    CHECK(linear_calls([&] { got = m.forward(rb); }) == per_forward);
    CHECK(got.grad_fn() == nullptr);
  }
}

TEST_CASE("baselines: copy-last, NLinear, MLP", "[models][baselines]") {
  Tensor ctx = random_tensor(Shape{3, 6}, -1, 1, 95);
  Tensor c = models::copy_last(ctx, 4);
  CHECK(c.shape() == Shape{3, 4});
  CHECK(max_abs_diff(c.narrow(1, 2, 1), ctx.narrow(1, 5, 1)) == 0);
  Generator gen(3);
  models::NLinear nl(6, 4, gen, DType::f64);
  // NLinear is shift-equivariant: adding a constant to the context adds it to the forecast.
  CHECK(max_abs_diff(nl.forward(add(ctx, 2.5)), add(nl.forward(ctx), 2.5)) < 1e-12);
  models::MlpForecaster mlp(6, 8, 4, gen, DType::f64);
  CHECK(mlp.forward(ctx).shape() == Shape{3, 4});
  CHECK(mlp.named_parameters().size() == 4);
}
