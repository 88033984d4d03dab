#!/usr/bin/env python3
"""POCO E2E-TTT meta-step: metatape against PyTorch and JAX on the same cores (or the same GPU).

Runs build/bin/metatape-bench-meta-step (bench/meta_step_bench.cpp), the PyTorch peer
tools/reference/meta_step_bench.py and the JAX peer tools/reference/meta_step_jax.py (jit of
grad of grad) with the same meta-step: poco-paper, meta-batch of 2 sessions, support and query
batches of 32 samples x 128 neurons each, 3 inner SGD steps (lr 1e-3) on the unit and session
embeddings with the second-order path (create_graph), meta-loss = query loss + mean inner loss,
meta-gradients averaged, clipped at norm 1, one AdamW step; float32, no dropout, --threads
threads (default 2). Each engine reports the median of --repeats meta-steps after warm-up; with
--rounds R the three run in turn R times and the median of the R medians is kept (robust to a
machine that is busy part of the time). Prints the medians and metatape / PyTorch (goal <= 0.7)
and metatape / JAX; writes the whole record (per-round figures, commit, machine, load average)
to --json (default bench/results/e2e_ttt_meta_step_cpu.json).

--device cuda runs metatape and PyTorch on cuda:0 (each synchronises the device around every
meta-step and reports the peak device memory of the timed steps); the JAX peer is CPU-only here
and is skipped. --graph has metatape capture its meta-step once as a CUDA graph and time the
replays (PyTorch eager, as the goal is stated). The record then goes to bench/results/e2e_ttt_meta_step_cuda.json by default.

With --paired N the two servers (metatape-bench-meta-step and meta_step_bench.py with --serve)
take N meta-steps in alternation, each right after the other's, and the reported ratio is the
median of the N per-pair ratios: this machine has periods of seconds to minutes in which its
GEMM throughput drops by a third, and steps taken back to back see the same period. Before and
after every pair metatape's server measures the machine's state (OpenBLAS's own 2-thread SGEMM on
512^3, operands in cache, ~0.1 s: ~200 GFLOP/s normally, ~145 in the slow periods, when
threads that share work wait on each other); the pairs are then also reported by machine state:
'full' (both probes >= --probe-full-gflops, default 85% of the run's best), 'throttled'
(neither) and 'mixed'.

Usage: python3 bench/meta_step_vs_peers.py [--threads 2] [--rounds 3 | --paired N] [--repeats 5]
           [--device cpu|cuda] [--tf32] [--graph] [--bin build/bin/metatape-bench-meta-step] [--json PATH]
           [--no-jax]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
from bench_io import cpu_model, write_json_atomic  # noqa: E402
GOAL = 0.7
# A probe at or above this share of the run's best counts as the machine at full throughput.
PROBE_FULL = 0.85


def run(cmd, env=None):
    """Runs cmd; returns (ok, stdout + stderr tail)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return False, (proc.stdout + proc.stderr)[-2000:]
    return True, ""


def git(*args):
    try:
        return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def run_paired(engines, common, env, tmp, n, rounds, failures, probe_off=False):
    """Starts metatape and PyTorch with --serve and has them take n meta-steps in alternation
    (metatape first in even pairs, PyTorch first in odd ones). Returns the pairs of step times;
    each engine's own summary JSON goes to rounds[name] as one round."""
    names = [x for x in ("metatape", "pytorch") if x in engines]
    procs, outs = {}, {}
    for name in names:
        outs[name] = os.path.join(tmp, f"{name}-paired.json")
        procs[name] = subprocess.Popen([*engines[name], *common, "--serve", "--json", outs[name]],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       env=env)

    def request(name, command, answer):
        """Sends one command line to a server and returns the number of its answer line."""
        proc = procs[name]
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if line.startswith(answer + " "):
                return float(line.split()[1])
            sys.stdout.write(line)
        raise RuntimeError(f"{name} ended before answering (exit {proc.wait()})")

    def one_step(name):
        return request(name, "step", "step_ms")

    def wait_ready(name):
        for line in procs[name].stdout:
            if line.strip() == "ready":
                return
            sys.stdout.write(line)
        raise RuntimeError(f"{name} ended before its warm-up finished (exit {procs[name].wait()})")

    def probe():
        """The machine's state now: OpenBLAS's own threaded SGEMM, run by metatape's server."""
        if "metatape" not in procs or probe_off:
            return None
        return request("metatape", "probe", "probe_gflops")

    pairs = []
    try:
        for name in names:  # both warmed up (they warm up side by side) before any timed step
            wait_ready(name)
        after = probe()
        for i in range(n):
            order = names if i % 2 == 0 else names[::-1]
            before = after
            pair = {name: one_step(name) for name in order}
            after = probe()
            print(f"pair {i + 1:3d}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in pair.items())
                  + (f" ({pair['metatape'] / pair['pytorch']:.3f})" if len(pair) == 2 else "")
                  + (f"; probe {before:.0f} / {after:.0f} GFLOP/s" if after is not None else ""),
                  flush=True)
            if after is not None:
                pair["probe_gflops"] = [before, after]
            pairs.append(pair)
    except (RuntimeError, BrokenPipeError, OSError) as e:
        failures["paired"] = str(e)
    for name, proc in procs.items():
        try:
            proc.stdin.write("quit\n")
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        rest = proc.stdout.read()
        sys.stdout.write(rest)
        if proc.wait() != 0 or not os.path.exists(outs[name]):
            failures[name] = f"exit {proc.returncode}: {rest[-2000:]}"
            continue
        rounds[name].append(json.load(open(outs[name])))
    return pairs if len(names) == 2 and "paired" not in failures else []


