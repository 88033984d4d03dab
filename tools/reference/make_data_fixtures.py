#!/usr/bin/env python3
"""Write the small .npz fixtures that tests/test_data_npz.cpp reads.

They are written by numpy itself (np.savez, np.savez_compressed and, for the
.npy format versions 2.0 and 3.0, np.lib.format.write_array inside a zip
archive, which is what np.savez does internally), so the C++ reader is checked
against real numpy output: stored and deflated members, float32 and float64,
C and Fortran order, with and without the timestamps member ``t``.

Every activity matrix holds M[n, t] = 10 * n + t + 0.25 * (n % 2), exact in
float32 and float64, so the test recomputes the expected values.

Usage:
    pip install numpy
    python3 tools/reference/make_data_fixtures.py [--out DIR]

Default output: tests/fixtures/data/ relative to the repository root. Files are
written to a temporary name in the output folder and renamed into place. The
zip members carry the time of writing, so regenerated files differ in a few
header bytes but hold the same arrays.
"""

import argparse
import io
import os
import sys
import tempfile
import warnings
import zipfile

import numpy as np


def activity(n, t, dtype):
    nn, tt = np.meshgrid(np.arange(n), np.arange(t), indexing="ij")
    return (10.0 * nn + tt + 0.25 * (nn % 2)).astype(dtype)


def times(t):
    return 0.5 + 0.125 * np.arange(t, dtype=np.float64)


def atomic(path, write):
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def savez(path, compressed, **arrays):
    def write(tmp):
        with open(tmp, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)

    atomic(path, write)


def savez_versioned(path, version, compression, **arrays):
    """An .npz whose members use .npy format `version` (np.savez picks 1.0)."""

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", compression=compression) as zf:
            for key, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(arr), version=version)
                zf.writestr(key + ".npy", buf.getvalue())

    atomic(path, write)


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "data"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)

    # Readable sessions.
    savez(out("stored_f4_c.npz"), False, M=activity(3, 5, np.float32), t=times(5))
    savez(out("deflated_f4_c.npz"), True, M=activity(4, 7, np.float32), t=times(7))
    savez(out("stored_f8_fortran.npz"), False,
          M=np.asfortranarray(activity(3, 6, np.float64)), t=times(6))
    savez(out("deflated_f8_fortran.npz"), True, M=np.asfortranarray(activity(5, 4, np.float64)))
    savez(out("deflated_f4_fortran_no_t.npz"), True,
          M=np.asfortranarray(activity(2, 9, np.float32)))
    savez_versioned(out("v2_stored_f4.npz"), (2, 0), zipfile.ZIP_STORED,
                    M=activity(3, 4, np.float32), t=times(4))
    savez_versioned(out("v3_deflated_f8_fortran.npz"), (3, 0), zipfile.ZIP_DEFLATED,
                    M=np.asfortranarray(activity(4, 3, np.float64)))

    # Sessions the loader must refuse.
    savez(out("bad_missing_M.npz"), False, X=activity(3, 5, np.float32))
    nan = activity(3, 5, np.float32)
    nan[1, 2] = np.nan
    savez(out("bad_nan.npz"), True, M=nan)
    savez(out("bad_int.npz"), False, M=activity(3, 5, np.int32))
    savez(out("bad_1d.npz"), False, M=np.arange(5, dtype=np.float32))
    # Stored (frames, neurons) with 6 timestamps: the loader must say M looks transposed.
    savez(out("bad_transposed.npz"), False, M=activity(6, 3, np.float32), t=times(6))
    savez(out("bad_big_endian.npz"), False, M=activity(3, 5, ">f4"))
    # A finite float64 beyond the float32 range: the loader must name it, not report an inf.
    huge = activity(3, 5, np.float64)
    huge[2, 4] = 1e300
    savez(out("bad_f8_beyond_f4.npz"), False, M=huge)
    # Two members named M.npy (zipfile allows it, with a warning): which is the recording?
    def two_m(tmp):
        buf = io.BytesIO()
        np.save(buf, activity(3, 5, np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with zipfile.ZipFile(tmp, "w") as z:
                z.writestr("M.npy", buf.getvalue())
                z.writestr("M.npy", buf.getvalue())
    atomic(out("bad_duplicate_M.npz"), two_m)

    names = sorted(f for f in os.listdir(args.out) if f.endswith(".npz"))
    # Check every readable fixture round-trips through numpy.
    for name in names:
        if name.startswith("bad_"):
            continue
        with np.load(out(name)) as z:
            m = z["M"]
            assert np.array_equal(m, activity(*m.shape, m.dtype)), name
            if "t" in z:
                assert np.array_equal(z["t"], times(m.shape[1])), name
    total = sum(os.path.getsize(out(n)) for n in names)
    print(f"wrote {len(names)} fixtures ({total} bytes) to {args.out} with numpy {np.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
