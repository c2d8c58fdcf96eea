#!/usr/bin/python3
"""Issue 26's item 1 in one run: the whole `run` on BF16 weights against the same weights as F32, and the F32 `run`
against the forward pass alone, N = 1 and 4 images of 32 x 32 patches, as ratios of medians.

    cmake --preset release && cmake --build --preset release
    OPENBLAS_NUM_THREADS=2 /usr/bin/python3 tests/bench/bf16_run.py [--rounds 8] [--rows 1,4,copied] [--back-to-back]
        [--checkpoint DIR] [--build DIR]

--build DIR times another build's qwenvl-adapter and qwenvl-bench (say an earlier commit's, to compare).

The checkpoints are whole_run.py's (`qwenvl-bench --write-checkpoint DIR`, random F32 weights at full size, and the
same rounded to BF16; written to build/release/fullsize/ when absent). Two states of the page cache:

  - after a first run (N = 1 and 4): each file dropped from the cache (whole_run.out_of_page_cache), then one
    untimed `run` on it, as a checkpoint is cached after its first run: on Linux 6.16 and later, ext4 caches what
    `run`'s mapping (MADV_HUGEPAGE) faults in as 2 MiB folios, which later runs map 2 MiB at a time;
  - copied (N = 1): copies made by shutil.copyfile, as `cp` makes them, still cached as they were written, in
    4 KiB pages, which `run` maps 4 KiB at a time (whole_run.just_written; deleted at the end).

Each round runs `run` on F32 and on BF16 (wall time of the whole process, peak memory by /usr/bin/time), then
`qwenvl-bench --images N --grid 32 --repeats 3` (the forward alone, its median, in a process of its own). The two
runs take turns to go first: the first follows the forward's process, which has just freed 560 MiB, and on these VMs
a process that first touches memory just freed by another pays more for it (docs/performance.md#fresh-memory). Prints a
Markdown table (docs/performance.md#bf16-weights-in-one-run): the ratios of the medians, then the same ratios taken in
each round (BF16 over F32, F32 over the forward of the same round), their median and quartiles: single runs here vary
by 10 to 20%, and what drifts over minutes cancels within a round. Under the table, each row's median round with
its 95% interval (bootstrap over the rounds, seeded), so that a target can be judged against how well the median is
known; then BF16 / F32 between runs in the same place in their rounds (in_the_same_place: on a host where the run
after the forward's process pays much more than the other, a round's ratio is either well under 1 or well over it,
and its median is not a stable measure). --back-to-back runs no forward process between
the rounds (each run then follows the other checkpoint's run, which has just freed its own memory) and times the
forward alone after them; --rows picks the rows (1, 4, copied). Then checks that the BF16 run's output is the bytes
of a run on the same values stored as F32 (whole_run.widened_checkpoint), N = 1 and 4.
"""

import argparse
import json
import math
import os
import random
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from whole_run import (BUILD, bf16_checkpoint, full_size_files, just_written, out_of_page_cache,  # noqa: E402
                       timed, widened_checkpoint)


def forward_alone(bench, images, env):
    """The forward pass alone on N full-size images: the median of three, in a process of its own."""
    _, _, out = timed([bench, "--images", str(images), "--grid", "32", "--repeats", "3", "--json"], env)
    return json.loads(out.strip().splitlines()[-1])["median_s"]


def spread(ratios, digits):
    """A list of ratios as "median (first quartile to third)"."""
    low, middle, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    return "%.*f (%.*f-%.*f)" % (digits, middle, digits, low, digits, high)


