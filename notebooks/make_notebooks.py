#!/usr/bin/python3
"""Writes the teaching notebooks from the cells below (edit here, not in the .ipynb files), then run them:

    /usr/bin/python3 notebooks/make_notebooks.py
    for nb in notebooks/*.ipynb; do jupyter nbconvert --to notebook --execute --inplace "$nb"; done

The executed notebooks, with their plots, are committed; .ci/run executes every one of them again.
"""

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = """\
import numpy as np
import matplotlib.pyplot as plt
import qwenvl_nb as nb          # runs this project's C++ programs (notebooks/qwenvl_nb.py)
plt.rcParams["figure.dpi"] = 80"""

NOTEBOOKS = {}

# ---------------------------------------------------------------------------------------------------------------
NOTEBOOKS["02_sincos_table.ipynb"] = [
    ("md", """\
# 2. The 2D sin-cos position table

Qwen-VL's adapter compresses 1024 patch features into 256 tokens. Compression could wash out *where* things
are, so the paper (arXiv 2308.12966, section 2.1) adds **2D absolute positional encodings** to the query-key
pairs of the cross-attention. The encoding is not learned: it is the fixed sin-cos table of MAE, built once for
the 16 x 16 grid of queries.

In this project it is `sincos_2d` in [`src/stages/02_sincos.hpp`](../src/stages/02_sincos.hpp); the stage page is
[docs/stages/02-sincos.md](../docs/stages/02-sincos.md). Every table plotted here is computed by the C++
(`qwenvl-adapter table`) and compared once with the numpy construction the reference uses."""),
    ("code", SETUP),
    ("code", """\
E, G = 64, 16                       # a narrow table so the channels are visible; Qwen-VL uses E = 4096
P = nb.table(E, G)                  # (G*G, E) from the C++
print("shape", P.shape)
print("largest difference from numpy's table:", np.abs(P - nb.oracle.sincos_2d(E, G)).max())
print("position 0:", P[0, :E // 4].round(3), "...", P[0, E // 4:E // 2].round(3))"""),
    ("md", """\
Row `r = h*G + w` is the grid cell in row `h`, column `w`. Each half of the channels is a 1D table:
first `E/4` sines, then `E/4` cosines, with frequencies $\\omega_i = 10000^{-i/(E/4)}$. At position 0 every sine
is 0 and every cosine is 1: that is the invariant the tests check."""),
    ("code", """\
fig, ax = plt.subplots(figsize=(10, 3.5))
im = ax.imshow(P.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
for c, label in [(0, "sin(w)"), (E // 4, "cos(w)"), (E // 2, "sin(h)"), (3 * E // 4, "cos(h)")]:
    ax.axhline(c - 0.5, color="k", lw=0.8)
    ax.text(G * G + 2, c + E // 8, label, va="center")
ax.set_xlabel("position r = h*16 + w"); ax.set_ylabel("channel"); ax.set_title("sincos_2d(64, 16)")
fig.colorbar(im, ax=ax, pad=0.08); plt.show()"""),
    ("md", """\
## Which half encodes the column, which the row

The reference builds its grid with `numpy.meshgrid(w, h)`, whose default `'xy'` indexing puts the **column**
index first. So the first half of the channels follows `w` and the second half follows `h`, although the
reference names its first half after `h`. Seen as 16 x 16 images, a first-half channel changes along each row, a
second-half channel down each column:"""),
    ("code", """\
channels = [1, 3, E // 4 + 1, E // 2 + 1, E // 2 + 3, 3 * E // 4 + 1]
fig, axes = plt.subplots(1, len(channels), figsize=(13, 2.6))
for ax, c in zip(axes, channels):
    ax.imshow(P[:, c].reshape(G, G), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_title("channel %d\\n(%s half)" % (c, "w" if c < E // 2 else "h")); ax.set_xlabel("w"); ax.set_ylabel("h")
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout(); plt.show()"""),
    ("md", """\
## Why it carries position: dot products depend on the offset

For one frequency, $\\sin a \\sin b + \\cos a \\cos b = \\cos(a - b)$. Summed over the frequencies, the dot
product of two rows of the table depends only on the offset between the two positions, and it is largest at
offset 0. Attention scores are dot products, so a query carrying $P[r]$ prefers keys carrying rows near $r$."""),
    ("code", """\
centre = 8 * G + 8
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
im = axes[0].imshow((P @ P[centre]).reshape(G, G), cmap="viridis")
axes[0].plot(8, 8, "r+", ms=12); axes[0].set_title("P[r] . P[(8, 8)] over the grid"); fig.colorbar(im, ax=axes[0])
for w in (0, 4, 8):
    offsets = np.arange(-w, G - w)
    axes[1].plot(offsets, [P[5 * G + w] @ P[5 * G + w + d] for d in offsets], "o-", ms=3, label="from w = %d" % w)
axes[1].set_xlabel("offset d along the row"); axes[1].set_ylabel("dot product"); axes[1].legend()
axes[1].set_title("the same curve from every start: only the offset matters")
plt.tight_layout(); plt.show()"""),
    ("md", """\
## Exercises

1. Prove that `P[r] . P[s]` depends only on `(h_r - h_s, w_r - w_s)`, and that it equals `E/2` at offset 0.
2. Build the table with base 100 instead of 10000 (in numpy, from `nb.oracle.sincos_1d`). How does the
   similarity map change, and why would that hurt a 16 x 16 grid less than a 64 x 64 one?
3. Why must `E` be divisible by 4? What does `qwenvl-adapter table --dim 6 --grid 4 --output t.npy` say?"""),
]

