"""Helpers shared by the notebooks: find and run this project's C++ programs, move tensors in and out.

The notebooks show the C++ at work: every tensor they plot as "C++" was computed by `qwenvl-adapter`
(or `qwenvl-bench`) and read back from .npy files. PyTorch appears only as the reference to compare with,
through the same oracle that writes the golden fixtures (tests/reference/make_fixtures.py).

The programs are found in build/release/ (the README's first command builds them); set QWENVL_BIN to
a folder holding qwenvl-adapter and qwenvl-bench to use another build.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

NOTEBOOKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(NOTEBOOKS)
BIN = os.environ.get("QWENVL_BIN", os.path.join(REPO, "build", "release"))
ADAPTER = os.path.join(BIN, "qwenvl-adapter")
BENCH = os.path.join(BIN, "qwenvl-bench")
WORK = os.path.join(tempfile.gettempdir(), "qwenvl-notebooks")
os.makedirs(WORK, exist_ok=True)

sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
import make_fixtures as oracle  # noqa: E402  (PyTorch reference: reference_forward, sincos_2d, resize_table)

if not os.path.exists(ADAPTER):
    raise RuntimeError("qwenvl-adapter not found in %s: run the README's first command, or set QWENVL_BIN" % BIN)


def adapter(*args):
    """Runs qwenvl-adapter with the given arguments; returns its stdout (raises with stderr on failure)."""
    result = subprocess.run([ADAPTER, *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip())
    return result.stdout


def bench(*args):
    """Runs qwenvl-bench with --json; returns its result as a dict."""
    out = subprocess.run([BENCH, *map(str, args), "--json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def work(name):
    """A path in the notebooks' scratch folder."""
    return os.path.join(WORK, name)


def table(dim, grid, key_grid=None):
    """The C++ sin-cos table (grid*grid, dim), or its bicubic resize to key_grid x key_grid."""
    path = work("table-%d-%d-%s.npy" % (dim, grid, key_grid))
    args = ["table", "--dim", dim, "--grid", grid, "--output", path]
    if key_grid:
        args += ["--key-grid", key_grid]
    adapter(*args)
    return np.load(path)


def write_safetensors(path, tensors):
    """float32 arrays (name -> array) as an F32 safetensors file, with the generator's writer."""
    import torch
    oracle.write_safetensors(path, {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()}, "F32")


def read_safetensors(path):
    """An F32 safetensors file as name -> float32 array (memory-mapped)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", "this helper reads F32 only"
        begin, end = info["data_offsets"]
        out[name] = data[begin:end].view("<f4").reshape(info["shape"])
    return out


def full_size_checkpoint():
    """A Qwen-VL-sized checkpoint with random F32 weights (written once by qwenvl-bench) and one image of
    (1024, 1664) features. Returns (weights path, features path)."""
    weights, features = work("adapter-f32.safetensors"), work("features.npy")
    if not (os.path.exists(weights) and os.path.exists(features)):
        subprocess.run([BENCH, "--write-checkpoint", WORK], check=True, capture_output=True)
    return weights, features