def probe_states(pairs, full_gflops=0.0):
    """Sorts the pairs by the machine's GEMM throughput measured right before and right after
    them: 'full' when both probes reach the threshold, 'throttled' when neither does, 'mixed'
    otherwise (the state changed during the pair). The threshold is full_gflops when given, else
    PROBE_FULL of the best probe of the run (which labels a run spent wholly in one state
    'full'). Returns the threshold and, per state, the number of pairs, the median ratio and each
    engine's median step."""
    probes = [x for p in pairs for x in p.get("probe_gflops", [])]
    if not probes:
        return None
    threshold = full_gflops if full_gflops > 0 else PROBE_FULL * max(probes)
    states = {"full": [], "throttled": [], "mixed": []}
    for p in pairs:
        hi = [x >= threshold for x in p["probe_gflops"]]
        states["full" if all(hi) else "throttled" if not any(hi) else "mixed"].append(p)
    out = {"probe_threshold_gflops": threshold, "probe_max_gflops": max(probes), "states": {}}
    for state, ps in states.items():
        out["states"][state] = {"pairs": len(ps)}
        if ps:
            out["states"][state].update({
                "median": statistics.median(p["metatape"] / p["pytorch"] for p in ps),
                "metatape_ms_median": statistics.median(p["metatape"] for p in ps),
                "pytorch_ms_median": statistics.median(p["pytorch"] for p in ps)})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="poco-paper")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--meta-batch", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--neurons", type=int, default=128)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--inner-steps", type=int, default=3)
    p.add_argument("--inner-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3,
                   help="run the three engines in turn this many times (default 3)")
    p.add_argument("--probe-full-gflops", type=float, default=0.0, metavar="GFLOPS",
                   help="--paired: probe reading at and above which the machine counts as at "
                        "full throughput (default: 85%% of the run's best probe)")
    p.add_argument("--paired", type=int, default=0, metavar="N",
                   help="instead of rounds: metatape and PyTorch run side by side as servers "
                        "(--serve) and take N meta-steps in alternation, one engine right after "
                        "the other (order swapped every pair); the ratio is the median of the N "
                        "per-pair ratios. JAX is not run in this mode")
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "bin", "metatape-bench-meta-step"))
    p.add_argument("--no-jax", action="store_true", help="skip the JAX peer")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cpu, or cuda (cuda:0) for metatape and PyTorch (default cpu)")
    p.add_argument("--tf32", action="store_true",
                   help="CUDA: let both engines run f32 matmuls on TF32 tensor cores")
    p.add_argument("--graph", action="store_true",
                   help="CUDA: metatape replays its meta-step as one captured CUDA graph "
                        "(PyTorch stays eager)")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine state)")
    p.add_argument("--json", default=None,
                   help="default bench/results/e2e_ttt_meta_step_<device>.json")
    a = p.parse_args()
    on_cuda = a.device == "cuda"
    if a.json is None:
        a.json = os.path.join(ROOT, "bench", "results", f"e2e_ttt_meta_step_{a.device}.json")
    if not os.path.exists(a.bin):
        sys.exit(f"error: {a.bin} does not exist; build first with tools/build.sh "
                 "(METATAPE_BUILD_BENCH=ON)")
    common = ["--config", a.config, "--threads", str(a.threads), "--meta-batch", str(a.meta_batch),
              "--batch", str(a.batch), "--neurons", str(a.neurons), "--sessions", str(a.sessions),
              "--inner-steps", str(a.inner_steps), "--inner-lr", repr(a.inner_lr),
              "--warmup", str(a.warmup), "--repeats", str(a.repeats), "--device", a.device]
    if a.tf32:
        common.append("--tf32")
    if a.graph and not on_cuda:
        sys.exit("error: --graph needs --device cuda")
    engines = {
        "metatape": [a.bin, *(["--graph"] if a.graph else [])],
        "pytorch": [sys.executable, os.path.join(ROOT, "tools", "reference", "meta_step_bench.py")],
    }
    jax_error = None
    if a.paired > 0:
        jax_error = "skipped (--paired runs metatape and PyTorch only)"
        print(f"JAX peer {jax_error}")
    elif a.no_jax:
        jax_error = "skipped (--no-jax)"
    elif on_cuda:
        jax_error = "skipped (the JAX peer runs on the CPU only)"
        print(f"JAX peer {jax_error}")
    else:
        probe = subprocess.run([sys.executable, "-c", "import jax, jaxlib"], capture_output=True,
                               text=True)
        if probe.returncode != 0:
            jax_error = ("jax is not installed (pip install jax): "
                         + probe.stderr.strip().splitlines()[-1])
            print(f"JAX peer skipped: {jax_error}")
        else:
            engines["jax"] = [sys.executable,
                              os.path.join(ROOT, "tools", "reference", "meta_step_jax.py")]
    # Every engine runs with the same thread count; OpenMP and MKL read these too.
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    load_start = loadavg()
    rounds = {name: [] for name in engines}
    failures = {}
    pairs = []  # --paired: {engine: ms} of each pair of back-to-back meta-steps
    with tempfile.TemporaryDirectory() as tmp:
        if a.paired > 0:
            pairs = run_paired(engines, common, env, tmp, a.paired, rounds, failures,
                               probe_off=a.device != "cpu")
        for r in range(a.rounds if a.paired <= 0 else 0):
            print(f"--- round {r + 1} of {a.rounds} (load average {loadavg()})")
            for name, cmd in engines.items():
                if name in failures:
                    continue
                out = os.path.join(tmp, f"{name}-{r}.json")
                ok, err = run([*cmd, *common, "--json", out], env=env)
                if not ok:
                    failures[name] = err
                    continue
                rounds[name].append(json.load(open(out)))
    load_end = loadavg()

    def step_ms(result):
        m = result.get("ms_per_step_median")
        return m if m is not None else result["ms_per_step"]["median"]

    def step_min(result):
        m = result.get("ms_per_step_min")
        return m if m is not None else result["ms_per_step"]["min"]

    medians = {name: statistics.median(step_ms(x) for x in runs)
               for name, runs in rounds.items() if runs}
    # Peak device memory of the timed steps (CUDA runs report it), the largest over the rounds.
    peaks = {name: max(x["peak_bytes"] for x in runs)
             for name, runs in rounds.items() if runs and all("peak_bytes" in x for x in runs)}
    # The fastest single meta-step of each engine: less sensitive to other load on the machine.
    minima = {name: min(step_min(x) for x in runs) for name, runs in rounds.items() if runs}
    print()
    for name, ms in medians.items():
        per_round = ", ".join(f"{step_ms(x):.0f}" for x in rounds[name])
        print(f"{name:9s} {ms:9.1f} ms/meta-step (median over {len(rounds[name])} rounds: "
              f"{per_round}; fastest step {minima[name]:.0f})")
    ratios = {}
    if "metatape" in medians and "pytorch" in medians:
        ratios["metatape_over_pytorch"] = medians["metatape"] / medians["pytorch"]
    if "metatape" in medians and "jax" in medians:
        ratios["metatape_over_jax"] = medians["metatape"] / medians["jax"]
    if "jax" in medians and "pytorch" in medians:
        ratios["jax_over_pytorch"] = medians["jax"] / medians["pytorch"]
    ratios_of_minima = {}
    for x, y in (("metatape", "pytorch"), ("metatape", "jax"), ("jax", "pytorch")):
        if x in minima and y in minima:
            ratios_of_minima[f"{x}_over_{y}"] = minima[x] / minima[y]
    # Ratios within each round (the engines of a round ran back to back): on a machine whose
    # speed drifts over minutes these are steadier than ratios of medians taken across rounds.
    per_round_ratios = {}
    for x, y in (("metatape", "pytorch"), ("metatape", "jax")):
        if rounds.get(x) and rounds.get(y) and len(rounds[x]) == len(rounds[y]):
            per_round_ratios[f"{x}_over_{y}"] = [step_ms(p) / step_ms(q)
                                                 for p, q in zip(rounds[x], rounds[y])]
    for k, v in per_round_ratios.items():
        print(f"{k.replace('_over_', ' / ')} per round: {', '.join(f'{x:.3f}' for x in v)} "
              f"(median {statistics.median(v):.3f})")
    paired = None
    if pairs:
        per_pair = sorted(x["metatape"] / x["pytorch"] for x in pairs)
        q = statistics.quantiles(per_pair, n=4) if len(per_pair) > 1 else per_pair * 3
        paired = {"pairs": pairs, "metatape_over_pytorch_per_pair": [
                      x["metatape"] / x["pytorch"] for x in pairs],
                  "median": statistics.median(per_pair), "quartiles": [q[0], q[2]],
                  "min": per_pair[0], "max": per_pair[-1]}
        # The headline: back-to-back steps see the same machine, so their ratio is the figure.
        ratios["metatape_over_pytorch"] = paired["median"]
        print(f"metatape / pytorch over {len(pairs)} back-to-back pairs: median "
              f"{paired['median']:.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}, range "
              f"{per_pair[0]:.3f}-{per_pair[-1]:.3f})")
        by_state = probe_states(pairs, a.probe_full_gflops)
        if by_state:
            paired["by_machine_state"] = by_state
            for state, v in by_state["states"].items():
                if v["pairs"]:
                    print(f"  {state:10s} {v['pairs']:3d} pairs: median {v['median']:.3f}, "
                          f"metatape {v['metatape_ms_median']:.0f} ms, "
                          f"pytorch {v['pytorch_ms_median']:.0f} ms")
    if "metatape_over_pytorch" in ratios:
        r = ratios["metatape_over_pytorch"]
        print(f"metatape / PyTorch = {r:.2f} (goal <= {GOAL}: {'met' if r <= GOAL else 'NOT met'})")
    if "metatape_over_jax" in ratios:
        print(f"metatape / JAX     = {ratios['metatape_over_jax']:.2f}")
    if ratios_of_minima:
        print("ratios of the fastest steps: " + ", ".join(
            f"{k.replace('_over_', ' / ')} {v:.2f}" for k, v in ratios_of_minima.items()))
    if on_cuda:
        for name, b in peaks.items():
            print(f"{name:9s} peak device memory {b / 2**20:.1f} MiB")
    for name, err in failures.items():
        print(f"{name} failed: {err.strip().splitlines()[-1] if err.strip() else 'no output'}")

    status = git("status", "--porcelain", "--untracked-files=no")
    record = {
        "benchmark": "e2e_ttt_meta_step",
        "description": (f"one second-order E2E-TTT meta-step of POCO on {a.device}: per session of "
                        "the meta-batch, inner SGD steps on the unit and session embeddings "
                        "with create_graph, meta-loss = query loss + mean inner loss, "
                        "meta-gradient w.r.t. every parameter; averaged, clipped at norm 1, "
                        "AdamW; float32, no dropout"),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "working_tree_dirty": bool(status) if status != "unknown" else None,
        "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_start": load_start, "load_average_end": load_end},
        "note": a.note,
        "settings": {"config": a.config, "device": a.device, "tf32": a.tf32,
                     "metatape_cuda_graph": a.graph,
                     "threads": a.threads, "meta_batch": a.meta_batch,
                     "batch": a.batch, "neurons_per_sample": a.neurons, "sessions": a.sessions,
                     "inner_steps": a.inner_steps, "inner_lr": a.inner_lr,
                     "inner_params": ["unit_emb.weight", "session_emb.weight"],
                     "meta_lr": 1e-4, "weight_decay": 1e-4, "clip": 1.0,
                     "warmup": a.warmup, "repeats": a.repeats,
                     "rounds": a.rounds if a.paired <= 0 else 0, "paired": a.paired},
        "ms_per_meta_step_median": medians,
        "ratios": ratios,
        "ms_per_meta_step_min": minima,
        "ratios_of_minima": ratios_of_minima,
        "per_round_ratios": per_round_ratios,
        "per_round_ratio_medians": {k: statistics.median(v) for k, v in per_round_ratios.items()},
        "goal_metatape_over_pytorch": GOAL,
        "rounds": rounds,
    }
    if on_cuda:
        record["peak_bytes"] = peaks
        names = {x.get("device_name") for runs in rounds.values() for x in runs}
        record["machine"]["gpu"] = sorted(n for n in names if n)
    if paired:
        record["paired"] = paired
    if jax_error:
        record["jax_unavailable"] = jax_error
    if failures:
        record["failures"] = failures
    write_json_atomic(a.json, record, sort_keys=False)
    print(f"wrote {a.json}")
    return 1 if failures or "metatape" not in medians else 0


if __name__ == "__main__":
    sys.exit(main())
