// Gradient checkpointing: the same gradients (first and second order) as the plain graph, the
// region's intermediates freed in the forward, and checkpointed inner steps giving the same
// E2E-TTT meta-gradient with lower peak memory.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "engine/autograd/checkpoint.h"
#include "engine/autograd/grad_mode.h"
#include "engine/io/safetensors.h"
#include "meta/maml.h"
#include "support/gradcheck.h"
#include "support/poco_golden.h"
#include "support/golden_file.h"

using namespace mt;
using namespace mt::testing;

namespace {
// The recomputation repeats the same f64 operations in the same order: results agree to rounding
// of the gradient accumulation order, far below this.
constexpr double kSameTol = 1e-12;

TensorList region(const TensorList& in) {
  Tensor h = tanh(matmul(in[0], in[1]));
  return {mul(h, h), sum(h, {1})};
}

// A scalar-per-row function of region's two outputs, read after the region (the tests' loss).
Tensor after_region(const TensorList& o) { return add(sum(o[0], {1}), mul(o[1], o[1])); }

// The gradients of sum(checkpointed(in)) and of sum(plain(in)) with respect to every input (fresh
// leaves with the values of `inputs`), one backward each without create_graph, agree within
// kSameTol.
void check_same_gradients(const Fn& checkpointed, const Fn& plain, const TensorList& inputs) {
  TensorList leaves;
  for (const Tensor& t : inputs) {
    Tensor l = t.clone();
    l.set_requires_grad(true);
    leaves.push_back(l);
  }
  TensorList a = autograd::grad({sum(checkpointed(leaves))}, leaves);
  TensorList b = autograd::grad({sum(plain(leaves))}, leaves);
  for (size_t i = 0; i < leaves.size(); ++i) CHECK(max_abs_diff(a[i], b[i]) <= kSameTol);
}

// The tiny POCO of the golden files (f64) with its support and query batches, and three inner
// steps on the embeddings and the head.
struct TinyMeta {
  std::unique_ptr<meta::Forecaster> f;
  models::PocoBatch support, query;
  meta::InnerLoopOptions opt;
  TinyMeta() {
    auto st = io::load_safetensors(mt::testing::golden_path("poco_tiny_v1.safetensors"));
    meta::ModelSpec spec;
    spec.poco = nlohmann::json::parse(st.metadata.at("config"));
    Generator gen(0);
    f = meta::make_forecaster(
        spec,
        nlohmann::json::parse(st.metadata.at("session_sizes")).get<std::vector<int64_t>>(), gen,
        DType::f64);
    {
      NoGradGuard no_grad;
      for (auto& [name, p] : f->module()->named_parameters()) p.copy_(*st.find(name));
    }
    GoldenFile g = GoldenFile::load(mt::testing::golden_path("poco_tiny_v1.bin"));
    support = golden_batch(g, "x_all", "targets");
    query = golden_batch(g, "query.x_all", "query.targets");
    opt.steps = 3;
    opt.inner_lr = 0.05;
    opt.params = {"unit_emb.", "session_emb.", "head."};
  }
};
}  // namespace

TEST_CASE("checkpoint: values and gradients equal the plain graph, to second order",
          "[autograd][checkpoint]") {
  Tensor x = random_tensor(Shape{3, 4}, -1, 1, 101), w = random_tensor(Shape{4, 2}, -1, 1, 102);
  auto plain = [](const TensorList& in) {
    TensorList o = region(in);
    return after_region(o);
  };
  auto checkpointed = [](const TensorList& in) {
    TensorList o = autograd::checkpoint(region, in);
    return after_region(o);
  };
  CHECK(max_abs_diff(plain({x, w}), checkpointed({x, w})) == 0);
  CHECK(check_gradients("checkpoint", checkpointed, {x, w}) > 0);
  CHECK(check_second_order("checkpoint", checkpointed, {x, w}) > 0);
}