# ---------------------------------------------------------------------------------------------------------------
NOTEBOOKS["03_resizing_the_table.ipynb"] = [
    ("md", """\
# 3. Resizing the table from 16 x 16 to 32 x 32

Qwen-VL keeps one table for its 16 x 16 queries, but a 448-pixel image gives 32 x 32 patches, so the keys need
a 32 x 32 table. The reference resizes the stored table at run time, as an image of E channels, with
`F.interpolate(mode='bicubic', align_corners=False)` (the maintainers: the table "is always stored in 256
length", QwenLM/Qwen-VL issue 215). In this project: `resize_bicubic` and `key_position_table` in
[`src/stages/03_resize.hpp`](../src/stages/03_resize.hpp), stage page [docs/stages/03-resize.md](../docs/stages/03-resize.md)."""),
    ("code", SETUP + """
import torch
import torch.nn.functional as F"""),
    ("code", """\
E = 64
P16 = nb.table(E, 16)                 # C++: the stored table
P32 = nb.table(E, 16, key_grid=32)    # C++: resized bicubically to the key grid
ref = nb.oracle.resize_table(torch.from_numpy(P16), 16, 32).numpy()
print(P16.shape, "->", P32.shape, "; largest difference from F.interpolate:", np.abs(P32 - ref).max())

def torch_resize(table, mode):
    image = torch.from_numpy(table).reshape(1, 16, 16, E).permute(0, 3, 1, 2)
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(image, size=(32, 32), mode=mode, **kw).permute(0, 2, 3, 1).reshape(32 * 32, E).numpy()

bilinear, nearest = torch_resize(P16, "bilinear"), torch_resize(P16, "nearest")"""),
    ("md", """\
## One channel along one row

With `align_corners=False` the 16 input samples sit at the centres of 16 cells of the unit interval, and the 32
outputs at the centres of 32 cells: output `j` reads the input at $s = \\frac{16}{32}(j + 0.5) - 0.5$. Near the
border $s$ is negative, and the taps outside the grid are clamped to the edge sample."""),
    ("code", """\
c, h = 2, 7                                   # a first-half channel (follows w), one grid row
x16 = (np.arange(16) + 0.5) / 16; x32 = (np.arange(32) + 0.5) / 32
row16 = P16.reshape(16, 16, E)[h, :, c]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
for ax, lim in zip(axes, [(0, 1), (0, 0.2)]):
    ax.plot(x16, row16, "ko", ms=7, label="stored 16 samples")
    for table, style, name in [(P32, "-", "bicubic (C++)"), (bilinear, "--", "bilinear"), (nearest, ":", "nearest")]:
        ax.plot(x32, table.reshape(32, 32, E)[2 * h, :, c], style, marker=".", label=name)
    ax.set_xlim(*lim); ax.set_xlabel("position across the image (0 to 1)")
axes[1].set_ylim(-0.15, 0.8)
axes[0].set_title("channel %d, row %d" % (c, h)); axes[1].set_title("zoom on the left border"); axes[0].legend()
plt.tight_layout(); plt.show()"""),
    ("md", """\
## Resized is not the same as computed at 32 x 32

A table computed directly for a 32 x 32 grid (`nb.table(E, 32)`) encodes positions 0..31; the resized table
samples the 16-position table at $s = j/2 - 0.25$, i.e. positions -0.25, 0.25, ..., 15.25, with the taps beyond the
border clamped to the edge. The two differ everywhere except in spirit: both keep neighbourhoods, but at different
scales. The adapter adds the resized one to the keys, as it did in training at 448 pixels; the queries keep the
16 x 16 table."""),
    ("code", """\
direct = nb.table(E, 32)
centre = 16 * 32 + 16
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for ax, table, title in [(axes[0], P32, "resized 16 -> 32"), (axes[1], direct, "computed at 32 x 32")]:
    im = ax.imshow((table @ table[centre]).reshape(32, 32)); ax.set_title(title + ": P[r] . P[(16, 16)]")
    fig.colorbar(im, ax=ax)
im = axes[2].imshow(np.abs(P32 - direct).max(axis=1).reshape(32, 32), cmap="magma")
axes[2].set_title("max over channels |resized - direct|"); fig.colorbar(im, ax=axes[2])
plt.tight_layout(); plt.show()"""),
    ("md", """\
## Exercises

1. Which output indices of a 16 -> 32 resize read a clamped tap? Count them from the formula for $s$.
2. Resize 16 -> 8 (a smaller image) with `nb.table(E, 16, key_grid=8)`. Is it the same as keeping every other
   row and column? Why not?
3. The weights of the four taps sum to 1 for every $t$ (a test checks it). What does that guarantee for a
   constant table? Try a table that is linear along a row (a ramp): is it reproduced in the interior, and at the
   border? (Hint: Keys' cubic reproduces ramps only with A = -0.5; PyTorch uses A = -0.75.)"""),
]

# ---------------------------------------------------------------------------------------------------------------
NOTEBOOKS["06_adapter_step_by_step.ipynb"] = [
    ("md", """\
# 6. The adapter step by step, at Qwen-VL's real size

One image of 32 x 32 patch features of width 1664 goes in; 256 tokens of width 4096 come out. The weights here
are random (the real checkpoint has the same names and shapes; it is not shipped here), written in F32 by
`qwenvl-bench --write-checkpoint` under the checkpoint's own tensor names. The C++ runs with `--trace`, which
writes every named intermediate as a .npy file; PyTorch then runs the same weights through `torch.nn` modules
(the oracle in `tests/reference/make_fixtures.py`), and the two are compared stage by stage."""),
    ("code", SETUP + """
import os, time, torch"""),
    ("code", """\
weights, features = nb.full_size_checkpoint()
print(nb.adapter("info", "--weights", weights).split("config:")[1])"""),
    ("code", """\
out, trace = nb.work("y.npy"), nb.work("trace")
start = time.perf_counter()
print(nb.adapter("run", "--weights", weights, "--input", features, "--output", out, "--trace", trace))
print("C++ run with trace: %.1f s (loading 370 MB of F32 weights included)" % (time.perf_counter() - start))
stages = ["pos_q", "pos_k", "ln_q", "query_in", "q", "kv_proj", "ln_kv", "key_in", "k", "v",
          "scores", "attn_weights", "attended", "out", "ln_post", "proj"]
cpp = {s: np.load(os.path.join(trace, s + ".npy")) for s in stages}
for s in stages:
    print("%-13s %s" % (s, cpp[s].shape))"""),
    ("code", """\
torch.set_num_threads(2)
prefix = "transformer.visual."
params = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in nb.read_safetensors(weights).items()}
x = torch.from_numpy(np.load(features))
start = time.perf_counter()
ref = {k: v.numpy() for k, v in nb.oracle.reference_forward(params, x, None, 32, "full size").items()}
print("PyTorch reference with every intermediate: %.1f s" % (time.perf_counter() - start))"""),
    ("md", """\
## Every stage against PyTorch

*Largest |C++ - PyTorch|* is the worst element; *relative* divides it by the stage's largest magnitude. The
PyTorch oracle computes in float64 and rounds each value to float32 (`reference_forward` in
`tests/reference/make_fixtures.py`), so the differences are the C++'s own float32 roundings. float32 carries about
7 significant digits (machine epsilon 1.2e-7), and a float32 sum over 4096 terms moves the last digits: agreement
to about 1e-6 relative is float32 precision."""),
    ("code", """\
print("%-13s %-18s %12s %12s %10s" % ("stage", "shape", "max |C++-PT|", "max |PT|", "relative"))
errors = {}
for s in stages:
    err = float(np.abs(cpp[s] - ref[s]).max()); scale = float(np.abs(ref[s]).max())
    errors[s] = err / scale
    print("%-13s %-18s %12.3g %12.3g %10.2g" % (s, str(cpp[s].shape), err, scale, err / scale))
print("\\nall stages within 1e-5 relative:", all(e < 1e-5 for e in errors.values()))"""),
    ("code", """\
fig, ax = plt.subplots(figsize=(10, 3.2))
ax.bar(range(len(stages)), [max(errors[s], 1e-9) for s in stages], color="tab:blue")
ax.axhline(1.19e-7, color="k", ls=":", label="float32 epsilon")
ax.set_yscale("log"); ax.set_xticks(range(len(stages))); ax.set_xticklabels(stages, rotation=45, ha="right")
ax.set_ylabel("relative error"); ax.set_title("C++ against PyTorch, full size"); ax.legend()
plt.tight_layout(); plt.show()"""),
    ("md", """\
## Exercises

1. `pos_q` and `ln_q` agree to about one float32 rounding, `kv_proj` and the stages after it to a few. Why?
   (Hint: where does the C++ sum many float32 terms, and in what precision does the oracle sum them?)
2. `scores` has the largest magnitudes. Would scaling `k` instead of `q` by $1/\\sqrt{D_h}$ change the
   result in exact arithmetic? In float32?
3. Run the same with `--adapter-only` and compare with `ref["out"]`.
4. Run the same with `--readable` (the plain stages of `src/stages/`, about 20 s at this size) and compare
   its trace with the fast path's and with PyTorch's: which of the three are closest, stage by stage?"""),
]

