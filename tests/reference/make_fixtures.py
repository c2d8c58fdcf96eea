#!/usr/bin/python3
"""Write the golden fixtures in data/fixtures/ from PyTorch.

Run with Debian's interpreter, which has torch and numpy:

    /usr/bin/python3 tests/reference/make_fixtures.py

Every expected value in the fixtures is computed here, by PyTorch
(torch.nn.MultiheadAttention, torch.nn.LayerNorm, torch.nn.functional.interpolate)
and numpy (the sin-cos table, built in float32 as Qwen-VL builds it). Nothing in
data/fixtures/ comes from the C++ under test. Each case is seeded, and the file
records the seed and the torch and numpy versions; running this script again on
the same versions rewrites the files byte for byte.

The reference module below follows the computation described in
../shared/reference/adapter-facts.md (section 2), i.e. Qwen-VL's `Resampler`
followed by the visual tower's tail (ln_post, then `@ proj`).
"""

import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(REPO, "data", "fixtures")

EPS = 1e-6          # the visual tower builds its LayerNorms with eps = 1e-6
ATOL = 1e-5         # |a - b| <= atol + rtol * |b|, per element
RTOL = 1e-5

# name, description, E, H, Kv, G_q, G_k, N, mask kind, random LayerNorm affine?
CASES = [
    ("resize_up", "Kv != E (kv_proj is a real projection); 2x2 queries on a 4x4 key grid (table resized up)",
     8, 2, 6, 2, 4, 1, None, True),
    ("identity_equal_grids", "Kv == E (kv_proj is the identity); query and key grids equal (no resize); LayerNorms at 1 and 0",
     8, 2, 8, 3, 3, 1, None, False),
    ("batch3", "a batch of three images, four heads of two channels",
     8, 4, 12, 2, 3, 3, None, True),
    ("float_mask", "a float attention mask (Q, L) added to the scores, batch of two",
     8, 2, 4, 2, 3, 2, "float", True),
    ("bool_mask", "a boolean attention mask (Q, L), True = masked, three heads, batch of two",
     12, 3, 6, 2, 3, 2, "bool", True),
    ("odd_grids", "odd grids: 3x3 queries on 5x5 keys",
     8, 2, 6, 3, 5, 1, None, True),
    ("resize_down", "4x4 queries on a 2x2 key grid (table resized down); one head",
     8, 1, 10, 4, 2, 1, None, True),
]

# ---------------------------------------------------------------------------
# The sin-cos table, in numpy float32, as Qwen-VL (after MAE) builds it.


