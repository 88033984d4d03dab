#!/usr/bin/env python3
"""PyTorch reference of the metatape POCO model (models/POCO.md) and its golden files.

The module ``POCO(config, session_sizes)`` follows models/POCO.md exactly: its state_dict
keys are the parameter names of that file (``encoder.cross.q_proj.weight``,
``process.0.attn.qkv_proj.weight``, ``head.alpha.bias``, ...), attention is block-diagonal
by sample (by default a plain loop over samples with dense softmax attention), rotary
embeddings rotate pairs (2k, 2k+1) of the first dh/2 dims of every head, and the head is
the FiLM forecaster with zero-initialised ``head.alpha`` / ``head.beta``.

Usage:
    python3 tools/reference/poco_reference.py              # parameter counts of the named configs
    python3 tools/reference/poco_reference.py --golden     # write tests/golden/poco_tiny_v1.*
    python3 tools/reference/poco_reference.py --golden --out-dir DIR
    python3 tools/reference/poco_reference.py --e2e-ttt-golden   # write tests/golden/e2e_ttt_tiny_v1.bin

Only torch and the standard library are needed. The golden mode writes, in float64 with
``torch.manual_seed(0)``:
  - poco_tiny_v1.safetensors: every parameter (F64), written by hand; __metadata__ holds the
    config and the session sizes as JSON.
  - poco_tiny_v1.bin: MTGOLDEN version 1 (the writer of golden_mlp.py): inputs, targets,
    intermediates, prediction, loss, gradients ``grad.<name>``, and a second-order
    meta-learning case (``meta_grad.<name>``, ``query_loss``).
The E2E-TTT golden mode writes e2e_ttt_tiny_v1.bin (MTGOLDEN version 1): the same weights,
support and query batches of two samples with different neuron counts, 3 inner SGD steps on
the unit, session and latent embeddings with create_graph=True, and the meta-gradient of
query loss + mean inner loss w.r.t. every parameter (``meta_grad.<name>``).
"""

import argparse
import json
import math
import os
import struct
import sys
import warnings

# torch warns at import when numpy is absent; numpy is not needed here.
warnings.filterwarnings("ignore", message=".*NumPy.*")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_mlp import encode, read_golden, tensor_values, write_atomic  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_GOLDEN_DIR = os.path.join(REPO_ROOT, "tests", "golden")
GOLDEN_STEM = "poco_tiny_v1"

# ---------------------------------------------------------------------------------------------
# Configurations (models/POCO.md, "Named configurations")
# ---------------------------------------------------------------------------------------------

DEFAULTS = {
    "rotary_t_max": 100.0,
    "dropout_ffn": 0.2,
    "dropout_lin": 0.4,
}

CONFIGS = {
    "poco-paper": {
        "dim": 128,
        "dim_head": 64,
        "cross_heads": 1,
        "self_heads": 16,
        "num_latents": 8,
        "depth": 1,
        "seq_length": 64,
        "pred_length": 16,
        "patch": 16,
        "conditioning_dim": 1024,
        **DEFAULTS,
    },
    "poco-seed": {
        "dim": 512,
        "dim_head": 64,
        "cross_heads": 1,
        "self_heads": 8,
        "num_latents": 64,
        "depth": 2,
        "seq_length": 24,
        "pred_length": 12,
        "patch": 4,
        "conditioning_dim": 1024,
        **DEFAULTS,
    },
    # The golden-file configuration.
    "poco-tiny": {
        "dim": 32,
        "dim_head": 16,
        "cross_heads": 1,
        "self_heads": 2,
        "num_latents": 4,
        "depth": 2,
        "seq_length": 16,
        "pred_length": 4,
        "patch": 4,
        "conditioning_dim": 24,
        **DEFAULTS,
    },
}

PAPER_PARAMS_WITHOUT_EMBEDDINGS = 1_518_480  # stated in models/POCO.md
EMBEDDING_TABLES = ("unit_emb.weight", "session_emb.weight", "latent_emb.weight")


def context_length(cfg) -> int:
    return cfg["seq_length"] - cfg["pred_length"]


def check_config(cfg) -> None:
    tin = context_length(cfg)
    if tin <= 0:
        raise ValueError("seq_length must exceed pred_length")
    if tin % cfg["patch"] != 0:
        raise ValueError(f"context length {tin} is not a multiple of patch {cfg['patch']}")
    if cfg["dim_head"] % 4 != 0:
        raise ValueError("dim_head must be a multiple of 4 (rotary pairs over the first half)")


