#!/usr/bin/env python3
"""CPU timing of one POCO training step in PyTorch: the peer of metatape's C++ benchmark.

One step = forward of a POCO model (models/POCO.md, via poco_reference.POCO) on a synthetic
batch, MSE loss, backward, torch.optim.AdamW step (and zero_grad). float32 on the CPU with
``torch.set_num_threads(--threads)``. After --warmup untimed steps, --repeats steps are timed
one by one; the median is reported (also min / mean and a forward / backward / optimizer split).

Synthetic batch: --sessions sessions of --neurons neurons each; sample b of the --batch
samples holds every neuron of session b mod --sessions, so every sample has --neurons neurons.
x and targets are standard normal.

--online: instead, what metatape's online adaptation does per prediction time (meta/online.cpp;
bench/poco_bench.cpp --online), in evaluation mode: an update, one SGD step (lr --lr) of copies of
unit_emb.weight and session_emb.weight passed to the model by torch.func.functional_call, their
gradients alone (torch.autograd.grad), and a forecast, a forward under torch.no_grad with the
updated copies, read back as a NumPy array. Both are timed; --batch 1 is one window.

Usage:
    python3 tools/reference/poco_bench.py [--config poco-paper] [--threads 2] [--batch 32]
        [--neurons 128] [--sessions 8] [--warmup 5] [--repeats 20]
        [--attention batched|loop] [--eval] [--online] [--json PATH]
"""

import argparse
import math
import os
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message=".*NumPy.*")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import poco_reference as ref  # noqa: E402
from bench_io import torch_environment, write_json_atomic  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="poco-paper", choices=sorted(ref.CONFIGS))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--batch", type=int, default=32, help="samples per batch (default 32)")
    parser.add_argument("--neurons", type=int, default=128,
                        help="neurons per sample = per session (default 128)")
    parser.add_argument("--sessions", type=int, default=8, help="sessions (default 8)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (default 5)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--attention", default="batched", choices=("batched", "loop"),
                        help="block-diagonal attention as one batched matmul (default) or a "
                             "Python loop over samples (the golden reference)")
    parser.add_argument("--eval", action="store_true",
                        help="no dropout (evaluation mode); default is training mode")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="AdamW learning rate (--online: the SGD step size)")
    parser.add_argument("--online", action="store_true",
                        help="time an online update and forecast instead of a training step")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.neurons < 1 or args.sessions < 1:
        parser.error("--repeats, --batch, --neurons and --sessions must be positive")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dt = torch.float32
    cfg = dict(ref.CONFIGS[args.config])
    session_sizes = [args.neurons] * args.sessions
    model = ref.POCO(cfg, session_sizes, attention_impl=args.attention).to(dt)
    model.train(not args.eval)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    sample_sessions = [b % args.sessions for b in range(args.batch)]
    sizes = [session_sizes[s] for s in sample_sessions]
    n_total = sum(sizes)
    tin = ref.context_length(cfg)
    unit_index = model.make_unit_index(sample_sessions)
    session_index = torch.tensor(sample_sessions, dtype=torch.int64)
    x_all = torch.randn(n_total, tin, dtype=dt)
    targets = torch.randn(n_total, cfg["pred_length"], dtype=dt)

    if args.online:
        return online(args, model, cfg, x_all, unit_index, session_index, sizes, targets)

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        pred = model(x_all, unit_index, session_index, sizes)
        loss = ref.mse(pred, targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return (t3 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, loss.item()

    for _ in range(args.warmup):
        step()
    totals, fwd, bwd, optim, losses = [], [], [], [], []
    for _ in range(args.repeats):
        total, f, b, o, loss = step()
        totals.append(total)
        fwd.append(f)
        bwd.append(b)
        optim.append(o)
        losses.append(loss)

    med = statistics.median(totals)
    n_params = ref.count_parameters(model)
    n_body = ref.count_parameters(model, ref.EMBEDDING_TABLES)
    result = {
        **setup(args, cfg, "poco_train_step"),
        "interop_threads": torch.get_num_interop_threads(),
        "tokens": n_total * (tin // cfg["patch"]),
        "mode": "eval (no dropout)" if args.eval else "train (dropout on)",
        "optimizer": {"name": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay},
        "parameters": n_params,
        "parameters_without_embeddings": n_body,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "ms_per_step": {
            "median": med,
            "min": min(totals),
            "mean": statistics.fmean(totals),
            "all": totals,
        },
        "ms_median_split": {
            "forward_loss": statistics.median(fwd),
            "backward": statistics.median(bwd),
            "optimizer": statistics.median(optim),
        },
        "last_loss": losses[-1],
    }
    print(f"{args.config}: batch {args.batch} x {args.neurons} neurons, {args.sessions} sessions, "
          f"{n_params:,} parameters, float32, {result['threads']} threads, "
          f"attention {args.attention}, {result['mode']}")
    print(f"  {med:.2f} ms/step (median of {args.repeats}; min {min(totals):.2f}, "
          f"mean {statistics.fmean(totals):.2f})")
    split = result["ms_median_split"]
    print(f"  forward+loss {split['forward_loss']:.2f} ms, backward {split['backward']:.2f} ms, "
          f"AdamW {split['optimizer']:.2f} ms (medians)")
    if args.json:
        write_json_atomic(args.json, result)
        print(f"  wrote {args.json}")
    return 0


def setup(args, cfg, benchmark):
    """The JSON fields both timings share: what ran, on what, with which shapes."""
    return {
        "benchmark": benchmark,
        **torch_environment(torch),
        "dtype": "float32",
        "device": "cpu",
        "config_name": args.config,
        "config": cfg,
        "batch": args.batch,
        "neurons_per_sample": args.neurons,
        "sessions": args.sessions,
        "attention": args.attention,
    }


def online(args, model, cfg, x_all, unit_index, session_index, sizes, targets):
    model.eval()
    fast = {name: p.detach().clone().requires_grad_(True)
            for name, p in model.named_parameters()
            if name in ("unit_emb.weight", "session_emb.weight")}
    leaves = list(fast.values())

    def step():
        t0 = time.perf_counter()
        pred = torch.func.functional_call(model, fast, (x_all, unit_index, session_index, sizes))
        grads = torch.autograd.grad(ref.mse(pred, targets), leaves)
        with torch.no_grad():
            for leaf, g in zip(leaves, grads):
                leaf.add_(g, alpha=-args.lr)
        t1 = time.perf_counter()
        with torch.no_grad():
            forecast = torch.func.functional_call(
                model, fast, (x_all, unit_index, session_index, sizes)).numpy()
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, float(forecast.flat[0])

    for _ in range(args.warmup):
        step()
    update, forecast = [], []
    for _ in range(args.repeats):
        u, f, first = step()
        update.append(u)
        forecast.append(f)
    if not math.isfinite(first):
        sys.exit(f"error: the forecast is not finite ({first})")
    result = {
        **setup(args, cfg, "poco_online_step"),
        "lr": args.lr,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "update_ms": {"median": statistics.median(update), "min": min(update), "all": update},
        "forecast_ms": {"median": statistics.median(forecast), "min": min(forecast),
                        "all": forecast},
    }
    print(f"{args.config} online: batch {args.batch} x {args.neurons} neurons, "
          f"{args.sessions} sessions, float32, {result['threads']} threads")
    print(f"  update {statistics.median(update):.3f} ms (median of {args.repeats}; min "
          f"{min(update):.3f}), forecast {statistics.median(forecast):.3f} ms "
          f"(min {min(forecast):.3f})")
    if args.json:
        write_json_atomic(args.json, result)
        print(f"  wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
