#!/usr/bin/env python3
"""Generate the PyTorch reference files for metatape's optimizers and safetensors reader.

1. tests/golden/optim_v1.bin (MTGOLDEN version 1, the writer of golden_mlp.py): float64
   trajectories of torch.optim.AdamW (amsgrad off and on), torch.optim.SGD (momentum with
   dampening, and Nesterov) and AdamW with torch.nn.utils.clip_grad_norm_ before every step,
   5 steps each on a fixed problem, plus one standalone clip_grad_norm_ call.

   Problem: parameters p1 (3, 4) and p2 (4,); step k (0..4) minimises
       loss_k = sum(w1[k] * (p1 - t1[k])**2) + sum(w2[k] * (p2 - t2[k])**2)
   with targets t ~ N(0, 1) and weights w = U(0, 1)**3 drawn per step. The cubed weights make
   some gradients shrink sharply from one step to the next, so AMSGrad's running maximum of
   exp_avg_sq differs from exp_avg_sq and the two AdamW runs differ (checked below).

   Stored tensors (all float64; integers and flags as 0/1):
     p1_init (3,4), p2_init (4,), target1 (5,3,4), target2 (5,4), weight1 (5,3,4), weight2 (5,4)
     for each run R in adamw, adamw_amsgrad, sgd_momentum, sgd_nesterov, adamw_clip:
       R.hp.<name> (0-d)    hyperparameters: lr, beta1, beta2, eps, weight_decay, amsgrad
                            (AdamW); lr, momentum, dampening, weight_decay, nesterov (SGD);
                            max_norm (adamw_clip)
       R.p1 (6,3,4), R.p2 (6,4)          parameters before step 1 and after each step
       R.grad_p1 (5,3,4), R.grad_p2 (5,4) gradients of each step (before clipping)
       R.loss (5,)                        loss of each step
       R.norm (5,)                        total norm returned by clip_grad_norm_ (adamw_clip)
     clip.max_norm, clip.total_norm (0-d), clip.grad_p1, clip.grad_p2 (gradients of loss_0 at
     the initial parameters), clip.clipped_p1, clip.clipped_p2 (after clip_grad_norm_)

2. tests/golden/optim_io_fixture.safetensors, written by safetensors.torch.save_file: one
   tensor of each dtype the engine reads (F32, F64, F16, BF16, I64), a 0-d and an empty tensor,
   and metadata; the C++ loader must read it (tests/test_io_safetensors.cpp).

Usage:
    pip install torch safetensors
    python3 tools/reference/optim_reference.py [--out-dir DIR]

Both files are written atomically (temporary file + rename) and read back to check them.
"""

import argparse
import math
import os
import sys
import tempfile
import warnings

# torch warns at import when numpy is absent; numpy is not needed here.
warnings.filterwarnings("ignore", message=".*NumPy.*")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_mlp import encode, read_golden, write_atomic  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_OUT_DIR = os.path.join(REPO_ROOT, "tests", "golden")
GOLDEN_NAME = "optim_v1.bin"
FIXTURE_NAME = "optim_io_fixture.safetensors"

N_STEPS = 5
DT = torch.float64

ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
# max_norm for adamw_clip: between the smallest and largest step norms, so some steps are
# clipped and some are not (checked below).
CLIP_MAX_NORM = 3.0
RUNS = [
    ("adamw", "AdamW", dict(ADAMW, amsgrad=False), None),
    ("adamw_amsgrad", "AdamW", dict(ADAMW, amsgrad=True), None),
    ("sgd_momentum", "SGD", dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.01), None),
    ("sgd_nesterov", "SGD", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.01), None),
    ("adamw_clip", "AdamW", dict(ADAMW, amsgrad=False), CLIP_MAX_NORM),
]
STANDALONE_CLIP_MAX_NORM = 0.5


def make_problem():
    torch.manual_seed(0)
    return dict(
        p1_init=torch.randn(3, 4, dtype=DT),
        p2_init=torch.randn(4, dtype=DT),
        target1=torch.randn(N_STEPS, 3, 4, dtype=DT),
        target2=torch.randn(N_STEPS, 4, dtype=DT),
        weight1=torch.rand(N_STEPS, 3, 4, dtype=DT) ** 3,
        weight2=torch.rand(N_STEPS, 4, dtype=DT) ** 3,
    )


def loss_at(pb, k, p1, p2):
    return (pb["weight1"][k] * (p1 - pb["target1"][k]) ** 2).sum() + (
        pb["weight2"][k] * (p2 - pb["target2"][k]) ** 2
    ).sum()


def hyperparameters(kind, kw, max_norm):
    if kind == "AdamW":
        hp = dict(lr=kw["lr"], beta1=kw["betas"][0], beta2=kw["betas"][1], eps=kw["eps"],
                  weight_decay=kw["weight_decay"], amsgrad=float(kw["amsgrad"]))
    else:
        hp = dict(lr=kw["lr"], momentum=kw["momentum"], dampening=kw.get("dampening", 0.0),
                  weight_decay=kw["weight_decay"], nesterov=float(kw.get("nesterov", False)))
    if max_norm is not None:
        hp["max_norm"] = max_norm
    return hp