TEST_CASE("checkpoint: a captured parameter (a leaf read by the region) gets its gradient",
          "[autograd][checkpoint]") {
  Tensor x = random_tensor(Shape{3, 4}, -1, 1, 111), w = random_tensor(Shape{4, 2}, -1, 1, 112);
  // The region receives x and reads w from its closure, as a layer reads its own weight.
  auto captured = [](const TensorList& in) {
    Tensor weight = in[1];
    TensorList o = autograd::checkpoint(
        [weight](const TensorList& xs) { return region({xs[0], weight}); }, {in[0]});
    return after_region(o);
  };
  auto plain = [](const TensorList& in) {
    TensorList o = region(in);
    return after_region(o);
  };
  // Before captured leaves were found, w's gradient was silently undefined (lost).
  CHECK(check_gradients("checkpoint, captured weight", captured, {x, w}) > 0);
  CHECK(check_second_order("checkpoint, captured weight", captured, {x, w}) > 0);
  Tensor xl = x.clone(), wl = w.clone();
  xl.set_requires_grad(true);
  wl.set_requires_grad(true);
  check_same_gradients(captured, plain, {x, w});

  SECTION("only a captured leaf requires grad: the region still records a node") {
    Tensor xc = x.clone();  // a constant input
    Tensor y = sum(captured({xc, wl}));
    REQUIRE(y.requires_grad());
    CHECK(max_abs_diff(autograd::grad({y}, {wl})[0],
                       autograd::grad({sum(plain({xc, wl}))}, {wl})[0]) <= kSameTol);
  }
  SECTION("backward() accumulates into the captured leaf's .grad") {
    sum(captured({xl, wl})).backward();
    REQUIRE(wl.grad().defined());
    CHECK(max_abs_diff(wl.grad(), autograd::grad({sum(plain({xl, wl}))}, {wl})[0]) <= kSameTol);
  }
  SECTION("a captured leaf changed in place before the backward is refused") {
    Tensor y = sum(captured({xl, wl}));
    {
      NoGradGuard no_grad;
      wl.mul_(2.0);
    }
    CHECK_THROWS_WITH(autograd::grad({y}, {xl}), Catch::Contains("modified"));
  }
}

TEST_CASE("checkpoint: an input computed from a captured leaf gets the plain graph's gradients, "
          "to second order",
          "[autograd][checkpoint]") {
  Tensor x = random_tensor(Shape{3, 4}, -1, 1, 113), w = random_tensor(Shape{4, 2}, -1, 1, 114);
  // An input computed from a captured leaf: the region reads w itself and receives x + w[0, 0]
  // (w reaches the output along two paths; the region's node gives each its partial and the
  // engine adds them). Counted twice, or a backward through freed nodes, before grad_at_nodes.
  auto tangled = [](const TensorList& in) {
    Tensor weight = in[1];
    Tensor shifted = add(in[0], weight.narrow(0, 0, 1).narrow(1, 0, 1));  // (3, 4)
    TensorList o = autograd::checkpoint(
        [weight](const TensorList& xs) { return region({xs[0], weight}); }, {shifted});
    return after_region(o);
  };
  auto tangled_plain = [](const TensorList& in) {
    TensorList o = region({add(in[0], in[1].narrow(0, 0, 1).narrow(1, 0, 1)), in[1]});
    return after_region(o);
  };
  CHECK(check_gradients("checkpoint, input from a captured leaf", tangled, {x, w}) > 0);
  CHECK(check_second_order("checkpoint, input from a captured leaf", tangled, {x, w}) > 0);
  Tensor xl = x.clone(), wl = w.clone();
  xl.set_requires_grad(true);
  wl.set_requires_grad(true);
  // First order without create_graph: one pass, nothing released twice.
  check_same_gradients(tangled, tangled_plain, {x, w});

  SECTION("the captured leaf also given as an input") {
    auto both = [](const TensorList& in) {
      Tensor weight = in[1];
      return sum(autograd::checkpoint(
          [weight](const TensorList& xs) { return TensorList{mul(xs[0], weight)}; },
          {weight})[0]);
    };
    // d/dw sum(w * w) = 2w (was 3w).
    CHECK(max_abs_diff(autograd::grad({both({xl, wl})}, {wl})[0], mul(wl, 2.0).detach()) <=
          kSameTol);
    CHECK(check_second_order("checkpoint, captured and input", both, {x, w}) > 0);
  }
}

