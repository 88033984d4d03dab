// Inner loops and meta-gradients on a tiny POCO (the PyTorch golden weights, f64):
// - E2E-TTT with one step on the embeddings equals PyTorch's second-order meta-gradient;
// - E2E-TTT with two steps and the inner losses in the meta-loss matches central finite
//   differences of the whole inner-loop-then-query computation;
// - FOMAML equals the first-order formula computed by hand.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "engine/io/checkpoint.h"
#include "meta/maml.h"
#include "support/golden_file.h"
#include "support/poco_golden.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {

// Same budget as the POCO golden test (tests/test_models_poco.cpp): f64 against torch f64.
constexpr Tolerance kMetaGolden{1e-11, 1e-9};
// Two gradient computations of the same f64 graph in a different order of operations.
constexpr double kSameGraphTol = 1e-12;

struct Fixture {
  std::unique_ptr<meta::Forecaster> f;
  GoldenFile golden = GoldenFile::load(golden_path("poco_tiny_v1.bin"));
  models::PocoBatch support, query;

  Fixture() {
    auto st = io::load_safetensors(golden_path("poco_tiny_v1.safetensors"));
    meta::ModelSpec spec;
    spec.poco = nlohmann::json::parse(st.metadata.at("config"));
    auto sizes = nlohmann::json::parse(st.metadata.at("session_sizes")).get<std::vector<int64_t>>();
    Generator gen(0);
    f = meta::make_forecaster(spec, sizes, gen, DType::f64);
    NoGradGuard no_grad;
    for (auto& [name, p] : f->module()->named_parameters()) p.copy_(*st.find(name));
    support = golden_batch(golden, "x_all", "targets");
    query = golden_batch(golden, "query.x_all", "query.targets");
  }
};

}  // namespace

TEST_CASE("E2E-TTT meta-gradient with one embedding step equals PyTorch's", "[meta][golden]") {
  Fixture fx;
  meta::InnerLoopOptions opt;
  opt.steps = 1;
  opt.inner_lr = fx.golden.at("inner_lr").values.at(0);
  meta::MetaGradient m =
      meta::e2e_ttt_gradient(*fx.f, {fx.support}, fx.query, opt, /*include_inner_losses=*/false);
  const GoldenTensor& ql = fx.golden.at("query_loss");
  CHECK(std::abs(m.query_loss.item<double>() - ql.values[0]) <=
        kMetaGolden.atol + kMetaGolden.rtol * std::abs(ql.values[0]));
  for (size_t i = 0; i < m.names.size(); ++i) {
    const GoldenTensor& ref = fx.golden.at("meta_grad." + m.names[i]);
    INFO(m.names[i]);
    auto v = m.grads[i].to_vector<double>();
    REQUIRE(v.size() == ref.values.size());
    for (size_t k = 0; k < v.size(); ++k)
      CHECK(std::abs(v[k] - ref.values[k]) <= kMetaGolden.atol + kMetaGolden.rtol * std::abs(ref.values[k]));
  }
}

TEST_CASE("E2E-TTT meta-gradient (two steps, inner losses) matches finite differences",
          "[meta][grad]") {
  Fixture fx;
  meta::InnerLoopOptions opt;
  opt.steps = 2;
  opt.inner_lr = 0.05;
  const std::vector<std::string> checked = {"session_emb.weight", "latent_emb.weight",
                                            "head.out_proj.bias", "decoder.ffn.fc2.bias"};
  nn::ParamMap base = fx.f->module()->parameter_map();
  // The meta-loss as a function of the checked parameters (the others fixed).
  auto meta_loss = [&](const TensorList& in) {
    nn::ParamMap init = base;
    for (size_t i = 0; i < checked.size(); ++i) init[checked[i]] = in[i];
    meta::InnerResult r = meta::inner_loop(*fx.f, init, {fx.support, fx.query}, opt);
    nn::ParamMap adapted = init;
    for (auto& [n, t] : r.fast) adapted[n] = t;
    Tensor q = mse_loss(fx.f->predict(fx.query, &adapted), fx.query.target);
    return add(q, div(add(r.inner_losses[0], r.inner_losses[1]), 2.0));
  };
  TensorList start;
  for (const auto& n : checked) start.push_back(base[n].detach());
  CHECK(check_gradients("E2E-TTT meta-loss", meta_loss, start) > 0);
  // And e2e_ttt_gradient returns exactly these gradients.
  meta::MetaGradient m = meta::e2e_ttt_gradient(*fx.f, {fx.support, fx.query}, fx.query, opt);
  TensorList leaves;
  for (auto& t : start) {
    Tensor l = t.clone();
    l.set_requires_grad(true);
    leaves.push_back(l);
  }
  TensorList ref = autograd::grad({meta_loss(leaves)}, leaves);
  for (size_t i = 0; i < checked.size(); ++i) {
    auto it = std::find(m.names.begin(), m.names.end(), checked[i]);
    REQUIRE(it != m.names.end());
    CHECK(max_abs_diff(m.grads[size_t(it - m.names.begin())], ref[i]) <= kSameGraphTol);
  }
}

TEST_CASE("FOMAML equals the first-order formula", "[meta]") {
  Fixture fx;
  meta::InnerLoopOptions opt;
  opt.steps = 1;
  opt.inner_lr = 0.05;
  meta::MetaGradient fo = meta::fomaml_gradient(*fx.f, {fx.support}, fx.query, opt);
  // By hand: one step on the embeddings, then the query gradient at the adapted point, taken
  // w.r.t. the adapted embeddings and the (unchanged) other parameters.
  nn::ParamMap p = fx.f->module()->parameter_map();
  Tensor ls = mse_loss(fx.f->predict(fx.support), fx.support.target);
  TensorList g = autograd::grad({ls}, {p["unit_emb.weight"], p["session_emb.weight"]});
  Tensor fu = sub(p["unit_emb.weight"].detach(), mul(g[0], 0.05)).detach();
  Tensor fs = sub(p["session_emb.weight"].detach(), mul(g[1], 0.05)).detach();
  fu.set_requires_grad(true);
  fs.set_requires_grad(true);
  nn::ParamMap adapted = p;
  adapted["unit_emb.weight"] = fu;
  adapted["session_emb.weight"] = fs;
  Tensor lq = mse_loss(fx.f->predict(fx.query, &adapted), fx.query.target);
  TensorList wrt;
  for (const auto& n : fo.names)
    wrt.push_back(n == "unit_emb.weight" ? fu : n == "session_emb.weight" ? fs : p[n]);
  TensorList ref = autograd::grad({lq}, wrt, {}, std::nullopt, false, /*allow_unused=*/true);
  for (size_t i = 0; i < fo.names.size(); ++i) {
    INFO(fo.names[i]);
    Tensor r = ref[i].defined() ? ref[i] : zeros_like(wrt[i]);
    CHECK(max_abs_diff(fo.grads[i], r) <= kSameGraphTol);
  }
  // First and second order differ (else the E2E tests could not tell them apart).
  meta::MetaGradient so = meta::e2e_ttt_gradient(*fx.f, {fx.support}, fx.query, opt, false);
  double gap = 0;
  for (size_t i = 0; i < fo.names.size(); ++i) gap = std::max(gap, max_abs_diff(fo.grads[i], so.grads[i]));
  CHECK(gap > 1e-6);
}