def sincos_1d(dim, positions):
    """(P,) positions -> (P, dim): all sines, then all cosines."""
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", positions.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim, grid):
    """(grid*grid, dim); row r = h*grid + w; first half encodes w (meshgrid 'xy'), second half h."""
    coords = np.arange(grid, dtype=np.float32)
    first, second = np.meshgrid(coords, coords)   # 'xy': first[h, w] = w, second[h, w] = h
    return np.concatenate([sincos_1d(dim // 2, first), sincos_1d(dim // 2, second)], axis=1)


def resize_table(table, grid_in, grid_out):
    """(grid_in^2, E) -> (grid_out^2, E) by F.interpolate bicubic, align_corners=False."""
    if grid_in == grid_out:
        return table
    image = table.float().reshape(1, grid_in, grid_in, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=(grid_out, grid_out), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(0, 2)

# ---------------------------------------------------------------------------
# One case: random parameters and inputs, the forward pass, every intermediate.


def randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def build_case(name, description, E, H, Kv, Gq, Gk, N, mask_kind, affine, seed):
    gen = torch.Generator().manual_seed(seed)
    Q, L, Dh = Gq * Gq, Gk * Gk, E // H

    x = randn(gen, N, L, Kv)
    query = randn(gen, Q, E)
    kv_proj = torch.nn.Linear(Kv, E, bias=False) if Kv != E else None
    attn = torch.nn.MultiheadAttention(E, H)
    ln_q = torch.nn.LayerNorm(E, eps=EPS)
    ln_kv = torch.nn.LayerNorm(E, eps=EPS)
    ln_post = torch.nn.LayerNorm(E, eps=EPS)
    proj = randn(gen, E, E, scale=E ** -0.5)
    with torch.no_grad():
        if kv_proj is not None:
            kv_proj.weight.copy_(randn(gen, E, Kv, scale=Kv ** -0.5))
        attn.in_proj_weight.copy_(randn(gen, 3 * E, E, scale=E ** -0.5))
        attn.in_proj_bias.copy_(randn(gen, 3 * E, scale=0.1))
        attn.out_proj.weight.copy_(randn(gen, E, E, scale=E ** -0.5))
        attn.out_proj.bias.copy_(randn(gen, E, scale=0.1))
        for ln in (ln_q, ln_kv, ln_post):
            if affine:
                ln.weight.copy_(1.0 + randn(gen, E, scale=0.2))
                ln.bias.copy_(randn(gen, E, scale=0.2))

    mask = None
    if mask_kind == "float":
        mask = randn(gen, Q, L)
    elif mask_kind == "bool":
        mask = torch.rand(Q, L, generator=gen) < 0.4
        mask[:, 0] = False            # no fully masked row: PyTorch would give NaN there

    with torch.no_grad():
        pos_q = torch.from_numpy(sincos_2d(E, Gq)).float()            # (Q, E)
        pos_k = resize_table(pos_q, Gq, Gk)                           # (L, E)
        projected = kv_proj(x) if kv_proj is not None else x          # (N, L, E)
        X = ln_kv(projected)                                          # (N, L, E)
        lq = ln_q(query)                                              # (Q, E)
        query_in = lq + pos_q                                         # (Q, E)
        key_in = X + pos_k                                            # (N, L, E)

        # nn.MultiheadAttention in its own (L, N, E) layout, as the reference calls it.
        out_lne, weights = attn(query_in.unsqueeze(1).repeat(1, N, 1), key_in.permute(1, 0, 2),
                                X.permute(1, 0, 2), attn_mask=mask,
                                need_weights=True, average_attn_weights=False)
        out = out_lne.permute(1, 0, 2)                                # (N, Q, E)

        # The steps inside it, with the same torch functions it uses.
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        q = F.linear(query_in, w_q, b_q)                              # (Q, E)
        k = F.linear(key_in, w_k, b_k)                                # (N, L, E)
        v = F.linear(X, w_v, b_v)                                     # (N, L, E)
        qh = (q / math.sqrt(Dh)).reshape(Q, H, Dh).permute(1, 0, 2)   # (H, Q, Dh)
        kh = k.reshape(N, L, H, Dh).permute(0, 2, 1, 3)               # (N, H, L, Dh)
        vh = v.reshape(N, L, H, Dh).permute(0, 2, 1, 3)
        scores = torch.matmul(qh.unsqueeze(0), kh.transpose(-2, -1))  # (N, H, Q, L), before the mask
        attended = torch.matmul(weights, vh).permute(0, 2, 1, 3).reshape(N, Q, E)
        check = F.linear(attended, attn.out_proj.weight, attn.out_proj.bias)
        assert torch.allclose(check, out, atol=1e-6, rtol=1e-5), name

        after_ln_post = ln_post(out)
        y = after_ln_post @ proj                                      # x @ W, not a Linear

    params = {
        "attn_pool.query": query,
        "attn_pool.attn.in_proj_weight": attn.in_proj_weight,
        "attn_pool.attn.in_proj_bias": attn.in_proj_bias,
        "attn_pool.attn.out_proj.weight": attn.out_proj.weight,
        "attn_pool.attn.out_proj.bias": attn.out_proj.bias,
        "attn_pool.ln_q.weight": ln_q.weight, "attn_pool.ln_q.bias": ln_q.bias,
        "attn_pool.ln_kv.weight": ln_kv.weight, "attn_pool.ln_kv.bias": ln_kv.bias,
        "ln_post.weight": ln_post.weight, "ln_post.bias": ln_post.bias,
        "proj": proj,
    }
    if kv_proj is not None:
        params["attn_pool.kv_proj.weight"] = kv_proj.weight
    inputs = {"x": x}
    if mask is not None:
        inputs["attn_mask"] = mask
    intermediates = {
        "pos_q": pos_q, "pos_k": pos_k, "kv_proj": projected, "ln_kv": X, "ln_q": lq,
        "query_in": query_in, "key_in": key_in, "q": q, "k": k, "v": v,
        "scores": scores, "attn_weights": weights, "attended": attended, "out": out,
        "ln_post": after_ln_post, "proj": y,
    }
    return {
        "name": name,
        "description": description,
        "generator": "tests/reference/make_fixtures.py",
        "seed": seed,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "config": {"embed_dim": E, "num_heads": H, "kv_dim": Kv, "grid_q": Gq, "grid_k": Gk,
                   "n_queries": Q, "n_keys": L, "batch": N, "eps": EPS, "mask": mask_kind or "none"},
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "inputs": {k: tensor_json(v) for k, v in inputs.items()},
        "params": {k: tensor_json(v) for k, v in params.items()},
        "intermediates": {k: tensor_json(v) for k, v in intermediates.items()},
    }

# ---------------------------------------------------------------------------
# JSON writing: one line per tensor, float32 values in their shortest exact form.


def tensor_json(t):
    a = t.detach().numpy()
    if a.dtype == np.bool_:
        return {"dtype": "bool", "shape": list(a.shape), "data": [int(b) for b in a.ravel()]}
    a = a.astype(np.float32)
    return {"dtype": "float32", "shape": list(a.shape), "data": [float(str(v)) for v in a.ravel()]}


def dumps(case):
    placeholders = {}

    def hide(obj):
        if isinstance(obj, dict):
            if "data" in obj and "shape" in obj:
                key = "@@%d@@" % len(placeholders)
                placeholders[key] = json.dumps(obj)
                return key
            return {k: hide(v) for k, v in obj.items()}
        return obj

    text = json.dumps(hide(case), indent=2)
    for key, value in placeholders.items():
        text = text.replace('"%s"' % key, value)
    return text + "\n"


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT_DIR, exist_ok=True)
    for index, case in enumerate(CASES):
        seed = 1000 + index
        fixture = build_case(*case, seed=seed)
        path = os.path.join(OUT_DIR, case[0] + ".json")
        with open(path, "w") as f:
            f.write(dumps(fixture))
        print("wrote %s (%d bytes)" % (os.path.relpath(path, REPO), os.path.getsize(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
