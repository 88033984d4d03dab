// The tape and the backward engine: grad() and backward() semantics, accumulation, graph
// pruning, higher orders, and the errors users hit.
#include <catch2/catch.hpp>

#include <cmath>

#include "engine/core/profiler.h"
#include "engine/autograd/grad_mode.h"
#include "support/kernel_calls.h"
#include "support/gradcheck.h"

using namespace mt;
using namespace mt::testing;

namespace {
Tensor leaf(std::vector<double> v, Shape shape) {
  Tensor t = from_vector(v, shape, DType::f64);
  t.set_requires_grad(true);
  return t;
}
constexpr double kExactTol = 1e-12;  // closed-form derivatives of a few f64 ops
}  // namespace

TEST_CASE("backward accumulates into leaves, grad() leaves .grad alone", "[autograd]") {
  Tensor x = leaf({1, 2, 3}, Shape{3});
  Tensor y = sum(mul(x, x));
  y.backward(Tensor(), /*retain_graph=*/true);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2, 4, 6});
  y.backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{4, 8, 12});
  x.zero_grad();
  Tensor z = sum(mul(x, x));
  auto g = autograd::grad({z}, {x});
  CHECK(g[0].to_vector<double>() == std::vector<double>{2, 4, 6});
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("shared subexpressions and several outputs sum their gradients", "[autograd]") {
  Tensor x = leaf({0.5, -1.5}, Shape{2});
  Tensor a = exp(x);
  Tensor y1 = sum(mul(a, a)), y2 = sum(a);
  auto g = autograd::grad({y1, y2}, {x}, {ones_like(y1), full_like(y2, 3.0)});
  auto xv = x.to_vector<double>();
  auto gv = g[0].to_vector<double>();
  for (size_t i = 0; i < 2; ++i)
    CHECK(std::abs(gv[i] - (2 * std::exp(2 * xv[i]) + 3 * std::exp(xv[i]))) < kExactTol);
}

TEST_CASE("gradient with respect to an intermediate tensor", "[autograd]") {
  Tensor x = leaf({1, 2}, Shape{2});
  Tensor h = mul(x, x);
  Tensor y = sum(mul(h, h));
  auto g = autograd::grad({y}, {h, x});
  CHECK(g[0].to_vector<double>() == std::vector<double>{2, 8});   // 2h
  CHECK(g[1].to_vector<double>() == std::vector<double>{4, 32});  // 4x^3
}


