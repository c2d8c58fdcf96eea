#!/usr/bin/python3
"""Issue 26's item 1 in one run: the whole `run` on BF16 weights against the same weights as F32, and the F32 `run`
against the forward pass alone, N = 1 and 4 images of 32 x 32 patches, as ratios of medians.

    cmake --preset release && cmake --build --preset release
    OPENBLAS_NUM_THREADS=2 /usr/bin/python3 tests/bench/bf16_run.py [--rounds 7] [--checkpoint DIR]

The checkpoints are whole_run.py's (`qwenvl-bench --write-checkpoint DIR`, random F32 weights at full size, and the
same rounded to BF16; written to build/release/fullsize/ when absent), read once so that they are in the page cache.
Rounds alternate: `run` on F32, `run` on BF16 (wall time of the whole process, peak memory by /usr/bin/time), and
`qwenvl-bench --images N --grid 32 --repeats 3` (the forward alone, its median, in a process of its own). Prints a
Markdown table (docs/performance.md#bf16-weights-read-in-place).
"""

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from whole_run import ADAPTER, BENCH, BUILD, bf16_checkpoint, full_size_files, into_page_cache, timed  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--checkpoint", default=os.path.join(BUILD, "fullsize"))
    args = parser.parse_args()
    if not os.path.exists(ADAPTER) or not os.path.exists(BENCH):
        sys.exit("build first: cmake --preset release && cmake --build --preset release")
    folder = args.checkpoint
    f32 = os.path.join(folder, "adapter-f32.safetensors")
    bf16 = os.path.join(folder, "adapter-bf16.safetensors")
    full_size_files(folder)
    if not os.path.exists(bf16):
        bf16_checkpoint(f32, bf16)
    into_page_cache(f32, bf16)
    env = dict(os.environ)
    print("| N | F32 run s | BF16 run s | forward alone s | BF16 / F32 | F32 run / forward | peak MiB F32 / BF16 |")
    print("|---|---|---|---|---|---|---|")
    for images in (1, 4):
        features = os.path.join(folder, "features.npy" if images == 1 else "features-4.npy")
        f32_runs, bf16_runs, forward, peaks = [], [], [], {"f32": 0, "bf16": 0}
        for _ in range(args.rounds):
            for name, weights, into in (("f32", f32, f32_runs), ("bf16", bf16, bf16_runs)):
                wall, rss, _ = timed([ADAPTER, "run", "--weights", weights, "--input", features, "--output",
                                      os.path.join(folder, "y-%s.npy" % name)], env)
                into.append(wall)
                peaks[name] = max(peaks[name], rss)
            _, _, out = timed([BENCH, "--images", str(images), "--grid", "32", "--repeats", "3", "--json"], env)
            forward.append(json.loads(out.strip().splitlines()[-1])["median_s"])
        a, b, f = statistics.median(f32_runs), statistics.median(bf16_runs), statistics.median(forward)
        print("| %d | %.3f | %.3f | %.3f | %.3f | %.2f | %.0f / %.0f |" % (images, a, b, f, b / a, a / f, peaks["f32"],
                                                                      peaks["bf16"]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
