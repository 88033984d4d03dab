#!/usr/bin/env python3
"""CPU timing of one second-order E2E-TTT meta-step of POCO in JAX (jit of grad of grad).

The second peer of build/bin/metatape-bench-meta-step (bench/meta_step_bench.cpp) and of
tools/reference/meta_step_bench.py (PyTorch); the same meta-step:
  for each of --meta-batch sessions (session m of the meta-batch is session m):
    inner loop: --inner-steps SGD steps (lr --inner-lr) of unit_emb.weight and session_emb.weight
      on the session's support batch (jax.value_and_grad at the current fast values);
    meta-loss = query loss at the adapted tables + mean of the inner (support) losses;
    meta-gradient = jax.grad of the meta-loss w.r.t. every parameter (differentiates through the
      inner gradients: second order);
  the meta-gradients averaged over the sessions, clipped to global norm --clip (as
  torch.nn.utils.clip_grad_norm_), one AdamW step (torch.optim.AdamW's update, written out).
The whole meta-step is one jax.jit. POCO (models/POCO.md) is written here in jax.numpy with the
parameter names and shapes of tools/reference/poco_reference.py; every sample of a batch has the
same neuron count, so the block-diagonal attention is one batched attention per batch. float32,
no dropout. Synthetic data as the peers: --sessions sessions of --neurons neurons, each support /
query batch --batch samples of all the neurons of its session, x and targets standard normal.
The first call (tracing and XLA compilation) is timed separately; after --warmup more untimed
meta-steps, --repeats are timed one by one (median reported).

--check (needs torch): instead of timing, compares this forward and meta-gradient with
poco_reference.POCO and torch.autograd.grad(create_graph=True) on poco-tiny in float64, same
weights and data, and exits non-zero if they differ by more than 1e-9 relative.

Threads: XLA's CPU client is limited to --threads cores through the process's CPU affinity (and
XLA_FLAGS intra_op_parallelism_threads), set before jax is imported.

Usage:
    python3 tools/reference/meta_step_jax.py [--config poco-paper] [--threads 2] [--meta-batch 2]
        [--batch 32] [--neurons 128] [--sessions 8] [--inner-steps 3] [--inner-lr 1e-3]
        [--warmup 1] [--repeats 5] [--json PATH]
    python3 tools/reference/meta_step_jax.py --check
"""

import argparse
import math
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
INNER_PARAMS = ("unit_emb.weight", "session_emb.weight")

# Named configurations: the same table as poco_reference.CONFIGS (models/POCO.md); repeated here
# so that timing needs no torch. --check verifies that the two agree.
CONFIGS = {
    "poco-paper": dict(dim=128, dim_head=64, cross_heads=1, self_heads=16, num_latents=8, depth=1,
                       seq_length=64, pred_length=16, patch=16, conditioning_dim=1024,
                       rotary_t_max=100.0),
    "poco-seed": dict(dim=512, dim_head=64, cross_heads=1, self_heads=8, num_latents=64, depth=2,
                      seq_length=24, pred_length=12, patch=4, conditioning_dim=1024,
                      rotary_t_max=100.0),
    "poco-tiny": dict(dim=32, dim_head=16, cross_heads=1, self_heads=2, num_latents=4, depth=2,
                      seq_length=16, pred_length=4, patch=4, conditioning_dim=24,
                      rotary_t_max=100.0),
}