# ---------------------------------------------------------------------------------------------------------------
NOTEBOOKS["05_where_the_queries_look.ipynb"] = [
    ("md", """\
# 5. Where the queries look

Each of the 256 queries carries the position table row of its cell in the 16 x 16 grid; each of the 1024 keys
carries the resized table row of its patch. With *only* the position terms, a query's attention is a bump around
its own place on the image. Here the weights are chosen to show exactly that: identity projections (`W_q = W_k =
W_v = I`, no biases), one head, queries whose learned part is zero, and `ln_kv` with a zero gain, so the keys hold
nothing but positions. Then the position terms are removed (a stored `pos_embed` of zeros, which the C++ uses
as stored), the keys get their content back, and the queries are set to resemble one feature of the image.
Every attention map below is the C++'s: the readable stages' `adapter_forward`, called through
[`import qwenvl`](../docs/python.md) with `trace=True`, which returns every intermediate as a numpy array."""),
    ("code", SETUP + """
import qwenvl                   # the C++ stages on numpy arrays (docs/python.md)"""),
    ("code", """\
E, Q, GK = 256, 256, 32
rng = np.random.default_rng(0)
eye, zero = np.eye(E, dtype=np.float32), np.zeros(E, np.float32)

def weights(query, ln_kv_gain, pos_embed=None):
    w = qwenvl.AdapterWeights()          # the fields are the checkpoint's tensors (attn_pool.*)
    w.query = query
    w.set_in_proj(np.concatenate([eye, eye, eye]), np.zeros(3 * E, np.float32))   # W_q = W_k = W_v = I
    w.out_proj_weight, w.out_proj_bias = eye, zero
    w.ln_q_weight, w.ln_q_bias = np.ones(E, np.float32), zero
    w.ln_kv_weight, w.ln_kv_bias = np.full(E, ln_kv_gain, np.float32), zero
    if pos_embed is not None:
        w.pos_embed = pos_embed
    return w

# Features: noise plus a bright blob in the lower right of the 32 x 32 patch grid, whose patches all carry
# one feature direction `r` (Kv = E: no kv_proj).
hh, ww = np.mgrid[0:GK, 0:GK]
blob = np.exp(-((hh - 24) ** 2 + (ww - 22) ** 2) / 20.0).reshape(-1, 1)
r = rng.standard_normal(E).astype(np.float32)
features = (rng.standard_normal((1, GK * GK, E)) * 0.3 + 3.0 * blob * r).astype(np.float32)

def attention_maps(w, num_heads=1):
    config = qwenvl.derive_config(w, num_heads)
    out, trace = qwenvl.adapter_forward(w, config, features, trace=True)
    return trace["attn_weights"][0, 0].reshape(Q, GK, GK)   # image 0, head 0: (query, h, w)

# A: learned part of the queries zero, keys without content: positions alone.
# B: no position terms (pos_embed stored as zeros); queries that resemble the blob's feature, keys with content.
looking_for_the_blob = (r + 0.5 * rng.standard_normal((Q, E))).astype(np.float32)
positions_only = attention_maps(weights(np.zeros((Q, E), np.float32), 0.0))
no_positions = attention_maps(weights(looking_for_the_blob, 1.0, np.zeros((Q, E), np.float32)))"""),
    ("code", """\
chosen = [(2, 2), (2, 13), (8, 8), (13, 4)]             # (row, column) on the 16 x 16 query grid
fig, axes = plt.subplots(2, len(chosen), figsize=(13, 6.4))
for col, (h, w) in enumerate(chosen):
    for row, (maps, title) in enumerate([(positions_only, "positions only"), (no_positions, "positions removed")]):
        ax = axes[row, col]
        ax.imshow(maps[h * 16 + w], cmap="magma")
        ax.plot(2 * w + 0.5, 2 * h + 0.5, "c+", ms=14, mew=2)  # the query's own cell on the 32 x 32 key grid
        ax.set_title("query (%d, %d): %s" % (h, w, title), fontsize=9); ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout(); plt.show()"""),
    ("md", """\
Top row: each query looks at its own region (the cross marks its cell scaled to the key grid). The faint cross
through it comes from the table's two halves: a key in the same column shares the first half's (column) code, a
key in the same row the second half's. Bottom row: without position terms nothing ties a query to its cell; these
queries resemble the blob's feature, so all of them look at the blob, wherever their own cell is. In the trained
model both act at once: the position term keeps each token tied to a region, the content term picks what in that
region matters."""),
    ("code", """\
peak = lambda m: tuple(int(i) for i in np.unravel_index(np.argmax(m), m.shape))
print("own cells on the key grid:", [(2 * h, 2 * w) for h, w in chosen])
for name, maps in [("positions only", positions_only), ("positions removed", no_positions)]:
    print("peaks,", name + ":", [peak(maps[h * 16 + w]) for h, w in chosen])
print("rows sum to 1:", np.allclose(positions_only.reshape(Q, -1).sum(1), 1, atol=1e-5))"""),
    ("md", """\
## Exercises

1. Make `ln_kv`'s gain 0.3 instead of 0 (positions and content at once). Where do the maps move?
2. Use 4 heads (`attention_maps(w, num_heads=4)`): each head sees 64 channels. Which channels does head 0 get, and what does that do
   to its maps? (Hint: the table's channels come in four blocks of E/4 = 64: the sines of the column w, their
   cosines, the sines of the row h, their cosines. What can a head that sees only the first block tell about h?)
3. Why is the map of a query at the border lopsided?"""),
]