TEST_CASE("grad() computes only the input gradients that lead to what it was asked for",
          "[autograd]") {
  // loss = sum(tanh(x W) V): the weights W and V require grad (as a model's parameters do in an
  // inner loop), but grad(loss, {x}) must not run the weight-gradient products: one matmul per
  // layer (dx = g W^T), not two. Values must not change with what else is asked for.
  Tensor x = random_tensor(Shape{5, 4}, -1, 1, 71), W = random_tensor(Shape{4, 3}, -1, 1, 72);
  Tensor V = random_tensor(Shape{3, 2}, -1, 1, 73);
  W.set_requires_grad(true);
  V.set_requires_grad(true);
  x.set_requires_grad(true);
  auto loss = [&] { return sum(matmul(tanh(matmul(x, W)), V)); };
  TensorList only_x, all;
  CHECK(kernel_calls("matmul", [&] { only_x = autograd::grad({loss()}, {x}); }) == 2 + 2);
  CHECK(kernel_calls("matmul", [&] { all = autograd::grad({loss()}, {x, W, V}); }) == 2 + 4);
  CHECK(max_abs_diff(only_x[0], all[0]) == 0);
  // Asking for V alone skips both input-side products below it: dV = h^T g only.
  CHECK(kernel_calls("matmul", [&] { autograd::grad({loss()}, {V}); }) == 2 + 1);
  // With create_graph the pruned pass is still differentiable: d/dW of |dloss/dx|^2 through it
  // matches finite differences (second order through the skipped products' neighbours).
  auto f = [&](const TensorList& in) {
    Tensor l = sum(matmul(tanh(matmul(in[0], in[1])), in[2]));
    Tensor gx = autograd::grad({l}, {in[0]}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    return sum(mul(gx, gx));
  };
  CHECK(check_gradients("|d loss / dx|^2", f, {x, W, V}, kGradGradTol) > 0);
}

TEST_CASE("grad() w.r.t. an intermediate leaves the graph below it usable", "[autograd]") {
  // The pass only captures the gradient at h; the exp node that made h did not run, so its saved
  // tensors are still there for a later backward through it.
  Tensor x = leaf({0.5, 1.5}, Shape{2});
  Tensor h = exp(x);
  Tensor y = sum(mul(h, h));
  auto gh = autograd::grad({y}, {h});
  CHECK(max_abs_diff(gh[0], mul(h, 2.0)) == 0);
  auto gx = autograd::grad({sum(h)}, {x});
  CHECK(max_abs_diff(gx[0], h) == 0);
}

TEST_CASE("third-order derivative of a scalar chain", "[autograd][higher]") {
  // f(x) = exp(x) x^3:  f''' = exp(x) (x^3 + 9x^2 + 18x + 6)
  for (double xv : {-1.3, 0.4, 1.1}) {
    Tensor x = leaf({xv}, Shape{});
    Tensor f = mul(exp(x), pow(x, 3.0));
    Tensor d1 = autograd::grad({f}, {x}, {}, std::nullopt, /*create_graph=*/true)[0];
    Tensor d2 = autograd::grad({d1}, {x}, {}, std::nullopt, /*create_graph=*/true)[0];
    Tensor d3 = autograd::grad({d2}, {x})[0];
    double expect = std::exp(xv) * (xv * xv * xv + 9 * xv * xv + 18 * xv + 6);
    CHECK(std::abs(d3.item<double>() - expect) < 1e-10 * std::max(1.0, std::abs(expect)));
  }
  // And against finite differences of the autograd second derivative.
  auto second = [](double xv) {
    Tensor x = leaf({xv}, Shape{});
    Tensor f = mul(tanh(x), sigmoid(mul(x, x)));
    Tensor d1 = autograd::grad({f}, {x}, {}, std::nullopt, true)[0];
    return autograd::grad({d1}, {x}, {}, std::nullopt, true)[0];
  };
  const double x0 = 0.7, h = 1e-5;
  Tensor d2 = second(x0);
  Tensor x = leaf({x0}, Shape{});
  Tensor f = mul(tanh(x), sigmoid(mul(x, x)));
  Tensor d1 = autograd::grad({f}, {x}, {}, std::nullopt, true)[0];
  Tensor d2g = autograd::grad({d1}, {x}, {}, std::nullopt, true)[0];
  double d3 = autograd::grad({d2g}, {x})[0].item<double>();
  double fd = (second(x0 + h).item<double>() - second(x0 - h).item<double>()) / (2 * h);
  CHECK(std::abs(d3 - fd) < 1e-6);  // central difference of step 1e-5: error ~h^2 f'''''
  (void)d2;
}

TEST_CASE("errors: unused input, no grad, freed graph, grad_outputs mismatch", "[autograd][errors]") {
  Tensor x = leaf({1, 2}, Shape{2});
  Tensor unused = leaf({3}, Shape{1});
  Tensor y = sum(exp(x));
  CHECK_THROWS_WITH(autograd::grad({y}, {unused}, {}, true),
                    Catch::Contains("inputs[0]") && Catch::Contains("allow_unused"));
  auto g = autograd::grad({y}, {x, unused}, {}, true, false, /*allow_unused=*/true);
  CHECK(g[0].defined());
  CHECK_FALSE(g[1].defined());

  Tensor c = from_vector(std::vector<double>{1}, Shape{1}, DType::f64);
  CHECK_THROWS_WITH(autograd::grad({sum(c)}, {x}), Catch::Contains("does not require grad"));
  CHECK_THROWS_WITH(autograd::grad({y}, {c}), Catch::Contains("set_requires_grad"));

  Tensor v = exp(x);
  CHECK_THROWS_WITH(autograd::grad({v}, {x}), Catch::Contains("one-element output") &&
                                                  Catch::Contains("grad_outputs"));
  CHECK_THROWS_WITH(autograd::grad({v}, {x}, {ones(Shape{3}, DType::f64)}),
                    Catch::Contains("grad_outputs[0] has shape (3,)"));
  CHECK_THROWS_WITH(autograd::grad({v}, {x}, {ones(Shape{2}, DType::f32)}),
                    Catch::Contains("dtype f32"));

  Tensor w = sum(mul(x, x));
  autograd::grad({w}, {x});  // frees the graph
  CHECK_THROWS_WITH(autograd::grad({w}, {x}),
                    Catch::Contains("second time") && Catch::Contains("retain_graph"));
}

TEST_CASE("in-place modification of a saved tensor is detected", "[autograd][errors]") {
  Tensor x = leaf({1, 2}, Shape{2});
  Tensor h = mul(x, 2.0);
  Tensor y = sum(mul(h, h));  // saves h
  {
    NoGradGuard no_grad;
    h.fill_(0.0);  // h is not a leaf but the write bypasses the tape
  }
  CHECK_THROWS_WITH(autograd::grad({y}, {x}), Catch::Contains("modified in place") &&
                                                  Catch::Contains("mul"));
  Tensor e = exp(x);  // saves its output
  Tensor z = sum(e);
  Tensor ze = sum(mul(e, 3.0));
  (void)z;
  {
    NoGradGuard no_grad;
    e.mul_(2.0);
  }
  CHECK_THROWS_WITH(autograd::grad({ze}, {x}), Catch::Contains("exp"));
}

TEST_CASE("no-grad guard and detach stop recording", "[autograd]") {
  Tensor x = leaf({1, 2}, Shape{2});
  {
    NoGradGuard no_grad;
    Tensor y = mul(x, x);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
  }
  Tensor d = x.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(&d.storage() == &x.storage());
  Tensor y = sum(mul(x, x.detach()));
  auto g = autograd::grad({y}, {x});
  CHECK(g[0].to_vector<double>() == std::vector<double>{1, 2});  // detached factor is a constant
  // Only a leaf may change; asking an op's output that requires grad to require it does
  // nothing (as torch's requires_grad_()).
  CHECK_THROWS_WITH(mul(x, x).set_requires_grad(false), Catch::Contains("leaf"));
  Tensor product = mul(x, x);
  const autograd::Node* node = product.grad_fn().get();
  CHECK_NOTHROW(product.set_requires_grad(true));
  CHECK(product.grad_fn().get() == node);
}

TEST_CASE("create_graph gradients of a whole expression match finite differences",
          "[autograd][higher]") {
  // A mixed expression through every op family at once.
  Tensor a = random_tensor(Shape{3, 4}, -1, 1, 60), b = random_tensor(Shape{4, 2}, -1, 1, 61);
  Tensor w = random_tensor(Shape{2}, 0.5, 1.5, 62);
  auto f = [](const TensorList& in) {
    Tensor h = gelu(matmul(in[0], in[1]));
    Tensor n = layer_norm(h, 1, in[2], Tensor());
    return sum(mul(log_softmax(n, -1), softmax(h, 0)), {1});
  };
  CHECK(check_gradients("mixed", f, {a, b, w}) > 0);
  CHECK(check_second_order("mixed", f, {a, b, w}) > 0);
}

TEST_CASE("backward frees saved tensors unless retain_graph", "[autograd][memory]") {
  const int64_t n = 1 << 18;  // 2 MiB of f64 per intermediate
  Tensor x = zeros(Shape{n}, DType::f64);
  x.set_requires_grad(true);
  const int64_t base = memory_stats().allocated_bytes;
  // exp saves its output; nothing else holds it once the statement ends.
  Tensor y = sum(exp(x));
  const int64_t with_graph = memory_stats().allocated_bytes;
  CHECK(with_graph - base >= n * 8);
  autograd::grad({y}, {x}, {}, /*retain_graph=*/true);
  CHECK(memory_stats().allocated_bytes == with_graph);  // retained
  autograd::grad({y}, {x});
  // The graph object y still exists, but exp's saved output was released by the backward.
  CHECK(memory_stats().allocated_bytes - base < n * 8);
  CHECK_THROWS_WITH(autograd::grad({y}, {x}), Catch::Contains("second time"));
}

TEST_CASE("backward with create_graph leaves a differentiable .grad", "[autograd][higher]") {
  Tensor x = leaf({0.3, -0.8}, Shape{2});
  Tensor y = sum(mul(mul(x, x), x));  // sum x^3
  y.backward(Tensor(), std::nullopt, /*create_graph=*/true);
  Tensor g = x.grad();  // 3x^2, still attached to the graph
  REQUIRE(g.requires_grad());
  auto gg = autograd::grad({sum(g)}, {x});  // 6x
  auto xv = x.to_vector<double>(), ggv = gg[0].to_vector<double>();
  for (size_t i = 0; i < 2; ++i) CHECK(std::abs(ggv[i] - 6 * xv[i]) < kExactTol);
}

TEST_CASE("a .grad that create_graph stored is the leaf's own: later backwards add to it alone",
          "[autograd][higher]") {
  // add passes one gradient tensor to both inputs, backward's grad_output is the caller's, and
  // sum's backward is a stride-0 view: each was stored as it was, and the next backward without
  // create_graph added into it in place (into both leaves, into the caller's tensor, or refused
  // "the tensor written to repeats elements").
  Tensor x = leaf({1, 2, 3}, Shape{3}), w = leaf({4, 5, 6}, Shape{3});
  const Tensor c = ones(Shape{3}, DType::f64);
  sum(mul(add(x, w), c)).backward(Tensor(), std::nullopt, /*create_graph=*/true);
  sum(mul(x, c)).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2, 2, 2});
  CHECK(w.grad().to_vector<double>() == std::vector<double>{1, 1, 1});
  Tensor u = leaf({1, 2, 3}, Shape{3});
  const Tensor go = ones(Shape{3}, DType::f64);
  clone(u).backward(go, std::nullopt, /*create_graph=*/true);
  sum(mul(u, 3.0)).backward();
  CHECK(go.to_vector<double>() == std::vector<double>{1, 1, 1});
  CHECK(u.grad().to_vector<double>() == std::vector<double>{4, 4, 4});
  Tensor v = leaf({1, 2, 3}, Shape{3});
  sum(v).backward(Tensor(), std::nullopt, /*create_graph=*/true);
  sum(mul(v, v)).backward();
  CHECK(v.grad().to_vector<double>() == std::vector<double>{3, 5, 7});
}

