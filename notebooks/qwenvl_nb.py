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

sys.path.insert(0, os.path.join(BIN, "python"))  # `import qwenvl`: this build's module (docs/python.md)
sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
import make_fixtures as oracle  # noqa: E402  (PyTorch reference: reference_forward, sincos_2d, resize_table)
import safetensors_io  # noqa: E402  (safetensors files from Python)

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
    """float32 arrays (name -> array) as an F32 safetensors file, with the generator's writer
    (tests/reference/safetensors_io.py)."""
    safetensors_io.write_safetensors(path, tensors, "F32")


def read_safetensors(path):
    """A safetensors file (F32, F16 or BF16) as name -> float32 array, with the generator's reader."""
    return safetensors_io.read_safetensors(path)


def full_size_checkpoint():
    """A Qwen-VL-sized checkpoint with random F32 weights (written once by qwenvl-bench) and one image of
    (1024, 1664) features. Returns (weights path, features path)."""
    weights, features = work("adapter-f32.safetensors"), work("features.npy")
    if not (os.path.exists(weights) and os.path.exists(features)):
        subprocess.run([BENCH, "--write-checkpoint", WORK], check=True, capture_output=True)
    return weights, features