def limit_threads(threads):
    """Before importing jax: restrict the process to `threads` CPUs and tell XLA so."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[:threads])
    except (AttributeError, OSError):
        pass
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (f"{flags} --xla_cpu_multi_thread_eigen=true "
                               f"intra_op_parallelism_threads={threads}").strip()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="poco-paper", choices=sorted(CONFIGS))
    p.add_argument("--threads", type=int, default=2, help="CPU cores for XLA (default 2)")
    p.add_argument("--meta-batch", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--neurons", type=int, default=128)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--inner-steps", type=int, default=3)
    p.add_argument("--inner-lr", type=float, default=1e-3)
    p.add_argument("--meta-lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu",),
                   help="the JAX peer runs on the CPU only (accepted for the driver's common options)")
    p.add_argument("--json", default=None)
    p.add_argument("--check", action="store_true",
                   help="compare with the PyTorch reference in float64 (needs torch), no timing")
    a = p.parse_args(argv)
    if min(a.repeats, a.batch, a.neurons, a.meta_batch, a.inner_steps, a.threads) < 1 \
            or a.sessions < a.meta_batch:
        p.error("sizes must be positive and --sessions >= --meta-batch")
    return a


ARGS = parse_args(sys.argv[1:]) if __name__ == "__main__" else None
if ARGS is not None:
    limit_threads(ARGS.threads)

import jax  # noqa: E402

if ARGS is not None and ARGS.check:
    jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# ---------------------------------------------------------------------------------------------
# POCO in jax.numpy (models/POCO.md)
# ---------------------------------------------------------------------------------------------


def parameter_shapes(cfg, n_units, n_sessions):
    """[(name, shape, init)] in poco_reference.POCO's named_parameters order."""
    d, dh, tin = cfg["dim"], cfg["dim_head"], cfg["seq_length"] - cfg["pred_length"]
    h = cfg["conditioning_dim"]
    out = [("unit_emb.weight", (n_units, d), "emb"), ("session_emb.weight", (n_sessions, d), "emb"),
           ("latent_emb.weight", (cfg["num_latents"], d), "emb")]

    def linear(name, n_out, n_in, bias=True, init="linear"):
        out.append((f"{name}.weight", (n_out, n_in), init))
        if bias:
            out.append((f"{name}.bias", (n_out,), init if init == "zeros" else f"bias{n_in}"))

    def norm(name):
        out.append((f"{name}.weight", (d,), "ones"))
        out.append((f"{name}.bias", (d,), "zeros"))

    def cross(prefix, heads):
        norm(f"{prefix}.norm")
        norm(f"{prefix}.norm_context")
        linear(f"{prefix}.q_proj", heads * dh, d, bias=False)
        linear(f"{prefix}.kv_proj", 2 * heads * dh, d, bias=False)
        linear(f"{prefix}.out_proj", d, heads * dh)

    def ffn(prefix):
        norm(f"{prefix}.norm")
        linear(f"{prefix}.fc1", 8 * d, d)
        linear(f"{prefix}.fc2", d, 4 * d)

    linear("input_proj", d, cfg["patch"])
    cross("encoder.cross", cfg["cross_heads"])
    ffn("encoder.ffn")
    for i in range(cfg["depth"]):
        norm(f"process.{i}.attn.norm")
        linear(f"process.{i}.attn.qkv_proj", 3 * cfg["self_heads"] * dh, d, bias=False)
        linear(f"process.{i}.attn.out_proj", d, cfg["self_heads"] * dh)
        ffn(f"process.{i}.ffn")
    cross("decoder.cross", cfg["cross_heads"])
    ffn("decoder.ffn")
    linear("head.in_proj", h, tin)
    linear("head.alpha", h, d, init="zeros")
    linear("head.beta", h, d, init="zeros")
    linear("head.out_proj", cfg["pred_length"], h)
    return out


def init_params(cfg, n_units, n_sessions, rng, dtype):
    """The initialisation of models/POCO.md, drawn with numpy."""
    params = {}
    for name, shape, init in parameter_shapes(cfg, n_units, n_sessions):
        if init == "emb":
            v = rng.normal(0.0, 0.02, shape)
        elif init == "ones":
            v = np.ones(shape)
        elif init == "zeros":
            v = np.zeros(shape)
        else:
            fan_in = shape[1] if init == "linear" else int(init[4:])
            bound = 1.0 / math.sqrt(fan_in)
            v = rng.uniform(-bound, bound, shape)
        params[name] = jnp.asarray(v, dtype=dtype)
    return params


