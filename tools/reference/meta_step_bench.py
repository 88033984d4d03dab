#!/usr/bin/env python3
"""Timing of one second-order E2E-TTT meta-step of POCO in PyTorch (CPU or CUDA): metatape's peer.

The same meta-step as build/bin/metatape-bench-meta-step (bench/meta_step_bench.cpp), which is
what ``metatape train --method e2e-ttt`` does per outer step:
  for each of --meta-batch sessions (session m of the meta-batch is session m):
    inner loop: --inner-steps SGD steps (lr --inner-lr) of unit_emb.weight and session_emb.weight
      on the session's support batch, each step's gradient from torch.autograd.grad with
      create_graph=True at the current fast values (torch.func.functional_call);
    meta-loss = query loss at the adapted tables + mean of the inner (support) losses;
    meta-gradient = torch.autograd.grad(meta-loss, every parameter) (second order);
  the meta-gradients averaged over the sessions, clip_grad_norm_(--clip), torch.optim.AdamW step.
POCO is poco_reference.POCO (models/POCO.md) with batched block-diagonal attention, float32,
evaluation mode (no dropout: metatape's inner loop runs the model without dropout).
Synthetic data: --sessions sessions of --neurons neurons; each support / query batch holds
--batch samples of all the neurons of its session; x and targets standard normal.
After --warmup untimed meta-steps, --repeats meta-steps are timed one by one (median reported).

--device cuda: the model and the batches are made on the CPU (the same weights and data as a CPU
run) and moved to cuda:0. Each meta-step is timed from a synchronised device to a synchronised
device (torch.cuda.synchronize), with one synchronisation between the meta-gradients and
clip+AdamW for the split, as bench/meta_step_bench.cpp does; the meta-loss is summed on the
device and read after the step; peak memory is torch.cuda.max_memory_allocated over the timed
steps (reset after warm-up). TF32 matmuls stay off unless --tf32.

Usage:
    python3 tools/reference/meta_step_bench.py [--config poco-paper] [--threads 2]
        [--meta-batch 2] [--batch 32] [--neurons 128] [--sessions 8] [--inner-steps 3]
        [--inner-lr 1e-3] [--warmup 1] [--repeats 5] [--device cpu|cuda] [--tf32] [--json PATH]
"""

import argparse
import os
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message=".*NumPy.*")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import poco_reference as ref  # noqa: E402
from bench_io import cpu_model, torch_environment, write_json_atomic  # noqa: E402

INNER_PARAMS = ("unit_emb.weight", "session_emb.weight")


def make_batch(model, cfg, session, batch, dtype, device):
    """Drawn on the CPU (the same data on every device), then moved to `device`."""
    sessions = [session] * batch
    sizes = [model.session_sizes[session]] * batch
    n = sum(sizes)
    return {
        "sizes": sizes,
        "session_index": torch.tensor(sessions, dtype=torch.int64).to(device),
        "unit_index": model.make_unit_index(sessions).to(device),
        "x_all": torch.randn(n, ref.context_length(cfg), dtype=dtype).to(device),
        "targets": torch.randn(n, cfg["pred_length"], dtype=dtype).to(device),
    }


def batch_loss(model, weights, b):
    pred = torch.func.functional_call(
        model, weights, (b["x_all"], b["unit_index"], b["session_index"], b["sizes"]))
    return ref.mse(pred, b["targets"])


