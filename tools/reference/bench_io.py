"""Helpers shared by the benchmark scripts (bench/*.py and the peers in tools/reference/).

No third-party imports, so the drivers can use them without loading torch or jax.
"""

import json
import os
import platform
import tempfile


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def torch_environment(torch):
    """What a PyTorch timing ran on: versions, platform, cores and torch's thread count (torch
    passed in, so that this module imports no third-party package)."""
    return {
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }


def write_json_atomic(path, obj, sort_keys=True):
    """Writes obj as JSON to path through a temporary file in the same folder and a rename, so a
    reader never sees half a file; creates the folder; leaves nothing behind on failure."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=sort_keys)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
