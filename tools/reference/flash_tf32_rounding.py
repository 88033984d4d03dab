#!/usr/bin/env python3
"""How far the f32 tensor-core attention kernels (kernels/cuda/flash_attention.cu, MmaTf32) can
land from the CPU loops, by simulating their rounding in float64 on the shapes of
tests/test_cuda_flash_attention.cpp. It sets the tests' kFlashTf32 tolerances and checks that the
3xTF32 kernels stay inside kFlashF32.

What is simulated, per product of the kernels (S = Q K^T, dP = dO V^T, the double backward's
a.k, q.b, dO.c, and the second products P V, dS K, dS^T Q, P^T dO, gS K, gdP V, ...):
  tf32  (1xTF32, cuda_matmul_allow_tf32): both operands rounded to TF32 (round to nearest, ties
        away: cvt.rna.tf32.f32), the products and sums exact;
  3xtf32: each operand x = big + small, big = tf32(x), small = tf32(x - big), the product taken as
        big_a big_b + big_a small_b + small_a big_b.
Everything else (exp, the row statistics D, r, E, the online softmax) is exact: the f32 rounding
of sums and exponentials is the same in the SIMT kernels and already inside kFlashF32. The
reference is the same formulas without the rounding, in float64 on the f32 inputs: the CPU loops'
computation.

For each output it prints the smallest absolute tolerance that passes with the relative
tolerance given (|sim - ref| <= atol + rtol |ref|), the maximum over seeds and shapes.
  python3 tools/reference/flash_tf32_rounding.py            # the tests' shapes, 3 seeds
"""
import argparse

import numpy as np


def tf32(x):
    """Round f32 values to TF32 (10 explicit mantissa bits), to nearest, ties away from zero."""
    b = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x1000) & 0xFFFFE000).astype(np.uint32)
    return b.view(np.float32)


def product(mode):
    """A @ B as the kernels compute it (A, B float64 holding f32 values)."""
    def exact(a, b):
        return a @ b

    def one(a, b):
        return tf32(a.astype(np.float32)).astype(np.float64) @ tf32(b.astype(np.float32)).astype(np.float64)

    def three(a, b):
        a32, b32 = a.astype(np.float32), b.astype(np.float32)
        ab, bb = tf32(a32), tf32(b32)
        a_s, b_s = tf32(a32 - ab), tf32(b32 - bb)
        ab, bb, a_s, b_s = (x.astype(np.float64) for x in (ab, bb, a_s, b_s))
        return ab @ bb + ab @ b_s + a_s @ bb

    return {"exact": exact, "tf32": one, "3xtf32": three}[mode]


def sample(q, k, v, dO, a, b, c, scale, mm):
    """Forward, backward and double backward of one sample and head: q, dO, a (n, d); k, v, b, c
    (m, d). Returns a dict of outputs. The statistics (lse, D) are exact on both sides: the
    kernels read the CPU's lse and o in the tests."""
    s_ex = scale * (q @ k.T)
    lse = np.log(np.exp(s_ex - s_ex.max(1, keepdims=True)).sum(1)) + s_ex.max(1)
    P_ex = np.exp(s_ex - lse[:, None])
    o_ex = P_ex @ v
    D = (dO * o_ex).sum(1)  # from the CPU's o: exact

    S = scale * mm(q, k.T)
    m = S.max(1, keepdims=True)
    w_ = np.exp(S - m)
    o = mm(w_, v) / w_.sum(1, keepdims=True)  # the forward: P V with P rounded
    lse_sim = np.log(w_.sum(1)) + m[:, 0]
    P = np.exp(S - lse[:, None])
    dP = mm(dO, v.T)
    dS = P * (dP - D[:, None])
    dq = scale * mm(dS, k)
    dk = scale * mm(dS.T, q)
    dv = mm(P.T, dO)
    # double backward (flash_attention.md): W = s (a k^T + q b^T), u = dO c^T
    W = scale * (mm(a, k.T) + mm(q, b.T))
    u = mm(dO, c.T)
    r = (P * W).sum(1)
    t = (P * W * dP).sum(1)
    wsum = (P * u).sum(1)
    E = t - 2 * r * D + wsum
    dpD = dP - D[:, None]
    gP = W * dpD - r[:, None] * dP + u
    cds = P * dpD
    cgs = P * (gP - E[:, None])
    cgdp = P * (W - r[:, None])
    gq = scale * (mm(cds, b) + mm(cgs, k))
    gk = scale * (mm(cds.T, a) + mm(cgs.T, q))
    gv = mm(cgdp.T, dO)
    gdo = mm(cgdp, v) + mm(P, c)
    return {"o": o, "lse": lse_sim, "dq": dq, "dk": dk, "dv": dv, "gq": gq, "gk": gk, "gv": gv, "gdO": gdo}


def run(shapes, modes, seeds, rtol1, rtol2):
    need = {}
    for (ql, kl, H, d, rng) in shapes:
        for seed in seeds:
            g = np.random.default_rng(seed)
            f32 = lambda *shape, lo=-1.0, hi=1.0: g.uniform(lo, hi, shape).astype(np.float32).astype(np.float64)
            scale = 1.0 / np.sqrt(d)
            for n, m in zip(ql, kl):
                if n == 0 or m == 0:
                    continue
                for h in range(H):
                    x = dict(q=f32(n, d, lo=-rng, hi=rng), k=f32(m, d, lo=-rng, hi=rng), v=f32(m, d),
                             dO=f32(n, d), a=f32(n, d), b=f32(m, d), c=f32(m, d))
                    ref = sample(**x, scale=scale, mm=product("exact"))
                    for mode in modes:
                        sim = sample(**x, scale=scale, mm=product(mode))
                        for name, r in ref.items():
                            rtol = rtol1 if name in ("o", "lse", "dq", "dk", "dv") else rtol2
                            excess = np.abs(sim[name] - r) - rtol * np.abs(r)
                            key = (mode, d, name)
                            need[key] = max(need.get(key, 0.0), float(excess.max()))
    return need


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    q_lengths, k_lengths = [5, 0, 17, 0, 33, 2], [7, 3, 1, 0, 70, 129]
    shapes = [(q_lengths, k_lengths, 3, 64, 1.0), (q_lengths, k_lengths, 2, 128, 1.0),
              (q_lengths, k_lengths, 2, 32, 1.0), ([16, 5], [100, 33], 2, 64, 1.0),
              ([64, 8], [3000, 2100], 2, 64, 1.0)]
    seeds = range(441, 441 + args.seeds)
    # kFlashF32 (2e-5, 2e-4) / kFlashF32Second (2e-4, 2e-3) for 3xTF32; the relative parts of
    # kFlashTf32 (2^-11 * 4 ~ 2e-3) / kFlashTf32Second (1e-2) for 1xTF32.
    need3 = run(shapes, ["3xtf32"], seeds, 2e-4, 2e-3)
    need1 = run(shapes, ["tf32"], seeds, 2e-3, 1e-2)
    print("smallest atol that passes (max over seeds and samples), by output:")
    for need in (need3, need1):
        for (mode, d, name), v in sorted(need.items()):
            print(f"  {mode:7s} dh {d:3d} {name:4s} {max(v, 0.0):.2e}")


if __name__ == "__main__":
    main()
