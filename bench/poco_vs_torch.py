#!/usr/bin/env python3
"""POCO CPU training step: metatape against PyTorch on the same cores, printed as a ratio.

Runs build/bin/metatape-bench-poco and tools/reference/poco_bench.py (torch from PyPI) with the
same configuration, batch and thread count, then prints both medians and metatape / PyTorch
(goal <= 0.7). With --rounds R the two run in turn R times and the ratio is taken per round
(each round's two medians were measured minutes apart at most) and its median reported: on a
shared machine whose speed drifts, a ratio of two runs made at different times misleads. With
--json, writes every round's results and the ratios to that path (atomically).
--online: the step of online adaptation instead (an SGD update of the embedding tables on one
batch, and a forecast; `--batch 1` is what `metatape online` does per prediction time): both
medians and both ratios are printed; there is no goal for them.
Usage: python3 bench/poco_vs_torch.py [--threads 2] [--config poco-paper] [--rounds 3]
           [--online] [--json PATH]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
from bench_io import write_json_atomic  # noqa: E402


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(f"error: {' '.join(cmd[:2])} failed with exit code {proc.returncode}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="poco-paper")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--neurons", type=int, default=128)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of the two (default 3)")
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "bin", "metatape-bench-poco"))
    p.add_argument("--online", action="store_true",
                   help="time online adaptation's update and forecast (with --batch 1: one window)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not os.path.exists(a.bin):
        sys.exit(f"error: {a.bin} does not exist; build first with tools/build.sh")
    common = ["--config", a.config, "--threads", str(a.threads), "--batch", str(a.batch),
              "--neurons", str(a.neurons), "--sessions", str(a.sessions), "--repeats", str(a.repeats)]
    if a.rounds < 1:
        sys.exit("error: --rounds must be >= 1")
    if a.online:
        return online(a, common)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            mt_json = os.path.join(tmp, f"mt{r}.json")
            torch_json = os.path.join(tmp, f"torch{r}.json")
            run([a.bin, *common, "--json", mt_json])
            run([sys.executable, os.path.join(ROOT, "tools", "reference", "poco_bench.py"),
                 *common, "--json", torch_json])
            mt, torch = json.load(open(mt_json)), json.load(open(torch_json))
            mt_ms, torch_ms = mt["ms_per_step_median"], torch["ms_per_step"]["median"]
            print(f"round {r + 1}/{a.rounds}: metatape {mt_ms:.1f} ms/step, PyTorch "
                  f"{torch_ms:.1f} ms/step, ratio {mt_ms / torch_ms:.3f}\n")
            rounds.append({"metatape": mt, "pytorch": torch, "ratio": mt_ms / torch_ms})
    ratios = sorted(x["ratio"] for x in rounds)
    ratio = statistics.median(ratios)
    mt_ms = statistics.median(x["metatape"]["ms_per_step_median"] for x in rounds)
    torch_ms = statistics.median(x["pytorch"]["ms_per_step"]["median"] for x in rounds)
    print(f"metatape {mt_ms:.1f} ms/step, PyTorch {torch_ms:.1f} ms/step (medians of {a.rounds} "
          f"rounds); ratio {ratio:.2f}, median of the per-round ratios {['%.3f' % x for x in ratios]} "
          f"(goal <= 0.7: {'met' if ratio <= 0.7 else 'NOT met'})")
    if a.json:
        out = {"metatape": rounds[-1]["metatape"], "pytorch": rounds[-1]["pytorch"],
               "rounds": rounds, "ratio_metatape_over_pytorch": ratio,
               "per_round_ratios": [x["ratio"] for x in rounds],
               "ms_per_step_median_of_rounds": {"metatape": mt_ms, "pytorch": torch_ms}}
        write_json_atomic(a.json, out, sort_keys=False)


def online(a, common):
    rounds = []
    kinds = ("update", "forecast")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            mt_json = os.path.join(tmp, f"mt{r}.json")
            torch_json = os.path.join(tmp, f"torch{r}.json")
            run([a.bin, *common, "--online", "--json", mt_json])
            run([sys.executable, os.path.join(ROOT, "tools", "reference", "poco_bench.py"),
                 *common, "--online", "--json", torch_json])
            mt, torch = json.load(open(mt_json)), json.load(open(torch_json))
            row = {"metatape": mt, "pytorch": torch}
            for k in kinds:
                row[f"{k}_ratio"] = mt[f"{k}_ms_median"] / torch[f"{k}_ms"]["median"]
            print(f"round {r + 1}/{a.rounds}: " + "; ".join(
                f"{k} metatape {mt[f'{k}_ms_median']:.3f} ms, PyTorch "
                f"{torch[f'{k}_ms']['median']:.3f} ms, ratio {row[f'{k}_ratio']:.3f}"
                for k in kinds) + "\n")
            rounds.append(row)
    summary = {}
    for k in kinds:
        summary[k] = {
            "metatape_ms": statistics.median(x["metatape"][f"{k}_ms_median"] for x in rounds),
            "pytorch_ms": statistics.median(x["pytorch"][f"{k}_ms"]["median"] for x in rounds),
            "ratio_metatape_over_pytorch": statistics.median(x[f"{k}_ratio"] for x in rounds),
            "per_round_ratios": [x[f"{k}_ratio"] for x in rounds],
        }
        print(f"{k}: metatape {summary[k]['metatape_ms']:.3f} ms, PyTorch "
              f"{summary[k]['pytorch_ms']:.3f} ms (medians of {a.rounds} rounds); ratio "
              f"{summary[k]['ratio_metatape_over_pytorch']:.2f} (median of the per-round ratios)")
    if a.json:
        write_json_atomic(a.json, {"benchmark": "poco_online_step", "summary": summary,
                                   "rounds": rounds}, sort_keys=False)


if __name__ == "__main__":
    main()
