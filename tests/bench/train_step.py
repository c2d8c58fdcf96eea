#!/usr/bin/python3
"""The time of one training step at the notebooks' size: `qwenvl-adapter train` against PyTorch doing the same step.

    cmake --preset release && cmake --build --preset release
    OPENBLAS_NUM_THREADS=2 /usr/bin/python3 tests/bench/train_step.py [--threads 2] [--steps 300] [--rounds 3]

The step (docs/training.md): a batch of the positions task (16 images of 8 x 8 patches of 32 features, targets the
means of the 4 x 4 cells), the adapter and the tower's tail forward (E = Kv = 32, 4 heads, 16 queries), the mean
squared error, the backward pass, gradient-norm clipping at 1.0, one AdamW update with the warm-up and cosine
schedule. The C++ is `qwenvl-adapter train` (the readable stages, src/stages/); its time per step comes from its
loss.csv (seconds since the start, per step), over the steps after the first 20. PyTorch runs the same step with
upstream's modules (nn.MultiheadAttention, nn.LayerNorm, nn.Linear), torch.optim.AdamW, clip_grad_norm_ and
LambdaLR in float32, in a fresh process, timed over the same steps. Both sides get the same threads
(OPENBLAS_NUM_THREADS and torch.set_num_threads). Rounds alternate the two; medians are printed as a Markdown row.

`train` sets glibc's mmap and trim thresholds itself (mallopt, 64 and 256 MiB: a step's tensors stay in the heap
instead of being mapped and faulted in afresh every step). PyTorch is timed twice: as it starts, and with the same
thresholds given through GLIBC_TUNABLES, so that both sides can be compared with the same malloc.
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
E, H, GQ, GK, BATCH, WARMUP_STEPS, SKIP = 32, 4, 4, 8, 16, 50, 20


def torch_child(steps, threads):
    """Runs in a fresh process: `steps` training steps in PyTorch; prints the seconds per step after SKIP."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(1)
    Q, L = GQ * GQ, GK * GK
    query = torch.nn.Parameter(torch.randn(Q, E) * 0.02)
    attn = torch.nn.MultiheadAttention(E, H)
    ln_q, ln_kv, ln_post = (torch.nn.LayerNorm(E, eps=1e-6) for _ in range(3))
    proj = torch.nn.Parameter(E ** -0.5 * torch.randn(E, E))
    sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
    from make_fixtures import sincos_2d
    pos_q = torch.from_numpy(sincos_2d(E, GQ)).float()
    table = pos_q.reshape(1, GQ, GQ, E).permute(0, 3, 1, 2)
    pos_k = F.interpolate(table, size=(GK, GK), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(L, E)
    params = [query, proj, *attn.parameters(), *ln_q.parameters(), *ln_kv.parameters(), *ln_post.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2, betas=(0.9, 0.98), weight_decay=0.05)

    def factor(step):
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        return 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / (steps - WARMUP_STEPS)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    cell = torch.tensor([(i * GQ // GK) * GQ + j * GQ // GK for i in range(GK) for j in range(GK)])
    one_hot = F.one_hot(cell, Q).float().t() / (GK // GQ) ** 2          # (Q, L): the mean over each cell
    times = []
    for step in range(steps):
        start = time.perf_counter()
        x = torch.randn(BATCH, L, E)
        target = one_hot @ x                                               # (N, Q, E)
        optimizer.zero_grad()
        X = ln_kv(x).permute(1, 0, 2)                                      # Kv == E: no kv_proj
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


def cpp_round(steps, env):
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([ADAPTER, "train", "--out", out, "--steps", str(steps), "--log-every", str(steps),
                        "--save-every", str(steps)], env=env, check=True, capture_output=True)
        rows = [line.split(",") for line in open(os.path.join(out, "loss.csv")).read().split("\n")[1:] if line]
        seconds = [float(r[4]) for r in rows]
        return (seconds[-1] - seconds[SKIP - 1]) / (steps - SKIP), float(rows[-1][1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return torch_child(args.steps, args.threads)
    if not os.path.exists(ADAPTER):
        sys.exit("build first: cmake --preset release && cmake --build --preset release")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    tuned = dict(env, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=268435456")
    cpp, torch_runs, torch_tuned = [], [], []
    for _ in range(args.rounds):
        cpp.append(cpp_round(args.steps, env))
        for runs, child_env in ((torch_runs, env), (torch_tuned, tuned)):
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--threads",
                                  str(args.threads)], env=child_env, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    c = statistics.median(t for t, _ in cpp)
    p = statistics.median(r["seconds_per_step"] for r in torch_runs)
    pt = statistics.median(r["seconds_per_step"] for r in torch_tuned)
    print("| threads | steps | C++ ms/step | PyTorch ms/step | C++ / PyTorch | PyTorch ms/step, the same malloc thresholds "
          "| C++ / that | C++ final loss | PyTorch final loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("| %d | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %.3f |" % (
        args.threads, args.steps, 1e3 * c, 1e3 * p, c / p, 1e3 * pt, c / pt, statistics.median(l for _, l in cpp),
        statistics.median(r["final_loss"] for r in torch_runs)))


if __name__ == "__main__":
    sys.exit(main())