def rotary_inv_freq(dim_head, t_max):
    t_min = t_max / 1000.0
    k = np.arange(dim_head // 4, dtype=np.float64)
    return 2.0 * math.pi / (t_min * (t_max / t_min) ** (2.0 * k / (dim_head // 2)))


def apply_rotary(x, cos, sin):
    """x (..., n, heads, dh); cos/sin (n, dh/4): pairs (2k, 2k+1) of the first dh/2 dims."""
    dh = x.shape[-1]
    rot = x[..., : dh // 2].reshape(*x.shape[:-1], dh // 4, 2)
    x0, x1 = rot[..., 0], rot[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    y = jnp.stack((x0 * c - x1 * s, x1 * c + x0 * s), axis=-1).reshape(*x.shape[:-1], dh // 2)
    return jnp.concatenate((y, x[..., dh // 2:]), axis=-1)


def angles(times, inv_freq, dtype):
    a = np.asarray(times, dtype=np.float64)[:, None] * inv_freq[None, :]
    return jnp.asarray(np.cos(a), dtype=dtype), jnp.asarray(np.sin(a), dtype=dtype)


def layer_norm(p, name, x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * p[f"{name}.weight"] + p[f"{name}.bias"]


def linear(p, name, x, bias=True):
    y = x @ p[f"{name}.weight"].T
    return y + p[f"{name}.bias"] if bias else y


def attend(q, k, v, heads, dh, b, q_rot, k_rot, rotate_value):
    """q (b·nq, heads·dh), k/v (b·nk, ...): attention of each sample's queries over its keys.

    q_rot / k_rot: (cos, sin) of the per-sample query / key times, (nq, dh/4) / (nk, dh/4).
    """
    q = q.reshape(b, -1, heads, dh)
    k = k.reshape(b, -1, heads, dh)
    v = v.reshape(b, -1, heads, dh)
    q = apply_rotary(q, *q_rot)
    k = apply_rotary(k, *k_rot)
    if rotate_value:
        v = apply_rotary(v, *k_rot)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
    o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    if rotate_value:
        o = apply_rotary(o, q_rot[0], -q_rot[1])  # rotation by minus the query times
    return o.reshape(-1, heads * dh)


def ffn(p, prefix, x):
    a, gate = jnp.split(linear(p, f"{prefix}.fc1", layer_norm(p, f"{prefix}.norm", x)), 2, axis=-1)
    return linear(p, f"{prefix}.fc2", a * jax.nn.gelu(gate, approximate=False))


def make_forward(cfg, samples, neurons, dtype):
    """forward(params, x_all, unit_index, session_index) for batches of `samples` samples of
    `neurons` neurons each; the rotary angles are constants of the layout."""
    d, dh, m, pch = cfg["dim"], cfg["dim_head"], cfg["num_latents"], cfg["patch"]
    tin = cfg["seq_length"] - cfg["pred_length"]
    n_patches = tin // pch
    inv = rotary_inv_freq(dh, float(cfg["rotary_t_max"]))
    tok_rot = angles(np.tile(np.arange(n_patches) * pch, neurons), inv, dtype)
    lat_rot = angles(np.arange(m) * tin / m, inv, dtype)
    out_rot = angles(np.full(neurons, float(tin)), inv, dtype)
    b = samples

    def forward(p, x_all, unit_index, session_index):
        n_total = x_all.shape[0]
        neuron_session = jnp.repeat(session_index, neurons, total_repeat_length=n_total)
        unit = p["unit_emb.weight"][unit_index] + p["session_emb.weight"][neuron_session]
        patches = x_all.reshape(n_total, n_patches, pch)
        tokens = (unit[:, None, :] + linear(p, "input_proj", patches)).reshape(-1, d)
        lat = jnp.tile(p["latent_emb.weight"], (b, 1))

        def cross(prefix, xq, xc, q_rot, k_rot, rotate_value):
            q = linear(p, f"{prefix}.q_proj", layer_norm(p, f"{prefix}.norm", xq), bias=False)
            kv = linear(p, f"{prefix}.kv_proj", layer_norm(p, f"{prefix}.norm_context", xc),
                        bias=False)
            k, v = jnp.split(kv, 2, axis=-1)
            o = attend(q, k, v, cfg["cross_heads"], dh, b, q_rot, k_rot, rotate_value)
            return linear(p, f"{prefix}.out_proj", o)

        lat = lat + cross("encoder.cross", lat, tokens, lat_rot, tok_rot, True)
        lat = lat + ffn(p, "encoder.ffn", lat)
        for i in range(cfg["depth"]):
            pre = f"process.{i}.attn"
            qkv = linear(p, f"{pre}.qkv_proj", layer_norm(p, f"{pre}.norm", lat), bias=False)
            q, k, v = jnp.split(qkv, 3, axis=-1)
            o = attend(q, k, v, cfg["self_heads"], dh, b, lat_rot, lat_rot, True)
            lat = lat + linear(p, f"{pre}.out_proj", o)
            lat = lat + ffn(p, f"process.{i}.ffn", lat)
        q = unit + cross("decoder.cross", unit, lat, out_rot, lat_rot, False)
        e = q + ffn(p, "decoder.ffn", q)
        alpha = linear(p, "head.alpha", e)
        beta = linear(p, "head.beta", e)
        h = jax.nn.relu(linear(p, "head.in_proj", x_all))
        return linear(p, "head.out_proj", h * alpha + beta)

    return forward


def make_meta_loss(forward, inner_steps, inner_lr):
    def loss(p, batch):
        x, units, sessions, targets = batch
        return jnp.mean((forward(p, x, units, sessions) - targets) ** 2)

    def meta_loss(p, support, query):
        fast = dict(p)
        inner = []
        for _ in range(inner_steps):
            def support_loss(tables, fast=fast):
                return loss({**fast, **tables}, support)
            value, g = jax.value_and_grad(support_loss)({n: fast[n] for n in INNER_PARAMS})
            fast = {**fast, **{n: fast[n] - inner_lr * g[n] for n in INNER_PARAMS}}
            inner.append(value)
        return loss(fast, query) + jnp.mean(jnp.stack(inner))

    return meta_loss


def make_meta_step(meta_loss, meta_batch, lr, weight_decay, clip, beta1=0.9, beta2=0.999,
                   eps=1e-8):
    grad_fn = jax.value_and_grad(meta_loss)

    def meta_step(params, state, supports, queries):
        total, grads = None, None
        for m in range(meta_batch):
            value, g = grad_fn(params, supports[m], queries[m])
            total = value if total is None else total + value
            grads = g if grads is None else jax.tree_util.tree_map(jnp.add, grads, g)
        grads = jax.tree_util.tree_map(lambda t: t / meta_batch, grads)
        if clip > 0:  # torch.nn.utils.clip_grad_norm_
            norm = jnp.sqrt(sum(jnp.sum(t * t) for t in jax.tree_util.tree_leaves(grads)))
            coef = jnp.minimum(clip / (norm + 1e-6), 1.0)
            grads = jax.tree_util.tree_map(lambda t: t * coef, grads)
        step = state["step"] + 1
        bc1 = 1 - beta1 ** step
        bc2 = 1 - beta2 ** step
        new_p, new_m, new_v = {}, {}, {}
        for n, w in params.items():  # torch.optim.AdamW (amsgrad off)
            g = grads[n]
            mm = beta1 * state["m"][n] + (1 - beta1) * g
            vv = beta2 * state["v"][n] + (1 - beta2) * g * g
            w = w * (1 - lr * weight_decay)
            new_p[n] = w - (lr / bc1) * mm / (jnp.sqrt(vv) / jnp.sqrt(bc2) + eps)
            new_m[n], new_v[n] = mm, vv
        return new_p, {"step": step, "m": new_m, "v": new_v}, total / meta_batch

    return jax.jit(meta_step)


def make_batch(rng, cfg, session, samples, neurons, dtype):
    tin = cfg["seq_length"] - cfg["pred_length"]
    n = samples * neurons
    units = np.tile(np.arange(neurons) + session * neurons, samples)
    return (jnp.asarray(rng.standard_normal((n, tin)), dtype=dtype),
            jnp.asarray(units, dtype=jnp.int32),
            jnp.asarray(np.full(samples, session), dtype=jnp.int32),
            jnp.asarray(rng.standard_normal((n, cfg["pred_length"])), dtype=dtype))


# ---------------------------------------------------------------------------------------------
# --check: the same function as the PyTorch reference
# ---------------------------------------------------------------------------------------------


def check_against_torch():
    import warnings
    warnings.filterwarnings("ignore", message=".*NumPy.*")
    import torch
    sys.path.insert(0, HERE)
    import poco_reference as ref
    for name, c in CONFIGS.items():
        if any(ref.CONFIGS[name][k] != v for k, v in c.items()):
            sys.exit(f"check failed: config {name} differs from poco_reference.CONFIGS")
    cfg = CONFIGS["poco-tiny"]
    samples, neurons, sessions, steps, lr = 3, 5, 2, 3, 0.5
    torch.manual_seed(0)
    model = ref.POCO(ref.CONFIGS["poco-tiny"], [neurons] * sessions).to(torch.float64).eval()
    with torch.no_grad():  # non-zero FiLM weights, so that every parameter matters
        for lin in (model.head.alpha, model.head.beta):
            lin.weight.normal_(0, 0.1)
            lin.bias.normal_(0, 0.1)
    names = [n for n, _ in model.named_parameters()]
    shapes = [(n, s) for n, s, _ in parameter_shapes(cfg, neurons * sessions, sessions)]
    if [(n, tuple(t.shape)) for n, t in model.named_parameters()] != shapes:
        sys.exit("check failed: parameter names or shapes differ from poco_reference.POCO")
    rng = np.random.default_rng(0)
    support = make_batch(rng, cfg, 1, samples, neurons, jnp.float64)
    query = make_batch(rng, cfg, 1, samples, neurons, jnp.float64)

    def torch_batch(bt):
        x, u, s, t = (torch.from_numpy(np.asarray(a)) for a in bt)
        return x, u.long(), s.long(), t

    params = dict(model.named_parameters())
    sizes = [neurons] * samples

    def tloss(weights, bt):
        x, u, s, t = torch_batch(bt)
        return ref.mse(torch.func.functional_call(model, weights, (x, u, s, sizes)), t)

    current = dict(params)
    inner = []
    for _ in range(steps):
        loss = tloss(current, support)
        g = torch.autograd.grad(loss, [current[n] for n in INNER_PARAMS], create_graph=True)
        for n, gn in zip(INNER_PARAMS, g):
            current[n] = current[n] - lr * gn
        inner.append(loss)
    t_meta = tloss(current, query) + torch.stack(inner).mean()
    t_grads = torch.autograd.grad(t_meta, [params[n] for n in names])

    jparams = {n: jnp.asarray(params[n].detach().numpy()) for n in names}
    forward = make_forward(cfg, samples, neurons, jnp.float64)
    j_meta, j_grads = jax.value_and_grad(make_meta_loss(forward, steps, lr))(jparams, support,
                                                                              query)
    worst = abs(float(j_meta) - t_meta.item()) / abs(t_meta.item())
    for n, tg in zip(names, t_grads):
        ref_v = tg.numpy()
        err = np.abs(np.asarray(j_grads[n]) - ref_v).max() / max(np.abs(ref_v).max(), 1e-300)
        worst = max(worst, float(err))
    ok = worst <= 1e-9
    print(f"JAX vs PyTorch, poco-tiny f64, {steps} inner steps (lr {lr}): meta-loss "
          f"{float(j_meta):.15g} vs {t_meta.item():.15g}; largest relative difference over the "
          f"meta-loss and every meta-gradient {worst:.2e}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def main(a) -> int:
    if a.check:
        return check_against_torch()
    dt = jnp.float32
    cfg = CONFIGS[a.config]
    rng = np.random.default_rng(a.seed)
    params = init_params(cfg, a.neurons * a.sessions, a.sessions, rng, dt)
    supports = [make_batch(rng, cfg, m, a.batch, a.neurons, dt) for m in range(a.meta_batch)]
    queries = [make_batch(rng, cfg, m, a.batch, a.neurons, dt) for m in range(a.meta_batch)]
    forward = make_forward(cfg, a.batch, a.neurons, dt)
    step = make_meta_step(make_meta_loss(forward, a.inner_steps, a.inner_lr), a.meta_batch,
                          a.meta_lr, a.weight_decay, a.clip)
    zeros = {n: jnp.zeros_like(w) for n, w in params.items()}
    state = {"step": jnp.asarray(0, dtype=jnp.int32), "m": zeros, "v": dict(zeros)}

    t0 = time.perf_counter()
    params, state, loss = step(params, state, supports, queries)
    jax.block_until_ready((params, loss))
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(a.warmup):
        params, state, loss = step(params, state, supports, queries)
        jax.block_until_ready((params, loss))
    totals = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        params, state, loss = step(params, state, supports, queries)
        jax.block_until_ready((params, loss))
        totals.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(totals)
    n_params = sum(int(np.prod(w.shape)) for w in params.values())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    result = {
        "engine": "jax",
        "benchmark": "e2e_ttt_meta_step",
        "jax_version": jax.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": a.threads,
        "cpu_affinity": cores,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "dtype": "float32",
        "device": str(jax.devices()[0]),
        "config_name": a.config,
        "config": cfg,
        "meta_batch": a.meta_batch,
        "batch": a.batch,
        "neurons_per_sample": a.neurons,
        "sessions": a.sessions,
        "inner_steps": a.inner_steps,
        "inner_lr": a.inner_lr,
        "inner_params": list(INNER_PARAMS),
        "optimizer": {"name": "AdamW", "lr": a.meta_lr, "weight_decay": a.weight_decay,
                      "clip": a.clip},
        "parameters": n_params,
        "first_call_ms": first_ms,
        "warmup": a.warmup,
        "repeats": a.repeats,
        "ms_per_step": {"median": med, "min": min(totals), "mean": statistics.fmean(totals),
                        "all": totals},
        "last_meta_loss": float(loss),
    }
    print(f"JAX {a.config} E2E-TTT meta-step (jit): meta-batch {a.meta_batch} sessions x "
          f"{a.batch} samples x {a.neurons} neurons, {a.inner_steps} inner steps "
          f"(lr {a.inner_lr:g}) on unit+session embeddings, {n_params:,} parameters, float32, "
          f"{cores} cores")
    print(f"  {med:.1f} ms/meta-step (median of {a.repeats}; min {min(totals):.1f}); first call "
          f"(trace + compile + run) {first_ms:.0f} ms; last meta-loss {float(loss):.6f}")
    if a.json:
        sys.path.insert(0, HERE)
        from bench_io import write_json_atomic
        write_json_atomic(a.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