def e2e_ttt_gradient(model, params, names, support, query, inner_steps, inner_lr):
    """(meta-loss, [meta-gradient of each parameter in `names`]), second order."""
    current = dict(params)
    inner_losses = []
    for _ in range(inner_steps):
        loss = batch_loss(model, current, support)
        g = torch.autograd.grad(loss, [current[n] for n in INNER_PARAMS], create_graph=True)
        for n, gn in zip(INNER_PARAMS, g):
            current[n] = current[n] - inner_lr * gn
        inner_losses.append(loss)
    meta_loss = batch_loss(model, current, query) + torch.stack(inner_losses).mean()
    grads = torch.autograd.grad(meta_loss, [params[n] for n in names], allow_unused=True)
    return meta_loss, grads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="poco-paper", choices=sorted(ref.CONFIGS))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--meta-batch", type=int, default=2, help="sessions per meta-step")
    parser.add_argument("--batch", type=int, default=32, help="samples per support/query batch")
    parser.add_argument("--neurons", type=int, default=128,
                        help="neurons per sample = per session (default 128)")
    parser.add_argument("--sessions", type=int, default=8, help="sessions of the model")
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--inner-lr", type=float, default=1e-3)
    parser.add_argument("--meta-lr", type=float, default=1e-4, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--clip", type=float, default=1.0, help="max gradient norm, 0 = none")
    parser.add_argument("--warmup", type=int, default=1, help="untimed meta-steps (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed meta-steps (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "cuda:0"),
                        help="cpu or cuda (= cuda:0) (default cpu)")
    parser.add_argument("--tf32", action="store_true",
                        help="CUDA: f32 matmuls on TF32 tensor cores (default off)")
    parser.add_argument("--json", default=None, help="write the results as JSON to PATH")
    parser.add_argument("--serve", action="store_true",
                        help="after the warm-up, print 'ready', then one timed meta-step per line "
                             "read from stdin "
                             "(until 'quit' or end of input), each answered with 'step_ms <ms>'; "
                             "--repeats is ignored (bench/meta_step_vs_peers.py --paired)")
    args = parser.parse_args(argv)
    if min(args.repeats, args.batch, args.neurons, args.meta_batch, args.inner_steps) < 1 \
            or args.sessions < args.meta_batch:
        parser.error("sizes must be positive and --sessions >= --meta-batch")

    on_cuda = args.device != "cpu"
    if on_cuda and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    device = torch.device("cuda:0" if on_cuda else "cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    dt = torch.float32
    cfg = dict(ref.CONFIGS[args.config])
    model = ref.POCO(cfg, [args.neurons] * args.sessions, attention_impl="batched").to(dt)
    model.to(device)
    model.eval()

    def sync():
        if on_cuda:
            torch.cuda.synchronize(device)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.meta_lr, weight_decay=args.weight_decay)
    support = [make_batch(model, cfg, m, args.batch, dt, device) for m in range(args.meta_batch)]
    query = [make_batch(model, cfg, m, args.batch, dt, device) for m in range(args.meta_batch)]

    def step():
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        sums, loss_total = None, None
        for m in range(args.meta_batch):
            meta_loss, grads = e2e_ttt_gradient(model, params, names, support[m], query[m],
                                                args.inner_steps, args.inner_lr)
            # Summed on the device in float64, read after the step (no wait inside it).
            loss = meta_loss.detach().double()
            loss_total = loss if loss_total is None else loss_total + loss
            grads = [torch.zeros_like(params[n]) if g is None else g
                     for n, g in zip(names, grads)]
            sums = grads if sums is None else [s.add_(g) for s, g in zip(sums, grads)]
        for n, s in zip(names, sums):
            params[n].grad = s.div_(args.meta_batch)
        sync()
        t1 = time.perf_counter()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        sync()
        t2 = time.perf_counter()
        return ((t2 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3,
                loss_total.item() / args.meta_batch)

    for _ in range(args.warmup):
        step()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    totals, grad_ms, opt_ms, losses = [], [], [], []

    def requests():
        if not args.serve:
            yield from range(args.repeats)
            return
        print("ready", flush=True)  # warmed up: the driver starts timing once both say so
        for line in sys.stdin:
            if line.strip() == "quit":
                return
            yield line

    for _ in requests():
        total, g, o, loss = step()
        totals.append(total)
        grad_ms.append(g)
        opt_ms.append(o)
        losses.append(loss)
        if args.serve:
            print(f"step_ms {total:.3f}", flush=True)
    if not totals:
        print("error: no timed meta-step ran (--serve got no request)", file=sys.stderr)
        return 1

    med = statistics.median(totals)
    n_params = ref.count_parameters(model)
    result = {
        "engine": "pytorch",
        "benchmark": "e2e_ttt_meta_step",
        **torch_environment(torch),
        "dtype": "float32",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else cpu_model(),
        "cuda_matmul_tf32": bool(args.tf32) if on_cuda else False,
        "config_name": args.config,
        "config": cfg,
        "meta_batch": args.meta_batch,
        "batch": args.batch,
        "neurons_per_sample": args.neurons,
        "sessions": args.sessions,
        "inner_steps": args.inner_steps,
        "inner_lr": args.inner_lr,
        "inner_params": list(INNER_PARAMS),
        "attention": "batched",
        "mode": "eval (no dropout)",
        "optimizer": {"name": "AdamW", "lr": args.meta_lr, "weight_decay": args.weight_decay,
                      "clip": args.clip},
        "parameters": n_params,
        "warmup": args.warmup,
        "repeats": len(totals),
        "served": bool(args.serve),
        "ms_per_step": {"median": med, "min": min(totals), "mean": statistics.fmean(totals),
                        "all": totals},
        "ms_median_split": {"meta_gradients": statistics.median(grad_ms),
                            "optimizer": statistics.median(opt_ms)},
        "last_meta_loss": losses[-1],
    }
    if on_cuda:
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_bytes_scope"] = "timed steps (torch.cuda.max_memory_allocated)"
    print(f"PyTorch {args.config} E2E-TTT meta-step: meta-batch {args.meta_batch} sessions x "
          f"{args.batch} samples x {args.neurons} neurons, {args.inner_steps} inner steps "
          f"(lr {args.inner_lr:g}) on unit+session embeddings, {n_params:,} parameters, float32, "
          f"{result['threads']} threads, {result['device']} ({result['device_name']})")
    print(f"  {med:.1f} ms/meta-step (median of {len(totals)}; min {min(totals):.1f})")
    print(f"  meta-gradients {result['ms_median_split']['meta_gradients']:.1f} ms, clip+AdamW "
          f"{result['ms_median_split']['optimizer']:.1f} ms (medians); "
          + (f"peak {result['peak_bytes'] / 2**20:.1f} MiB; " if on_cuda else "")
          + f"last meta-loss {losses[-1]:.6f}")
    if args.json:
        write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
