#!/usr/bin/env python3
"""Summarises metatape run folders (written by `metatape train`) as one table and JSON.

Usage: python3 tools/report_runs.py RUN_DIR [RUN_DIR ...] [--json PATH]
Prints, per run: the model kind, best validation score and step, and the test split's mean
score, MSE, MAE and R² (from summary.json), then per-session test scores side by side.
"""
import argparse
import json
import os
import sys
import tempfile


def load(run):
    path = os.path.join(run, "summary.json")
    if not os.path.exists(path):
        sys.exit(f"error: {path} does not exist; is {run} a finished `metatape train` run?")
    with open(path) as f:
        s = json.load(f)
    with open(os.path.join(run, "config.json")) as f:
        c = json.load(f)
    return {"run": run, "kind": s["kind"], "config": c, "train": s["train"], "test": s["test"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--json", default=None, help="also write the summary to this path")
    a = p.parse_args()
    runs = [load(r) for r in a.runs]
    print(f"{'run':28s} {'kind':10s} {'best val':>9s} {'at step':>8s} {'test score':>11s} "
          f"{'test mse':>9s} {'test mae':>9s} {'test r2':>8s}")
    for r in runs:
        t = r["test"]
        print(f"{os.path.basename(r['run'].rstrip('/')):28s} {r['kind']:10s} "
              f"{r['train']['best_score']:9.4f} {r['train']['best_step']:8d} {t['score']:11.4f} "
              f"{t['mse']:9.4f} {t['mae']:9.4f} {t['r2']:8.4f}")
    sessions = [s["session"] for s in runs[0]["test"]["sessions"]]
    print("\ntest score per session")
    print(f"{'session':28s} " + " ".join(f"{r['kind']:>10s}" for r in runs))
    for i, name in enumerate(sessions):
        print(f"{name:28s} " + " ".join(f"{r['test']['sessions'][i]['score']:10.4f}" for r in runs))
    if a.json:
        out = [{"run": r["run"], "kind": r["kind"], "best_val_score": r["train"]["best_score"],
                "best_step": r["train"]["best_step"], "train_seconds": r["train"]["seconds"],
                "test": r["test"], "data": r["config"]["data"], "model": r["config"]["model"],
                "train_options": r["config"]["train"]} for r in runs]
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(a.json)))
        with os.fdopen(fd, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, a.json)


if __name__ == "__main__":
    main()