def median_interval(ratios, resamples=2000, seed=0):
    """The 95% interval of the median of `ratios` by the bootstrap: the median of as many values drawn from them with
    replacement, `resamples` times (seeded: the same rounds give the same interval), its 2.5th and 97.5th
    percentiles. How far the median round could move with other rounds of the same host: the quartiles say how far
    single rounds spread, not how well their median is known."""
    draw = random.Random(seed)
    medians = sorted(statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def in_the_same_place(f32_runs, bf16_runs, resamples=2000, seed=0):
    """BF16 / F32 between runs in the same place in their rounds: the F32 runs go first in the even rounds and the
    BF16 runs in the odd ones. On some hosts the run that follows the forward's process pays far more than the
    other (80 to 130 ms at N = 1, 2026-12-05's fourth stop), so a round's ratio is either well under 1 or well over
    it, and the median of such ratios lands on either side of the gap by chance. The ratio of the BF16 runs' median
    to the F32 runs' when each went first, the same when each went second, and their geometric mean, with its 95%
    interval (bootstrap within each of the four groups, seeded)."""
    groups = (bf16_runs[1::2], f32_runs[0::2], bf16_runs[0::2], f32_runs[1::2])
    if any(not g for g in groups):
        return None
    first = statistics.median(groups[0]) / statistics.median(groups[1])
    second = statistics.median(groups[2]) / statistics.median(groups[3])
    draw = random.Random(seed)
    means = []
    for _ in range(resamples):
        m = [statistics.median(draw.choices(g, k=len(g))) for g in groups]
        means.append(math.sqrt(m[0] / m[1] * m[2] / m[3]))
    means.sort()
    return first, second, math.sqrt(first * second), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--checkpoint", default=os.path.join(BUILD, "fullsize"))
    parser.add_argument("--build", default=BUILD)
    parser.add_argument("--back-to-back", action="store_true",
                        help="no forward process between the rounds: the forward alone is timed after them")
    parser.add_argument("--rows", default="1,4,copied",
                        help="which rows to measure: 1 and 4 (images, after a first run), copied (N = 1); default all")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1, not %d" % args.rounds)
    if not args.rows or any(name not in ("1", "4", "copied") for name in args.rows.split(",")):
        parser.error("--rows: a comma-separated list of 1, 4 and copied, not %r" % args.rows)
    adapter, bench = os.path.join(args.build, "qwenvl-adapter"), os.path.join(args.build, "qwenvl-bench")
    if not os.path.exists(adapter) or not os.path.exists(bench):
        sys.exit("build first: cmake --preset release && cmake --build --preset release")
    folder = args.checkpoint
    f32 = os.path.join(folder, "adapter-f32.safetensors")
    bf16 = os.path.join(folder, "adapter-bf16.safetensors")
    full_size_files(folder)
    if not os.path.exists(bf16):
        bf16_checkpoint(f32, bf16)
    env = dict(os.environ)
    out_of_page_cache(f32, bf16)
    for weights in (f32, bf16):  # each checkpoint's first run, untimed
        timed([adapter, "run", "--weights", weights, "--input", os.path.join(folder, "features.npy"), "--output",
               os.path.join(folder, "y-first.npy")], env)
    # the copied row's copies (550 MB written), made only when that row is asked for
    copies = [just_written(f32, os.path.join(folder, "copied-f32.safetensors")),
              just_written(bf16, os.path.join(folder, "copied-bf16.safetensors"))] if "copied" in args.rows.split(",") else []
    print("| page cache | N | F32 run s | BF16 run s | forward alone s | BF16 / F32 | F32 run / forward | "
          "BF16 / F32 a round | F32 run / forward a round | peak MiB F32 / BF16 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    intervals = []  # printed under the table
    try:
        rows = {"1": ("after a first run", 1, (f32, bf16)), "4": ("after a first run", 4, (f32, bf16)),
                "copied": ("copied", 1, copies)}
        for state, images, (f32_file, bf16_file) in (rows[name] for name in args.rows.split(",")):
            features = os.path.join(folder, "features.npy" if images == 1 else "features-4.npy")
            f32_runs, bf16_runs, forward, peaks = [], [], [], {"f32": 0, "bf16": 0}
            for round_number in range(args.rounds):
                runs = [("f32", f32_file, f32_runs), ("bf16", bf16_file, bf16_runs)]
                for name, weights, into in (runs if round_number % 2 == 0 else runs[::-1]):
                    wall, rss, _ = timed([adapter, "run", "--weights", weights, "--input", features, "--output",
                                          os.path.join(folder, "y-%s.npy" % name)], env)
                    into.append(wall)
                    peaks[name] = max(peaks[name], rss)
                if not args.back_to_back:
                    forward.append(forward_alone(bench, images, env))
            if args.back_to_back:
                forward = [forward_alone(bench, images, env) for _ in range(args.rounds)]
            a, b, f = statistics.median(f32_runs), statistics.median(bf16_runs), statistics.median(forward)
            # The same ratios taken round by round (the two runs of a round back to back, the forward's just
            # after), so that what drifts between rounds cancels: their median and quartiles.
            print("| %s | %d | %.3f | %.3f | %.3f | %.3f | %.2f | %s | %s | %.0f / %.0f |" % (
                state + (", back to back" if args.back_to_back else ""), images, a, b, f, b / a, a / f,
                spread([y / x for x, y in zip(f32_runs, bf16_runs)], 3),
                "-" if args.back_to_back else spread([x / y for x, y in zip(f32_runs, forward)], 2),
                peaks["f32"], peaks["bf16"]), flush=True)
            low, high = median_interval([y / x for x, y in zip(f32_runs, bf16_runs)])
            interval = "%s, N = %d: BF16 / F32, the median round's 95%% interval %.3f to %.3f" % (state, images, low, high)
            if not args.back_to_back:
                low, high = median_interval([x / y for x, y in zip(f32_runs, forward)])
                interval += "; F32 run / forward %.2f to %.2f" % (low, high)
            intervals.append(interval + " (bootstrap over the %d rounds)" % args.rounds)
            if not args.back_to_back and len(f32_runs) > 1:
                # F32 run / forward likewise: the F32 runs that went first (even rounds), then second (odd rounds)
                intervals.append("%s, N = %d: F32 run / forward %.2f when the F32 run went first, %.2f when it went "
                                 "second" % (state, images, statistics.median(f32_runs[0::2]) / f,
                                             statistics.median(f32_runs[1::2]) / f))
            matched = in_the_same_place(f32_runs, bf16_runs)
            if matched:
                intervals.append("%s, N = %d: BF16 / F32 in the same place in the round: %.3f when each went first, "
                                 "%.3f when each went second, together (geometric mean) %.3f, 95%% interval %.3f to "
                                 "%.3f" % ((state, images) + matched))
    finally:
        for copy in copies:
            os.remove(copy)
    print()
    for interval in intervals:
        print(interval, flush=True)
    # The BF16 run computes with the BF16 values widened: its output must be the bytes of a run on those values
    # stored as F32.
    widened = os.path.join(folder, "adapter-bf16-widened.safetensors")
    if not os.path.exists(widened):
        widened_checkpoint(bf16, widened)
    for images in (1, 4):
        features = os.path.join(folder, "features.npy" if images == 1 else "features-4.npy")
        outputs = []
        for weights in (bf16, widened):
            outputs.append(os.path.join(folder, "y-check-%d.npy" % len(outputs)))
            timed([adapter, "run", "--weights", weights, "--input", features, "--output", outputs[-1]], env)
        with open(outputs[0], "rb") as a, open(outputs[1], "rb") as b:
            same = a.read() == b.read()
        print("N = %d: the BF16 run's output is the run's on the same values stored as F32, bit for bit: %s"
              % (images, "yes" if same else "NO"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
