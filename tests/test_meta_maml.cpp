// Inner loops and meta-gradients on a tiny POCO (the PyTorch golden weights, f64):
// - E2E-TTT with one step on the embeddings equals PyTorch's second-order meta-gradient;
// - E2E-TTT with two steps and the inner losses in the meta-loss matches central finite
//   differences of the whole inner-loop-then-query computation;
// - FOMAML equals the first-order formula computed by hand;
// - with dropout in meta-training, both again (the masks fixed), and checkpointed inner steps
//   recompute the masks of their first pass.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>

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

namespace {

// The E2E-TTT meta-loss of two inner steps (support batches: the support and the query batch),
// query loss + mean inner loss, as a function of the `checked` parameters (the others as in the
// model). With a mask seed, the model's dropout draws from a generator at that seed, the same
// masks at every call; `offset_after` is where the generator ends.
struct TwoStepMetaLoss {
  Fixture& fx;
  meta::InnerLoopOptions opt;
  std::vector<std::string> checked;
  std::optional<uint64_t> mask_seed;
  nn::ParamMap base = fx.f->module()->parameter_map();
  uint64_t offset_after = 0;

  std::vector<models::PocoBatch> support() const { return {fx.support, fx.query}; }
  Tensor operator()(const TensorList& in) {
    std::optional<Generator> masks;
    if (mask_seed) masks.emplace(*mask_seed);
    meta::InnerLoopOptions o = opt;
    o.dropout = masks ? &*masks : nullptr;
    nn::ParamMap init = base;
    for (size_t i = 0; i < checked.size(); ++i) init[checked[i]] = in[i];
    meta::InnerResult r = meta::inner_loop(*fx.f, init, support(), o);
    nn::ParamMap adapted = init;
    for (auto& [n, t] : r.fast) adapted[n] = t;
    Tensor q = mse_loss(fx.f->predict(fx.query, &adapted, o.dropout), fx.query.target);
    if (masks) offset_after = masks->offset();
    return add(q, div(add(r.inner_losses[0], r.inner_losses[1]), 2.0));
  }
  TensorList start() const {
    TensorList t;
    for (const auto& n : checked) t.push_back(base.at(n).detach());
    return t;
  }
  // Its gradient at the model's values, by autograd through the same graph.
  TensorList gradient() {
    TensorList leaves;
    for (auto& t : start()) {
      Tensor l = t.clone();
      l.set_requires_grad(true);
      leaves.push_back(l);
    }
    return autograd::grad({(*this)(leaves)}, leaves);
  }
  // Checks that the checked parameters' meta-gradients in `m` are `ref`.
  void check_same(const meta::MetaGradient& m, const TensorList& ref) const {
    for (size_t i = 0; i < checked.size(); ++i) {
      INFO(checked[i]);
      auto it = std::find(m.names.begin(), m.names.end(), checked[i]);
      REQUIRE(it != m.names.end());
      CHECK(max_abs_diff(m.grads[size_t(it - m.names.begin())], ref[i]) <= kSameGraphTol);
    }
  }
};

meta::InnerLoopOptions two_steps() {
  meta::InnerLoopOptions opt;
  opt.steps = 2;
  opt.inner_lr = 0.05;
  return opt;
}

}  // namespace

TEST_CASE("E2E-TTT meta-gradient (two steps, inner losses) matches finite differences",
          "[meta][grad]") {
  Fixture fx;
  TwoStepMetaLoss meta_loss{fx, two_steps(),
                            {"session_emb.weight", "latent_emb.weight", "head.out_proj.bias",
                             "decoder.ffn.fc2.bias"},
                            std::nullopt};
  CHECK(check_gradients("E2E-TTT meta-loss", std::ref(meta_loss), meta_loss.start()) > 0);
  // And e2e_ttt_gradient returns exactly these gradients.
  meta_loss.check_same(
      meta::e2e_ttt_gradient(*fx.f, meta_loss.support(), fx.query, meta_loss.opt),
      meta_loss.gradient());
}

namespace {

// FOMAML by hand: one step on the embeddings, then the query gradient at the adapted point,
// taken w.r.t. the adapted embeddings and the (unchanged) other parameters, in the order of
// `names`. Dropout masks, when `masks` is given, drawn in the order the loop draws them: the
// support forward, then the query forward.
TensorList fomaml_by_hand(Fixture& fx, const std::vector<std::string>& names, double lr,
                          Generator* masks) {
  nn::ParamMap p = fx.f->module()->parameter_map();
  Tensor ls = mse_loss(fx.f->predict(fx.support, nullptr, masks), fx.support.target);
  TensorList g = autograd::grad({ls}, {p["unit_emb.weight"], p["session_emb.weight"]});
  Tensor fu = sub(p["unit_emb.weight"].detach(), mul(g[0], lr)).detach();
  Tensor fs = sub(p["session_emb.weight"].detach(), mul(g[1], lr)).detach();
  fu.set_requires_grad(true);
  fs.set_requires_grad(true);
  nn::ParamMap adapted = p;
  adapted["unit_emb.weight"] = fu;
  adapted["session_emb.weight"] = fs;
  Tensor lq = mse_loss(fx.f->predict(fx.query, &adapted, masks), fx.query.target);
  TensorList wrt;
  for (const auto& n : names)
    wrt.push_back(n == "unit_emb.weight" ? fu : n == "session_emb.weight" ? fs : p[n]);
  TensorList ref = autograd::grad({lq}, wrt, {}, std::nullopt, false, /*allow_unused=*/true);
  for (size_t i = 0; i < ref.size(); ++i)
    if (!ref[i].defined()) ref[i] = zeros_like(wrt[i]);
  return ref;
}

double max_gap(const TensorList& a, const TensorList& b) {
  double gap = 0;
  for (size_t i = 0; i < a.size(); ++i) gap = std::max(gap, max_abs_diff(a[i], b[i]));
  return gap;
}

}  // namespace