# ---------------------------------------------------------------------------------------------------------------
NOTEBOOKS["01_paper_numbers.ipynb"] = [
    ("md", """\
# 1. The paper's numbers, checked

Section 2.1 and Table 1 of the paper give the adapter's size (0.08B parameters) and its job (a fixed 256-token
output); section 2.2 says how those tokens enter the language model (between `<img>` and `</img>`). This notebook
checks each number with the C++ at Qwen-VL's real size, and times the forward pass against PyTorch."""),
    ("code", SETUP + """
import json, os, re, subprocess, sys"""),
    ("code", """\
weights, features = nb.full_size_checkpoint()
info = nb.adapter("info", "--weights", weights)
trainable = int(re.search(r"adapter, trainable: (\\d+)", info).group(1))
counts = json.load(open(os.path.join(nb.REPO, "data", "parameter_counts.json")))
print(info.split("parameters:")[1])
print("C++ count %s = %.3fB; PyTorch's modules count %s; Table 1 says 0.08B"
      % (f"{trainable:,}", trainable / 1e9, f"{counts['qwen_vl']['adapter_trainable']:,}"))"""),
    ("code", """\
parts = {"query (256x4096)": 256 * 4096, "kv_proj (4096x1664)": 4096 * 1664, "in_proj (3x4096x4096 + bias)": 3 * 4096 ** 2 + 3 * 4096,
         "out_proj (4096x4096 + bias)": 4096 ** 2 + 4096, "ln_q, ln_kv": 4 * 4096}
assert sum(parts.values()) == trainable
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
axes[0].barh(list(parts), [v / 1e6 for v in parts.values()]); axes[0].set_xlabel("million parameters")
axes[0].set_title("where the 75.0M parameters are")
axes[1].bar(["patches in (32x32)", "tokens out (16x16)", "positions in the LLM"], [1024, 256, 258],
            color=["tab:gray", "tab:blue", "tab:orange"])
axes[1].set_title("1024 -> 256: a 4x compression; +2 for <img>, </img>")
plt.tight_layout(); plt.show()"""),
    ("md", """\
## 258 positions in the language model's input

The 256 output rows overwrite the 256 padding positions between `<img>` (id 151857) and `</img>` (151858) in the
token embeddings: `qwenvl-adapter fuse`."""),
    ("code", """\
y = nb.work("y-paper.npy")
nb.adapter("run", "--weights", weights, "--input", features, "--output", y)
rng = np.random.default_rng(1)
ids = list(rng.integers(0, 151643, 5)) + [151857] + [151859] * 256 + [151858] + list(rng.integers(0, 151643, 7))
embeddings = (rng.standard_normal((len(ids), 4096)) * 0.02).astype(np.float32)
json.dump([int(t) for t in ids], open(nb.work("ids.json"), "w")); np.save(nb.work("emb.npy"), embeddings)
print(nb.adapter("fuse", "--ids", nb.work("ids.json"), "--embeddings", nb.work("emb.npy"),
                 "--image-features", y, "--output", nb.work("fused.npy")))
fused = np.load(nb.work("fused.npy"))
a, b = ids.index(151857), ids.index(151858)
print("image span: <img> at %d, </img> at %d: %d positions with the markers" % (a, b, b - a + 1))
fig, ax = plt.subplots(figsize=(11, 2.6))
ax.plot(np.linalg.norm(fused, axis=1), ".-"); ax.axvspan(a, b, color="tab:orange", alpha=0.2)
ax.set_xlabel("sequence position"); ax.set_ylabel("row norm"); ax.set_title("embeddings after the splice")
plt.tight_layout(); plt.show()"""),
    ("md", """\
## Time of a full-size forward pass, against PyTorch on this machine

Both sides use 2 OpenBLAS threads. The C++ times the fast path, `fast::adapter_forward` + `fast::tower_tail_forward`, with the query side
prepared once per set of weights (`qwenvl-bench`); PyTorch is timed twice by `tests/bench/compare_pytorch.py`:
the same work, and the Qwen-VL `Resampler` as written (`nn.MultiheadAttention`, query side recomputed per call).
[docs/performance.md](../docs/performance.md) has the full table."""),
    ("code", """\
env = dict(os.environ, OPENBLAS_NUM_THREADS="2")
cpp = json.loads(subprocess.run([nb.BENCH, "--images", "1", "--grid", "32", "--repeats", "3", "--json"], env=env,
                                capture_output=True, text=True, check=True).stdout)
script = os.path.join(nb.REPO, "tests", "bench", "compare_pytorch.py")
pt = json.loads(subprocess.run([sys.executable, script, "--child", "1", "32", "--repeats", "3", "--threads", "2"],
                               env=env, capture_output=True, text=True, check=True).stdout)
times = {"C++": cpp["per_image_s"], "PyTorch, same work": pt["per_image_s"], "PyTorch, Qwen-VL module": pt["module_per_image_s"]}
for k, v in times.items():
    print("%-26s %.3f s" % (k, v))
print("C++ effective %.0f GFLOP/s; OpenBLAS sgemm in the same process %.0f GFLOP/s" % (cpp["gflops"], cpp["gemm_gflops"]))
fig, ax = plt.subplots(figsize=(7, 2.6))
ax.barh(list(times), list(times.values()), color=["tab:blue", "tab:gray", "tab:gray"]); ax.set_xlabel("seconds per image")
plt.tight_layout(); plt.show()"""),
    ("md", """\
## Where the time goes

`qwenvl-bench --stages` runs one image through the functions that `fast::adapter_forward` calls, timing each on
its own (and checking that together they give `fast::adapter_forward`'s output bit for bit). Almost all of the
time is matrix products (the attention's included); the grey bars (LayerNorm, the position add) are a few
milliseconds."""),
    ("code", """\
st = json.loads(subprocess.run([nb.BENCH, "--stages", "--grid", "32", "--repeats", "1", "--json"], env=env,
                               capture_output=True, text=True, check=True).stdout)
names = [s["name"] for s in st["stages"]][::-1]
ms = [s["ms"] for s in st["stages"]][::-1]
colours = ["tab:blue" if s["gflop"] > 0 else "tab:gray" for s in st["stages"]][::-1]
print("total %.0f ms, of which matrix products %.0f ms (%.0f%%); sgemm here %.0f GFLOP/s; same output: %s"
      % (st["total_ms"], st["products_ms"], 100 * st["products_ms"] / st["total_ms"], st["gemm_gflops"], st["same_output"]))
fig, ax = plt.subplots(figsize=(8, 3.6))
ax.barh(names, ms, color=colours); ax.set_xlabel("milliseconds, one 32 x 32 image")
plt.tight_layout(); plt.show()"""),
    ("md", """\
## Exercises

1. Count the multiply-adds of each matrix product for one image; at two FLOPs each, check that the products the
   benchmark times add up to 104.2 GFLOP (the query projection, 2 x 256 x 4096 x 4096 = 8.6 GFLOP, is prepared
   once per set of weights and not counted). Which product dominates? For each blue bar of the last plot, divide
   its operations by its time: which products reach a lower throughput (GFLOP/s) than sgemm, and why might the
   attention's per-head ones be among them?
2. How many parameters would the adapter have for a ViT of width 1280 (Kv) and the same E? Check with
   `qwenvl-adapter info` on a checkpoint you write with `nb.write_safetensors`.
3. Two images in one prompt: how many positions do they take? Try `fuse` with two spans."""),
]