TEST_CASE("grad() with an input listed twice returns its gradient twice", "[autograd]") {
  Tensor x = leaf({1, -2}, Shape{2});
  const TensorList g = autograd::grad({sum(mul(x, x))}, {x, x});
  REQUIRE(g.size() == 2);
  CHECK(g[0].to_vector<double>() == std::vector<double>{2, -4});
  CHECK(g[1].to_vector<double>() == std::vector<double>{2, -4});
}

TEST_CASE("gradient accumulation: n incoming gradients are summed in arrival order, two per pass",
          "[autograd]") {
  // x feeds n products x * w_k; dL/dx = sum_k w_k arrives as n gradients. The engine adds them
  // three at a time with add3 ((a + b) + c, one pass): ceil((n - 1) / 2) kernels instead of n - 1,
  // with the additions and rounding of adding them one by one.
  const int n = 7;
  Tensor x = random_tensor(Shape{64}, -1, 1, 81, DType::f32).set_requires_grad();
  TensorList ws;
  for (int k = 0; k < n; ++k) ws.push_back(random_tensor(Shape{64}, -1e3, 1e3, 90 + k, DType::f32));
  auto loss = [&] {
    Tensor l;
    for (const Tensor& w : ws) {
      Tensor term = sum(mul(x, w));
      l = l.defined() ? add(l, term) : term;
    }
    return l;
  };
  TensorList g;
  const int64_t adds = kernel_calls("add", [&] { g = autograd::grad({loss()}, {x}); });
  const int64_t add3s = kernel_calls("add3", [&] { (void)autograd::grad({loss()}, {x}); });
  CHECK(add3s == (n - 1) / 2);  // 3 here: ((w0 + w1) + w2), (+ w3 + w4), (+ w5 + w6)
  // The forward's n - 1 adds of the loss terms; no add left for the gradients (n - 1 even).
  CHECK(adds == n - 1);
  // The reverse pass visits the products in reverse creation order: the arrival order is
  // w_{n-1}, ..., w_0. Bitwise the one-by-one sum in that order.
  Tensor expect = ws[n - 1];
  for (int k = n - 2; k >= 0; --k) expect = add(expect, ws[k]);
  CHECK(max_abs_diff(g[0], expect) == 0);
  // With create_graph the sum is differentiable (add3 passes the gradient to each input).
  auto f = [&](const TensorList& in) {
    Tensor l = sum(mul(mul(in[0], in[0]), in[1]));
    for (int k = 0; k < 4; ++k) l = add(l, sum(mul(in[0], in[1])));
    Tensor gx = autograd::grad({l}, {in[0]}, {}, std::nullopt, /*create_graph=*/true)[0];
    return sum(mul(gx, gx));
  };
  CHECK(check_gradients("|d loss / dx|^2 with 5-way accumulation", f,
                        {random_tensor(Shape{3}, -1, 1, 97), random_tensor(Shape{3}, -1, 1, 98)},
                        kGradGradTol) > 0);
}

