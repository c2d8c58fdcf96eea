#!/usr/bin/python3
"""What a user waits for: the whole `qwenvl-adapter run` at Qwen-VL's size, beside the forward pass alone, and
PyTorch doing the same whole job from the same safetensors file.

    cmake --preset release && cmake --build --preset release
    OPENBLAS_NUM_THREADS=2 /usr/bin/python3 tests/bench/whole_run.py [--rounds 3] [--threads 2] [--images 1,4]
        [--checkpoint DIR]

The checkpoint is `qwenvl-bench --write-checkpoint DIR` (full size, F32, random weights, 367 MB; written to
build/release/fullsize/ when absent), read once before timing so that it is in the page cache, as a checkpoint a
user runs twice is. For N = 1 and 4 images of 32 x 32 patches, in two environments (the default, and
GLIBC_TUNABLES=glibc.malloc.hugetlb=1, which makes glibc's malloc ask for transparent huge pages), it alternates
rounds of:

  - C++ run: the wall time of the whole `qwenvl-adapter run` process (start, map the checkpoint, read the
    features, the query side, the forward pass, ln_post and proj, write the .npy), and its peak resident memory
    (/usr/bin/time);
  - C++ forward: `qwenvl-bench --images N --grid 32`, the forward pass alone in a process of its own (median of
    3 runs after a warm-up, random weights of the same sizes), with the share of the same process's sgemm
    throughput it reaches;
  - PyTorch: a fresh /usr/bin/python3 process that imports torch, maps the same safetensors file (numpy's memmap
    of the data section, then torch.from_numpy, as the safetensors library does; no copy), builds Qwen-VL's
    Resampler (nn.MultiheadAttention, the LayerNorms, kv_proj) with those tensors as its parameters, runs it
    with ln_post and @ proj, and saves the output with numpy. Its wall time is reported whole, and also from
    after `import torch` (the part that compares with the C++ process: the map, the forward and the write).

It also times `run` on the same weights stored as BF16 (as Qwen-VL's checkpoint is; converted to float32 once,
as the program reads them) and `qwenvl-adapter info` on the checkpoint, and on a sharded checkpoint that holds 8 GiB of a language
model's tensors beside it (a shard written as a hole in the file, sparse: no disk space), as Qwen-VL's own
checkpoint does.

Both sides get the same environment and threads (OPENBLAS_NUM_THREADS, torch.set_num_threads). The two outputs
are compared (largest absolute difference) as a check that both did the same job. Prints a Markdown table of
medians (docs/performance.md).
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(REPO, "build", "release")
ADAPTER = os.path.join(BUILD, "qwenvl-adapter")
BENCH = os.path.join(BUILD, "qwenvl-bench")
PREFIX = "transformer.visual."
E, KV, H, GRID_Q, GRID = 4096, 1664, 32, 16, 32


def torch_child(checkpoint, features, output, threads):
    """Runs in a fresh process: PyTorch's whole job, from import to the saved output; prints one JSON line."""
    start = time.perf_counter()
    import resource
    import warnings

    import numpy as np
    import torch
    import torch.nn.functional as F

    imported = time.perf_counter()
    torch.set_num_threads(threads)
    with torch.no_grad():
        # Map the file: the header, then each tensor a view of numpy's memmap of the data section.
        with open(checkpoint, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        data = np.memmap(checkpoint, dtype=np.uint8, mode="r", offset=8 + n)
        tensors = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")             # torch warns that the mapped arrays are read-only
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                assert info["dtype"] == "F32"
                array = np.frombuffer(data, dtype=np.float32, count=(end - begin) // 4, offset=begin)
                tensors[name] = torch.from_numpy(array).view(info["shape"])
        a = PREFIX + "attn_pool."

        # Qwen-VL's Resampler and the tower's tail, with the mapped tensors as their parameters.
        kv_proj = torch.nn.Linear(KV, E, bias=False, device="meta")
        attn = torch.nn.MultiheadAttention(E, H, device="meta")
        ln_q, ln_kv, ln_post = (torch.nn.LayerNorm(E, eps=1e-6, device="meta") for _ in range(3))

        def use(module, name, tensor):
            setattr(module, name, torch.nn.Parameter(tensor, requires_grad=False))

        use(kv_proj, "weight", tensors[a + "kv_proj.weight"])
        use(attn, "in_proj_weight", tensors[a + "attn.in_proj_weight"])
        use(attn, "in_proj_bias", tensors[a + "attn.in_proj_bias"])
        use(attn.out_proj, "weight", tensors[a + "attn.out_proj.weight"])
        use(attn.out_proj, "bias", tensors[a + "attn.out_proj.bias"])
        for ln, key in ((ln_q, a + "ln_q."), (ln_kv, a + "ln_kv."), (ln_post, PREFIX + "ln_post.")):
            use(ln, "weight", tensors[key + "weight"])
            use(ln, "bias", tensors[key + "bias"])
        query, proj = tensors[a + "query"], tensors[PREFIX + "proj"]

        # The stored checkpoint has no pos_embed: Qwen-VL's get_2d_sincos_pos_embed, in float64 numpy as upstream.
        omega = 1.0 / 10000 ** (np.arange(E // 4, dtype=np.float64) / (E / 4.0))
        w, h = np.meshgrid(np.arange(GRID_Q, dtype=np.float32), np.arange(GRID_Q, dtype=np.float32))

        def one_d(pos):
            out = np.einsum("m,d->md", pos.reshape(-1), omega)
            return np.concatenate([np.sin(out), np.cos(out)], axis=1)

        pos_embed = torch.from_numpy(np.concatenate([one_d(w), one_d(h)], axis=1)).float()
        x = torch.from_numpy(np.load(features))
        loaded = time.perf_counter()

        N, L = x.shape[0], x.shape[1]
        grid = int(math.sqrt(L))
        pos_k = pos_embed
        if grid != GRID_Q:                                  # get_abs_pos
            t = pos_embed.reshape(1, GRID_Q, GRID_Q, E).permute(0, 3, 1, 2)
            t = F.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
            pos_k = t.permute(0, 2, 3, 1).flatten(0, 2)
        X = ln_kv(kv_proj(x)).permute(1, 0, 2)
        queries = (ln_q(query) + pos_embed).unsqueeze(1).repeat(1, N, 1)
        out = attn(queries, X + pos_k.unsqueeze(1), X)[0].permute(1, 0, 2)
        y = ln_post(out) @ proj
        computed = time.perf_counter()
        np.save(output, y.numpy())
    done = time.perf_counter()
    print(json.dumps({"wall_in_process_s": done - start, "import_s": imported - start, "map_s": loaded - imported,
                      "forward_s": computed - loaded, "write_s": done - computed,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                      "torch": torch.__version__}))


def timed(command, env, ok=(0,)):
    """Wall time of a whole process (from this side of fork and exec) and its peak resident memory; an exit status
    outside `ok` stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb=%M"] + command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in ok:
        sys.exit("failed: %s\n%s" % (" ".join(command), done.stderr))
    rss = next(int(line.split("=")[1]) for line in done.stderr.splitlines() if line.startswith("maxrss_kb="))
    return wall, rss / 1024.0, done.stdout


def full_size_files(folder):
    """qwenvl-bench --write-checkpoint's checkpoints and features in `folder`, written when one is missing."""
    if not all(os.path.exists(os.path.join(folder, f)) for f in ("features-4.npy", "features-minicpmv.npy")):
        os.makedirs(folder, exist_ok=True)
        subprocess.run([BENCH, "--write-checkpoint", folder], check=True, capture_output=True)


def out_of_page_cache(*paths):
    """Each file synced and dropped from the page cache (posix_fadvise DONTNEED): the next reader reads it from
    disk, and the kernel caches it again in folios of the size that reader's faults or reads ask for."""
    for path in paths:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def into_page_cache(*paths):
    """Each file read once before timing, from disk (out_of_page_cache first), so that it is in the page cache, as a
    checkpoint run twice is. (Since Linux 6.16 ext4 caches a file read() from disk partly in 2 MiB folios, which a
    mapping can enter 2 MiB at a time; how much varies. A checkpoint faulted in by `run` is all in 2 MiB folios:
    bf16_run.py.)"""
    out_of_page_cache(*paths)
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def just_written(path, to):
    """A copy of `path` at `to`, made as `cp` makes it (shutil.copyfile: sendfile) and left in the page cache as
    written, in 4 KiB pages (so are files written in small pieces; written 16 MiB at a time, ext4 caches them in
    2 MiB folios): a checkpoint right after such a copy, until the cache lets go of it."""
    import shutil
    shutil.copyfile(path, to)
    return to


def rewritten_checkpoint(source, path, dtype, convert):
    """Each tensor of the safetensors file `source`, as a numpy array of its stored values (`convert(raw bytes,
    stored dtype)`), written to `path` as `dtype` by tests/reference/safetensors_io (torch's rounding)."""
    import numpy as np
    import torch
    sys.path.insert(0, os.path.join(REPO, "tests", "reference"))
    from safetensors_io import write_safetensors
    with open(source, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(source, dtype=np.uint8, mode="r", offset=8 + n)
    tensors = {}
    for name, info in header.items():
        if name != "__metadata__":
            begin, end = info["data_offsets"]
            array = convert(data[begin:end], info["dtype"])
            tensors[name] = torch.from_numpy(array.reshape(info["shape"]).copy())
    write_safetensors(path, tensors, dtype)


def bf16_checkpoint(f32, path):
    """The F32 checkpoint's tensors rounded to BF16 (torch's rounding)."""
    def as_float32(raw, dtype):
        assert dtype == "F32"
        return raw.view("<f4")
    rewritten_checkpoint(f32, path, "BF16", as_float32)


def widened_checkpoint(bf16, path):
    """The BF16 checkpoint's tensors widened exactly to F32 (each value's 16 bits as the top half of a float32): the
    weights a BF16 run computes with, stored as F32, so that the two runs' outputs can be compared bit for bit."""
    import numpy as np

    def widened(raw, dtype):
        assert dtype == "BF16"
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    rewritten_checkpoint(bf16, path, "F32", widened)


def sharded_checkpoint(folder, visual):
    """A model.safetensors.index.json over the visual checkpoint and an 8 GiB shard of language-model tensors."""
    os.makedirs(folder, exist_ok=True)
    link = os.path.join(folder, "model-00001-of-00002.safetensors")
    if not os.path.exists(link):
        os.symlink(os.path.abspath(visual), link)
    with open(visual, "rb") as f:
        names = [n for n in json.loads(f.read(int.from_bytes(f.read(8), "little"))) if n != "__metadata__"]
    lm_names = ["transformer.h.%d.mlp.w%d.weight" % (layer, w) for layer in range(8) for w in (1, 2)]
    header, offset = {}, 0
    for name in lm_names:                              # 16 tensors of 4096 x 32768 F32: 8 GiB
        size = 4096 * 32768 * 4
        header[name] = {"dtype": "F32", "shape": [4096, 32768], "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    lm = os.path.join(folder, "model-00002-of-00002.safetensors")
    with open(lm, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)             # the data is a hole: sparse
    weight_map = {n: os.path.basename(link) for n in names}
    weight_map.update({n: os.path.basename(lm) for n in lm_names})
    index = os.path.join(folder, "model.safetensors.index.json")
    with open(index, "w") as f:
        json.dump({"metadata": {"total_size": offset + os.path.getsize(visual)}, "weight_map": weight_map}, f)
    return index


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", default="1,4")
    parser.add_argument("--checkpoint", default=os.path.join(BUILD, "fullsize"))
    parser.add_argument("--environments", default="default,hugetlb")
    parser.add_argument("--info-only", action="store_true", help="only the `info` rows")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return torch_child(*args.child, args.threads)
    if not os.path.exists(ADAPTER) or not os.path.exists(BENCH):
        sys.exit("build first: cmake --preset release && cmake --build --preset release")
    import numpy as np

    ckpt = os.path.join(args.checkpoint, "adapter-f32.safetensors")
    full_size_files(args.checkpoint)
    into_page_cache(ckpt)
    base = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    base.pop("GLIBC_TUNABLES", None)
    envs = {"default": base, "hugetlb": dict(base, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")}
    print("%d threads on both sides; %d alternating rounds; checkpoint %s (%.0f MB, F32)"
          % (args.threads, args.rounds, ckpt, os.path.getsize(ckpt) / 1e6))
    print()
    index = sharded_checkpoint(os.path.join(args.checkpoint, "sharded"), ckpt)
    print("| `qwenvl-adapter info` on | s (median of %d) | peak MiB |" % (3 * args.rounds))
    print("|---|---|---|")
    for what, weights in (("the F32 checkpoint, %.0f MB" % (os.path.getsize(ckpt) / 1e6), ckpt),
                          ("a sharded checkpoint: the same + 8 GiB of language-model tensors", index)):
        runs = [timed([ADAPTER, "info", "--weights", weights], base) for _ in range(3 * args.rounds)]
        print("| %s | %.3f | %.0f |" % (what, statistics.median(r[0] for r in runs), max(r[1] for r in runs)), flush=True)
    print()
    if args.info_only:
        return 0
    bf16 = os.path.join(args.checkpoint, "adapter-bf16.safetensors")
    if not os.path.exists(bf16):
        bf16_checkpoint(ckpt, bf16)
    runs = [timed([ADAPTER, "run", "--weights", bf16, "--input", os.path.join(args.checkpoint, "features.npy"),
                   "--output", os.path.join(args.checkpoint, "y-bf16.npy")], base) for _ in range(args.rounds)]
    print("| `qwenvl-adapter run`, N = 1, default malloc, on | s (median of %d) | peak MiB |" % args.rounds)
    print("|---|---|---|")
    print("| the same weights as BF16, %.0f MB | %.3f | %.0f |" % (os.path.getsize(bf16) / 1e6,
          statistics.median(r[0] for r in runs), max(r[1] for r in runs)), flush=True)
    print()
    print("| malloc | N | C++ run s | C++ forward alone s | run / forward | forward % of sgemm | C++ run peak MiB "
          "| PyTorch process s | PyTorch after import s | PyTorch forward s | PyTorch peak MiB | C++ run / PyTorch after import | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for env_name in args.environments.split(","):
        env = envs[env_name]
        for images in (int(v) for v in args.images.split(",")):
            features = os.path.join(args.checkpoint, "features.npy" if images == 1 else "features-%d.npy" % images)
            if images not in (1, 4):
                sys.exit("--images takes 1 and 4 (the feature files the checkpoint folder holds)")
            out_cpp = os.path.join(args.checkpoint, "y-cpp.npy")
            out_torch = os.path.join(args.checkpoint, "y-torch.npy")
            run, run_rss, forward, share, torch_wall, torch_runs = [], [], [], [], [], []
            for _ in range(args.rounds):
                wall, rss, _ = timed([ADAPTER, "run", "--weights", ckpt, "--input", features, "--output", out_cpp], env)
                run.append(wall)
                run_rss.append(rss)
                _, _, out = timed([BENCH, "--images", str(images), "--grid", str(GRID), "--repeats", "3", "--json"], env)
                bench = json.loads(out.strip().splitlines()[-1])
                forward.append(bench["median_s"])
                share.append(100.0 * (bench["gflops"] / bench["gemm_gflops"]))
                wall, rss, out = timed([sys.executable, __file__, "--threads", str(args.threads), "--child", ckpt,
                                        features, out_torch], env)
                child = json.loads(out.strip().splitlines()[-1])
                child["wall_s"], child["rss"] = wall, rss
                torch_runs.append(child)
            diff = float(np.abs(np.load(out_cpp) - np.load(out_torch).reshape(np.load(out_cpp).shape)).max())
            r, f = statistics.median(run), statistics.median(forward)
            after_import = statistics.median(t["wall_s"] - t["import_s"] for t in torch_runs)
            print("| %s | %d | %.3f | %.3f | %.2f | %.0f%% | %.0f | %.3f | %.3f | %.3f | %.0f | %.2f | %.1e |" % (
                env_name, images, r, f, r / f, statistics.median(share), max(run_rss),
                statistics.median(t["wall_s"] for t in torch_runs), after_import,
                statistics.median(t["forward_s"] for t in torch_runs), max(t["rss"] for t in torch_runs),
                r / after_import, diff), flush=True)


if __name__ == "__main__":
    sys.exit(main())