# ---------------------------------------------------------------------------------------------------------------
NOTEBOOKS["07_training_what_positions_are_for.ipynb"] = [
    ("md", """\
# 7. Training: what the positions are for

The paper's adapter is trained (section 2.1: trainable queries, a randomly initialised cross-attention). Here the
C++ trains it, with the backward pass written by hand in `src/stages/` and AdamW as `torch.optim.AdamW`
([docs/training.md](../docs/training.md)), on a task whose answer depends on *where* things are: every image is a
grid of 8 x 8 patches of random features, and each of the 16 queries (a 4 x 4 grid) must output the mean of the
features of the 4 patches in its own cell. Which patches those are is told by their positions alone.

Two runs of `qwenvl-adapter train`, the same in everything but the 2-D sin-cos tables: with them, and with
`--no-positions` (both tables zero). About 5 s each."""),
    ("code", SETUP),
    ("code", """\
import time
runs = {}
for name, extra in [("with positions", []), ("without positions", ["--no-positions"])]:
    out = nb.work("train-" + name.split()[0])
    start = time.perf_counter()
    printed = nb.adapter("train", "--out", out, "--log-every", 200, "--force", *extra)   # --force: a re-run replaces the last
    runs[name] = out
    print(name + ": %.0f s" % (time.perf_counter() - start))
    print(printed.strip().splitlines()[-2])"""),
    ("code", """\
bound = 1 / 4 - 1 / 64     # without positions, the best a query can do: the mean of all 64 patches
fig, ax = plt.subplots(figsize=(8, 4))
for name, out in runs.items():
    log = np.genfromtxt(out + "/loss.csv", delimiter=",", names=True)
    ax.plot(log["step"], log["loss"], lw=0.8, label=name)
    print("%-18s final loss (mean of the last 50 steps): %.4f" % (name, log["loss"][-50:].mean()))
ax.axhline(bound, color="k", ls="--", lw=0.8, label="no-position bound 1/4 - 1/64")
ax.set_xlabel("step"); ax.set_ylabel("mean squared error"); ax.set_ylim(0, 0.6); ax.legend()
plt.show()"""),
    ("md", """\
Without positions the loss settles on the bound: no key says where it is, so every query can only learn the mean
of all the patches. With the tables it falls far below. Where do the trained queries look? `run --trace` on the
trained checkpoints, on fresh images, gives every attention weight."""),
    ("code", """\
rng = np.random.default_rng(0)
np.save(nb.work("train-x.npy"), rng.standard_normal((8, 64, 32)).astype(np.float32))

def attention(out):
    nb.adapter("run", "--weights", out + "/adapter.safetensors", "--heads", 4, "--input", nb.work("train-x.npy"),
               "--output", nb.work("train-y.npy"), "--trace", out + "-trace")
    return np.load(out + "-trace/attn_weights.npy").mean(axis=(0, 1)).reshape(16, 8, 8)   # (query, row, column)

maps = {name: attention(out) for name, out in runs.items()}
chosen = [0, 5, 10, 15]     # queries (0, 0), (1, 1), (2, 2), (3, 3) of the 4 x 4 grid
fig, axes = plt.subplots(2, 4, figsize=(12, 6))
for row, (name, m) in enumerate(maps.items()):
    for col, query in enumerate(chosen):
        ax = axes[row, col]
        ax.imshow(m[query], cmap="magma", vmin=0)
        h, w = divmod(query, 4)
        ax.add_patch(plt.Rectangle((2 * w - 0.5, 2 * h - 0.5), 2, 2, fill=False, ec="c", lw=2))   # its own cell
        ax.set_title("%s\\nquery (%d, %d)" % (name, h, w), fontsize=9); ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout(); plt.show()
for name, m in maps.items():
    share = np.mean([m[q].reshape(8, 8)[2 * (q // 4):2 * (q // 4) + 2, 2 * (q % 4):2 * (q % 4) + 2].sum() for q in range(16)])
    print("%-18s attention on the query's own cell: %.2f (4 of 64 patches: 0.06 when spread evenly)" % (name, share))"""),
    ("md", """\
With the tables, each query's attention sits on its own cell (the cyan box): it has learned where to look from
the positions. Without them, every query spreads its attention evenly: there is nothing to tell the cells apart.

## Exercises

1. Train with `--queries 4 --keys 64` (cells of 16 patches). What is the no-position bound now, and how close does
   the run with positions get?
2. `--resume` a run with `--steps 1200`: does the loss keep falling?
3. Which parameters does the query's position reach through? (Hint: $P_q$ is added to $\\mathrm{LN}_q$(query) before
   $W_q$; see [stage 07](../docs/stages/07-adapter.md).)"""),
]