TEST_CASE("checkpoint: a captured tensor computed before the region gets the plain graph's "
          "gradients, to second order",
          "[autograd][checkpoint]") {
  Tensor x = random_tensor(Shape{3, 4}, -1, 1, 119), w = random_tensor(Shape{4, 2}, -1, 1, 120);
  // The region reads tanh(2 w), computed before it (as a layer reads fast weights or a
  // conditioning vector), from its closure; w reaches the output only through it.
  auto captured = [](const TensorList& in) {
    Tensor weight = tanh(mul(in[1], 2.0));
    TensorList o = autograd::checkpoint(
        [weight](const TensorList& xs) { return region({xs[0], weight}); }, {in[0]});
    return after_region(o);
  };
  auto plain = [](const TensorList& in) {
    TensorList o = region({in[0], tanh(mul(in[1], 2.0))});
    return after_region(o);
  };
  // Refused before record() logged the region's reads ("not one of its inputs").
  CHECK(check_gradients("checkpoint, captured non-leaf", captured, {x, w}) > 0);
  CHECK(check_second_order("checkpoint, captured non-leaf", captured, {x, w}) > 0);
  Tensor xl = x.clone(), wl = w.clone();
  xl.set_requires_grad(true);
  wl.set_requires_grad(true);
  check_same_gradients(captured, plain, {x, w});

  SECTION("captured and also the source of an input: each path counted once") {
    // The region receives x * weight[0, 0] and reads weight itself.
    auto tangled = [](const TensorList& in) {
      Tensor weight = tanh(mul(in[1], 2.0));
      Tensor shifted = mul(in[0], weight.narrow(0, 0, 1).narrow(1, 0, 1));
      TensorList o = autograd::checkpoint(
          [weight](const TensorList& xs) { return region({xs[0], weight}); }, {shifted});
      return after_region(o);
    };
    CHECK(check_gradients("checkpoint, captured non-leaf and input", tangled, {x, w}) > 0);
    CHECK(check_second_order("checkpoint, captured non-leaf and input", tangled, {x, w}) > 0);
  }
  SECTION("a view of it, and a second region reading the first region's output") {
    auto chained = [](const TensorList& in) {
      Tensor weight = tanh(mul(in[1], 2.0));
      Tensor first = weight.narrow(1, 0, 1);  // (4, 1), a view made before the region
      Tensor h = autograd::checkpoint(
          [first](const TensorList& xs) { return TensorList{tanh(matmul(xs[0], first))}; },
          {in[0]})[0];  // (3, 1)
      // The second region reads h, the first region's output, from its closure.
      Tensor y = autograd::checkpoint(
          [h](const TensorList& xs) { return TensorList{mul(xs[0], h)}; }, {in[0]})[0];
      return sum(mul(y, y), {1});
    };
    CHECK(check_gradients("checkpoint, chained regions", chained, {x, w}) > 0);
    CHECK(check_second_order("checkpoint, chained regions", chained, {x, w}) > 0);
  }
  SECTION("changed in place before the backward: refused") {
    Tensor weight = tanh(mul(wl, 2.0));
    Tensor y = sum(autograd::checkpoint(
        [weight](const TensorList& xs) { return region({xs[0], weight}); }, {xl})[1]);
    {
      NoGradGuard no_grad;
      weight.mul_(2.0);
    }
    CHECK_THROWS_WITH(autograd::grad({y}, {xl, wl}), Catch::Contains("modified in place"));
  }
  SECTION("written in place by the region itself: refused in the forward") {
    Tensor weight = tanh(mul(wl, 2.0));
    auto writes = [weight](const TensorList& xs) {
      TensorList o = region({xs[0], weight});
      NoGradGuard no_grad;
      Tensor alias = weight.detach();
      alias.mul_(0.5);
      return o;
    };
    CHECK_THROWS_WITH(autograd::checkpoint(writes, {xl}),
                      Catch::Contains("writes in place into a tensor it reads from outside") &&
                          Catch::Contains("tanh") && Catch::Contains("clone()"));
  }
}

TEST_CASE("checkpoint: fast weights captured by checkpointed inner steps give the plain "
          "second-order meta-gradient",
          "[autograd][checkpoint]") {
  // A MAML-like loop: two inner SGD steps on w whose loss reads the fast weights from the
  // region's closure (non-leaves after the first step), then an outer loss; its gradient with
  // respect to the initial w and the data scale phi goes through both inner gradients.
  Tensor w = random_tensor(Shape{4, 3}, -1, 1, 123), x = random_tensor(Shape{5, 4}, -1, 1, 124);
  Tensor phi = random_tensor(Shape{3}, 0.5, 1.5, 125);
  auto meta_loss = [x](const TensorList& in, bool checkpointed) {
    // The inner gradients need grad mode and weights requiring grad, also where the checks
    // evaluate the loss on constants (finite differences, under a NoGradGuard).
    GradModeGuard on(true);
    Tensor fast = in[0];
    if (!fast.requires_grad()) fast = fast.detach().set_requires_grad(true);
    const Tensor& scale = in[1];
    for (int k = 0; k < 2; ++k) {
      auto step = [x, fast, scale](const TensorList&) {
        Tensor loss = sum(mul(tanh(mul(matmul(x, fast), scale)), 1.0));
        loss = mul(loss, loss);
        Tensor g = autograd::grad({loss}, {fast}, {}, std::nullopt, /*create_graph=*/true)[0];
        return TensorList{sub(fast, mul(g, 0.05))};
      };
      fast = checkpointed ? autograd::checkpoint(step, {})[0] : step({})[0];
    }
    Tensor out = tanh(matmul(x, fast));
    return sum(mul(out, out), {1});
  };
  auto with = [&](const TensorList& in) { return meta_loss(in, true); };
  auto without = [&](const TensorList& in) { return meta_loss(in, false); };
  CHECK(check_gradients("checkpointed inner steps, captured fast weights", with, {w, phi}) > 0);
  CHECK(check_second_order("checkpointed inner steps, captured fast weights", with, {w, phi}) >
        0);
  check_same_gradients(with, without, {w, phi});
}

