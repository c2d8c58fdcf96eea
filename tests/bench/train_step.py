#!/usr/bin/python3
"""The time of one training step: `qwenvl-adapter train`, on the fast path and on the readable one, against PyTorch.

    cmake --preset release && cmake --build --preset release
    /usr/bin/python3 tests/bench/train_step.py [--threads 1,2] [--size default,full] [--rounds 3]

The step (docs/training.md): a batch of the positions task, kv_proj when Kv != E, the adapter and the tower's tail
forward, the mean squared error, the backward pass, gradient-norm clipping at 1.0, one AdamW update with the warm-up and cosine
schedule (the paper's betas, eps and weight decay). Two sizes (SIZES below): `default`, `train`'s defaults (16 images
of 8 x 8 patches, E = 32, 4 heads, 16 queries; 300 steps, the first 20 not timed), and `full`, Qwen-VL's adapter
(two images of 32 x 32 patches of Kv = 1664 features, E = 4096, 32 heads, 256 queries; 8 steps, the first 3 not
timed; `train --kv 1664`, whose target repeats the features' 1664 channels across E).

The C++ is `qwenvl-adapter train`: the fast path (src/fast/, the default) and, at the default size, `--readable` (the
stages); its time per step comes from its loss.csv (seconds since the start, per step). PyTorch runs the same step
with upstream's modules (nn.MultiheadAttention, nn.LayerNorm), torch.optim.AdamW, clip_grad_norm_ and LambdaLR in
float32, in a fresh process, timed over the same steps. Each row gets the same threads on both sides
(OPENBLAS_NUM_THREADS and torch.set_num_threads). Rounds alternate the sides; medians and their ratios are printed as
Markdown rows, one per size and thread count. `train` sets glibc's mmap and trim thresholds itself (mallopt): its
step's tensors stay in the heap.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ADAPTER = os.path.join(REPO, "build", "release", "qwenvl-adapter")
# The two sizes: `default`, the notebooks' and `train`'s defaults (Kv = E: no kv_proj); `full`, Qwen-VL's adapter
# (E = 4096, 32 heads, 256 queries on a 32 x 32 key grid of the ViT-bigG's Kv = 1664 features, two images a step), a
# few steps.
SIZES = {
    "default": dict(E=32, KV=32, H=4, GQ=4, GK=8, BATCH=16, STEPS=300, WARMUP=50, SKIP=20, LR=1e-2),
    "full": dict(E=4096, KV=1664, H=32, GQ=16, GK=32, BATCH=2, STEPS=8, WARMUP=1, SKIP=3, LR=1e-4),
}


def torch_child(size, threads):
    """Runs in a fresh process: the size's training steps in PyTorch; prints the seconds per step after SKIP."""
    import torch
    import torch.nn.functional as F

    c = SIZES[size]
    E, KV, H, GQ, GK, BATCH, steps, WARMUP_STEPS, SKIP = (c[k] for k in ("E", "KV", "H", "GQ", "GK", "BATCH", "STEPS",
                                                                           "WARMUP", "SKIP"))
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    Q, L = GQ * GQ, GK * GK
    query = torch.nn.Parameter(torch.randn(Q, E) * 0.02)
    attn = torch.nn.MultiheadAttention(E, H)
    ln_q, ln_kv, ln_post = (torch.nn.LayerNorm(E, eps=1e-6) for _ in range(3))
    proj = torch.nn.Parameter(E ** -0.5 * torch.randn(E, E))
    kv_proj = torch.nn.Linear(KV, E, bias=False) if KV != E else torch.nn.Identity()   # upstream's
    if KV != E:
        torch.nn.init.normal_(kv_proj.weight, std=0.02)
    sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
    from make_fixtures import sincos_2d
    pos_q = torch.from_numpy(sincos_2d(E, GQ)).float()
    table = pos_q.reshape(1, GQ, GQ, E).permute(0, 3, 1, 2)
    pos_k = F.interpolate(table, size=(GK, GK), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(L, E)
    params = [query, proj, *attn.parameters(), *ln_q.parameters(), *ln_kv.parameters(), *ln_post.parameters(),
              *kv_proj.parameters()]
    channels = torch.arange(E) % KV                                     # train --kv: the target's channels repeated
    optimizer = torch.optim.AdamW(params, lr=c["LR"], betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)

    def factor(step):
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        return 0.005 + 0.995 * 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / (steps - WARMUP_STEPS)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    cell = torch.tensor([(i * GQ // GK) * GQ + j * GQ // GK for i in range(GK) for j in range(GK)])
    one_hot = F.one_hot(cell, Q).float().t() / (GK // GQ) ** 2          # (Q, L): the mean over each cell
    times = []
    for step in range(steps):
        start = time.perf_counter()
        x = torch.randn(BATCH, L, KV)
        target = (one_hot @ x)[..., channels]                              # (N, Q, E)
        optimizer.zero_grad()
        X = ln_kv(kv_proj(x)).permute(1, 0, 2)
        queries = (ln_q(query) + pos_q).unsqueeze(1).repeat(1, BATCH, 1)
        out = attn(queries, X + pos_k.unsqueeze(1), X)[0].permute(1, 0, 2)
        loss = F.mse_loss(ln_post(out) @ proj, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds_per_step": sum(times[SKIP:]) / (steps - SKIP), "final_loss": float(loss),
                      "torch": torch.__version__}))


def cpp_round(size, env, readable):
    """`train` at the size (the fast path, or with --readable the stages): seconds per step after SKIP, final loss."""
    c = SIZES[size]
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([ADAPTER, "train", "--out", out, "--steps", str(c["STEPS"]), "--log-every", str(c["STEPS"]),
                        "--save-every", str(c["STEPS"]), "--width", str(c["E"]), "--kv", str(c["KV"]), "--heads", str(c["H"]),
                        "--queries", str(c["GQ"] ** 2), "--keys", str(c["GK"] ** 2), "--batch", str(c["BATCH"]),
                        "--warmup", str(c["WARMUP"]), "--lr", str(c["LR"])] + (["--readable"] if readable else []),
                       env=env, check=True, capture_output=True)
        rows = [line.split(",") for line in open(os.path.join(out, "loss.csv")).read().split("\n")[1:] if line]
        seconds = [float(r[4]) for r in rows]
        return (seconds[-1] - seconds[c["SKIP"] - 1]) / (c["STEPS"] - c["SKIP"]), float(rows[-1][1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, each measured (default 1,2)")
    parser.add_argument("--size", default="default,full", help="comma-separated sizes: default, full")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return torch_child(args.child, args.child_threads)
    if not os.path.exists(ADAPTER):
        sys.exit("build first: cmake --preset release && cmake --build --preset release")
    print("| size | threads | steps timed | C++ fast ms/step | C++ readable ms/step | PyTorch ms/step | fast / PyTorch "
          "| readable / PyTorch |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.size.split(","):
        c = SIZES[size]
        for threads in (int(t) for t in args.threads.split(",")):
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
            fast, readable, torch_runs = [], [], []
            for _ in range(args.rounds):  # alternating: the machine's speed drifts
                fast.append(cpp_round(size, env, False)[0])
                if size == "default":  # the readable stages take about a minute a step at full size
                    readable.append(cpp_round(size, env, True)[0])
                out = subprocess.run([sys.executable, __file__, "--child", size, "--child-threads", str(threads)],
                                     env=env, check=True, capture_output=True, text=True).stdout
                torch_runs.append(json.loads(out.strip().splitlines()[-1])["seconds_per_step"])
            f, p = statistics.median(fast), statistics.median(torch_runs)
            r = statistics.median(readable) if readable else None
            print("| %s | %d | %d | %.2f | %s | %.2f | %.2f | %s |" % (
                size, threads, c["STEPS"] - c["SKIP"], 1e3 * f, "%.2f" % (1e3 * r) if r else "-", 1e3 * p, f / p,
                "%.2f" % (r / p) if r else "-"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
