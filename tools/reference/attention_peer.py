#!/usr/bin/env python3
"""PyTorch peer of bench/flash_attention_bench.cpp: variable-length attention at POCO's shapes.

The same configurations as metatape-bench-flash-attention (the same per-sample key counts, from
the same linear congruential generator), heads 8/16, head dim 64, float32 and bfloat16 on CUDA:
  fwd         torch.nn.functional.scaled_dot_product_attention, no grad
  fwd_bwd     output, then torch.autograd.grad for q, k, v given a random dO
  double_bwd  first-order grads with create_graph=True, <grads, z>, then its grad for q, k, v
fwd and fwd_bwd use SDPA's fused backends: --layout padded (default) pads the samples to the
longest and masks padded keys (the memory-efficient backend, which takes a mask; flash when no
sample is padded), --layout nested uses jagged nested tensors (flash / efficient varlen). The
double backward uses the math backend (the fused SDPA backends do not support double backward).

Timing: 3 warm-ups, then --repeats runs timed with CUDA events, median reported. Peak memory
(the "MiB" column and peak_bytes): torch.cuda.max_memory_allocated during one run minus what was
allocated before it, i.e. what the step itself needs beyond its inputs; the JSON also keeps the
baseline (baseline_bytes) and the absolute peak (peak_total_bytes). Give this JSON to
metatape-bench-flash-attention --peer FILE for a side-by-side table with ratios.

Usage:
    python3 tools/reference/attention_peer.py [--json PATH] [--repeats 20] [--quick]
        [--layout padded|nested]
"""

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

CONFIGS = [
    ("seed_h8", 32, 64, 300, 480, 8, 64),
    ("seed_h16", 32, 64, 300, 480, 16, 64),
    ("paper_h8", 32, 8, 300, 480, 8, 64),
    ("paper_h16", 32, 8, 300, 480, 16, 64),
    ("long_h8", 8, 64, 3000, 3000, 8, 64),
]
MASK64 = (1 << 64) - 1


def key_lengths(samples, lo, hi):
    """The benchmark's per-sample key counts (same generator as flash_attention_bench.cpp)."""
    state, out = 12345, []
    for _ in range(samples):
        state = (state * 6364136223846793005 + 1442695040888963407) & MASK64
        span = hi - lo
        nk = lo + ((state >> 33) % (span + 1) if span > 0 else 0)
        if span > 0:
            nk -= nk % 3
        out.append(max(nk, 1))
    return out


def padded_inputs(q_len, k_lens, heads, dh, dtype, gen):
    b, mk = len(k_lens), max(k_lens)
    dev = "cuda"
    q = torch.randn(b, heads, q_len, dh, device=dev, dtype=torch.float32, generator=gen).to(dtype)
    k = torch.randn(b, heads, mk, dh, device=dev, dtype=torch.float32, generator=gen).to(dtype)
    v = torch.randn(b, heads, mk, dh, device=dev, dtype=torch.float32, generator=gen).to(dtype)
    lens = torch.tensor(k_lens, device=dev)
    keep = torch.arange(mk, device=dev)[None, :] < lens[:, None]  # (B, mk)
    mask = None if min(k_lens) == mk else keep[:, None, None, :].expand(b, heads, q_len, mk)
    return q, k, v, mask


def nested_inputs(q_len, k_lens, heads, dh, dtype, gen):
    def jag(lengths):
        parts = [torch.randn(n, heads, dh, device="cuda", generator=gen).to(dtype) for n in lengths]
        return torch.nested.nested_tensor(parts, layout=torch.jagged).transpose(1, 2)

    return jag([q_len] * len(k_lens)), jag(k_lens), jag(k_lens), None


def step(q, k, v, mask, kind, dO, z, backends):
    if kind == "fwd":
        with torch.no_grad(), sdpa_kernel(backends):
            return [F.scaled_dot_product_attention(q, k, v, attn_mask=mask)]
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    if kind == "fwd_bwd":
        with sdpa_kernel(backends):
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return list(torch.autograd.grad(o, (q, k, v), dO))
    with sdpa_kernel([SDPBackend.MATH]):
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    g = torch.autograd.grad(o, (q, k, v), dO, create_graph=True)
    l2 = (g[0] * z[0]).sum() + (g[1] * z[1]).sum() + (g[2] * z[1]).sum()
    return list(torch.autograd.grad(l2, (q, k, v)))


def measure(fn, repeats):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak_total = torch.cuda.max_memory_allocated()
    peak = peak_total - before
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), peak, before, peak_total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write every figure as JSON to this path")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--layout", choices=["padded", "nested"], default="padded")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("attention_peer.py: no CUDA device", file=sys.stderr)
        return 2
    configs = [CONFIGS[0], CONFIGS[4]] if args.quick else CONFIGS
    repeats = min(args.repeats, 5) if args.quick else args.repeats
    gen = torch.Generator(device="cuda").manual_seed(2024)
    results = []
    print(f"{'config':10s} {'dtype':9s} {'step':10s} {'ms':>10s} {'MiB':>10s}")
    for name, samples, q_len, lo, hi, heads, dh in configs:
        k_lens = key_lengths(samples, lo, hi)
        for dtype in (torch.float32, torch.bfloat16):
            make = padded_inputs if args.layout == "padded" else nested_inputs
            q, k, v, mask = make(q_len, k_lens, heads, dh, dtype, gen)
            dO = torch.randn_like(q)
            z = (torch.randn_like(q), torch.randn_like(k))  # cotangents of dq and of dk, dv
            # Flash needs 16-bit inputs and no mask; otherwise the memory-efficient kernel.
            fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
            for kind in ("fwd", "fwd_bwd", "double_bwd"):
                if kind == "double_bwd" and args.layout == "nested":
                    continue  # the math backend does not take jagged tensors with grad of grad
                ms, peak, baseline, peak_total = measure(lambda: step(q, k, v, mask, kind, dO, z, fused), repeats)
                print(f"{name:10s} {str(dtype):9s} {kind:10s} {ms:10.3f} {peak / 2**20:10.1f}")
                results.append(
                    {
                        "config": name,
                        "samples": samples,
                        "queries": q_len,
                        "keys_lo": lo,
                        "keys_hi": hi,
                        "heads": heads,
                        "dh": dh,
                        "dtype": "f32" if dtype == torch.float32 else "bf16",
                        "step": kind,
                        "layout": args.layout,
                        "backend": "math" if kind == "double_bwd" else "flash/efficient",
                        "ms": ms,
                        "peak_bytes": peak,
                        "baseline_bytes": baseline,
                        "peak_total_bytes": peak_total,
                    }
                )
    if args.json:
        doc = {
            "benchmark": "attention_peer",
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "repeats": repeats,
            "results": results,
        }
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_io import write_json_atomic
        write_json_atomic(args.json, doc, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