def run(pb, kind, kw, max_norm):
    p1 = pb["p1_init"].clone().requires_grad_()
    p2 = pb["p2_init"].clone().requires_grad_()
    # foreach=False: torch's single-tensor implementation (the CPU default), step by step.
    if kind == "AdamW":
        opt = torch.optim.AdamW([p1, p2], foreach=False, **kw)
    else:
        opt = torch.optim.SGD([p1, p2], foreach=False, **kw)
    traj1, traj2 = [p1.detach().clone()], [p2.detach().clone()]
    grads1, grads2, losses, norms = [], [], [], []
    for k in range(N_STEPS):
        opt.zero_grad()
        loss = loss_at(pb, k, p1, p2)
        loss.backward()
        grads1.append(p1.grad.detach().clone())
        grads2.append(p2.grad.detach().clone())
        losses.append(loss.detach())
        if max_norm is not None:
            norms.append(torch.nn.utils.clip_grad_norm_([p1, p2], max_norm, foreach=False))
        opt.step()
        traj1.append(p1.detach().clone())
        traj2.append(p2.detach().clone())
    out = dict(p1=torch.stack(traj1), p2=torch.stack(traj2), grad_p1=torch.stack(grads1),
               grad_p2=torch.stack(grads2), loss=torch.stack(losses))
    if norms:
        out["norm"] = torch.stack(norms).to(DT)
    return out, opt


def build_golden():
    pb = make_problem()
    tensors = list(pb.items())
    results = {}
    for name, kind, kw, max_norm in RUNS:
        for hp, value in hyperparameters(kind, kw, max_norm).items():
            tensors.append((f"{name}.hp.{hp}", torch.tensor(float(value), dtype=DT)))
        out, opt = run(pb, kind, kw, max_norm)
        results[name] = (out, opt)
        for key, value in out.items():
            tensors.append((f"{name}.{key}", value))

    # The cases must exercise what they claim to.
    amsgrad_state = results["adamw_amsgrad"][1].state.values()
    if all(torch.equal(s["max_exp_avg_sq"], s["exp_avg_sq"]) for s in amsgrad_state):
        raise SystemExit("amsgrad case is degenerate: max_exp_avg_sq == exp_avg_sq everywhere")
    if torch.equal(results["adamw"][0]["p1"], results["adamw_amsgrad"][0]["p1"]):
        raise SystemExit("amsgrad case is degenerate: same trajectory as plain AdamW")
    norms = results["adamw_clip"][0]["norm"]
    if not (norms.min() < CLIP_MAX_NORM < norms.max()):
        raise SystemExit(f"clip case must clip some steps and not others; norms {norms.tolist()}")

    # Standalone clip at the initial parameters.
    p1 = pb["p1_init"].clone().requires_grad_()
    p2 = pb["p2_init"].clone().requires_grad_()
    loss_at(pb, 0, p1, p2).backward()
    grad_p1, grad_p2 = p1.grad.clone(), p2.grad.clone()
    total = torch.nn.utils.clip_grad_norm_([p1, p2], STANDALONE_CLIP_MAX_NORM, foreach=False)
    if not total > STANDALONE_CLIP_MAX_NORM:
        raise SystemExit("standalone clip case does not clip")
    tensors += [
        ("clip.max_norm", torch.tensor(STANDALONE_CLIP_MAX_NORM, dtype=DT)),
        ("clip.total_norm", total.detach().to(DT)),
        ("clip.grad_p1", grad_p1),
        ("clip.grad_p2", grad_p2),
        ("clip.clipped_p1", p1.grad.clone()),
        ("clip.clipped_p2", p2.grad.clone()),
    ]
    return [(n, t.detach()) for n, t in tensors], norms


def fixture_tensors():
    return {
        "f32": torch.tensor([[-1.0, -0.5, 0.0], [0.5, 1.0, 1.5]], dtype=torch.float32),
        "f64": torch.tensor([math.pi, -math.e, 1e-300], dtype=torch.float64),
        "f16": torch.tensor([[1.0, -2.0], [0.5, 65504.0]], dtype=torch.float16),
        "bf16": torch.tensor([1.0, -3.5, 2.0 ** 100], dtype=torch.bfloat16),
        "i64": torch.tensor([0, -1, 2 ** 40, -(2 ** 62)], dtype=torch.int64),
        "scalar": torch.tensor(42.25, dtype=torch.float64),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
        "layer.0.weight": torch.arange(6, dtype=torch.float32).reshape(3, 2) / 4,
    }


# One key: the package keeps metadata in a hash map, so several keys would be written in a
# random order and the file would change from run to run.
FIXTURE_METADATA = {"writer": "tools/reference/optim_reference.py"}


def write_fixture(path):
    from safetensors.torch import load_file, save_file

    tensors = fixture_tensors()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fixture-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=FIXTURE_METADATA)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    back = load_file(path)
    if set(back) != set(tensors):
        raise SystemExit(f"fixture round-trip failed: names {sorted(back)}")
    for name, t in tensors.items():
        if back[name].dtype != t.dtype or not torch.equal(back[name], t):
            raise SystemExit(f"fixture round-trip failed: {name}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=DEFAULT_OUT_DIR,
                        help=f"output folder (default: {DEFAULT_OUT_DIR})")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)

    tensors, norms = build_golden()
    golden_path = os.path.join(args.out_dir, GOLDEN_NAME)
    data = encode(tensors)
    write_atomic(golden_path, data)
    back = read_golden(golden_path)
    if [n for n, _, _ in back] != [n for n, _ in tensors]:
        raise SystemExit("golden round-trip failed")

    fixture_path = os.path.join(args.out_dir, FIXTURE_NAME)
    write_fixture(fixture_path)

    by_name = dict(tensors)
    print(f"wrote {golden_path}")
    print(f"  tensors: {len(tensors)}, bytes: {len(data)}")
    print(f"  adamw final loss:      {by_name['adamw.loss'][-1].item():.17g}")
    print(f"  adamw_clip step norms: {[round(v, 6) for v in norms.tolist()]}")
    print(f"  clip.total_norm:       {by_name['clip.total_norm'].item():.17g}")
    print(f"wrote {fixture_path} ({os.path.getsize(fixture_path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
