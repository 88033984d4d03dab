#!/usr/bin/env python3
"""Generate the PyTorch golden file for the metatape MLP meta-learning test.

Builds, in float64 with ``torch.manual_seed(0)``, a 2-layer MLP

    h   = gelu(x @ W1 + b1)        (exact, erf-based gelu)
    out = h @ W2 + b2
    loss = ((out - y) ** 2).mean()

and one MAML inner step on a support set followed by a query loss. Stores the
inputs, parameters, forward values, inner gradients, fast weights, the
second-order meta-gradient and the first-order (FOMAML) meta-gradient in the
binary golden format described in tools/reference/README.md (version 1).

Usage:
    python3 tools/reference/golden_mlp.py [--out PATH]

Default output: tests/golden/mlp_meta_v1.bin relative to the repository root.
"""

import argparse
import os
import struct
import sys
import tempfile
import warnings

# torch warns at import when numpy is absent; numpy is not needed here.
warnings.filterwarnings("ignore", message=".*NumPy.*")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MAGIC = b"MTGOLDEN"
VERSION = 1
DTYPE_FLOAT64 = 1

FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
U64_MASK = 0xFFFFFFFFFFFFFFFF

DIN, HIDDEN, DOUT = 4, 16, 3
N_SUPPORT, N_QUERY = 10, 12
INNER_LR = 0.1

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "golden", "mlp_meta_v1.bin")


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET_BASIS
    for byte in data:
        h ^= byte
        h = (h * FNV_PRIME) & U64_MASK
    return h


def tensor_values(t: torch.Tensor) -> list:
    """Row-major list of Python floats (works without numpy)."""
    return [float(v) for v in t.detach().to(torch.float64).contiguous().reshape(-1).tolist()]


def encode(tensors: list) -> bytes:
    """Serialise [(name, tensor), ...] to the version-1 golden format."""
    out = bytearray()
    out += MAGIC
    out += struct.pack("<I", VERSION)
    out += struct.pack("<I", len(tensors))
    for name, t in tensors:
        name_bytes = name.encode("ascii")
        shape = list(t.shape)
        values = tensor_values(t)
        out += struct.pack("<I", len(name_bytes))
        out += name_bytes
        out += struct.pack("<B", DTYPE_FLOAT64)
        out += struct.pack("<I", len(shape))
        for d in shape:
            out += struct.pack("<q", d)
        out += struct.pack("<%dd" % len(values), *values)
    out += struct.pack("<Q", fnv1a64(bytes(out)))
    return bytes(out)


