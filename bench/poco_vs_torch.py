#!/usr/bin/env python3
"""POCO CPU training step: metatape against PyTorch on the same cores, printed as a ratio.

Runs build/bin/metatape-bench-poco and tools/reference/poco_bench.py (torch from PyPI) with the
same configuration, batch and thread count, then prints both medians and metatape / PyTorch
(goal <= 0.7). With --json, writes both results and the ratio to that path (atomically).
Usage: python3 bench/poco_vs_torch.py [--threads 2] [--config poco-paper] [--json PATH]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "bin", "metatape-bench-poco"))
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not os.path.exists(a.bin):
        sys.exit(f"error: {a.bin} does not exist; build first with tools/build.sh")
    common = ["--config", a.config, "--threads", str(a.threads), "--batch", str(a.batch),
              "--neurons", str(a.neurons), "--sessions", str(a.sessions), "--repeats", str(a.repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        mt_json, torch_json = os.path.join(tmp, "mt.json"), os.path.join(tmp, "torch.json")
        run([a.bin, *common, "--json", mt_json])
        run([sys.executable, os.path.join(ROOT, "tools", "reference", "poco_bench.py"), *common,
             "--json", torch_json])
        mt, torch = json.load(open(mt_json)), json.load(open(torch_json))
    mt_ms = mt["ms_per_step_median"]
    torch_ms = torch["ms_per_step"]["median"]
    ratio = mt_ms / torch_ms
    print(f"\nmetatape {mt_ms:.1f} ms/step, PyTorch {torch_ms:.1f} ms/step: "
          f"ratio {ratio:.2f} (goal <= 0.7: {'met' if ratio <= 0.7 else 'NOT met'})")
    if a.json:
        out = {"metatape": mt, "pytorch": torch, "ratio_metatape_over_pytorch": ratio}
        fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(a.json)) or ".")
        with os.fdopen(fd, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp_path, a.json)


if __name__ == "__main__":
    main()
