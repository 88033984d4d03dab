// The second-order E2E-TTT meta-gradient of the tiny POCO against PyTorch, through the same
// inner loop training runs: meta::e2e_ttt_gradient with 3 inner SGD steps (inner_lr 0.5) on the
// unit, session and latent embeddings, meta-loss = query loss + mean of the inner losses, support
// and query batches of two samples with different neuron counts. The reference is
// tests/golden/e2e_ttt_tiny_v1.bin, written by `tools/reference/poco_reference.py
// --e2e-ttt-golden` (torch.autograd.grad with create_graph=True through every step, f64) on the
// weights of tests/golden/poco_tiny_v1.safetensors. Plain and checkpointed inner steps are both
// checked against the same file.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>

#include "engine/io/checkpoint.h"
#include "meta/maml.h"
#include "support/golden_file.h"
#include "support/gradcheck.h"
#include "support/poco_golden.h"

using namespace mt;
using namespace mt::testing;

namespace {

// f64 against torch f64 through three inner steps and the second-order backward: the budget of
// the one-step golden test (tests/test_meta_maml.cpp). The computations differ only in the order
// of floating-point operations (~1e-16 relative per op); 1e-9 relative leaves room for the
// amplification through the inner steps, while any wrong term (O(1) relative) is caught.
constexpr Tolerance kE2eGolden{1e-11, 1e-9};
// The weights are read from one file and the reference from another: their sum of |w| must agree
// to the rounding of summing ~70,000 values in a different order.
constexpr double kWeightsFingerprintRtol = 1e-12;

struct E2eFixture {
  std::unique_ptr<meta::Forecaster> f;
  GoldenFile golden = GoldenFile::load(golden_path("e2e_ttt_tiny_v1.bin"));
  models::PocoBatch support, query;
  meta::InnerLoopOptions opt;

  E2eFixture() {
    auto st = io::load_safetensors(golden_path("poco_tiny_v1.safetensors"));
    meta::ModelSpec spec;
    spec.poco = nlohmann::json::parse(st.metadata.at("config"));
    auto sizes = nlohmann::json::parse(st.metadata.at("session_sizes")).get<std::vector<int64_t>>();
    Generator gen(0);
    f = meta::make_forecaster(spec, sizes, gen, DType::f64);
    double abs_sum = 0;
    {
      NoGradGuard no_grad;
      for (auto& [name, p] : f->module()->named_parameters()) {
        p.copy_(*st.find(name));
        for (double v : p.to_vector<double>()) abs_sum += std::abs(v);
      }
    }
    const double ref_sum = golden.at("param_abs_sum").values.at(0);
    INFO("the weights of poco_tiny_v1.safetensors are not those e2e_ttt_tiny_v1.bin was made "
         "with; regenerate both with tools/reference/poco_reference.py --golden --e2e-ttt-golden");
    REQUIRE(std::abs(abs_sum - ref_sum) <= kWeightsFingerprintRtol * ref_sum);
    support = golden_batch_at(golden, "support.");
    query = golden_batch_at(golden, "query.");
    opt.steps = int64_t(std::llround(golden.at("inner_steps").values.at(0)));
    opt.inner_lr = golden.at("inner_lr").values.at(0);
    // The test-time parameters of the golden case: unit_emb.weight, session_emb.weight and
    // latent_emb.weight.
    opt.params = {"unit_emb.", "session_emb.", "latent_emb."};
  }
};

// Compares `got` with the golden tensor `name` elementwise within kE2eGolden; one assertion per
// tensor, naming the worst element. Returns the number of values compared.
size_t check_close(const GoldenFile& g, const std::string& name, const Tensor& got) {
  const GoldenTensor& ref = g.at(name);
  const std::vector<double> v = got.to_vector<double>();
  INFO(name);
  REQUIRE(v.size() == ref.values.size());
  double worst_excess = -INFINITY;
  size_t worst = 0;
  for (size_t k = 0; k < v.size(); ++k) {
    const double excess = std::abs(v[k] - ref.values[k]) -
                          (kE2eGolden.atol + kE2eGolden.rtol * std::abs(ref.values[k]));
    if (!(excess <= worst_excess)) {  // also catches NaN
      worst_excess = excess;
      worst = k;
    }
  }
  INFO(fmt::format("worst element {}: metatape {:.17g}, PyTorch {:.17g}", worst, v[worst],
                   ref.values[worst]));
  CHECK(worst_excess <= 0);
  return v.size();
}

void check_meta_gradient(const E2eFixture& fx, const meta::MetaGradient& m) {
  check_close(fx.golden, "meta_loss", m.meta_loss);
  check_close(fx.golden, "query_loss", m.query_loss);
  size_t compared = 0, golden_grads = 0;
  for (const auto& t : fx.golden.tensors())
    if (t.name.rfind("meta_grad.", 0) == 0) ++golden_grads;
  // Every parameter of the model has its meta-gradient checked, and the file has no others.
  REQUIRE(m.names.size() == golden_grads);
  for (size_t i = 0; i < m.names.size(); ++i)
    compared += check_close(fx.golden, fmt::format("meta_grad.{}", m.names[i]), m.grads[i]);
  CHECK(compared > 50000);
}

}  // namespace

TEST_CASE("E2E-TTT meta-gradient through 3 inner steps on the embeddings equals PyTorch's",
          "[meta][golden]") {
  E2eFixture fx;
  REQUIRE(fx.opt.steps == 3);
  // The inner loop alone: the support loss before each step and the adapted tables.
  {
    meta::InnerResult r =
        meta::inner_loop(*fx.f, fx.f->module()->parameter_map(), {fx.support}, fx.opt);
    REQUIRE(r.inner_losses.size() == 3);
    const GoldenTensor& losses = fx.golden.at("inner_losses");
    for (size_t k = 0; k < 3; ++k) {
      INFO(fmt::format("inner loss {}", k));
      CHECK(std::abs(r.inner_losses[k].item<double>() - losses.values[k]) <=
            kE2eGolden.atol + kE2eGolden.rtol * std::abs(losses.values[k]));
    }
    // The steps matter: the support loss falls at every step.
    CHECK(losses.values[1] < 0.99 * losses.values[0]);
    CHECK(losses.values[2] < 0.99 * losses.values[1]);
    REQUIRE(r.fast.size() == 3);
    for (const auto& [name, t] : r.fast) check_close(fx.golden, fmt::format("fast.{}", name), t);
  }
  // The meta-gradient, called as training calls it (one support batch, inner losses included).
  meta::MetaGradient m = meta::e2e_ttt_gradient(*fx.f, {fx.support}, fx.query, fx.opt);
  check_meta_gradient(fx, m);
}

TEST_CASE("E2E-TTT meta-gradient with checkpointed inner steps equals PyTorch's",
          "[meta][golden]") {
  E2eFixture fx;
  fx.opt.checkpoint_steps = fx.opt.steps;
  meta::MetaGradient m = meta::e2e_ttt_gradient(*fx.f, {fx.support}, fx.query, fx.opt);
  check_meta_gradient(fx, m);
}
