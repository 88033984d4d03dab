#!/usr/bin/env python3
"""The fragment data flow of the f32 tensor-core attention kernels (kernels/cuda/flash_attention.cu,
MmaTf32), simulated lane by lane in float64: the m16n8k16 pair layout of the 16-bit kernels fed
to two m16n8k8 TF32 instructions (PTX ISA layout: A a0=(g,t) a1=(g+8,t) a2=(g,t+4) a3=(g+8,t+4);
B b0=(k=t,n=g) b1=(k=t+4,n=g); C/D as m16n8k16) through the k renumbering the kernels use
(physical 2t -> t, 2t+1 -> t+4, then 2t+8, 2t+9). Checks, with the rounding left out (exact
products):
  1. the abstract product: random A (16x16), B (16x8) as pair fragments -> A @ B;
  2. the kernels' own addressing: stage_tile_raw (16-byte vectors, rows of kD + 4 floats, the
     padding NaN so that a stray read shows), mma_load_rows (global pairs, rows past the block
     zero; MmaRows<..., false>, which the f32 kernels use, reads the same pairs at each use),
     mma_scores (adjacent pairs of a tile row) and mma_pack + mma_accumulate (two-row pairs),
     for kD 32/64/128 and partial blocks and tiles.
The TF32 split itself (prep_a / mma_prep: big and small parts) is exact arithmetic here; its
rounding is simulated by tools/reference/flash_tf32_rounding.py.
It mirrors the CUDA code by hand: change both together. Run: python3
tools/reference/flash_mma_tf32_layout.py (exits non-zero on a mismatch).
"""
import numpy as np

rng = np.random.default_rng(0)
rng = np.random.default_rng(0)