TEST_CASE("checkpoint: a nested region may capture the enclosing region's intermediates",
          "[autograd][checkpoint]") {
  Tensor x = random_tensor(Shape{3, 4}, -1, 1, 126), w = random_tensor(Shape{4, 2}, -1, 1, 127);
  auto nested = [](const TensorList& in) {
    auto outer = [](const TensorList& xs) {
      Tensor weight = tanh(xs[1]);  // made in the outer region, captured by the inner one
      TensorList o = autograd::checkpoint(
          [weight](const TensorList& ys) { return region({ys[0], weight}); }, {xs[0]});
      return TensorList{after_region(o)};
    };
    return autograd::checkpoint(outer, in)[0];
  };
  auto plain = [](const TensorList& in) {
    TensorList o = region({in[0], tanh(in[1])});
    return after_region(o);
  };
  CHECK(check_gradients("nested checkpoint, captured intermediate", nested, {x, w}) > 0);
  CHECK(check_second_order("nested checkpoint, captured intermediate", nested, {x, w}) > 0);
  check_same_gradients(nested, plain, {x, w});

  SECTION("and a tensor computed before the outer region") {
    auto outside = [](const TensorList& in) {
      Tensor weight = tanh(in[1]);  // before both regions
      auto outer = [weight](const TensorList& xs) {
        TensorList o = autograd::checkpoint(
            [weight](const TensorList& ys) { return region({ys[0], weight}); }, {xs[0]});
        return TensorList{after_region(o)};
      };
      return autograd::checkpoint(outer, {in[0]})[0];
    };
    CHECK(check_gradients("nested checkpoint, captured from outside", outside, {x, w}) > 0);
    CHECK(check_second_order("nested checkpoint, captured from outside", outside, {x, w}) > 0);
  }
}

TEST_CASE("checkpoint: set_requires_grad(true) inside a region on what already requires grad "
          "changes nothing",
          "[autograd][checkpoint]") {
  Tensor x = random_tensor(Shape{4}, -1, 1, 138), p = random_tensor(Shape{4}, -1, 1, 139);
  x.set_requires_grad(true);
  p.set_requires_grad(true);
  // A parameter from outside: still captured (its gradient was lost when the call counted it
  // as the region's own new leaf).
  auto reads = [p](const TensorList& xs) {
    Tensor q = p;
    q.set_requires_grad(true);
    return TensorList{mul(xs[0], q)};
  };
  CHECK(max_abs_diff(autograd::grad({sum(autograd::checkpoint(reads, {x})[0])}, {p})[0],
                     x.detach()) <= kSameTol);
  // The region's input: a leaf in the first pass, a view in the recomputation (refused there as
  // not a leaf before).
  auto own_input = [](const TensorList& xs) {
    Tensor a = xs[0];
    a.set_requires_grad(true);
    return TensorList{mul(a, a)};
  };
  CHECK(max_abs_diff(autograd::grad({sum(autograd::checkpoint(own_input, {x})[0])}, {x})[0],
                     mul(x, 2.0).detach()) <= kSameTol);
}

TEST_CASE("checkpoint: leaves the region makes itself are its own", "[autograd][checkpoint]") {
  Tensor x = random_tensor(Shape{4}, -1, 1, 121);
  x.set_requires_grad(true);
  // A fresh leaf requiring grad inside the region (a probe, a bias made on the fly): neither
  // captured nor refused; each pass makes its own.
  auto makes_leaf = [](const TensorList& xs) {
    Tensor z = random_tensor(Shape{4}, -1, 1, 122);
    z.set_requires_grad(true);
    return TensorList{tanh(add(xs[0], z))};
  };
  Tensor y = sum(autograd::checkpoint(makes_leaf, {x})[0]);
  Tensor z = random_tensor(Shape{4}, -1, 1, 122);
  Tensor t = tanh(add(x, z));
  Tensor expected = sub(ones_like(x), mul(t, t)).detach();  // 1 - tanh^2
  CHECK(max_abs_diff(autograd::grad({y}, {x})[0], expected) <= kSameTol);
}