# ---------------------------------------------------------------------------------------------------------------
NOTEBOOKS["04_a_stage_in_numpy.ipynb"] = [
    ("md", """\
# 4. A stage in numpy, beside the C++ and PyTorch

Before writing a stage in C++ ([the course's exercises](../docs/course/README.md)), write it in numpy, where an
experiment is one line. `import qwenvl` ([docs/python.md](../docs/python.md)) calls this project's C++ stages on
numpy arrays, so three implementations of LayerNorm can sit side by side on the same inputs:

- **yours**, in numpy, below;
- **the C++ stage**, `qwenvl.layer_norm`: [`layer_norm`](../src/stages/04_layernorm.cpp) itself;
- **PyTorch's**, `torch.nn.LayerNorm`, the reference the golden fixtures come from.

The inputs are a golden fixture's: PyTorch's value of `kv_proj` goes in, PyTorch's `ln_kv` is what comes out."""),
    ("code", """\
import numpy as np
import matplotlib.pyplot as plt
import torch
import qwenvl_nb as nb          # finds this project's build (notebooks/qwenvl_nb.py)
import qwenvl                   # the C++ stages, on numpy arrays
plt.rcParams["figure.dpi"] = 80

f = qwenvl.load_fixture(nb.REPO + "/data/fixtures/batch3.json")
x = f["expected"]["kv_proj"][0]                        # (L, E): image 0's keys before ln_kv, as PyTorch computed them
gamma, beta, eps = f["weights"].ln_kv_weight, f["weights"].ln_kv_bias, f["config"].eps
print("x", x.shape, " gamma", gamma.shape, " eps", eps)"""),
    ("md", """\
## Your LayerNorm

Each row of E values: subtract the mean, divide by the square root of the variance plus eps, scale by gamma and
shift by beta ([stage 04](../docs/stages/04-layernorm.md)). Edit `layer_norm_numpy` and re-run the cells below."""),
    ("code", """\
def layer_norm_numpy(x, gamma, beta, eps):
    x = x.astype(np.float64)                         # the sums in double, as the C++ stage keeps them
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)   # biased: divide by E
    return ((x - mean) / np.sqrt(var + eps) * gamma + beta).astype(np.float32)

def layer_norm_torch(x, gamma, beta, eps):
    ln = torch.nn.LayerNorm(x.shape[1], eps=eps)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(gamma)); ln.bias.copy_(torch.from_numpy(beta))
        return ln(torch.from_numpy(x)).numpy()

results = {
    "numpy (yours)": layer_norm_numpy(x, gamma, beta, eps),
    "C++ (qwenvl.layer_norm)": qwenvl.layer_norm(x, gamma, beta, eps),
    "PyTorch (nn.LayerNorm, float32)": layer_norm_torch(x, gamma, beta, eps),
}
want = f["expected"]["ln_kv"][0]                      # the fixture's: float64 PyTorch, rounded to float32
for name, got in results.items():
    print("%-32s max |got - fixture| = %.2g" % (name, np.abs(got - want).max()))"""),
    ("md", """\
All three agree with the fixture to within a float32 rounding or two. The golden checks hold the C++ to
`|got - want| <= atol + rtol |want|` with the fixture's tolerances; your numpy version passes the same rule:"""),
    ("code", """\
for name, got in results.items():
    ok = np.all(np.abs(got - want) <= f["atol"] + f["rtol"] * np.abs(want))
    print("%-32s within the fixture's tolerance: %s" % (name, ok))"""),
    ("md", """\
## The classic mistake, measured

`np.var(x, ddof=1)` and `torch.var` by default divide by E - 1. With gamma = 1 and beta = 0 that multiplies every
output by $\\sqrt{(E-1)/E}$: a 6.5% error at the fixture's E = 8, and 0.012% at Qwen-VL's E = 4096, small enough to
pass a glance at the outputs and far beyond float32 rounding. Both implementations below are numpy; the C++
stage is the reference line."""),
    ("code", """\
rng = np.random.default_rng(0)
widths = [8, 16, 64, 256, 1024, 4096]
errors = []
for E in widths:
    xs = rng.standard_normal((64, E)).astype(np.float32)
    g, b = np.ones(E, np.float32), np.zeros(E, np.float32)
    unbiased = ((xs - xs.mean(1, keepdims=True)) / np.sqrt(xs.var(1, ddof=1, keepdims=True) + 1e-6)).astype(np.float32)
    errors.append(np.abs(unbiased - qwenvl.layer_norm(xs, g, b, 1e-6)).max())
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(widths, errors, "o-", label="max |unbiased - C++|")
ax.loglog(widths, [3.0 / (2 * E) for E in widths], "k--", lw=0.8, label="3 / (2E)")
ax.axhline(np.finfo(np.float32).eps * 3, color="gray", lw=0.8, label="a few float32 ulps of 3")
ax.set_xlabel("E"); ax.set_ylabel("error"); ax.legend(); plt.show()
print("at E = 4096: %.2g" % errors[-1])"""),
    ("md", """\
The error falls as 1/(2E) times the largest normalised value (3 to 5 here: more samples reach further into the
tails), and stays hundreds of ulps above float32's rounding at every width: the golden tests see it at any size.

## Shapes are checked in C++, and reported in Python

The module raises the stage's own error message as a `ValueError`:"""),
    ("code", """\
try:
    qwenvl.layer_norm(x, gamma[:3], beta, eps)
except ValueError as error:
    print("ValueError:", error)"""),
    ("md", """\
## Exercises

1. Write `softmax_rows_numpy(scores, mask)` and compare it with `qwenvl.softmax_rows` and `torch.softmax` on the
   fixture's `scores` (`f["expected"]["scores"][0][0]`) and the mask `f["mask"]` (try the `bool_mask` fixture).
   Then remove the subtraction of the maximum and feed it scores of 100: what does each implementation return?
2. Put eps outside the square root in `layer_norm_numpy`. Which rows of the `small_variance` fixture change most,
   and why those?
3. Now write the same stage in C++: [`src/exercises/04_layernorm.cpp`](../src/exercises/04_layernorm.cpp), and
   `cmake --build --preset release --target check-04-layernorm`."""),
]


NOTEBOOKS["09_a_ports_precision_budget.ipynb"] = [
    ("md", """\
# 9. A port's precision budget: rounding or a bug?

A port of the resampler to another runtime compares its intermediates with this project's
(`qwenvl-adapter compare`, [docs/compare.md](../docs/compare.md)) and sees differences. Which are rounding and
which are mistakes? This notebook plots the budget measured at Qwen-VL's full size
([docs/precision.md](../docs/precision.md)): each stage's largest error relative to the stage's largest value,
against float32 PyTorch, for this project and for ports that store the weights or keep the activations in 16 bits.

The numbers come from `data/precision/budget.json`, which
`/usr/bin/python3 tests/reference/precision_budget.py` writes in about a minute (too long for this notebook: it
builds a 360 MB checkpoint and runs the full-size forward pass six ways)."""),
    ("code", """\
import json
import numpy as np
import matplotlib.pyplot as plt
import qwenvl_nb as nb
plt.rcParams["figure.dpi"] = 80

budget = json.load(open(nb.REPO + "/data/precision/budget.json"))
stages = budget["stages"]
print("config:", budget["config"], " reference:", budget["reference"])"""),
    ("code", """\
fig, ax = plt.subplots(figsize=(10, 4.5))
for key, title in budget["scenarios"].items():
    rel = [max(budget["errors"][key][s]["rel"], 1e-9) for s in stages]   # 0 drawn at 1e-9 on the log axis
    ax.plot(range(len(stages)), rel, marker="o", label=title)
ax.set_yscale("log")
ax.set_xticks(range(len(stages)))
ax.set_xticklabels(stages, rotation=60)
ax.set_ylabel("max |error| / max |value|")
ax.set_title("each stage against float32 PyTorch, Qwen-VL's full size")
ax.legend(fontsize=8)
plt.tight_layout()"""),
    ("md", """\
Three bands: this project's float32 path stays near $10^{-6}$ (the order of its sums differs from PyTorch's), f16
storage or f16 activations near $10^{-3}$, bf16 near $10^{-2}$; the error grows through the softmax and the
weighted sum (`attn_weights`, `attended`) and shrinks again after out_proj and the LayerNorm.

## Mistakes are far above the budget

`data/compare/` holds dumps of a small port with one usual mistake injected each (written by PyTorch, the proof
that `compare` names the right stage). The same relative error at the stage each mistake first changes:"""),
    ("code", """\
mistakes = json.load(open(nb.REPO + "/data/compare/mistakes.json"))["mistakes"]
names, errors = [], []
for m in mistakes:
    ours = np.load(nb.REPO + "/data/compare/%s/pytorch/%s.npy" % (m["case"], m["first_stage"]))
    theirs = np.load(nb.REPO + "/" + m["dump"] + "/" + m["first_stage"] + ".npy")
    with np.errstate(invalid="ignore"):
        err = np.nanmax(np.abs(theirs - ours)) / np.abs(ours).max()
    names.append("%s (%s)" % (m["mistake"], m["first_stage"]))
    errors.append(err)
fig, ax = plt.subplots(figsize=(10, 4))
ax.barh(names, errors, color="tab:red")
for key, color in (("bf16_port", "tab:brown"), ("cpp_f32", "tab:blue")):
    worst = max(budget["errors"][key][s]["rel"] for s in stages)
    ax.axvline(worst, color=color, linestyle="--", label="worst stage, " + budget["scenarios"][key])
ax.set_xscale("log")
ax.set_xlabel("max |error| / max |value| at the first stage that differs")
ax.legend(fontsize=8)
plt.tight_layout()
for n, e in zip(names, errors):
    print("%-40s %.3g" % (n, e))"""),
    ("md", """\
Most mistakes lie one to two orders of magnitude above even the bf16 port's worst stage. Two do not:

- the **bf16-stored table** (`bf16_table`) *is* bf16 rounding, the size of the budget's bf16 columns;
- the **unbiased variance** is an effect of order $1/E$: large here at $E = 8$, but at Qwen-VL's $E = 4096$ it
  moves the output by $2.9 \\times 10^{-4}$ of its largest value ([break it and
  see](../docs/course/break-it-and-see.md)), inside an f16 port's budget.

Against a float32 port (budget near $10^{-6}$) both stand out; against a 16-bit port, no comparison of values can
tell them from rounding, and `compare`'s hints for the stage are the place to look.

## Exercises

1. Which stage amplifies a bf16 port's error most, and why does the softmax do that? (Hint: the scores' largest
   values, and $e^{s}$'s relative error for an absolute error in $s$.)
2. From the table in [docs/precision.md](../docs/precision.md), what `--rtol` would you give `compare` for a port
   with F16 weights and float32 activations?"""),
]