def mma_1688(dl, al, bl):
    """dl[lane][4] += the m16n8k8 product of the lane fragments al[lane][4], bl[lane][2]."""
    A8 = np.zeros((16, 8)); B8 = np.zeros((8, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A8[g][t], A8[g + 8][t], A8[g][t + 4], A8[g + 8][t + 4] = al[lane]
        B8[t][g], B8[t + 4][g] = bl[lane]
    D8 = A8 @ B8
    for lane in range(32):
        g, t = lane // 4, lane % 4
        dl[lane][0] += D8[g][2 * t]; dl[lane][1] += D8[g][2 * t + 1]
        dl[lane][2] += D8[g + 8][2 * t]; dl[lane][3] += D8[g + 8][2 * t + 1]

def frag_mma(d, a, b0, b1):
    """MmaTf32::mma (one term, exact arithmetic): a[lane] = 4 pairs (lo, hi), b0/b1[lane] = pair."""
    def half(r0, r8, b):
        al = [[r0[l][0], r8[l][0], r0[l][1], r8[l][1]] for l in range(32)]
        bl = [[b[l][0], b[l][1]] for l in range(32)]
        mma_1688(d, al, bl)
    half([a[l][0] for l in range(32)], [a[l][1] for l in range(32)], b0)
    half([a[l][2] for l in range(32)], [a[l][3] for l in range(32)], b1)

def check_abstract():
    A = rng.standard_normal((16, 16)); B = rng.standard_normal((16, 8))
    # m16n8k16 fragments (pairs of adjacent k), as documented in the file
    a = []; b0 = []; b1 = []
    for lane in range(32):
        g, t = lane // 4, lane % 4
        a.append([(A[g][2*t], A[g][2*t+1]), (A[g+8][2*t], A[g+8][2*t+1]),
                  (A[g][2*t+8], A[g][2*t+9]), (A[g+8][2*t+8], A[g+8][2*t+9])])
        b0.append((B[2*t][g], B[2*t+1][g])); b1.append((B[2*t+8][g], B[2*t+9][g]))
    d = [[0.0] * 4 for _ in range(32)]
    frag_mma(d, a, b0, b1)
    ref = A @ B; err = 0
    for lane in range(32):
        g, t = lane // 4, lane % 4
        exp = [ref[g][2*t], ref[g][2*t+1], ref[g+8][2*t], ref[g+8][2*t+1]]
        err = max(err, max(abs(x - y) for x, y in zip(d[lane], exp)))
    print("abstract m16n8k16 via 2 x m16n8k8: max err", err)
    assert err < 1e-12

def check_kernels(kD=64, nrows=13, n=50):
    """Scores S = X T^T (mma_load_rows + mma_scores) and O = C T (mma_pack + mma_accumulate)
    with the kernels' addressing: global rows (N, H, kD), staged tile rows of stride kD + 4."""
    H, h = 3, 1
    ST = kD + 4; kMmaTile = 64
    N = 40
    row0 = 7; tile0 = 5
    X = rng.standard_normal((N, H, kD)).ravel()
    Tg = rng.standard_normal((200, H, kD)).ravel()
    # stage_tile_raw: 16-byte vectors of 4 floats
    tile = np.full(kMmaTile * ST, np.nan)  # padding left NaN: any read of it poisons the result
    kPer = 4; kVecs = kD // kPer
    for idx in range(kMmaTile * kVecs):
        j, c = idx // kVecs, (idx % kVecs) * kPer
        val = Tg[((tile0 + j) * H + h) * kD + c:((tile0 + j) * H + h) * kD + c + 4] if j < n else np.zeros(4)
        assert (((tile0 + j) * H + h) * kD + c) % 4 == 0 and (j * ST + c) % 4 == 0
        tile[j * ST + c:j * ST + c + 4] = val
    # mma_load_rows
    xf = [[[None] * 4 for _ in range(kD // 16)] for _ in range(32)]
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for half in range(2):
            r = g + 8 * half
            base = ((row0 + r) * H + h) * kD + 2 * t
            for s in range(kD // 16):
                assert (base + 16 * s) % 2 == 0
                xf[lane][s][half] = (X[base + 16*s], X[base + 16*s + 1]) if r < nrows else (0., 0.)
                xf[lane][s][2+half] = (X[base + 16*s + 8], X[base + 16*s + 9]) if r < nrows else (0., 0.)
    Xm = X.reshape(N, H, kD)[row0:row0 + 16, h, :].copy(); Xm[nrows:] = 0
    Tm = np.zeros((kMmaTile, kD)); Tm[:n] = Tg.reshape(200, H, kD)[tile0:tile0 + n, h, :]
    for warp in range(4):
        j0 = 16 * warp
        if j0 >= n: continue
        # mma_scores
        s = [[[0.0] * 4 for _ in range(32)] for _ in range(2)]
        for st in range(kD // 16):
            for nt in range(2):
                b0 = []; b1 = []
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    tr = (j0 + 8 * nt + g) * ST + 16 * st + 2 * t
                    assert tr % 2 == 0
                    b0.append((tile[tr], tile[tr + 1])); b1.append((tile[tr + 8], tile[tr + 9]))
                frag_mma(s[nt], [xf[l][st] for l in range(32)], b0, b1)
        ref = Xm @ Tm.T
        err = 0
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for nt in range(2):
                for i in range(4):
                    row = g + 8 * (i // 2); key = j0 + 8 * nt + 2 * t + (i & 1)
                    err = max(err, abs(s[nt][lane][i] - ref[row][key]))
        assert err < 1e-9, err
        # mma_pack + mma_accumulate with a coefficient C in the score registers
        C = rng.standard_normal((16, kMmaTile))
        c = [[[C[lane//4 + 8*(i//2)][j0 + 8*nt + 2*(lane%4) + (i&1)] for i in range(4)] for lane in range(32)] for nt in range(2)]
        cf = [[(c[0][l][0], c[0][l][1]), (c[0][l][2], c[0][l][3]), (c[1][l][0], c[1][l][1]), (c[1][l][2], c[1][l][3])] for l in range(32)]
        acc = [[[0.0] * 4 for _ in range(32)] for _ in range(kD // 8)]
        for nd in range(kD // 8):
            b0 = []; b1 = []
            for lane in range(32):
                g, t = lane // 4, lane % 4
                tc = (j0 + 2 * t) * ST + 8 * nd + g
                b0.append((tile[tc], tile[tc + ST])); b1.append((tile[tc + 8 * ST], tile[tc + 9 * ST]))
            frag_mma(acc[nd], cf, b0, b1)
        ref = C[:, j0:j0 + 16] @ Tm[j0:j0 + 16]
        err = 0
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for nd in range(kD // 8):
                for i in range(4):
                    row = g + 8 * (i // 2); col = 8 * nd + 2 * t + (i & 1)
                    err = max(err, abs(acc[nd][lane][i] - ref[row][col]))
        assert err < 1e-9, err
    print(f"kernel addressing kD={kD} nrows={nrows} n={n}: scores and accumulate match")

if __name__ == "__main__":
    check_abstract()
    for kD in (32, 64, 128):
        for nrows, n in ((16, 64), (13, 50), (1, 1), (5, 17)):
            check_kernels(kD, nrows, n)