TEST_CASE("checkpoint: a nested region may capture the enclosing region's inputs",
          "[autograd][checkpoint]") {
  Tensor x = random_tensor(Shape{3, 4}, -1, 1, 115), w = random_tensor(Shape{4, 2}, -1, 1, 116);
  auto nested = [](const TensorList& in) {
    auto outer = [](const TensorList& xs) {
      Tensor weight = xs[1];  // the outer region's input, captured by the inner region
      TensorList o = autograd::checkpoint(
          [weight](const TensorList& ys) { return region({ys[0], weight}); }, {xs[0]});
      return TensorList{after_region(o)};
    };
    return autograd::checkpoint(outer, in)[0];
  };
  auto plain = [](const TensorList& in) {
    TensorList o = region(in);
    return after_region(o);
  };
  CHECK(check_gradients("nested checkpoint, captured outer input", nested, {x, w}) > 0);
  CHECK(check_second_order("nested checkpoint, captured outer input", nested, {x, w}) > 0);
  check_same_gradients(nested, plain, {x, w});
}

TEST_CASE("checkpoint: a tensor reached only through a values-only inner gradient gets its "
          "gradient, to second order",
          "[autograd][checkpoint]") {
  Tensor w = random_tensor(Shape{4}, -1, 1, 117), phi = random_tensor(Shape{4}, 0.5, 1, 118);
  // One inner step on w whose gradient depends on phi (captured) and on phi2 = phi * phi
  // (captured, computed before the region); the first pass takes it without create_graph, so
  // neither is in that pass's graph: they are edges because the region's ops read them.
  // Refused before (a lost gradient otherwise), and before that, phi2's graph was freed by the
  // first pass's inner gradient.
  auto stepped = [](const TensorList& in, bool checkpointed) {
    GradModeGuard on(true);
    Tensor w0 = in[0];
    if (!w0.requires_grad()) w0 = w0.detach().set_requires_grad(true);
    Tensor scale = in[1], scale2 = mul(in[1], in[1]);
    auto step = [scale, scale2](const TensorList& xs) {
      Tensor loss = sum(mul(mul(mul(xs[0], xs[0]), scale), scale2));
      Tensor g = autograd::grad({loss}, {xs[0]}, {}, std::nullopt,
                                /*create_graph=*/!autograd::checkpoint_values_only())[0];
      return TensorList{sub(xs[0], mul(g, 0.1))};
    };
    Tensor out = checkpointed ? autograd::checkpoint(step, {w0})[0] : step({w0})[0];
    return mul(out, out);
  };
  auto with = [&](const TensorList& in) { return stepped(in, true); };
  auto without = [&](const TensorList& in) { return stepped(in, false); };
  CHECK(check_gradients("checkpoint, values-only inner gradient", with, {w, phi}) > 0);
  CHECK(check_second_order("checkpoint, values-only inner gradient", with, {w, phi}) > 0);
  check_same_gradients(with, without, {w, phi});
}

TEST_CASE("checkpoint: a region that reads other tensors when recomputed is refused",
          "[autograd][checkpoint][errors]") {
  Tensor w = random_tensor(Shape{4}, -1, 1, 117), phi = random_tensor(Shape{4}, 0.5, 1, 118);
  w.set_requires_grad(true);
  phi.set_requires_grad(true);
  // State kept between the passes: the first pass reads nothing but its input, the
  // recomputation also phi, whose gradient would have no edge.
  auto runs = std::make_shared<int>(0);
  auto changing = [runs, phi](const TensorList& xs) {
    return TensorList{(*runs)++ == 0 ? mul(xs[0], 2.0) : mul(xs[0], phi)};
  };
  Tensor y = sum(autograd::checkpoint(changing, {w})[0]);
  CHECK_THROWS_WITH(autograd::grad({y}, {w, phi}),
                    Catch::Contains("first pass did not read") &&
                        Catch::Contains("no state kept between them"));
  // Passed as an input, phi is read in both passes: d/dphi sum(w - 0.2 w phi) = -0.2 w.
  auto step_in = [](const TensorList& xs) {
    Tensor loss = sum(mul(mul(xs[0], xs[0]), xs[1]));
    Tensor g = autograd::grad({loss}, {xs[0]}, {}, std::nullopt,
                              /*create_graph=*/!autograd::checkpoint_values_only())[0];
    return TensorList{sub(xs[0], mul(g, 0.1))};
  };
  Tensor y2 = sum(autograd::checkpoint(step_in, {w, phi})[0]);
  CHECK(max_abs_diff(autograd::grad({y2}, {phi})[0], mul(w, -0.2).detach()) <= kSameTol);
}