# ---------------------------------------------------------------------------------------------
# Rotary time embedding
# ---------------------------------------------------------------------------------------------


def rotary_inv_freq(dim_head: int, t_max: float) -> torch.Tensor:
    """inv_freq[k] = 2π / (t_min · (t_max/t_min)^(2k/(dh/2))), k = 0 .. dh/4 - 1, in float64."""
    t_min = t_max / 1000.0
    k = torch.arange(dim_head // 4, dtype=torch.float64)
    return 2.0 * math.pi / (t_min * (t_max / t_min) ** (2.0 * k / (dim_head // 2)))


def apply_rotary(x: torch.Tensor, times: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate x (n, heads, dh) at times (n,): pair k = dims (2k, 2k+1) for k < dh/4.

    y[2k] = x[2k] cos - x[2k+1] sin, y[2k+1] = x[2k+1] cos + x[2k] sin; dims dh/2.. unchanged.
    Angles are formed in float64 and cast to x's dtype.
    """
    n, heads, dh = x.shape
    angle = times.to(torch.float64)[:, None] * inv_freq[None, :]  # (n, dh/4)
    cos = angle.cos().to(x.dtype)[:, None, :]  # (n, 1, dh/4)
    sin = angle.sin().to(x.dtype)[:, None, :]
    rot = x[..., : dh // 2].reshape(n, heads, dh // 4, 2)
    x0, x1 = rot[..., 0], rot[..., 1]
    y0 = x0 * cos - x1 * sin
    y1 = x1 * cos + x0 * sin
    rotated = torch.stack((y0, y1), dim=-1).reshape(n, heads, dh // 2)
    return torch.cat((rotated, x[..., dh // 2:]), dim=-1)


# ---------------------------------------------------------------------------------------------
# Block-diagonal attention
# ---------------------------------------------------------------------------------------------


def _dense_attention(q, k, v, scale):
    """q (heads, nq, dh), k/v (heads, nk, dh) -> (heads, nq, dh); plain softmax attention."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def block_attention(q, k, v, q_sizes, k_sizes, impl="loop"):
    """Attention of q (nq, heads, dh) over k, v (nk, heads, dh), block-diagonal by sample.

    Sample b owns q rows q_sizes[:b].sum() .. + q_sizes[b] and the matching k/v rows.
    impl "loop": one dense attention per sample (the reference). impl "batched": the same maths
    as one batched matmul (reshape when all blocks have equal sizes, else padding with a key
    mask); used by the benchmark.
    """
    dh = q.shape[-1]
    scale = 1.0 / math.sqrt(dh)
    if impl == "loop":
        outs = []
        q0 = k0 = 0
        for nq, nk in zip(q_sizes, k_sizes):
            qb = q[q0:q0 + nq].transpose(0, 1)
            kb = k[k0:k0 + nk].transpose(0, 1)
            vb = v[k0:k0 + nk].transpose(0, 1)
            outs.append(_dense_attention(qb, kb, vb, scale).transpose(0, 1))
            q0 += nq
            k0 += nk
        return torch.cat(outs, dim=0)
    if impl != "batched":
        raise ValueError(f"unknown attention impl {impl!r}")
    b = len(q_sizes)
    heads = q.shape[1]
    if len(set(q_sizes)) == 1 and len(set(k_sizes)) == 1:
        nq, nk = q_sizes[0], k_sizes[0]
        qb = q.reshape(b, nq, heads, dh).transpose(1, 2)
        kb = k.reshape(b, nk, heads, dh).transpose(1, 2)
        vb = v.reshape(b, nk, heads, dh).transpose(1, 2)
        o = _dense_attention(qb, kb, vb, scale)  # (b, heads, nq, dh)
        return o.transpose(1, 2).reshape(b * nq, heads, dh)
    pad = torch.nn.utils.rnn.pad_sequence
    qb = pad(list(torch.split(q, list(q_sizes))), batch_first=True).transpose(1, 2)
    kb = pad(list(torch.split(k, list(k_sizes))), batch_first=True).transpose(1, 2)
    vb = pad(list(torch.split(v, list(k_sizes))), batch_first=True).transpose(1, 2)
    nk_max = kb.shape[2]
    key_ok = (torch.arange(nk_max, device=q.device)[None, :]
              < torch.tensor(list(k_sizes), device=q.device)[:, None])  # (b, nk)
    scores = torch.matmul(qb, kb.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~key_ok[:, None, None, :], float("-inf"))
    o = torch.matmul(torch.softmax(scores, dim=-1), vb).transpose(1, 2)  # (b, nq_max, heads, dh)
    return torch.cat([o[i, :n] for i, n in enumerate(q_sizes)], dim=0)


def attend(q, k, v, heads, dim_head, q_times, k_times, q_sizes, k_sizes, inv_freq,
           rotate_value, impl):
    """Split heads, rotate, attend block-diagonally, un-rotate (rotate_value), merge heads."""
    q = q.reshape(q.shape[0], heads, dim_head)
    k = k.reshape(k.shape[0], heads, dim_head)
    v = v.reshape(v.shape[0], heads, dim_head)
    q = apply_rotary(q, q_times, inv_freq)
    k = apply_rotary(k, k_times, inv_freq)
    if rotate_value:
        v = apply_rotary(v, k_times, inv_freq)
    o = block_attention(q, k, v, q_sizes, k_sizes, impl)
    if rotate_value:
        o = apply_rotary(o, -q_times, inv_freq)
    return o.reshape(o.shape[0], heads * dim_head)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class CrossAttention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.norm_context = nn.LayerNorm(dim, eps=1e-5)
        self.q_proj = nn.Linear(dim, inner, bias=False)
        self.kv_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, xq, xc, q_times, k_times, q_sizes, k_sizes, inv_freq, rotate_value, impl):
        q = self.q_proj(self.norm(xq))
        k, v = self.kv_proj(self.norm_context(xc)).chunk(2, dim=-1)
        o = attend(q, k, v, self.heads, self.dim_head, q_times, k_times, q_sizes, k_sizes,
                   inv_freq, rotate_value, impl)
        return self.out_proj(o)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.qkv_proj = nn.Linear(dim, 3 * inner, bias=False)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, x, times, sizes, inv_freq, rotate_value, impl):
        q, k, v = self.qkv_proj(self.norm(x)).chunk(3, dim=-1)
        o = attend(q, k, v, self.heads, self.dim_head, times, times, sizes, sizes, inv_freq,
                   rotate_value, impl)
        return self.out_proj(o)


class FeedForward(nn.Module):
    """GEGLU feed-forward: fc1 rows are (value, gate), hidden width 4D."""

    def __init__(self, dim, dropout):
        super().__init__()
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.fc1 = nn.Linear(dim, 8 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        a, gate = self.fc1(self.norm(x)).chunk(2, dim=-1)
        h = a * F.gelu(gate, approximate="none")
        return self.fc2(F.dropout(h, self.dropout, self.training))


class CrossBlock(nn.Module):
    """Parameter container of encoder / decoder: ``cross`` and ``ffn``."""

    def __init__(self, dim, heads, dim_head, dropout_ffn):
        super().__init__()
        self.cross = CrossAttention(dim, heads, dim_head)
        self.ffn = FeedForward(dim, dropout_ffn)


class ProcessBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, dropout_ffn):
        super().__init__()
        self.attn = SelfAttention(dim, heads, dim_head)
        self.ffn = FeedForward(dim, dropout_ffn)


class FiLMHead(nn.Module):
    def __init__(self, dim, context, conditioning_dim, pred_length):
        super().__init__()
        self.in_proj = nn.Linear(context, conditioning_dim)
        self.alpha = nn.Linear(dim, conditioning_dim)
        self.beta = nn.Linear(dim, conditioning_dim)
        self.out_proj = nn.Linear(conditioning_dim, pred_length)


class POCO(nn.Module):
    """POCO as defined in models/POCO.md.

    forward(x_all, unit_index, session_index, sample_sizes) with
      x_all (sum N, Tin), unit_index (sum N) int64, session_index (B) int64,
      sample_sizes: per-sample neuron counts N_b (sequence of B ints).
    Returns the prediction (sum N, pred_length), or (prediction, intermediates dict) when
    return_intermediates is set.
    """

    def __init__(self, config, session_sizes, attention_impl="loop"):
        super().__init__()
        cfg = dict(DEFAULTS)
        cfg.update(config)
        check_config(cfg)
        self.config = cfg
        self.session_sizes = [int(n) for n in session_sizes]
        self.attention_impl = attention_impl
        d, dh = cfg["dim"], cfg["dim_head"]
        tin = context_length(cfg)
        self.unit_emb = nn.Embedding(sum(self.session_sizes), d)
        self.session_emb = nn.Embedding(len(self.session_sizes), d)
        self.latent_emb = nn.Embedding(cfg["num_latents"], d)
        self.input_proj = nn.Linear(cfg["patch"], d)
        self.encoder = CrossBlock(d, cfg["cross_heads"], dh, cfg["dropout_ffn"])
        self.process = nn.ModuleList(
            [ProcessBlock(d, cfg["self_heads"], dh, cfg["dropout_ffn"]) for _ in range(cfg["depth"])])
        self.decoder = CrossBlock(d, cfg["cross_heads"], dh, cfg["dropout_ffn"])
        self.head = FiLMHead(d, tin, cfg["conditioning_dim"], cfg["pred_length"])
        self.register_buffer("inv_freq", rotary_inv_freq(dh, float(cfg["rotary_t_max"])),
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        """Embeddings N(0, 0.02), head.alpha / head.beta zeros; the rest keeps torch's init."""
        for emb in (self.unit_emb, self.session_emb, self.latent_emb):
            nn.init.normal_(emb.weight, mean=0.0, std=0.02)
        for lin in (self.head.alpha, self.head.beta):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def unit_offsets(self):
        offsets, acc = [], 0
        for n in self.session_sizes:
            offsets.append(acc)
            acc += n
        return offsets

    def make_unit_index(self, sample_sessions):
        """unit_index for samples that each hold every neuron of their session, in order."""
        offsets = self.unit_offsets()
        rows = []
        for s in sample_sessions:
            rows.extend(range(offsets[s], offsets[s] + self.session_sizes[s]))
        return torch.tensor(rows, dtype=torch.int64)

    def forward(self, x_all, unit_index, session_index, sample_sizes, return_intermediates=False):
        cfg = self.config
        impl = self.attention_impl
        sizes = [int(n) for n in sample_sizes]
        b = len(sizes)
        n_total = sum(sizes)
        p, tin, m = cfg["patch"], context_length(cfg), cfg["num_latents"]
        n_patches = tin // p
        if x_all.shape != (n_total, tin):
            raise ValueError(f"x_all has shape {tuple(x_all.shape)}, expected ({n_total}, {tin})")
        if session_index.shape != (b,) or unit_index.shape != (n_total,):
            raise ValueError("session_index must be (B) and unit_index (sum N)")
        dev = x_all.device
        inv_freq = self.inv_freq.to(dev)

        # 1. Tokens.
        neuron_session = torch.repeat_interleave(session_index, torch.tensor(sizes, device=dev))
        unit = self.unit_emb.weight[unit_index] + self.session_emb.weight[neuron_session]
        patches = x_all.reshape(n_total, n_patches, p)
        tokens = (unit[:, None, :] + self.input_proj(patches)).reshape(n_total * n_patches, -1)
        token_times = (torch.arange(n_patches, dtype=torch.float64, device=dev) * p).repeat(n_total)
        token_sizes = [n * n_patches for n in sizes]

        # 2. Latents.
        lat = self.latent_emb.weight.repeat(b, 1)
        lat_times = (torch.arange(m, dtype=torch.float64, device=dev) * tin / m).repeat(b)
        lat_sizes = [m] * b

        # 3. Output queries at time Tin.
        out_times = torch.full((n_total,), float(tin), dtype=torch.float64, device=dev)

        # 4. Perceiver-IO.
        enc = self.encoder
        lat = lat + enc.cross(lat, tokens, lat_times, token_times, lat_sizes, token_sizes,
                              inv_freq, True, impl)
        lat = lat + enc.ffn(lat)
        lat_encoder = lat
        drop = cfg["dropout_lin"]
        for blk in self.process:
            lat = lat + F.dropout(blk.attn(lat, lat_times, lat_sizes, inv_freq, True, impl),
                                  drop, self.training)
            lat = lat + F.dropout(blk.ffn(lat), drop, self.training)
        dec = self.decoder
        q = unit + dec.cross(unit, lat, out_times, lat_times, sizes, lat_sizes, inv_freq, False,
                             impl)
        e = q + dec.ffn(q)

        # 5. FiLM head.
        alpha = self.head.alpha(e)
        beta = self.head.beta(e)
        h = F.relu(self.head.in_proj(x_all))
        prediction = self.head.out_proj(h * alpha + beta)
        if not return_intermediates:
            return prediction
        inter = {
            "unit": unit,
            "tokens": tokens,
            "latents_encoder": lat_encoder,
            "latents_process": lat,
            "e": e,
            "alpha": alpha,
            "beta": beta,
            "h": h,
        }
        return prediction, inter


def mse(prediction, targets):
    return ((prediction - targets) ** 2).mean()


def count_parameters(model, exclude=()):
    return sum(t.numel() for n, t in model.named_parameters() if n not in exclude)


# ---------------------------------------------------------------------------------------------
# safetensors, written and read by hand (struct + json)
# ---------------------------------------------------------------------------------------------

_ST_DTYPES = {torch.float64: ("F64", "d"), torch.float32: ("F32", "f")}


def encode_safetensors(tensors, metadata):
    """[(name, tensor)] + {str: str} -> safetensors bytes (header padded to 8 bytes)."""
    header = {}
    chunks = []
    offset = 0
    for name, t in tensors:
        code, fmt = _ST_DTYPES[t.dtype]
        values = t.detach().contiguous().reshape(-1).tolist()
        data = struct.pack("<%d%s" % (len(values), fmt), *values)
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((-(8 + len(hbytes))) % 8)
    return struct.pack("<Q", len(hbytes)) + hbytes + b"".join(chunks)


def read_safetensors(path):
    """Returns ({name: (dtype, shape, values)}, metadata)."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    base = 8 + hlen
    out = {}
    codes = {"F64": "d", "F32": "f"}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        fmt = codes[info["dtype"]]
        count = (end - begin) // struct.calcsize(fmt)
        values = list(struct.unpack_from("<%d%s" % (count, fmt), data, base + begin))
        out[name] = (info["dtype"], info["shape"], values)
    return out, metadata


# ---------------------------------------------------------------------------------------------
# Golden case
# ---------------------------------------------------------------------------------------------

TINY_SESSION_SIZES = [5, 7, 3]
TINY_SAMPLE_SESSIONS = [0, 1, 0, 2]
INNER_LR = 0.05
FILM_INIT_STD = 0.1
INNER_PARAMS = ("unit_emb.weight", "session_emb.weight")


def make_tiny_model():
    """The golden model (float64, call with float64 as the default dtype): torch.manual_seed(0),
    POCO(poco-tiny, TINY_SESSION_SIZES), head.alpha / head.beta overwritten with N(0, 0.1) draws,
    evaluation mode. Returns (config, model); the weights are those of poco_tiny_v1.safetensors."""
    torch.manual_seed(0)
    cfg = dict(CONFIGS["poco-tiny"])
    model = POCO(cfg, TINY_SESSION_SIZES)
    # Exercise the FiLM path: replace the zero init of head.alpha / head.beta.
    with torch.no_grad():
        for lin in (model.head.alpha, model.head.beta):
            lin.weight.copy_(torch.randn_like(lin.weight) * FILM_INIT_STD)
            lin.bias.copy_(torch.randn_like(lin.bias) * FILM_INIT_STD)
    model.eval()
    return cfg, model


def build_golden():
    """Returns (config, params [(name, tensor)], bin tensors [(name, tensor)], metadata)."""
    dt = torch.float64
    prev_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        cfg, model = make_tiny_model()

        sizes = [TINY_SESSION_SIZES[s] for s in TINY_SAMPLE_SESSIONS]
        n_total, tin = sum(sizes), context_length(cfg)
        session_index = torch.tensor(TINY_SAMPLE_SESSIONS, dtype=torch.int64)
        unit_index = model.make_unit_index(TINY_SAMPLE_SESSIONS)
        x_all = torch.randn(n_total, tin)
        targets = torch.randn(n_total, cfg["pred_length"])
        x_query = torch.randn(n_total, tin)
        targets_query = torch.randn(n_total, cfg["pred_length"])

        names = [n for n, _ in model.named_parameters()]
        params = dict(model.named_parameters())

        # Support batch: forward, loss, gradients of every parameter (graph kept for the meta case).
        prediction, inter = model(x_all, unit_index, session_index, sizes, return_intermediates=True)
        loss = mse(prediction, targets)
        grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
        grad = dict(zip(names, grads))

        # Inner SGD step on the two session-specific tables only, then the query loss.
        fast = {n: params[n] - INNER_LR * grad[n] for n in INNER_PARAMS}
        overrides = dict(params)
        overrides.update(fast)
        query_prediction = torch.func.functional_call(
            model, overrides, (x_query, unit_index, session_index, sizes))
        query_loss = mse(query_prediction, targets_query)
        meta = torch.autograd.grad(query_loss, [params[n] for n in names])
        meta_grad = dict(zip(names, meta))

        # Self-checks: the batched attention agrees with the per-sample loop.
        model.attention_impl = "batched"
        with torch.no_grad():
            pred_b = model(x_all, unit_index, session_index, sizes)
        model.attention_impl = "loop"
        if not torch.allclose(pred_b, prediction, rtol=1e-12, atol=1e-12):
            raise SystemExit("self-check failed: batched attention differs from the loop")

        f64 = lambda v: torch.tensor([float(a) for a in v], dtype=dt)  # noqa: E731
        tensors = [
            ("x_all", x_all),
            ("unit_index", unit_index.to(dt)),
            ("session_index", session_index.to(dt)),
            ("sample_sizes", f64(sizes)),
            ("sample_sessions", f64(TINY_SAMPLE_SESSIONS)),
            ("session_sizes", f64(TINY_SESSION_SIZES)),
            ("targets", targets),
            ("unit", inter["unit"]),
            ("tokens", inter["tokens"]),
            ("latents_encoder", inter["latents_encoder"]),
            ("latents_process", inter["latents_process"]),
            ("e", inter["e"]),
            ("alpha", inter["alpha"]),
            ("beta", inter["beta"]),
            ("h", inter["h"]),
            ("prediction", prediction),
            ("loss", loss),
        ]
        tensors += [("grad." + n, grad[n]) for n in names]
        tensors += [
            ("inner_lr", torch.tensor(INNER_LR, dtype=dt)),
            ("query.x_all", x_query),
            ("query.targets", targets_query),
        ]
        tensors += [("fast." + n, fast[n]) for n in INNER_PARAMS]
        tensors += [
            ("query.prediction", query_prediction),
            ("query_loss", query_loss),
        ]
        tensors += [("meta_grad." + n, meta_grad[n]) for n in names]
        tensors = [(n, t.detach().to(dt).contiguous()) for n, t in tensors]

        param_list = [(n, params[n].detach().clone()) for n in names]
        metadata = {
            "format": "metatape POCO parameters (models/POCO.md), float64",
            "config": json.dumps(cfg, sort_keys=True),
            "session_sizes": json.dumps(TINY_SESSION_SIZES),
            "seed": "0",
            "note": ("golden test parameters: torch.manual_seed(0) init in float64, then "
                     "head.alpha.weight/bias and head.beta.weight/bias overwritten with "
                     f"N(0, {FILM_INIT_STD}) draws (NOT the zero init of models/POCO.md) so "
                     "that the FiLM path is exercised"),
            "golden": GOLDEN_STEM + ".bin",
        }
        return cfg, param_list, tensors, metadata
    finally:
        torch.set_default_dtype(prev_dtype)


# ---------------------------------------------------------------------------------------------
# E2E-TTT golden case: the second-order meta-gradient through K inner SGD steps
# ---------------------------------------------------------------------------------------------

E2E_GOLDEN_STEM = "e2e_ttt_tiny_v1"
E2E_DATA_SEED = 1
E2E_INNER_STEPS = 3
E2E_INNER_LR = 0.5
# Test-time parameters: the tables whose names start with metatape's default prefixes
# "unit_emb." and "session_emb.", plus "latent_emb.".
E2E_INNER_PARAMS = ("unit_emb.weight", "session_emb.weight", "latent_emb.weight")
# Two samples of different neuron counts (sessions 1 and 2: 7 and 3 neurons) in each batch; the
# query batch holds them in the other order.
E2E_SUPPORT_SESSIONS = [1, 2]
E2E_QUERY_SESSIONS = [2, 1]


def build_e2e_ttt_golden():
    """Second-order E2E-TTT on the golden model, as metatape's meta::e2e_ttt_gradient computes it.

    Inner loop: E2E_INNER_STEPS SGD steps (lr E2E_INNER_LR) of E2E_INNER_PARAMS on the one
    support batch, each step's gradient taken with create_graph=True at the current fast values;
    the inner losses are the support losses before each step. Meta-loss = query loss at the
    adapted parameters + mean of the inner losses; its gradient w.r.t. every parameter.
    Returns [(name, tensor)] for the MTGOLDEN file.
    """
    dt = torch.float64
    prev_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        cfg, model = make_tiny_model()
        torch.manual_seed(E2E_DATA_SEED)
        tin, pred = context_length(cfg), cfg["pred_length"]

        def batch(sessions):
            sizes = [TINY_SESSION_SIZES[s] for s in sessions]
            n = sum(sizes)
            return {
                "sample_sessions": sessions,
                "sample_sizes": sizes,
                "session_index": torch.tensor(sessions, dtype=torch.int64),
                "unit_index": model.make_unit_index(sessions),
                "x_all": torch.randn(n, tin),
                "targets": torch.randn(n, pred),
            }

        support = batch(E2E_SUPPORT_SESSIONS)
        query = batch(E2E_QUERY_SESSIONS)
        names = [n for n, _ in model.named_parameters()]
        params = dict(model.named_parameters())

        def loss_at(weights, b):
            out = torch.func.functional_call(
                model, weights, (b["x_all"], b["unit_index"], b["session_index"],
                                 b["sample_sizes"]))
            return mse(out, b["targets"])

        current = dict(params)
        inner_losses = []
        for _ in range(E2E_INNER_STEPS):
            loss = loss_at(current, support)
            g = torch.autograd.grad(loss, [current[n] for n in E2E_INNER_PARAMS],
                                    create_graph=True)
            for n, gn in zip(E2E_INNER_PARAMS, g):
                current[n] = current[n] - E2E_INNER_LR * gn
            inner_losses.append(loss)
        query_loss = loss_at(current, query)
        meta_loss = query_loss + torch.stack(inner_losses).mean()
        meta = torch.autograd.grad(meta_loss, [params[n] for n in names])

        # Self-check: the steps matter (the support loss falls by more than 1% per step).
        values = [float(v.detach()) for v in inner_losses]
        if not all(b < 0.99 * a for a, b in zip(values, values[1:])):
            raise SystemExit(f"self-check failed: inner losses {values} do not fall")

        f64 = lambda v: torch.tensor([float(a) for a in v], dtype=dt)  # noqa: E731
        tensors = [
            ("inner_lr", torch.tensor(E2E_INNER_LR, dtype=dt)),
            ("inner_steps", torch.tensor(float(E2E_INNER_STEPS), dtype=dt)),
            # Sum of |w| over every parameter: ties the file to the weights of
            # poco_tiny_v1.safetensors, which the test loads.
            ("param_abs_sum", sum(params[n].detach().abs().sum() for n in names)),
        ]
        for prefix, b in (("support.", support), ("query.", query)):
            tensors += [
                (prefix + "sample_sessions", f64(b["sample_sessions"])),
                (prefix + "sample_sizes", f64(b["sample_sizes"])),
                (prefix + "unit_index", b["unit_index"].to(dt)),
                (prefix + "x_all", b["x_all"]),
                (prefix + "targets", b["targets"]),
            ]
        tensors += [
            ("inner_losses", torch.stack(inner_losses)),
        ]
        tensors += [("fast." + n, current[n]) for n in E2E_INNER_PARAMS]
        tensors += [
            ("query_loss", query_loss),
            ("meta_loss", meta_loss),
        ]
        tensors += [("meta_grad." + n, g) for n, g in zip(names, meta)]
        return [(n, t.detach().to(dt).contiguous()) for n, t in tensors]
    finally:
        torch.set_default_dtype(prev_dtype)


def write_e2e_ttt_golden(out_dir):
    tensors = build_e2e_ttt_golden()
    path = os.path.join(out_dir, E2E_GOLDEN_STEM + ".bin")
    data = encode(tensors)
    write_atomic(path, data)
    verify_bin(path, tensors)
    by_name = dict(tensors)
    print(f"wrote {path}")
    print(f"  tensors:      {len(tensors)}")
    print(f"  bytes:        {len(data)}")
    print("  inner_losses: " + ", ".join(f"{v:.17g}" for v in by_name["inner_losses"].tolist()))
    print(f"  query_loss:   {by_name['query_loss'].item():.17g}")
    print(f"  meta_loss:    {by_name['meta_loss'].item():.17g}")
    print("  round-trip:   ok")


def bits(values, fmt="d"):
    return struct.pack("<%d%s" % (len(values), fmt), *values)


def verify_bin(path, tensors):
    read = read_golden(path)
    if len(read) != len(tensors):
        raise SystemExit(f"round-trip failed: wrote {len(tensors)} tensors, read {len(read)}")
    for (name, t), (rname, rshape, rvalues) in zip(tensors, read):
        if name != rname or list(t.shape) != rshape or bits(tensor_values(t)) != bits(rvalues):
            raise SystemExit(f"round-trip failed at {name}")


def verify_safetensors(path, params, metadata):
    read, meta = read_safetensors(path)
    if meta != metadata:
        raise SystemExit("safetensors round-trip failed: metadata differs")
    if list(read) != [n for n, _ in params]:
        raise SystemExit("safetensors round-trip failed: tensor names differ")
    for name, t in params:
        dtype, shape, values = read[name]
        if dtype != "F64" or shape != list(t.shape) or bits(values) != bits(tensor_values(t)):
            raise SystemExit(f"safetensors round-trip failed at {name}")
    # Cross-check with the safetensors package when it is installed (optional).
    try:
        from safetensors import safe_open
    except ImportError:
        return "hand reader only (safetensors package not installed)"
    with safe_open(path, framework="pt") as f:
        if f.metadata() != metadata:
            raise SystemExit("safetensors package: metadata differs")
        if sorted(f.keys()) != sorted(n for n, _ in params):
            raise SystemExit("safetensors package: keys differ")
        for name, t in params:
            got = f.get_tensor(name)
            if got.dtype != torch.float64 or not torch.equal(got, t):
                raise SystemExit(f"safetensors package: {name} differs")
    return "hand reader and safetensors package"


def write_golden(out_dir):
    cfg, params, tensors, metadata = build_golden()
    st_path = os.path.join(out_dir, GOLDEN_STEM + ".safetensors")
    bin_path = os.path.join(out_dir, GOLDEN_STEM + ".bin")
    st_data = encode_safetensors(params, metadata)
    bin_data = encode(tensors)
    write_atomic(st_path, st_data)
    write_atomic(bin_path, bin_data)
    checked_with = verify_safetensors(st_path, params, metadata)
    verify_bin(bin_path, tensors)
    by_name = dict(tensors)
    print(f"wrote {st_path}")
    print(f"  parameters:   {len(params)} tensors, "
          f"{sum(t.numel() for _, t in params)} values, {len(st_data)} bytes")
    print(f"  round-trip:   ok ({checked_with})")
    print(f"wrote {bin_path}")
    print(f"  tensors:      {len(tensors)}")
    print(f"  bytes:        {len(bin_data)}")
    print(f"  loss:         {by_name['loss'].item():.17g}")
    print(f"  query_loss:   {by_name['query_loss'].item():.17g}")
    print("  round-trip:   ok")


def print_counts():
    for name in ("poco-paper", "poco-seed"):
        cfg = CONFIGS[name]
        # One session of one neuron: the embedding tables are excluded from the count anyway.
        model = POCO(cfg, [1])
        n_body = count_parameters(model, EMBEDDING_TABLES)
        print(f"{name}: {n_body:,} parameters besides the embedding tables "
              f"(latent_emb {cfg['num_latents'] * cfg['dim']:,}; "
              f"+{cfg['dim']} per neuron and per session)")
        if name == "poco-paper":
            ok = n_body == PAPER_PARAMS_WITHOUT_EMBEDDINGS
            print(f"  models/POCO.md states {PAPER_PARAMS_WITHOUT_EMBEDDINGS:,}: "
                  f"{'matches' if ok else 'MISMATCH'}")
            if not ok:
                return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", action="store_true",
                        help="write the tiny-config golden files (float64, seed 0)")
    parser.add_argument("--out-dir", default=DEFAULT_GOLDEN_DIR,
                        help=f"folder of the golden files (default: {DEFAULT_GOLDEN_DIR})")
    parser.add_argument("--e2e-ttt-golden", action="store_true",
                        help=f"write {E2E_GOLDEN_STEM}.bin: the second-order E2E-TTT meta-gradient "
                             "of the golden model through 3 inner steps (float64)")
    args = parser.parse_args(argv)
    rc = print_counts()
    if args.golden:
        write_golden(args.out_dir)
    if args.e2e_ttt_golden:
        write_e2e_ttt_golden(args.out_dir)
    return rc


if __name__ == "__main__":
    sys.exit(main())
