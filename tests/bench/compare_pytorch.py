#!/usr/bin/python3
"""The adapter at Qwen-VL's real dimensions: this project's C++ against PyTorch, same machine, same run.

    OPENBLAS_NUM_THREADS=2 /usr/bin/python3 tests/bench/compare_pytorch.py [--threads 2] [--repeats 3] [--rounds 2]
        [--sizes 1x16,1x32,...] [--coretype SkylakeX]

For each size (N images x G x G patches; Kv = 1664, E = 4096, H = 32, Q = 256), it alternates rounds of
`build/release/qwenvl-bench` and a PyTorch process running the same forward pass (the adapter, then ln_post
and @ proj) with random weights, each in a fresh process so that its peak memory is its own. Both sides pin
the same number of threads: OPENBLAS_NUM_THREADS for OpenBLAS (which torch.set_num_threads does not
reach), and torch.set_num_threads. Prints a Markdown table: medians per image, GFLOP/s, the ratio C++ / PyTorch,
the GEMM throughput the C++ process measured, and peak memory.

The "GEMM floor" is the forward's operation count divided by that sgemm throughput: the time the matrix products
alone would take at OpenBLAS's speed on its best shape, with nothing else. "floor / module" is therefore the
smallest ratio to PyTorch's module any implementation calling the same sgemm could reach in that run.

--coretype sets OPENBLAS_CORETYPE for both sides (OpenBLAS then uses that CPU's kernels instead of the ones it
detects); the first line printed names the kernels in use, read from OPENBLAS_VERBOSE=2.

Two PyTorch timings per size: "same work", which like the C++ benchmark computes the query side
(ln_q(query) + pos_embed and its projection) once per set of weights, outside the timed region; and "Qwen-VL
module", the Resampler as the reference calls it (nn.MultiheadAttention recomputing the query side every call,
need_weights at its default), then ln_post and @ proj.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BENCH = os.path.join(REPO, "build", "release", "qwenvl-bench")

E, KV, H, GRID_Q = 4096, 1664, 32, 16


def torch_child(images, grid, repeats, threads):
    """Runs in a fresh process: one size in PyTorch, prints one JSON line."""
    import resource
    import time

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(7)
    Q, L = GRID_Q * GRID_Q, grid * grid
    with torch.no_grad():
        query = torch.randn(Q, E) * 0.02
        pos_embed = torch.randn(Q, E)                       # the values do not change the cost
        kv_proj = torch.nn.Linear(KV, E, bias=False)
        attn = torch.nn.MultiheadAttention(E, H)
        ln_q, ln_kv, ln_post = (torch.nn.LayerNorm(E, eps=1e-6) for _ in range(3))
        proj = torch.randn(E, E) / math.sqrt(E)
        x = torch.randn(images, L, KV)

        def pos_k():
            # get_abs_pos: the stored 16 x 16 table resized to the key grid when it differs
            if grid == GRID_Q:
                return pos_embed
            t = pos_embed.reshape(1, GRID_Q, GRID_Q, E).permute(0, 3, 1, 2)
            t = F.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
            return t.permute(0, 2, 3, 1).flatten(0, 2)

        query_in = ln_q(query) + pos_embed                  # the query side, once per set of weights
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        q = F.linear(query_in, w_q, b_q)

        def forward():
            # The same computation as nn.MultiheadAttention(query_in, X + pos_k, X), minus the query projection.
            X = ln_kv(kv_proj(x))                           # (N, L, E)
            k = F.linear(X + pos_k(), w_k, b_k)
            v = F.linear(X, w_v, b_v)
            Dh = E // H
            qh = (q / math.sqrt(Dh)).reshape(Q, H, Dh).transpose(0, 1)          # (H, Q, Dh)
            kh = k.reshape(images, L, H, Dh).permute(0, 2, 3, 1)               # (N, H, Dh, L)
            vh = v.reshape(images, L, H, Dh).transpose(1, 2)                   # (N, H, L, Dh)
            weights = torch.softmax(torch.matmul(qh, kh), dim=-1)              # (N, H, Q, L)
            attended = torch.matmul(weights, vh).transpose(1, 2).reshape(images, Q, E)
            out = attn.out_proj(attended)
            return ln_post(out) @ proj

        def forward_module():
            # Qwen-VL's Resampler as written: the query side recomputed every call, nn.MultiheadAttention in
            # its (L, N, E) layout with need_weights left at its default (True), then the tower's tail.
            X = ln_kv(kv_proj(x)).permute(1, 0, 2)
            queries = (ln_q(query) + pos_embed).unsqueeze(1).repeat(1, images, 1)
            out = attn(queries, X + pos_k().unsqueeze(1), X)[0].permute(1, 0, 2)
            return ln_post(out) @ proj

        def median_time(fn):
            fn()                                            # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        same_work = median_time(forward)
        module = median_time(forward_module)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"images": images, "grid": grid, "per_image_s": same_work / images,
                      "module_per_image_s": module / images, "peak_rss_mib": peak, "torch": torch.__version__}))


def flop(images, grid):
    Q, L = GRID_Q * GRID_Q, grid * grid
    return 2.0 * images * (L * KV * E + 2 * L * E * E + 2 * Q * L * E + 2 * Q * E * E)


def run_json(command, env):
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="1x16,4x16,16x16,1x32,4x32,16x32,1x64,4x64,16x64")
    parser.add_argument("--coretype", help="OPENBLAS_CORETYPE for both sides, e.g. SkylakeX")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return torch_child(args.child[0], args.child[1], args.repeats, args.threads)
    if not os.path.exists(BENCH):
        sys.exit("build the benchmark first: cmake --preset release && cmake --build --preset release")

    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    if args.coretype:
        env["OPENBLAS_CORETYPE"] = args.coretype
    probe = subprocess.run([BENCH, "--help"], env=dict(env, OPENBLAS_VERBOSE="2"), capture_output=True, text=True)
    core = next((line.split(":", 1)[1].strip() for line in (probe.stdout + probe.stderr).splitlines()
                 if line.startswith("Core:")), "not reported")
    print("OpenBLAS kernels: %s (OPENBLAS_CORETYPE=%s); %d threads on both sides; %d rounds of %d timed runs"
          % (core, env.get("OPENBLAS_CORETYPE", "unset"), args.threads, args.rounds, args.repeats))
    print()
    print("| N | keys | C++ s/image | PyTorch, same work | ratio | PyTorch, Qwen-VL module | ratio | GEMM floor "
          "s/image | floor / module | C++ GFLOP/s | sgemm GFLOP/s | C++ % of sgemm | C++ peak MiB | PyTorch peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        images, grid = (int(v) for v in size.split("x"))
        cpp, torch_runs = [], []
        for _ in range(args.rounds):                        # alternate the two sides
            cpp.append(run_json([BENCH, "--images", str(images), "--grid", str(grid), "--repeats", str(args.repeats),
                                 "--json"], env))
            torch_runs.append(run_json([sys.executable, __file__, "--child", str(images), str(grid), "--repeats",
                                        str(args.repeats), "--threads", str(args.threads)], env))
        c = statistics.median(r["per_image_s"] for r in cpp)
        p = statistics.median(r["per_image_s"] for r in torch_runs)
        m = statistics.median(r["module_per_image_s"] for r in torch_runs)
        gflops = flop(images, grid) / (c * images) / 1e9
        gemm = statistics.median(r["gemm_gflops"] for r in cpp)
        floor = flop(images, grid) / images / (gemm * 1e9)
        print("| %d | %dx%d | %.3f | %.3f | %.2f | %.3f | %.2f | %.3f | %.2f | %.1f | %.1f | %.0f%% | %.0f | %.0f |" % (
            images, grid, grid, c, p, c / p, m, c / m, floor, floor / m, gflops, gemm, 100 * gflops / gemm,
            max(r["peak_rss_mib"] for r in cpp), max(r["peak_rss_mib"] for r in torch_runs)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