def read_golden(path: str) -> list:
    """Parse a golden file; returns [(name, shape, values), ...]. Raises ValueError on any problem."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8 + 4 + 4 + 8:
        raise ValueError(f"{path}: file too small ({len(data)} bytes)")
    if data[:8] != MAGIC:
        raise ValueError(f"{path}: bad magic {data[:8]!r}")
    body, (stored_hash,) = data[:-8], struct.unpack("<Q", data[-8:])
    if fnv1a64(body) != stored_hash:
        raise ValueError(f"{path}: checksum mismatch")
    pos = 8
    (version, n_tensors) = struct.unpack_from("<II", body, pos)
    pos += 8
    if version != VERSION:
        raise ValueError(f"{path}: unsupported version {version}")
    result = []
    for _ in range(n_tensors):
        (name_len,) = struct.unpack_from("<I", body, pos)
        pos += 4
        name = body[pos:pos + name_len].decode("ascii")
        pos += name_len
        (dtype,) = struct.unpack_from("<B", body, pos)
        pos += 1
        if dtype != DTYPE_FLOAT64:
            raise ValueError(f"{path}: tensor {name}: unknown dtype code {dtype}")
        (rank,) = struct.unpack_from("<I", body, pos)
        pos += 4
        shape = list(struct.unpack_from("<%dq" % rank, body, pos))
        pos += 8 * rank
        count = 1
        for d in shape:
            if d < 0:
                raise ValueError(f"{path}: tensor {name}: negative dim")
            count *= d
        values = list(struct.unpack_from("<%dd" % count, body, pos))
        pos += 8 * count
        result.append((name, shape, values))
    if pos != len(body):
        raise ValueError(f"{path}: {len(body) - pos} trailing bytes")
    return result


def mlp(x, W1, b1, W2, b2):
    h = F.gelu(x @ W1 + b1, approximate="none")
    return h @ W2 + b2


def mse(out, y):
    return ((out - y) ** 2).mean()


def build_case() -> list:
    torch.manual_seed(0)
    dt = torch.float64

    W1 = (torch.randn(DIN, HIDDEN, dtype=dt) * 0.5).requires_grad_()
    b1 = (torch.randn(HIDDEN, dtype=dt) * 0.1).requires_grad_()
    W2 = (torch.randn(HIDDEN, DOUT, dtype=dt) * 0.5).requires_grad_()
    b2 = (torch.randn(DOUT, dtype=dt) * 0.1).requires_grad_()
    params = [W1, b1, W2, b2]

    x_support = torch.randn(N_SUPPORT, DIN, dtype=dt)
    y_support = torch.randn(N_SUPPORT, DOUT, dtype=dt)
    x_query = torch.randn(N_QUERY, DIN, dtype=dt)
    y_query = torch.randn(N_QUERY, DOUT, dtype=dt)
    inner_lr = torch.tensor(INNER_LR, dtype=dt)

    # Inner step on the support set, keeping the graph for second-order terms.
    out_support = mlp(x_support, *params)
    loss_support = mse(out_support, y_support)
    grads = torch.autograd.grad(loss_support, params, create_graph=True)
    fast = [p - inner_lr * g for p, g in zip(params, grads)]

    # Query loss with the fast weights.
    out_query = mlp(x_query, *fast)
    loss_query = mse(out_query, y_query)

    # First-order (FOMAML) meta-gradient: dL_q / d fast weights.
    fo_meta = torch.autograd.grad(loss_query, fast, retain_graph=True)
    # Full second-order meta-gradient through the inner step.
    meta = torch.autograd.grad(loss_query, params)

    names = ["W1", "b1", "W2", "b2"]
    tensors = [
        ("x_support", x_support),
        ("y_support", y_support),
        ("x_query", x_query),
        ("y_query", y_query),
    ]
    tensors += list(zip(names, params))
    tensors += [
        ("inner_lr", inner_lr),
        ("out_support", out_support),
        ("loss_support", loss_support),
    ]
    tensors += [("grad_" + n, g) for n, g in zip(names, grads)]
    tensors += [("fast_" + n, f) for n, f in zip(names, fast)]
    tensors += [
        ("out_query", out_query),
        ("loss_query", loss_query),
    ]
    tensors += [("meta_grad_" + n, g) for n, g in zip(names, meta)]
    tensors += [("fo_meta_grad_" + n, g) for n, g in zip(names, fo_meta)]
    return [(n, t.detach()) for n, t in tensors]


def write_atomic(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".golden-", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates the file 0600; give it the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def verify_round_trip(path: str, tensors: list) -> None:
    read = read_golden(path)
    if len(read) != len(tensors):
        raise SystemExit(f"round-trip failed: wrote {len(tensors)} tensors, read {len(read)}")
    for (name, t), (rname, rshape, rvalues) in zip(tensors, read):
        if name != rname:
            raise SystemExit(f"round-trip failed: expected tensor {name}, read {rname}")
        if list(t.shape) != rshape:
            raise SystemExit(f"round-trip failed: {name} shape {list(t.shape)} vs {rshape}")
        expected = tensor_values(t)
        # Compare bit patterns so that -0.0 / NaN payloads are checked exactly too.
        if struct.pack("<%dd" % len(expected), *expected) != struct.pack("<%dd" % len(rvalues), *rvalues):
            raise SystemExit(f"round-trip failed: {name} values differ")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output path (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    tensors = build_case()
    data = encode(tensors)
    write_atomic(args.out, data)
    verify_round_trip(args.out, tensors)

    by_name = dict(tensors)
    print(f"wrote {args.out}")
    print(f"  tensors:      {len(tensors)}")
    print(f"  bytes:        {len(data)}")
    print(f"  loss_support: {by_name['loss_support'].item():.17g}")
    print(f"  loss_query:   {by_name['loss_query'].item():.17g}")
    print("  round-trip:   ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