TEST_CASE("FOMAML equals the first-order formula", "[meta]") {
  Fixture fx;
  meta::InnerLoopOptions opt;
  opt.steps = 1;
  opt.inner_lr = 0.05;
  meta::MetaGradient fo = meta::fomaml_gradient(*fx.f, {fx.support}, fx.query, opt);
  TensorList ref = fomaml_by_hand(fx, fo.names, opt.inner_lr, nullptr);
  for (size_t i = 0; i < fo.names.size(); ++i) {
    INFO(fo.names[i]);
    CHECK(max_abs_diff(fo.grads[i], ref[i]) <= kSameGraphTol);
  }
  // First and second order differ (else the E2E tests could not tell them apart).
  meta::MetaGradient so = meta::e2e_ttt_gradient(*fx.f, {fx.support}, fx.query, opt, false);
  CHECK(max_gap(fo.grads, so.grads) > 1e-6);
}

// Meta-training with dropout (MetaOptions::dropout): the tiny model has dropout 0.2 in its
// feed-forwards and 0.4 on its processing layers.
constexpr uint64_t kMaskSeed = 11;

TEST_CASE("FOMAML with dropout draws the support masks, then the query masks", "[meta]") {
  Fixture fx;
  meta::InnerLoopOptions opt;
  opt.steps = 1;
  opt.inner_lr = 0.05;
  Generator gen(kMaskSeed);
  opt.dropout = &gen;
  meta::MetaGradient fo = meta::fomaml_gradient(*fx.f, {fx.support}, fx.query, opt);
  Generator by_hand_masks(kMaskSeed);
  TensorList ref = fomaml_by_hand(fx, fo.names, opt.inner_lr, &by_hand_masks);
  for (size_t i = 0; i < fo.names.size(); ++i) {
    INFO(fo.names[i]);
    CHECK(max_abs_diff(fo.grads[i], ref[i]) <= kSameGraphTol);
  }
  // The generator advanced past both forwards' masks, as the hand computation's did.
  CHECK(gen.offset() == by_hand_masks.offset());
  CHECK(gen.offset() > 0);
  // The masks were applied: without them the meta-gradient differs.
  opt.dropout = nullptr;
  meta::MetaGradient plain = meta::fomaml_gradient(*fx.f, {fx.support}, fx.query, opt);
  CHECK(max_gap(fo.grads, plain.grads) > 1e-6);
}

TEST_CASE("E2E-TTT with dropout matches finite differences with the masks fixed; checkpointed "
          "steps recompute the same masks",
          "[meta][grad][checkpoint]") {
  Fixture fx;
  TwoStepMetaLoss meta_loss{fx, two_steps(),
                            {"session_emb.weight", "unit_emb.weight", "latent_emb.weight",
                             "decoder.ffn.fc2.bias"},
                            kMaskSeed};
  CHECK(check_gradients("E2E-TTT meta-loss with dropout", std::ref(meta_loss), meta_loss.start()) >
        0);
  const TensorList ref = meta_loss.gradient();
  // Plain, one and both inner steps checkpointed: the meta-gradient of the same masks, and the
  // generator left where the uncheckpointed loop leaves it.
  TensorList plain;
  for (int64_t checkpoint_steps : {0, 1, 2}) {
    INFO("checkpoint_steps " << checkpoint_steps);
    Generator gen(kMaskSeed);
    meta::InnerLoopOptions o = meta_loss.opt;
    o.dropout = &gen;
    o.checkpoint_steps = checkpoint_steps;
    meta::MetaGradient m = meta::e2e_ttt_gradient(*fx.f, meta_loss.support(), fx.query, o);
    CHECK(gen.offset() == meta_loss.offset_after);
    meta_loss.check_same(m, ref);
    if (checkpoint_steps == 0)
      plain = m.grads;
    else
      CHECK(max_gap(m.grads, plain) <= kSameGraphTol);
  }
  // The masks were applied: without them the meta-gradient differs.
  meta::MetaGradient no_dropout =
      meta::e2e_ttt_gradient(*fx.f, meta_loss.support(), fx.query, meta_loss.opt);
  CHECK(max_gap(no_dropout.grads, plain) > 1e-6);
}
