#!/usr/bin/env python3
"""Plots of metatape benchmark results (Debian's python3-matplotlib, no other dependency).

  python3 tools/plot.py adaptation RESULT.json OUT_DIR   (written by `metatape bench adaptation`)
      adaptation_curves.png   mean validation score of the held-out sessions against adaptation
                              steps, one line per method with its own procedure on the first
                              parameter set, plus the cross-procedure controls (dashed)
      adaptation_ablation.png final score and steps to 95% per method and parameter set
      adaptation_training.png validation score during (meta-)training per method
  python3 tools/plot.py memory RESULT.json OUT_DIR       (written by `metatape bench memory`)
      memory.png              peak memory against inner steps K, with and without checkpointing
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"standard": "tab:blue", "fomaml": "tab:orange", "e2e-ttt": "tab:green"}


def save(fig, path):
    """Writes the figure beside `path` and renames it into place: a full disk or a stop leaves
    the earlier plot (or none), never a truncated one."""
    folder, name = os.path.split(path)
    # (.<name>.tmp.<pid>.0: the name metatape removes once this process is gone)
    tmp = os.path.join(folder, ".%s.tmp.%d.0" % (name, os.getpid()))
    try:
        fig.savefig(tmp, dpi=120, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def title_of(result):
    cfg = result.get("config", {})
    data = cfg.get("data", {}).get("path") or "synthetic"
    machine = result.get("machine", {})
    folds = f" · {len(result['folds'])} folds" if result.get("folds") else ""
    return f"{os.path.basename(str(data).rstrip('/'))}{folds} · {machine.get('cpu', '')} · {machine.get('commit', '')}"


def plot_adaptation(result, out_dir):
    table = result["table"]
    first_set = result["config"]["bench"]["param_sets"][0]
    own = {"standard": "finetune", "fomaml": "inner", "e2e-ttt": "inner"}
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in table:
        if row["params"] != first_set:
            continue
        steps = [p["step"] for p in row["mean_curve"]]
        scores = [p["val_score"] for p in row["mean_curve"]]
        dashed = row["procedure"] != own.get(row["method"])
        label = f"{row['method']} ({row['procedure']})"
        if row["steps_to_95"] >= 0 and not dashed:
            label += f", 95% at {row['steps_to_95']}"
        ax.plot(steps, scores, "--" if dashed else "-", color=COLORS.get(row["method"]), label=label)
    ax.set_xlabel("adaptation steps on the unseen session")
    ax.set_ylabel("validation score (1 - MSE / MSE of copy-last), mean over sessions")
    ax.set_title(f"adaptation, test-time parameters: {first_set}\n{title_of(result)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "adaptation_curves.png"))
    plt.close(fig)

    own_rows = [r for r in table if r["procedure"] == own.get(r["method"])]
    sets = []
    for r in own_rows:
        if r["params"] not in sets:
            sets.append(r["params"])
    methods = [m for m in COLORS if any(r["method"] == m for r in own_rows)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / max(1, len(methods))
    for k, metric in enumerate(["final_score", "steps_to_95"]):
        ax = axes[k]
        for j, m in enumerate(methods):
            vals = []
            for s in sets:
                hit = [r for r in own_rows if r["method"] == m and r["params"] == s]
                vals.append(hit[0][metric] if hit else float("nan"))
            ax.bar([i + j * width for i in range(len(sets))], vals, width, label=m,
                   color=COLORS[m])
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(sets))])
        ax.set_xticklabels(sets, rotation=15, fontsize=8)
        ax.set_ylabel("final validation score" if k == 0
                      else "steps to 95% of final (-1: final <= 0 or diverged)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"test-time parameter ablation\n{title_of(result)}", fontsize=9)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "adaptation_ablation.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labelled = set()  # a cross-validated benchmark has one training per method and fold
    for t in result.get("training", []):
        steps = [p["step"] for p in t["curve"]]
        scores = [p["val_score"] for p in t["curve"]]
        label = None if t["method"] in labelled else t["method"]
        labelled.add(t["method"])
        ax.plot(steps, scores, color=COLORS.get(t["method"]), label=label,
                alpha=0.6 if "fold" in t else 1.0)
    ax.set_xlabel("training steps (outer steps for meta-learning)")
    ax.set_ylabel("validation score of the training sessions")
    ax.set_title(f"training\n{title_of(result)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "adaptation_training.png"))
    plt.close(fig)


def plot_memory(result, out_dir):
    rows = result["rows"]
    ks = [r["inner_steps"] for r in rows]
    mib = 1 << 20
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(ks, [r["peak_bytes"] / mib for r in rows], "o-", label="plain")
    ax.plot(ks, [r["checkpointed_peak_bytes"] / mib for r in rows], "s-",
            label="checkpointed inner steps")
    ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()  # the log axis' minor labels ("3x10^0") beside the K ticks
    ax.set_xlabel("inner steps K")
    ax.set_ylabel("peak memory of one E2E-TTT meta-gradient (MiB)")
    ax.set_title(f"{result.get('model', '')}, {result.get('neuron_rows', '')} neuron rows\n"
                 f"{title_of(result)}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, os.path.join(out_dir, "memory.png"))
    plt.close(fig)


def main(argv):
    if len(argv) != 4 or argv[1] not in ("adaptation", "memory"):
        sys.stderr.write(__doc__)
        return 2
    kind, path, out_dir = argv[1], argv[2], argv[3]
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        sys.stderr.write(f"plot.py: {path}: cannot read ({e})\n")
        return 1
    os.makedirs(out_dir, exist_ok=True)
    try:
        (plot_adaptation if kind == "adaptation" else plot_memory)(result, out_dir)
    except KeyError as e:
        sys.stderr.write(f"plot.py: {path}: missing field {e}; is it a `metatape bench {kind}` result?\n")
        return 1
    print(f"plots written to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