TEST_CASE("checkpoint: a first pass's inner gradient leaves the graph before the region intact",
          "[autograd][checkpoint]") {
  Tensor w = random_tensor(Shape{4}, -1, 1, 128), x = random_tensor(Shape{4}, -1, 1, 129);
  // Fast weights f and f2 = f * f, both computed before the region; its values-only inner
  // gradient with respect to f runs f2's node (a path to f). Without create_graph that pass
  // would free it, and the outer backward then failed ("backward through the graph a second
  // time").
  auto stepped = [](const TensorList& in, bool checkpointed) {
    GradModeGuard on(true);
    Tensor w0 = in[0];
    if (!w0.requires_grad()) w0 = w0.detach().set_requires_grad(true);
    Tensor f = sin(w0), f2 = mul(f, f);
    Tensor data = in[1];
    auto step = [f, f2, data](const TensorList&) {
      Tensor loss = sum(tanh(add(mul(data, f), f2)));
      Tensor g = autograd::grad({loss}, {f}, {}, std::nullopt,
                                /*create_graph=*/!autograd::checkpoint_values_only())[0];
      return TensorList{sub(f, mul(g, 0.1))};
    };
    Tensor out = checkpointed ? autograd::checkpoint(step, {})[0] : step({})[0];
    return mul(out, f2);
  };
  auto with = [&](const TensorList& in) { return stepped(in, true); };
  CHECK(check_gradients("checkpoint, inner gradient through the graph before", with, {w, x}) > 0);
  CHECK(check_second_order("checkpoint, inner gradient through the graph before", with, {w, x}) >
        0);
  check_same_gradients(with, [&](const TensorList& in) { return stepped(in, false); }, {w, x});
}

TEST_CASE("checkpoint: a tensor a values-only inner gradient reads from a node before the region "
          "gets its gradient",
          "[autograd][checkpoint]") {
  Tensor p = random_tensor(Shape{3}, -1, 1, 132), q = random_tensor(Shape{3}, -1, 1, 133);
  Tensor x = random_tensor(Shape{3}, -1, 1, 134);
  // fw = p * q before the region; the region's inner gradient with respect to p runs fw's node,
  // whose rule reads the saved q: without create_graph (the first pass) no op records that read,
  // yet the recomputation's gradient depends on q (refused before: "did not read").
  auto stepped = [](const TensorList& in, bool checkpointed) {
    GradModeGuard on(true);
    TensorList l = in;
    for (Tensor& t : l)
      if (!t.requires_grad()) t = t.detach().set_requires_grad(true);
    Tensor p0 = l[0], fw = mul(l[0], l[1]);
    auto step = [fw, p0](const TensorList& xs) {
      Tensor g = autograd::grad({sum(mul(fw, xs[0]))}, {p0}, {}, std::nullopt,
                                /*create_graph=*/!autograd::checkpoint_values_only())[0];
      return TensorList{mul(xs[0], g)};
    };
    Tensor o = checkpointed ? autograd::checkpoint(step, {l[2]})[0] : step({l[2]})[0];
    return mul(o, o);
  };
  auto with = [&](const TensorList& in) { return stepped(in, true); };
  CHECK(check_gradients("checkpoint, saved tensor read by a values-only gradient", with,
                        {p, q, x}) > 0);
  CHECK(check_second_order("checkpoint, saved tensor read by a values-only gradient", with,
                           {p, q, x}) > 0);
}

TEST_CASE("checkpoint: backward() inside a region into a leaf it did not make is refused",
          "[autograd][checkpoint][errors]") {
  Tensor x = random_tensor(Shape{3}, -1, 1, 135), p = random_tensor(Shape{3}, -1, 1, 136);
  x.set_requires_grad(true);
  p.set_requires_grad(true);
  // Each pass would add to p.grad (3x instead of 2x after an outer backward()).
  auto accumulates = [p](const TensorList& xs) {
    Tensor y = mul(xs[0], p);
    autograd::backward({sum(y)}, {}, /*retain_graph=*/true);
    return TensorList{y};
  };
  CHECK_THROWS_WITH(autograd::checkpoint(accumulates, {x}),
                    Catch::Contains("calls backward()") && Catch::Contains("grad()"));
  // Into a leaf the region makes itself, backward() is fine.
  auto own = [](const TensorList& xs) {
    Tensor z = random_tensor(Shape{3}, -1, 1, 137);
    z.set_requires_grad(true);
    autograd::backward({sum(mul(z, z))});
    return TensorList{mul(xs[0], z.grad())};  // 2 z
  };
  Tensor y = sum(autograd::checkpoint(own, {x})[0]);
  Tensor z = random_tensor(Shape{3}, -1, 1, 137);
  CHECK(max_abs_diff(autograd::grad({y}, {x})[0], mul(z, 2.0)) <= kSameTol);
}

