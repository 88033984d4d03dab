// Modules: dotted parameter names, functional overrides (fast weights), and a second-order
// gradient through a module forward with substituted parameters.
#include <catch2/catch.hpp>

#include "engine/nn/module.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {
class TwoLayer : public nn::Module {
 public:
  explicit TwoLayer(Generator& gen) {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(3, 5, true, gen, DType::f64));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(5, 2, false, gen, DType::f64));
  }
  Tensor forward(const Tensor& x, const nn::ParamMap* ov = nullptr) const {
    return fc2->forward(tanh(fc1->forward(x, ov)), ov);
  }
  std::shared_ptr<nn::Linear> fc1, fc2;
};

class Outer : public nn::Module {
 public:
  explicit Outer(Generator& gen) { body = register_module("body", std::make_shared<TwoLayer>(gen)); }
  std::shared_ptr<TwoLayer> body;
};
}  // namespace

TEST_CASE("modules name their parameters with dotted paths", "[nn]") {
  Generator gen(1);
  Outer m(gen);
  auto named = m.named_parameters();
  REQUIRE(named.size() == 3);
  CHECK(named[0].first == "body.fc1.weight");
  CHECK(named[1].first == "body.fc1.bias");
  CHECK(named[2].first == "body.fc2.weight");
  CHECK(named[0].second.shape() == Shape{5, 3});
  CHECK(named[0].second.requires_grad());
  // torch.nn.Linear init bound 1/sqrt(in_features).
  CHECK(max(abs(named[0].second)).item<double>() <= 1.0 / std::sqrt(3.0));
}

// One tensor registered under two names (tied weights): clipping would count it twice and a
// functional override of one name would leave the other at the original; refused, named.
class Tied : public nn::Module {
 public:
  explicit Tied(const Tensor& w) {
    register_parameter("a", w);
    register_parameter("b", w);
  }
};

// A forward that reads its parameter under a misspelt name: without a check every override of
// it would be ignored.
class Misspelt : public nn::Module {
 public:
  Misspelt() { w_ = register_parameter("weight", ones(Shape{2}, DType::f64)); }
  Tensor forward(const nn::ParamMap* overrides) const { return param(overrides, "wieght", w_); }

 private:
  Tensor w_;
};

TEST_CASE("a parameter read under a name it was not registered with is an error", "[nn]") {
  const Misspelt m;
  nn::ParamMap fast = {{"weight", full(Shape{2}, 3.0, DType::f64)}};
  CHECK_THROWS_WITH(m.forward(&fast), Catch::Contains("'wieght' is not a parameter"));
  CHECK(m.forward(nullptr).to_vector<double>() == std::vector<double>{1, 1});
}

TEST_CASE("tied weights are refused, naming both", "[nn]") {
  const Tied m(ones(Shape{2}, DType::f64));
  CHECK_THROWS_WITH(m.named_parameters(), Catch::Contains("parameters 'a' and 'b' are one tensor"));
  CHECK_THROWS_WITH(m.parameters(), Catch::Contains("tied weights"));
}

TEST_CASE("functional overrides substitute parameters without touching the module",
          "[nn][meta]") {
  Generator gen(2);
  TwoLayer m(gen);
  Tensor x = random_tensor(Shape{4, 3}, -1, 1, 70), y = random_tensor(Shape{4, 2}, -1, 1, 71);
  nn::ParamMap params = m.parameter_map();
  // One inner SGD step with create_graph, then the query loss with the fast weights.
  TensorList p;
  for (auto& [name, t] : params) p.push_back(t);
  Tensor loss = mse_loss(m.forward(x), y);
  TensorList g = autograd::grad({loss}, p, {}, std::nullopt, /*create_graph=*/true);
  nn::ParamMap fast;
  size_t i = 0;
  for (auto& [name, t] : params) fast[name] = sub(t, mul(g[i++], 0.5));
  Tensor before = m.forward(x);
  Tensor after = m.forward(x, &fast);
  CHECK(max_abs_diff(before, after) > 1e-4);  // the override took effect
  CHECK(max_abs_diff(m.forward(x), before) == 0);  // and the module is unchanged
  // A partial override changes only that parameter.
  nn::ParamMap only_fc2{{"fc2.weight", fast["fc2.weight"]}};
  Tensor partial = m.forward(x, &only_fc2);
  CHECK(max_abs_diff(partial, before) > 0);
  CHECK(max_abs_diff(partial, after) > 0);
  // Wrong shape in an override names the parameter; so does an undefined override.
  nn::ParamMap bad{{"fc1.bias", zeros(Shape{4}, DType::f64)}};
  CHECK_THROWS_WITH(m.forward(x, &bad), Catch::Contains("fc1.bias"));
  nn::ParamMap undefined{{"fc1.bias", Tensor()}};
  CHECK_THROWS_WITH(m.forward(x, &undefined), Catch::Contains("'fc1.bias' is an undefined"));
  // A misspelt key would be ignored by forward(); check_overrides names it.
  nn::ParamMap typo{{"fc1.wieght", fast["fc1.weight"]}, {"fc2.weight", fast["fc2.weight"]}};
  CHECK_THROWS_WITH(m.check_overrides(typo),
                    Catch::Contains("1 parameter(s) the model does not have: fc1.wieght"));
  m.check_overrides(fast);
  // The meta-gradient through the fast weights matches finite differences of the whole
  // inner-step-then-query computation with respect to the initial parameters.
  auto meta_loss = [&](const TensorList& in) {
    nn::ParamMap base{{"fc1.weight", in[0]}, {"fc1.bias", in[1]}, {"fc2.weight", in[2]}};
    Tensor l = mse_loss(m.forward(x, &base), y);
    TensorList gi = autograd::grad({l}, in, {}, std::nullopt, true);
    nn::ParamMap f;
    const char* names[] = {"fc1.weight", "fc1.bias", "fc2.weight"};
    for (size_t k = 0; k < 3; ++k) f[names[k]] = sub(in[k], mul(gi[k], 0.5));
    return mse_loss(m.forward(x, &f), y);
  };
  TensorList init;
  for (const char* n : {"fc1.weight", "fc1.bias", "fc2.weight"}) init.push_back(params[n].detach());
  CHECK(check_gradients("meta-gradient through Linear overrides", meta_loss, init) > 0);
}