TEST_CASE("graph_memory: the storages a graph saved, each once, by node", "[autograd][memory]") {
  Tensor x = random_tensor(Shape{1000}, -1, 1, 31);  // f64: 8,000 bytes
  x.set_requires_grad(true);
  Tensor y = exp(x);               // saves its output y
  Tensor z = sum(mul(y, x));       // mul saves y (again) and x
  const autograd::GraphMemory m = autograd::graph_memory({z});
  CHECK(m.bytes == 16000);         // y and x, once each
  CHECK(m.tensors == 2);
  REQUIRE(!m.rows.empty());
  CHECK(m.rows[0].node == "mul");  // the newest node that saves them is credited
  CHECK(m.rows[0].bytes == 16000);
  REQUIRE(m.largest.size() == 2);
  CHECK(m.largest[0].shape == "(1000,)");
  CHECK(m.table().find("mul") != std::string::npos);
  // A backward that frees the graph leaves nothing saved.
  (void)autograd::grad({z}, {x});
  CHECK(autograd::graph_memory({z}).bytes == 0);
}

namespace {
// Sets the saved-tensor recomputation policy for a scope.
struct RecomputePolicy {
  explicit RecomputePolicy(SavedRecomputePolicy p) : previous(SavedRecompute::policy()) {
    SavedRecompute::set_policy(p);
  }
  ~RecomputePolicy() { SavedRecompute::set_policy(previous); }
  SavedRecomputePolicy previous;
};

// A small network through every recomputable op (layer_norm, geglu, mul) whose outputs the next
// op saves, and layer_norm_input_grad / geglu_backward in its gradient graph.
Tensor recompute_net(const TensorList& in) {
  const Tensor& x = in[0];  // (4, 6)
  Tensor xn = layer_norm(x, 1, in[1], in[2], 1e-5);
  Tensor a = geglu(linear(xn, in[3]));  // (4, 6)
  Tensor m = mul(a, tanh(x));
  return sum(mul(linear(m, in[4]), linear(m, in[4])));
}

TensorList recompute_inputs() {
  return {random_tensor(Shape{4, 6}, -1, 1, 41), random_tensor(Shape{6}, 0.5, 1.5, 42),
          random_tensor(Shape{6}, -1, 1, 43),    random_tensor(Shape{12, 6}, -1, 1, 44),
          random_tensor(Shape{3, 6}, -1, 1, 45)};
}
}  // namespace

