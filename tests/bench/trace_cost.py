#!/usr/bin/python3
"""What the trace costs at full size: `run`, `run --trace`, `compare` and `compare --gradients`, whole processes.

    cmake --preset release && cmake --build --preset release
    OPENBLAS_NUM_THREADS=2 /usr/bin/python3 tests/bench/trace_cost.py [--rounds 3] [--checkpoint DIR]

The checkpoints are `qwenvl-bench --write-checkpoint DIR` (random weights, F32; written to build/release/fullsize/
when absent), read once before timing so that they are in the page cache: Qwen-VL's adapter and tail (E = 4096,
Kv = 1664, 256 queries) on one image of 32 x 32 patches, and MiniCPM-V 2.6's resampler (E = 3584, Kv = 1152,
64 queries) on two slices of 32 x 32 and 24 x 40 patches padded to 1024. For each, in alternating rounds, the wall
time of:

  - run: `qwenvl-adapter run` (the fast path), the untraced baseline;
  - run --trace: the same, every intermediate recorded and written to DIR/<stage>.npy;
  - compare: `compare --theirs DIR` on that trace (the fast path, traced, and every stage read and compared);
  - compare --gradients: the same with DIR/gradients/ holding a seeded G and a zero gradient for every
    intermediate (the verdict is DIFFERS, exit 1; the work is a right port's: the traced forward, the backward,
    every gradient read and compared).

Prints a Markdown table of medians and their ratio to `run` (docs/performance.md#the-trace).
"""

import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from whole_run import ADAPTER, BENCH, BUILD, full_size_files, into_page_cache, timed  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint", default=os.path.join(BUILD, "fullsize"))
    args = parser.parse_args()
    if not os.path.exists(ADAPTER) or not os.path.exists(BENCH):
        sys.exit("build first: cmake --preset release && cmake --build --preset release")
    import numpy as np

    folder = args.checkpoint
    full_size_files(folder)
    models = {
        "Qwen-VL, 1 x 32^2": (os.path.join(folder, "adapter-f32.safetensors"), os.path.join(folder, "features.npy"), []),
        "MiniCPM-V 2.6, 32^2 + 24 x 40": (os.path.join(folder, "minicpmv-f32.safetensors"),
                                          os.path.join(folder, "features-minicpmv.npy"), ["--grids", "32x32,24x40"]),
    }
    into_page_cache(*(weights for weights, _, _ in models.values()))
    env = dict(os.environ)
    print("| model | run s | run --trace s | compare s | compare --gradients s | trace / run | compare / run "
          "| gradients / run |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for index, (name, (weights, features, extra)) in enumerate(models.items()):
            common = ["--weights", weights, "--input", features] + extra
            trace = os.path.join(work, "trace-%d" % index)  # a folder per model: its gradients/ are written once
            times = {"run": [], "trace": [], "compare": [], "gradients": []}
            for _ in range(args.rounds):
                times["run"].append(timed([ADAPTER, "run"] + common + ["--output", os.path.join(work, "y.npy")], env)[0])
                times["trace"].append(timed([ADAPTER, "run"] + common + ["--output", os.path.join(work, "y.npy"),
                                                                         "--trace", trace], env)[0])
                times["compare"].append(timed([ADAPTER, "compare"] + common + ["--theirs", trace], env)[0])
                if not os.path.exists(os.path.join(trace, "gradients", "proj.npy")):  # once: the shapes stay
                    y = np.load(os.path.join(work, "y.npy"))
                    os.makedirs(os.path.join(trace, "gradients", "parameters"), exist_ok=True)
                    g = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
                    np.save(os.path.join(trace, "gradients", "proj.npy"), g)
                    for stage in ("ln_post", "out", "attended", "attn_weights", "scores", "k", "v", "key_in", "ln_kv",
                                  "kv_proj", "q", "query_in", "ln_q"):
                        if os.path.exists(os.path.join(trace, stage + ".npy")):  # MiniCPM-V has no query_in
                            np.save(os.path.join(trace, "gradients", stage + ".npy"),
                                    np.zeros_like(np.load(os.path.join(trace, stage + ".npy"))))
                times["gradients"].append(timed([ADAPTER, "compare", "--gradients"] + common + ["--theirs", trace],
                                                env, ok=(1,))[0])
            m = {k: statistics.median(v) for k, v in times.items() if v}
            print("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |" % (
                name, m["run"], m["trace"], m["compare"], m["gradients"], m["trace"] / m["run"],
                m["compare"] / m["run"], m["gradients"] / m["run"]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