TEST_CASE("checkpoint: in-place writes into what a region reads from outside are refused",
          "[autograd][checkpoint][errors]") {
  Tensor x = random_tensor(Shape{2}, -1, 1, 130), w = random_tensor(Shape{2}, -1, 1, 131);
  x.set_requires_grad(true);
  w.set_requires_grad(true);
  Tensor c = mul(w, 1.5);
  SECTION("a leaf written after the region read it: refused in the forward") {
    auto writes = [w](const TensorList& xs) {
      Tensor y = add(xs[0], w);
      NoGradGuard no_grad;
      Tensor alias = w.detach();
      alias.mul_(2.0);
      return TensorList{mul(y, y)};
    };
    CHECK_THROWS_WITH(autograd::checkpoint(writes, {x}),
                      Catch::Contains("writes in place into a tensor it reads from outside") &&
                          Catch::Contains("a leaf"));
  }
  SECTION("a tensor written before the region reads it: refused in the backward") {
    // The first pass reads the written values, the recomputation would write again (dx = c + 2
    // instead of c + 1): nothing in the first pass can tell.
    auto writes_first = [c](const TensorList& xs) {
      {
        NoGradGuard no_grad;
        Tensor alias = c.detach();
        alias.add_(ones_like(alias));
      }
      return TensorList{mul(xs[0], c)};
    };
    Tensor y = sum(autograd::checkpoint(writes_first, {x})[0]);
    CHECK_THROWS_WITH(autograd::grad({y}, {x}),
                      Catch::Contains("the region wrote in place into a tensor") &&
                          Catch::Contains("clone()"));
  }
  SECTION("a 1-D tensor from outside returned as it is works") {
    Tensor y = mul(autograd::checkpoint([c](const TensorList&) { return TensorList{c}; }, {x})[0],
                   x);
    // d/dw sum(1.5 w * x) = 1.5 x
    CHECK(max_abs_diff(autograd::grad({sum(y)}, {w})[0], mul(x, 1.5).detach()) <= kSameTol);
  }
}

TEST_CASE("checkpoint keeps only its inputs in the forward", "[autograd][checkpoint][memory]") {
  Tensor x = random_tensor(Shape{256, 256}, -1, 1, 103);
  x.set_requires_grad(true);
  auto heavy = [](const TensorList& in) {
    Tensor h = in[0];
    for (int i = 0; i < 8; ++i) h = tanh(matmul(h, in[0]));  // 8 saved 512 KiB intermediates
    return TensorList{sum(h)};
  };
  const int64_t base = memory_stats().allocated_bytes;
  Tensor plain = heavy({x})[0];
  const int64_t plain_bytes = memory_stats().allocated_bytes - base;
  Tensor ck = autograd::checkpoint(heavy, {x})[0];
  const int64_t both_bytes = memory_stats().allocated_bytes - base;
  CHECK(both_bytes - plain_bytes < 4096);  // the checkpointed graph holds (almost) nothing
  CHECK(plain_bytes > 8 * 256 * 256 * 8);
  auto g1 = autograd::grad({plain}, {x}), g2 = autograd::grad({ck}, {x});
  CHECK(max_abs_diff(g1[0], g2[0]) <= kSameTol);
}

TEST_CASE("checkpoint_values_only: true in the first pass only, restored after nesting",
          "[autograd][checkpoint]") {
  Tensor x = random_tensor(Shape{2, 3}, -1, 1, 104);
  x.set_requires_grad(true);
  std::vector<bool> outer_seen, inner_seen;
  auto inner = [&](const TensorList& in) {
    inner_seen.push_back(autograd::checkpoint_values_only());
    return TensorList{tanh(in[0])};
  };
  auto outer = [&](const TensorList& in) {
    outer_seen.push_back(autograd::checkpoint_values_only());
    Tensor h = autograd::checkpoint(inner, {mul(in[0], in[0])})[0];
    outer_seen.push_back(autograd::checkpoint_values_only());  // restored after the inner region
    return TensorList{sum(h)};
  };
  CHECK_FALSE(autograd::checkpoint_values_only());
  Tensor y = autograd::checkpoint(outer, {x})[0];
  CHECK_FALSE(autograd::checkpoint_values_only());
  REQUIRE(outer_seen == std::vector<bool>{true, true});
  REQUIRE(inner_seen == std::vector<bool>{true});
  autograd::grad({y}, {x});
  // The backward recomputes the outer region (not values-only), whose inner region runs its
  // first pass (values-only) and then its own recomputation.
  CHECK(outer_seen == std::vector<bool>{true, true, false, false});
  CHECK(inner_seen == std::vector<bool>{true, true, false});
}