TEST_CASE("saved-tensor recomputation: the same gradients of every order, less saved",
          "[autograd][memory]") {
  const TensorList inputs = recompute_inputs();
  TensorList leaves;
  for (const Tensor& t : inputs) leaves.push_back(t.detach().set_requires_grad(true));
  auto run = [&](SavedRecomputePolicy p, int64_t* saved_bytes) {
    RecomputePolicy policy(p);
    Tensor y = recompute_net(leaves);
    *saved_bytes = autograd::graph_memory({y}).bytes;
    TensorList g = autograd::grad({y}, leaves, {}, std::nullopt, /*create_graph=*/true);
    Tensor gsum = sum(mul(g[0], g[0]));
    for (size_t i = 1; i < g.size(); ++i) gsum = add(gsum, sum(mul(g[i], g[i])));
    TensorList gg = autograd::grad({gsum}, leaves);
    g.insert(g.end(), gg.begin(), gg.end());
    return g;
  };
  int64_t kept = 0, recomputed = 0;
  const TensorList a = run(SavedRecomputePolicy::never, &kept);
  const TensorList b = run(SavedRecomputePolicy::always, &recomputed);
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("gradient " << i);
    CHECK(max_abs_diff(a[i], b[i]) == 0);  // the same kernels on the same values
  }
  // xn and geglu's output a are not kept; m is (its mul saves a as a link: one level only).
  CHECK(kept - recomputed == (4 * 6 + 4 * 6) * 8);
  // The CPU default keeps them.
  int64_t by_default = 0;
  (void)run(SavedRecompute::policy(), &by_default);
  CHECK(by_default == kept);
  // Finite differences, first and second order, through the recomputing graph.
  RecomputePolicy policy(SavedRecomputePolicy::always);
  CHECK(check_gradients("recompute", [](const TensorList& in) { return recompute_net(in); },
                        inputs) > 0);
  CHECK(check_second_order("recompute", [](const TensorList& in) { return recompute_net(in); },
                           inputs) > 0);
}