# ---------------------------------------------------------------------------------------------------------------
NOTEBOOKS["08_how_many_queries.ipynb"] = [
    ("md", """\
# 8. How many queries? The paper's ablation in miniature

Qwen-VL's adapter squeezes an image into a fixed number of tokens: 256 queries. The paper's Appendix E.2 (Fig. 7)
asks how many there should be: with ViT-L/14 at 224 x 224 pixels (256 patches), it trains adapters with 64, 144, 256
and 400 queries and compares their training losses. What it reports: the runs with fewer queries start lower (their
loss falls first), but near convergence too few queries and too many both do worse than 256, which it keeps.

This notebook runs the same comparison in miniature with this project's C++ (`qwenvl-adapter train --task
reconstruct`, [docs/training.md](../docs/training.md#the-query-count-ablation)): 256 patches (16 x 16) of smooth
random images, E = 32, 4 heads, and 64, 144, 256 or 400 queries. Every query count must face the same target, so
the Q outputs are *read out* on the patch grid: their $\\sqrt{Q} \\times \\sqrt{Q}$ grid resized bicubically to
16 x 16 (a fixed matrix $R$, 256 x Q), and the task is to give every patch back. The read-out is not neutral: for
256 queries $R$ is the identity, one query per patch.

The curves come from longer runs (1500 steps each, about 22 minutes in all) that
`bash notebooks/ablation_runs.sh` writes to `data/training/ablation/`; this notebook checks that the command still
gives the same losses by running the first steps again."""),
    ("code", SETUP + """
import qwenvl                   # the C++ stages on numpy arrays (docs/python.md)

QUERIES = [64, 144, 256, 400]
logs = {q: np.genfromtxt(nb.REPO + "/data/training/ablation/q%d.csv" % q, delimiter=",", names=True) for q in QUERIES}
no_positions = np.genfromtxt(nb.REPO + "/data/training/ablation/q256-no-positions.csv", delimiter=",", names=True)"""),
    ("md", """\
**The task and the read-out.** Each image is three octaves of noise (drawn on 4 x 4, 8 x 8 and 16 x 16 grids with
amplitudes 1, $1/\\sqrt{2}$ and 1/2, and resized to 16 x 16), every patch normalised to mean 0 and variance 1. The
read-out can only give back what lies in the span of $R$'s Q columns, so each query count has a floor that no
training can pass: the least-squares fit of the images through $R$, computed here on 64 images."""),
    ("code", """\
x, target = qwenvl.reconstruct_task(64, 16, 32, 7)           # (64, 256, 32): 64 images, their own targets
floors, fits = {}, {}
for q in QUERIES:
    R = qwenvl.readout_matrix(int(q ** 0.5), 16)               # (256, Q)
    residual = []
    for n in range(len(x)):
        y, *_ = np.linalg.lstsq(R, target[n], rcond=None)      # the best Q tokens for this image, (Q, 32)
        residual.append(((R @ y - target[n]) ** 2).mean())
        if n == 0:
            fits[q] = R @ y
    floors[q] = float(np.mean(residual))
    print("Q = %3d: R is %s, floor (least squares through R) %.4f" % (q, R.shape, floors[q]))
image_mean = float(((target - target.mean(axis=1, keepdims=True)) ** 2).mean())
print("every patch given its image's mean: %.4f" % image_mean)

fig, axes = plt.subplots(1, 5, figsize=(14, 3))
axes[0].imshow(target[0][:, 0].reshape(16, 16), cmap="RdBu_r", vmin=-2.5, vmax=2.5); axes[0].set_title("an image (channel 0)")
for ax, q in zip(axes[1:], QUERIES):
    ax.imshow(fits[q][:, 0].reshape(16, 16), cmap="RdBu_r", vmin=-2.5, vmax=2.5)
    ax.set_title("best through R, Q = %d" % q)
for ax in axes: ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout(); plt.show()"""),
    ("md", """\
**The same command, again.** The first steps of two of the runs, with the flags of `ablation_runs.sh` and `--until`
(the schedule stays 1500 steps long): their losses should equal the committed CSV's (a build for another CPU may
differ in the last digits)."""),
    ("code", """\
common = ["--task", "reconstruct", "--keys", 256, "--width", 32, "--heads", 4, "--batch", 8, "--steps", 1500,
          "--warmup", 100, "--seed", 1, "--log-every", 1500, "--save-every", 1500]
for q, until in [(64, 20), (400, 5)]:
    out = nb.work("ablation-q%d" % q)
    nb.adapter("train", *common, "--queries", q, "--until", until, "--out", out, "--force")
    again = np.genfromtxt(out + "/loss.csv", delimiter=",", names=True)["loss"]
    committed = logs[q]["loss"][:until]
    print("Q = %3d, steps 0 to %d: largest relative difference from the CSV %.1e" %
          (q, until - 1, np.max(np.abs(again - committed) / committed)))"""),
    ("code", """\
def smooth(values, width=25):
    \"\"\"The mean of each window of `width` steps, and the step at the window's centre.\"\"\"
    means = np.convolve(values, np.ones(width) / width, mode="valid")
    return np.arange(len(means)) + width // 2, means

fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
for ax, last in zip(axes, [400, 1500]):
    for q in QUERIES:
        steps, means = smooth(logs[q]["loss"])
        line, = ax.plot(steps[steps < last], means[steps < last], lw=1, label="%d queries" % q)
        if floors[q] > 1e-9:                                      # 256 and 400 queries: the floor is 0
            ax.axhline(floors[q], color=line.get_color(), ls=":", lw=1)
    steps, means = smooth(no_positions["loss"])
    ax.plot(steps[steps < last], means[steps < last], color="k", lw=1, label="256 queries, no positions")
    ax.set_xlabel("step (the centre of a mean of 25)"); ax.set_ylabel("mean squared error")
axes[0].set_title("the first 400 steps"); axes[0].set_ylim(0, 1.1)
axes[1].set_title("all 1500 steps (dotted: the floors of 64 and 144 queries)"); axes[1].set_yscale("log")
axes[1].set_ylim(1e-7, 2); axes[1].legend(fontsize=8)
plt.tight_layout(); plt.show()

RANGES = [(100, 150), (150, 200), (200, 250), (400, 450), (1450, 1500)]   # docs/training.md's table
print("mean loss over steps   " + "  ".join("%9s" % ("%d-%d" % (a, b - 1)) for a, b in RANGES) + "      floor")
for name, log, floor in [("%3d queries" % q, logs[q], floors[q]) for q in QUERIES] + [("256, no positions", no_positions, None)]:
    l = log["loss"]
    print("%-22s" % name + "  ".join("%9.3g" % l[a:b].mean() for a, b in RANGES) +
          ("  %9.3g" % floor if floor is not None else ""))"""),
    ("md", """\
**What the miniature shows, beside the paper.**

- *Near convergence it agrees.* Too few queries stop at the floor of their read-out (64 and 144 queries end about
  0.05 above theirs: the images hold more detail than 64 or 144 tokens can carry). Too many learn more slowly: 400
  queries could give every image back as exactly as 256 (both floors are 0), but after 1500 steps they are still near
  0.05, while 256 queries went below $10^{-5}$ at step 1176. Part of this is built into the read-out: for 256 queries
  it is the identity, one query per patch, the easiest thing to learn, and 400 queries must coordinate through a
  downsampling with a 144-dimensional null space.
- *The start does not.* The paper's runs with fewer queries start lower; here the four curves fall together (around
  step 155, once the warm-up has brought the learning rate up), with no order by Q in the steps 100 to 149, and in
  the steps 150 to 199 the opposite of the paper's order (64 > 144 > 400 > 256). The miniature's task is a
  reconstruction, not a language model's next-token loss, and its width is 32, not 4096: either may be why.
- *Without positions* (black) no query knows where its outputs go: the loss stays at what giving every patch its
  image's mean costs (printed above)."""),
    ("md", """\
## Wider: E = 256 on 32 x 32 patches

The same four query counts, each with and without the tables, at a width where the adapter has room to learn
(E = 256, 4 heads) and on the patch grid of Qwen-VL's 448 x 448 images (32 x 32 = 1024 patches), 1000 steps each, on
the fast path: `WIDE=1 bash notebooks/ablation_runs.sh` writes `data/training/ablation-e256/`. With 1024 patches no query count is one per
patch: $R$ is an upsampling for all four, and each has a floor."""),
    ("code", """\
wide = {q: np.genfromtxt(nb.REPO + "/data/training/ablation-e256/q%d.csv" % q, delimiter=",", names=True) for q in QUERIES}
wide_no_positions = {q: np.genfromtxt(nb.REPO + "/data/training/ablation-e256/q%d-no-positions.csv" % q, delimiter=",",
                                      names=True) for q in QUERIES}
xw, tw = qwenvl.reconstruct_task(16, 32, 256, 7)              # (16, 1024, 256): 16 images at the runs' width
wide_floors = {}
for q in QUERIES:
    R = qwenvl.readout_matrix(int(q ** 0.5), 32)               # (1024, Q)
    y, *_ = np.linalg.lstsq(R, tw.transpose(1, 0, 2).reshape(1024, -1), rcond=None)
    wide_floors[q] = float(((R @ y - tw.transpose(1, 0, 2).reshape(1024, -1)) ** 2).mean())

fig, ax = plt.subplots(figsize=(7, 4.5))
for q in QUERIES:
    steps, means = smooth(wide[q]["loss"])
    line, = ax.plot(steps, means, lw=1, label="%d queries" % q)
    ax.axhline(wide_floors[q], color=line.get_color(), ls=":", lw=1)
for q in QUERIES:
    steps, means = smooth(wide_no_positions[q]["loss"])
    ax.plot(steps, means, color="k", lw=0.8, alpha=0.4 + 0.15 * QUERIES.index(q),
            label="no positions (64 to 400: light to dark)" if q == QUERIES[0] else None)
ax.set_yscale("log"); ax.set_xlabel("step (the centre of a mean of 25)"); ax.set_ylabel("mean squared error")
ax.set_title("E = 256, 32 x 32 patches (dotted: each query count's floor through R)"); ax.legend(fontsize=8)
plt.tight_layout(); plt.show()

WIDE_RANGES = [(100, 150), (150, 200), (200, 250), (400, 450), (950, 1000)]
print("mean loss over steps   " + "  ".join("%9s" % ("%d-%d" % (a, b - 1)) for a, b in WIDE_RANGES) + "      floor")
for name, log, floor in ([("%3d queries" % q, wide[q], wide_floors[q]) for q in QUERIES] +
                         [("%3d, no positions" % q, wide_no_positions[q], None) for q in QUERIES]):
    l = log["loss"]
    print("%-22s" % name + "  ".join("%9.3g" % l[a:b].mean() for a, b in WIDE_RANGES) +
          ("  %9.3g" % floor if floor is not None else ""))"""),
    ("md", """\
**What the wider runs change.** With 1024 patches no query count is one per patch, and the floors fall as Q grows:
near convergence the runs come in the order of their floors (400 lowest), and 256 queries end closest to theirs.
The "fewer queries are worse" half of the paper's finding is clear (64 queries far behind); the "more are worse"
half is not, and more queries now start to fall first, the opposite of the paper's early order. Without the tables
the loss stays at the image's variance around its mean whatever Q is: more queries do not help a query that cannot
tell where it is."""),
    ("md", """\
## Exercises

1. The floors fall as Q grows, and for Q >= 256 they are 0. Why can 400 tokens read out through a 256 x 400 matrix
   give back any image exactly, and why does that not make the 400-query run learn faster?
2. Train 256 queries with `--no-positions` for a few hundred steps, run the checkpoint on a batch of
   `qwenvl.reconstruct_task` (`run`), and read its outputs out with `qwenvl.grid_readout(qwenvl.readout_matrix(16,
   16), y)`: what does every patch get back, and why is that the best a query can do when it cannot tell where it is?
3. Make the images rougher (in `reconstruct_task`, give the finest octave amplitude 1): which query count gains
   most?"""),
]


def main():
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=[new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.write(nb, os.path.join(HERE, name))
        print("wrote notebooks/" + name)


if __name__ == "__main__":
    main()