TEST_CASE("checkpoint: a region that recomputes other shapes is named, not a shape error in grad",
          "[autograd][checkpoint][errors]") {
  Tensor x = random_tensor(Shape{6}, -1, 1, 105);
  x.set_requires_grad(true);
  int runs = 0;
  auto changing = [&](const TensorList& in) {  // keeps a count outside its inputs
    ++runs;
    return TensorList{tanh(in[0].narrow(0, 0, runs == 1 ? 4 : 3))};
  };
  Tensor y = sum(autograd::checkpoint(changing, {x})[0]);
  CHECK_THROWS_WITH(autograd::grad({y}, {x}),
                    Catch::Contains("returned 1 tensor(s) of shapes (3,) where its first run "
                                    "returned 1 of shapes (4,)") &&
                        Catch::Contains("must compute the same thing"));
}

TEST_CASE("checkpointed inner steps give the same E2E-TTT meta-gradient with less memory",
          "[meta][checkpoint]") {
  TinyMeta tiny;
  auto& f = tiny.f;
  const models::PocoBatch &support = tiny.support, &query = tiny.query;
  meta::InnerLoopOptions& opt = tiny.opt;
  const int64_t base = memory_stats().allocated_bytes;
  // The meta-gradient with the first n steps checkpointed, and its peak bytes.
  auto run = [&](int64_t n, int64_t& peak) {
    opt.checkpoint_steps = n;
    reset_peak_memory_stats();
    meta::MetaGradient m = meta::e2e_ttt_gradient(*f, {support, query}, query, opt);
    peak = memory_stats().peak_allocated_bytes - base;
    return m;
  };
  int64_t plain_peak = 0, ck_peak = 0;
  const meta::MetaGradient plain = run(0, plain_peak);
  // All, then the first one or two steps checkpointed: the same meta-gradient. Only the full
  // checkpoint's peak is compared: on this tiny model the parameter-sized gradients the
  // checkpoint node returns weigh as much as a step's activations (bench/README.md has the
  // figures for POCO's sizes).
  for (int64_t n : {3, 1, 2}) {
    INFO(n << " of 3 steps checkpointed");
    int64_t peak = 0;
    const meta::MetaGradient ck = run(n, peak);
    CHECK(std::abs(plain.meta_loss.item<double>() - ck.meta_loss.item<double>()) <= kSameTol);
    for (size_t i = 0; i < plain.names.size(); ++i) {
      INFO(plain.names[i]);
      CHECK(max_abs_diff(plain.grads[i], ck.grads[i]) <= kSameTol);
    }
    WARN("peak bytes of the meta-gradient: plain " << plain_peak << ", " << n
                                                   << " of 3 steps checkpointed " << peak);
    if (n == 3) ck_peak = peak;
  }
  CHECK(ck_peak < plain_peak);
  opt.checkpoint_steps = -1;
  CHECK_THROWS_WITH(meta::e2e_ttt_gradient(*f, {support, query}, query, opt),
                    Catch::Contains("checkpoint_steps (-1) must be >= 0"));
}

TEST_CASE("recomputed saved tensors give the same E2E-TTT meta-gradient with less memory",
          "[meta][memory]") {
  TinyMeta tiny;
  auto& f = tiny.f;
  const models::PocoBatch &support = tiny.support, &query = tiny.query;
  meta::InnerLoopOptions& opt = tiny.opt;
  auto run = [&](SavedRecomputePolicy p, autograd::GraphMemory& held) {
    const SavedRecomputePolicy previous = SavedRecompute::policy();
    SavedRecompute::set_policy(p);
    meta::MetaGradient m = meta::e2e_ttt_gradient(*f, {support, query}, query, opt, true, &held);
    SavedRecompute::set_policy(previous);
    return m;
  };
  autograd::GraphMemory kept, linked;
  const meta::MetaGradient a = run(SavedRecomputePolicy::never, kept);
  const meta::MetaGradient b = run(SavedRecomputePolicy::always, linked);
  CHECK(a.meta_loss.item<double>() == b.meta_loss.item<double>());
  for (size_t i = 0; i < a.names.size(); ++i) {
    INFO(a.names[i]);
    CHECK(max_abs_diff(a.grads[i], b.grads[i]) == 0);  // the same kernels on the same values
  }
  WARN("graph before the outer backward: kept " << kept.bytes << " bytes, with links "
                                               << linked.bytes);
  CHECK(linked.bytes < kept.bytes);
}