TEST_CASE("saved-tensor recomputation: uses the live tensor, recomputes once per pass, one level",
          "[autograd][memory]") {
  RecomputePolicy policy(SavedRecomputePolicy::always);
  Tensor h = random_tensor(Shape{5, 8}, -1, 1, 51).set_requires_grad(true);
  Tensor w = random_tensor(Shape{3, 4}, -1, 1, 52).set_requires_grad(true);
  SECTION("a live output is read, not recomputed; a freed one once for all its savers") {
    Tensor a = geglu(h);
    Tensor y = sum(add(linear(a, w), linear(a, w)));  // two nodes save a
    CHECK(kernel_calls("geglu", [&] { (void)autograd::grad({y}, {w}, {}, true); }) == 0);
    a = Tensor();  // now only the links remain
    CHECK(kernel_calls("geglu", [&] { (void)autograd::grad({y}, {w}); }) == 1);
  }
  SECTION("an in-place write to a live saved output is still caught") {
    Tensor a = geglu(h);
    Tensor y = sum(linear(a, w));
    {
      NoGradGuard no_grad;
      a.mul_(2.0);
    }
    CHECK_THROWS_WITH(autograd::grad({y}, {w}), Catch::Contains("modified in place"));
  }
  SECTION("a node saving a recomputed tensor does not offer its own output") {
    Tensor m1 = mul(h, h);
    Tensor m2 = mul(m1, h);   // saves m1 as a link: m2 is not recomputable
    Tensor m3 = mul(m2, h);   // so m2 is kept
    Tensor y = sum(m3);
    const int64_t bytes = autograd::graph_memory({y}).bytes;
    CHECK(bytes == 2 * 5 * 8 * 8);  // h and m2
  }
}

TEST_CASE("saved-tensor recomputation: a link whose producer was freed says so", "[autograd][memory]") {
  RecomputePolicy policy(SavedRecomputePolicy::always);
  Tensor h = random_tensor(Shape{5, 8}, -1, 1, 53).set_requires_grad(true);
  Tensor w = random_tensor(Shape{3, 4}, -1, 1, 54).set_requires_grad(true);
  Tensor a = geglu(h);
  Tensor y1 = sum(a);              // through geglu, not the linear
  Tensor y2 = sum(linear(a, w));   // the linear saves a as a link
  a = Tensor();
  (void)autograd::grad({y1}, {h});  // frees geglu's saved h
  CHECK_THROWS_WITH(autograd::grad({y2}, {w}),
                    Catch::Contains("kept as a link") && Catch::Contains("retain_graph=true"));
}
