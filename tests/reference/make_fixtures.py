#!/usr/bin/python3
"""Write the golden fixtures in data/fixtures/ from PyTorch.

Run with Debian's interpreter, which has torch and numpy:

    /usr/bin/python3 tests/reference/make_fixtures.py

Every expected value in the fixtures is computed here, by PyTorch
(torch.nn.MultiheadAttention, torch.nn.LayerNorm, torch.nn.functional.interpolate)
and numpy (the sin-cos table, in Qwen-VL's float32 steps). Nothing in data/ comes
from the C++ under test. Each case is seeded, and the file records the seed, the
torch and numpy versions and how the values were computed (ORACLE below): in
float64 from the float32 parameters and inputs, rounded to float32, so that no
value depends on the CPU's BLAS or SIMD kernels. Running this script again with
the same versions rewrites every file byte for byte, on any CPU; .ci/run checks
it under two OpenBLAS kernel sets and with numpy's and torch's SIMD paths on and
off (tests/reference/check_reproducible.sh).

The reference module below follows the computation described in
../shared/reference/adapter-facts.md (section 2), i.e. Qwen-VL's `Resampler`
followed by the visual tower's tail (ln_post, then `@ proj`).
"""

import json
import math
from fractions import Fraction
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from safetensors_io import TORCH_DTYPES, read_safetensors, write_entries, write_safetensors  # noqa: E402  (beside this file)
from resamplers import (MiniCPMVResampler, QwenVLResampler, autograd_gradients, explicit_forward, load_state,  # noqa: E402
                        module_gradients, trace_resampler)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT_DIR = os.path.join(REPO, "data", "fixtures")

EPS = 1e-6          # the visual tower builds its LayerNorms with eps = 1e-6
ATOL = 1e-5         # |a - b| <= atol + rtol * |b|, per element
ORACLE = ("torch.nn modules in float64 on the float32 parameters and inputs, every value rounded to float32; "
          "the sin-cos table in Qwen-VL's float32 steps with the power, sin and cos computed in float64 and rounded")
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
    ("small_variance", "features and queries of small variance (LayerNorm rows with std about 1e-3 and 1e-2, where "
     "eps = 1e-6 matters), and a float mask with entries near +100 (scores + mask overflow exp unless each row's "
     "maximum is subtracted first)",
     8, 2, 6, 2, 3, 2, "large", True),
]

# Scales applied after drawing a case: the features' scale per image, and the learned queries' scale.
CASE_SCALES = {"small_variance": ([1e-3, 1e-2], 3e-3)}

# ---------------------------------------------------------------------------
# The sin-cos table, in numpy float32, as Qwen-VL (after MAE) builds it.


def sincos_1d(dim, positions):
    """(P,) positions -> (P, dim): all sines, then all cosines.

    The reference's float32 steps, in its order: i / (D/2), then 10000 ** that, then 1 / that, then the products
    p * omega; then sin and cos. The divisions and products are single IEEE operations, the same on every CPU.
    numpy's float32 power, sin and cos are not: their SIMD kernels differ by an ulp from CPU to CPU (numpy 1.24's
    AVX-512 power differs from the C library's in 208 of 1024 frequencies). Those three are computed in float64
    and rounded to float32, which is the correctly rounded float32 result (barring a float64 tie), on any CPU."""
    i = np.arange(dim // 2, dtype=np.float32)
    exponent = i / np.float32(dim / 2.0)                                        # float32 division
    power = (10000.0 ** exponent.astype(np.float64)).astype(np.float32)         # float32 10000 ** exponent
    omega = np.float32(1.0) / power                                             # float32 division
    angles = positions.reshape(-1).astype(np.float32)[:, None] * omega[None, :]  # float32 products
    angles = angles.astype(np.float64)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sincos_2d(dim, grid):
    """(grid*grid, dim); row r = h*grid + w; first half encodes w (meshgrid 'xy'), second half h."""
    coords = np.arange(grid, dtype=np.float32)
    first, second = np.meshgrid(coords, coords)   # 'xy': first[h, w] = w, second[h, w] = h
    return np.concatenate([sincos_1d(dim // 2, first), sincos_1d(dim // 2, second)], axis=1)


def resize_table(table, grid_in, grid_out):
    """(grid_in^2, E) -> (grid_out^2, E) by F.interpolate bicubic, align_corners=False."""
    if grid_in == grid_out:
        return table
    image = table.reshape(1, grid_in, grid_in, -1).permute(0, 3, 1, 2)     # in the table's own dtype
    resized = F.interpolate(image, size=(grid_out, grid_out), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(0, 2)

def resize_table_exact(table, grid_in, grid_out):
    """The same bicubic resize in exact rational arithmetic, rounded once at the end (to float64, which holds a
    float32 tie exactly). The resized table is full of ties: a 2 -> 4 resize averages neighbours with weights that
    are simple fractions, and the exact value often falls halfway between two float32 numbers, where a float64 sum
    in one order or another rounds either way. F.interpolate's vectorised and scalar kernels do differ there; the
    exact value does not. Written for the fixtures' small tables (the notebooks use resize_table)."""
    out_h, out_w = (grid_out, grid_out) if isinstance(grid_out, int) else grid_out   # an (h, w) grid too
    if (out_h, out_w) == (grid_in, grid_in):
        return table
    A = Fraction(-3, 4)

    def cubic(d):  # Keys' cubic convolution kernel, |d| < 2
        d = abs(d)
        return ((A + 2) * d - (A + 3)) * d * d + 1 if d <= 1 else ((A * d - 5 * A) * d + 8 * A) * d - 4 * A

    def taps(j, size):  # the four clamped source indices and weights of output index j of `size` (align_corners=False)
        s = Fraction(grid_in, size) * (j + Fraction(1, 2)) - Fraction(1, 2)
        i0 = math.floor(s)
        t = s - i0
        weights = [cubic(t + 1), cubic(t), cubic(1 - t), cubic(2 - t)]
        return [min(max(i0 - 1 + k, 0), grid_in - 1) for k in range(4)], weights

    values = [[Fraction(float(v)) for v in row] for row in table.double().tolist()]
    out = []
    for oy in range(out_h):
        rows, wy = taps(oy, out_h)
        for ox in range(out_w):
            cols, wx = taps(ox, out_w)
            out.append([float(sum(wy[a] * wx[b] * values[rows[a] * grid_in + cols[b]][c]
                                  for a in range(4) for b in range(4)))
                        for c in range(len(values[0]))])
    return torch.tensor(out, dtype=torch.float64)

# ---------------------------------------------------------------------------
# One case: random parameters and inputs, the forward pass, every intermediate.


def randn(gen, *shape, scale=1.0):
    """float32 normal values from numpy's seeded generator `gen`. Not torch.randn: its vectorised sampler
    (AVX2) and its scalar one give different last bits, so its values depend on the CPU."""
    return torch.from_numpy((gen.standard_normal(shape) * scale).astype(np.float32))


def make_case(E, H, Kv, Gq, Gk, N, mask_kind, affine, seed):
    """Random parameters (by their checkpoint names, without the `transformer.visual.` prefix),
    features x (N, L, Kv) and the optional mask (Q, L), all drawn from one seeded generator."""
    gen = np.random.default_rng(seed)
    Q, L = Gq * Gq, Gk * Gk
    x = randn(gen, N, L, Kv)
    params = {model_checkpoint_name("qwen_vl", n): v for n, v in draw_model_params(gen, E, Kv, Q, affine).items()}

    mask = None
    if mask_kind == "float":
        mask = randn(gen, Q, L)
    elif mask_kind == "large":
        mask = randn(gen, Q, L) + 100.0 * torch.from_numpy(gen.random((Q, L)) < 0.3).float()
    elif mask_kind == "bool":
        mask = torch.from_numpy(gen.random((Q, L)) < 0.4)
        mask[:, 0] = False            # no fully masked row: PyTorch would give NaN there
    return params, x, mask


def reference_forward(params, x, mask, H, name="", exact_resize=False):
    """The adapter and the tower's tail on x (N, L, Kv), built from torch.nn modules loaded with `params`.
    Uses params["attn_pool.pos_embed"] as the query-side table when present (as load_state_dict would),
    else the numpy sin-cos table. Returns every intermediate by its trace name.

    Computed in float64 from the float32 parameters and inputs, and returned rounded to float32: the float32 result
    of an exact computation. A float32 computation's last bits depend on the CPU's BLAS and SIMD kernels (the order
    of each sum); the float64 one's differences are some 1e-16 relative, which rounding to float32 removes (barring
    a value within 1e-16 of a float32 rounding boundary). So the files are the same bytes on every CPU, and they are
    the reference the float32 C++ is held to. With exact_resize, the key table comes from resize_table_exact
    (checked against F.interpolate's): the fixtures' way, so that its ties round the same way on every CPU."""
    params = {k: v.double() for k, v in params.items()}
    x = x.double()
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.double()
    query = params["attn_pool.query"]
    Q, E = query.shape
    N, L, Kv = x.shape
    Gq, Gk, Dh = math.isqrt(Q), math.isqrt(L), E // H
    kv_proj = torch.nn.Linear(Kv, E, bias=False) if Kv != E else None
    attn = torch.nn.MultiheadAttention(E, H)
    ln_q = torch.nn.LayerNorm(E, eps=EPS)
    ln_kv = torch.nn.LayerNorm(E, eps=EPS)
    ln_post = torch.nn.LayerNorm(E, eps=EPS)
    for module in (kv_proj, attn, ln_q, ln_kv, ln_post):
        if module is not None:
            module.double()
    with torch.no_grad():
        if kv_proj is not None:
            kv_proj.weight.copy_(params["attn_pool.kv_proj.weight"])
        attn.in_proj_weight.copy_(params["attn_pool.attn.in_proj_weight"])
        attn.in_proj_bias.copy_(params["attn_pool.attn.in_proj_bias"])
        attn.out_proj.weight.copy_(params["attn_pool.attn.out_proj.weight"])
        attn.out_proj.bias.copy_(params["attn_pool.attn.out_proj.bias"])
        for module, prefix in ((ln_q, "attn_pool.ln_q"), (ln_kv, "attn_pool.ln_kv"), (ln_post, "ln_post")):
            module.weight.copy_(params[prefix + ".weight"])
            module.bias.copy_(params[prefix + ".bias"])

        if "attn_pool.pos_embed" in params:
            pos_q = params["attn_pool.pos_embed"]                     # (Q, E) as stored
        else:
            pos_q = torch.from_numpy(sincos_2d(E, Gq)).double()       # (Q, E), float32 values
        pos_k = resize_table(pos_q, Gq, Gk)                           # (L, E)
        if exact_resize:
            exact = resize_table_exact(pos_q, Gq, Gk)
            assert torch.allclose(exact, pos_k, rtol=0, atol=1e-12), name
            pos_k = exact
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
        assert torch.allclose(check, out, atol=1e-5, rtol=1e-4), name  # two PyTorch routes to one value

        after_ln_post = ln_post(out)
        y = after_ln_post @ params["proj"]                            # x @ W, not a Linear

    intermediates = {
        "pos_q": pos_q, "pos_k": pos_k, "kv_proj": projected, "ln_kv": X, "ln_q": lq,
        "query_in": query_in, "key_in": key_in, "q": q, "k": k, "v": v,
        "scores": scores, "attn_weights": weights, "attended": attended, "out": out,
        "ln_post": after_ln_post, "proj": y,
    }
    return {k: v.float().contiguous() for k, v in intermediates.items()}   # rounded to float32


def exact_zeros(g, scale=None):
    """A gradient that is exactly 0 in exact arithmetic comes out of float64 as rounding noise of some 1e-16 of the
    terms summed, and that noise depends on the CPU's kernels (in_proj_bias's key part: adding b_k adds q . b_k to
    every score of a row, which the softmax ignores). Entries at or below 1e-10 of `scale` (default: the tensor's
    largest) are that noise, and are written as 0. A tensor that is 0 everywhere needs a scale from outside it: its
    largest entry is noise too (a port that drops the value path leaves ln_kv.bias's gradient, the sum of the keys'
    gradients over the keys, exactly 0, and CI's scalar kernels rounded its noise otherwise)."""
    return torch.where(g.abs() <= 1e-10 * (g.abs().max() if scale is None else scale), torch.zeros_like(g), g)


# The parameters a training run updates: every one of PARAM_ORDER (pos_embed is frozen, as upstream's
# `requires_grad_(False)`, and is not in it).
def reference_backward(params, x, mask, H, upstream, name=""):
    """PyTorch autograd's gradients of L = sum(y * upstream), y the adapter and the tower's tail on x: for every
    trainable parameter (by its checkpoint name; in_proj packed (3E, E) as stored) and for every intermediate
    (dL/d of each traced name, the upstream gradient fed to the stage that made it), x included. In float64 from
    the float32 values, rounded to float32, like the forward values. The explicit steps (F.linear, F.layer_norm,
    torch.softmax) give dL/d of each intermediate; the same gradients through nn.MultiheadAttention, as upstream
    computes it, are checked to agree."""
    params = {k: v.double().clone().requires_grad_(True) for k, v in params.items()}
    x = x.double().clone().requires_grad_(True)
    upstream = upstream.double()
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.double()
    query = params["attn_pool.query"]
    Q, E = query.shape
    N, L, Kv = x.shape
    Gq, Gk, Dh = math.isqrt(Q), math.isqrt(L), E // H
    pos_q = torch.from_numpy(sincos_2d(E, Gq)).double()
    pos_k = resize_table_exact(pos_q, Gq, Gk) if Gq != Gk else pos_q
    additive = None
    if mask is not None:
        additive = torch.zeros(Q, L, dtype=torch.float64).masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else mask

    gradients, param_grads = autograd_gradients(params, x, upstream, H, pos_q, pos_k, additive)
    assert set(param_grads) == set(params) - {"attn_pool.pos_embed"}, name

    def ln(t, prefix):
        return F.layer_norm(t, (E,), params[prefix + ".weight"], params[prefix + ".bias"], EPS)

    # The same gradients through upstream's modules (nn.MultiheadAttention in its (L, N, E) layout).
    attn = torch.nn.MultiheadAttention(E, H).double()
    with torch.no_grad():
        attn.in_proj_weight.copy_(params["attn_pool.attn.in_proj_weight"])
        attn.in_proj_bias.copy_(params["attn_pool.attn.in_proj_bias"])
        attn.out_proj.weight.copy_(params["attn_pool.attn.out_proj.weight"])
        attn.out_proj.bias.copy_(params["attn_pool.attn.out_proj.bias"])
    x2 = x.detach().clone().requires_grad_(True)
    X2 = ln(F.linear(x2, params["attn_pool.kv_proj.weight"]) if Kv != E else x2, "attn_pool.ln_kv")
    q2 = (ln(query, "attn_pool.ln_q") + pos_q).unsqueeze(1).repeat(1, N, 1)
    out2 = attn(q2, (X2 + pos_k).permute(1, 0, 2), X2.permute(1, 0, 2), attn_mask=mask)[0].permute(1, 0, 2)
    for p in params.values():
        p.grad = None
    (((ln(out2, "ln_post") @ params["proj"]) * upstream).sum()).backward()
    assert torch.allclose(x2.grad, gradients["x"], atol=1e-10, rtol=1e-8), name
    assert torch.allclose(attn.in_proj_weight.grad, param_grads["attn_pool.attn.in_proj_weight"], atol=1e-10, rtol=1e-8), name
    assert torch.allclose(attn.out_proj.weight.grad, param_grads["attn_pool.attn.out_proj.weight"], atol=1e-10, rtol=1e-8), name
    for n in ("attn_pool.query", "attn_pool.ln_kv.weight", "ln_post.bias", "proj"):
        assert torch.allclose(params[n].grad, param_grads[n], atol=1e-10, rtol=1e-8), (name, n)

    return ({n: exact_zeros(g).float().contiguous() for n, g in gradients.items()},
            {n: exact_zeros(g).float().contiguous() for n, g in param_grads.items()})


def stamp(name, description, seed, oracle):
    """What every fixture says of itself: its name, what it covers, who wrote it, the seed, the versions, the oracle."""
    return {"name": name, "description": description, "generator": "tests/reference/make_fixtures.py", "seed": seed,
            "torch_version": torch.__version__, "numpy_version": np.__version__, "oracle": oracle}


def build_case(name, description, E, H, Kv, Gq, Gk, N, mask_kind, affine, seed):
    params, x, mask = make_case(E, H, Kv, Gq, Gk, N, mask_kind, affine, seed)
    if name in CASE_SCALES:
        image_scales, query_scale = CASE_SCALES[name]
        x = x * torch.tensor(image_scales, dtype=torch.float32).reshape(-1, 1, 1)
        params["attn_pool.query"] = params["attn_pool.query"] * query_scale
    intermediates = reference_forward(params, x, mask, H, name, exact_resize=True)
    inputs = {"x": x}
    if mask is not None:
        inputs["attn_mask"] = mask
    fixture = {
        **stamp(name, description, seed, ORACLE),
        "config": {"embed_dim": E, "num_heads": H, "kv_dim": Kv, "grid_q": Gq, "grid_k": Gk,
                   "n_queries": Gq * Gq, "n_keys": Gk * Gk, "batch": N, "eps": EPS, "mask": mask_kind or "none"},
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "inputs": {k: tensor_json(v) for k, v in inputs.items()},
        "params": {k: tensor_json(v) for k, v in sorted(params.items(), key=lambda kv: PARAM_ORDER.index(kv[0]))},
        "intermediates": {k: tensor_json(v) for k, v in intermediates.items()},
    }
    # Training: a seeded upstream gradient dL/dy for y = proj's output, and autograd's gradients.
    upstream = randn(np.random.default_rng(seed + 10000), *intermediates["proj"].shape)
    gradients, param_grads = reference_backward(params, x, mask, H, upstream, name)
    assert torch.equal(gradients["proj"], upstream), name
    fixture["gradient_seed"] = seed + 10000
    fixture["gradients"] = {k: tensor_json(v) for k, v in gradients.items()}
    fixture["param_gradients"] = {k: tensor_json(v) for k, v in
                                  sorted(param_grads.items(), key=lambda kv: PARAM_ORDER.index(kv[0]))}
    return fixture, params, x, mask


# The order the fixtures list the parameters in.
PARAM_ORDER = ["attn_pool.query", "attn_pool.attn.in_proj_weight", "attn_pool.attn.in_proj_bias",
               "attn_pool.attn.out_proj.weight", "attn_pool.attn.out_proj.bias",
               "attn_pool.ln_q.weight", "attn_pool.ln_q.bias", "attn_pool.ln_kv.weight", "attn_pool.ln_kv.bias",
               "ln_post.weight", "ln_post.bias", "proj", "attn_pool.kv_proj.weight"]

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


# ---------------------------------------------------------------------------
# Files for the command line: safetensors weights under the checkpoint's names, .npy features and masks,
# and PyTorch's output on the weights as stored (rounded to the file's dtype, then computed in float64 and rounded
# to float32, as every expected value here).

PREFIX = "transformer.visual."
CLI_DIR = os.path.join(REPO, "data", "cli")
DEMO_DIR = os.path.join(REPO, "data", "demo")
FUSION_DIR = os.path.join(REPO, "data", "fusion")

# case name -> how its weights are stored and how the command line is called
CLI_CASES = {
    "resize_up": {"dtype": "F32", "pos_embed": True},
    "identity_equal_grids": {"dtype": "F32", "pos_embed": False, "unbatched": True},
    "batch3": {"dtype": "BF16", "pos_embed": True, "shards": 2},
    "float_mask": {"dtype": "F16", "pos_embed": True},
    "bool_mask": {"dtype": "F32", "pos_embed": False},
    "odd_grids": {"dtype": "F32", "pos_embed": True, "adapter_only": True},
    "resize_down": {"dtype": "BF16", "pos_embed": True, "float64_input": True},
    "small_variance": {"dtype": "F32", "pos_embed": False},
}


def as_stored(t, dtype):
    """The values a file of `dtype` holds, back in float32 (what a loader computes with)."""
    return t.detach().to(TORCH_DTYPES[dtype]).float()


def write_weights(folder, params, dtype, shards=1):
    """One file, or `shards` files with a model.safetensors.index.json. Returns the files to pass."""
    names = sorted(params)
    if shards == 1:
        write_safetensors(os.path.join(folder, "weights.safetensors"), params, dtype)
        return {"weights": ["weights.safetensors"]}
    weight_map, total = {}, 0
    for i in range(shards):
        file = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
        part = {n: params[n] for n in names[i::shards]}
        total += write_safetensors(os.path.join(folder, file), part, dtype)
        weight_map.update({n: file for n in part})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2) + "\n")
    return {"weights": ["model.safetensors.index.json"]}


def write_cli_case(name, H, params, x, mask, how):
    folder = os.path.join(CLI_DIR, name)
    os.makedirs(folder, exist_ok=True)
    dtype = how["dtype"]
    stored = {k: as_stored(v, dtype) for k, v in params.items()}
    if how.get("pos_embed"):
        E = params["attn_pool.query"].shape[1]
        Gq = math.isqrt(params["attn_pool.query"].shape[0])
        stored["attn_pool.pos_embed"] = as_stored(torch.from_numpy(sincos_2d(E, Gq)), dtype)
    result = reference_forward(stored, x, mask, H, name, exact_resize=True)
    adapter_only = how.get("adapter_only", False)
    expected = result["out"] if adapter_only else result["proj"]
    if adapter_only:
        for k in ("ln_post.weight", "ln_post.bias", "proj"):
            del stored[k]
    if how.get("unbatched"):
        x, expected = x[0], expected[0]
    case = {"description": "command-line case written by tests/reference/make_fixtures.py from fixture " + name,
            "dtype": dtype, "heads": H, "adapter_only": adapter_only,
            "pos_embed_stored": bool(how.get("pos_embed")), "tolerance": {"atol": ATOL, "rtol": RTOL},
            "oracle": ORACLE}
    case.update(write_weights(folder, {PREFIX + k: v for k, v in stored.items()}, dtype, how.get("shards", 1)))
    x_np = x.numpy().astype(np.float64 if how.get("float64_input") else np.float32)
    np.save(os.path.join(folder, "x.npy"), x_np)
    case["input"] = "x.npy"
    if mask is not None:
        np.save(os.path.join(folder, "mask.npy"), mask.numpy())
        case["mask"] = "mask.npy"
    np.save(os.path.join(folder, "expected.npy"), expected.numpy().astype(np.float32))
    case["expected"] = "expected.npy"
    with open(os.path.join(folder, "case.json"), "w") as f:
        f.write(json.dumps(case, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------------------
# Training: ten AdamW steps from upstream's initialisation, the golden of docs/training.md.

TRAINING_DIR = os.path.join(REPO, "data", "training")
# The paper's optimiser (Qwen-VL, the appendix's table of training hyperparameters): AdamW with betas (0.9, 0.98),
# eps 1e-6, weight decay 0.05, gradient clipping at 1.0, a cosine decay to a minimum learning rate after a linear
# warm-up; the minimum at the paper's stage-1 ratio, 1e-6 / 2e-4 = 1/200 of the peak.
ADAMW = {"lr": 1e-2, "min_lr": 5e-5, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.05, "max_grad_norm": 1.0,
         "warmup_steps": 3, "total_steps": 10}


def upstream_init(E, Kv, Q, gen):
    """Upstream's initialisation, drawn from numpy's seeded generator (torch's own generator depends on the CPU):
    Resampler._init_weights gives the query, kv_proj and out_proj (nn.Linear) trunc_normal_(std=.02) (truncated at
    +-2, which a std of .02 never reaches), zero biases and LayerNorms at 1 and 0; nn.MultiheadAttention keeps
    in_proj_weight xavier_uniform_ (U(-a, a), a = sqrt(6 / (E + 3E))) and in_proj_bias 0; the visual tower's proj
    is E^-0.5 * randn and its ln_post 1 and 0."""
    def normal(*shape, std):
        return torch.from_numpy(np.clip(gen.standard_normal(shape) * std, -2.0, 2.0).astype(np.float32))
    bound = math.sqrt(6.0 / (E + 3 * E))
    params = {"attn_pool.query": normal(Q, E, std=0.02)}
    if Kv != E:
        params["attn_pool.kv_proj.weight"] = normal(E, Kv, std=0.02)
    params["attn_pool.attn.in_proj_weight"] = torch.from_numpy(gen.uniform(-bound, bound, (3 * E, E)).astype(np.float32))
    params["attn_pool.attn.in_proj_bias"] = torch.zeros(3 * E)
    params["attn_pool.attn.out_proj.weight"] = normal(E, E, std=0.02)
    params["attn_pool.attn.out_proj.bias"] = torch.zeros(E)
    for ln in ("attn_pool.ln_q", "attn_pool.ln_kv", "ln_post"):
        params[ln + ".weight"] = torch.ones(E)
        params[ln + ".bias"] = torch.zeros(E)
    params["proj"] = normal(E, E, std=E ** -0.5)
    return params


def learning_rate_factor(step):
    """Linear warm-up to the peak over warmup_steps, then a cosine down to min_lr at total_steps (LambdaLR's factor
    of the peak)."""
    warmup, total = ADAMW["warmup_steps"], ADAMW["total_steps"]
    if step < warmup:
        return (step + 1) / warmup
    floor = ADAMW["min_lr"] / ADAMW["lr"]
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def interpolate_readout(y, grid_q, grid_out):
    """The query-count ablation's read-out (docs/training.md): each image's Q outputs (N, Q, E), seen as their
    grid_q x grid_q grid of E channels, resized by F.interpolate (bicubic, align_corners=False) to grid_out x grid_out:
    (N, grid_out^2, E)."""
    N, Q, E = y.shape
    image = y.reshape(N, grid_q, grid_q, E).permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=(grid_out, grid_out), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(N, grid_out * grid_out, E)


def readout_matrix(grid_q, grid_out):
    """The same read-out as a matrix R (grid_out^2, grid_q^2), float64: column i the resize of the one-hot table e_i
    in exact arithmetic (resize_table_exact). F.interpolate's float64 kernels differ in their last bits from one CPU
    to another (their vectorised and scalar paths), enough to round a float32 value the other way; R does not."""
    return resize_table_exact(torch.eye(grid_q * grid_q, dtype=torch.float64), grid_q, grid_out)


def grid_readout(y, grid_q, grid_out):
    """z_n = R y_n, float64 (the read-out of the goldens); equal to interpolate_readout (checked where it is used)."""
    return torch.matmul(readout_matrix(grid_q, grid_out), y)


def exact_product(a, b):
    """a @ b for float64 matrices in exact rational arithmetic, rounded once to float64: a sum whose order no CPU's
    kernels change."""
    A = [[Fraction(float(v)) for v in row] for row in a.tolist()]
    B = [[Fraction(float(v)) for v in row] for row in b.tolist()]
    return torch.tensor([[float(sum(A[i][k] * B[k][j] for k in range(len(B)) if A[i][k]))
                          for j in range(len(B[0]))] for i in range(len(A))], dtype=torch.float64)


def write_readout_golden(seed=3100):
    """The read-out alone, by autograd: for an upsampling, a downsampling (more queries than patches) and an equal
    grid, random outputs y and target, z = the read-out of y, L = mean((z - target)^2) and dL/dy, in float64 from
    float32 values, rounded to float32. Autograd through F.interpolate gives them; the file holds the same values
    computed in exact arithmetic (R y and R^T dL/dz, exact_product), checked equal to autograd's to 1e-12."""
    gen = np.random.default_rng(seed)
    cases = []
    for grid_q, grid_out, N, E in ((2, 3, 2, 5), (3, 2, 2, 4), (4, 7, 1, 3), (3, 3, 1, 2)):
        y = randn(gen, N, grid_q * grid_q, E)
        target = randn(gen, N, grid_out * grid_out, E)
        y64 = y.double().requires_grad_(True)
        z = interpolate_readout(y64, grid_q, grid_out)
        loss = F.mse_loss(z, target.double())
        loss.backward()
        R = readout_matrix(grid_q, grid_out)
        z_exact = torch.stack([exact_product(R, y.double()[n]) for n in range(N)])
        d_z = 2.0 * (z_exact - target.double()) / z_exact.numel()
        d_y_exact = torch.stack([exact_product(R.t(), d_z[n]) for n in range(N)])
        assert (z_exact - z.detach()).abs().max() < 1e-12 and (d_y_exact - y64.grad).abs().max() < 1e-12
        cases.append({"grid_q": grid_q, "grid_out": grid_out, "y": tensor_json(y), "target": tensor_json(target),
                      "z": tensor_json(z_exact.float()), "loss": float(np.float32(loss.item())),
                      "d_y": tensor_json(d_y_exact.float())})
    golden = {"name": "readout", "description": "the query-count ablation's read-out (bicubic resize of the query grid "
              "to the patch grid) and the mean squared error's gradient through it",
              "generator": "tests/reference/make_fixtures.py", "seed": seed, "torch_version": torch.__version__,
              "numpy_version": np.__version__,
              "oracle": "F.interpolate (bicubic, align_corners=False) and F.mse_loss by autograd in float64 on float32 "
                        "values; the same in exact arithmetic (to 1e-12), rounded to float32", "cases": cases}
    path = os.path.join(TRAINING_DIR, "readout.json")
    with open(path, "w") as f:
        f.write(dumps(golden))
    return path


def write_training_golden(seed=3000, readout=False, masked=False):
    """Ten steps of torch.optim.AdamW (the paper's betas (0.9, 0.98) and weight decay 0.05), gradient-norm clipping
    at 1.0 (clip_grad_norm_) and a cosine schedule with linear warm-up (LambdaLR), on the mean squared error between
    the tower's output and a fixed random target, from upstream's initialisation. In float64 from the float32
    initial values; every step's loss, gradient norm and learning rate, and the final parameters rounded to float32.
    With `readout`, the loss is the query-count ablation's: the outputs' 2 x 2 grid read out to the 3 x 3 patch grid
    (grid_readout) against a target of the patches' shape. With `masked`, the attention has a boolean (Q, L) mask,
    True where a key is masked (a third of them; every query keeps at least one key), as -inf added to the scores."""
    E, H, Kv, Gq, Gk, N = 8, 2, 6, 2, 3, 2
    Q, L = Gq * Gq, Gk * Gk
    gen = np.random.default_rng(seed)
    initial = upstream_init(E, Kv, Q, gen)
    x = randn(gen, N, L, Kv)
    target = randn(gen, N, L if readout else Q, E)
    mask = None
    if masked:
        mask = torch.from_numpy(gen.random((Q, L)) < 1 / 3)
        mask[torch.arange(Q), torch.from_numpy(gen.integers(0, L, Q))] = False
    additive = None if mask is None else torch.zeros(Q, L, dtype=torch.float64).masked_fill(mask, float("-inf"))
    params = {k: v.double().clone().requires_grad_(True) for k, v in initial.items()}
    ordered = [params[k] for k in sorted(params, key=PARAM_ORDER.index)]
    pos_q = torch.from_numpy(sincos_2d(E, Gq)).double()
    pos_k = resize_table_exact(pos_q, Gq, Gk)
    # The key part of in_proj_bias has a gradient of exactly 0 (it adds q . b_k to every score of a row, which the
    # softmax ignores); float64 leaves rounding noise of some 1e-17 there, whose sign, which depends on the CPU's
    # kernels, AdamW would follow. It is set to its exact value, 0, so that the file is the same on every CPU.
    def exact_key_bias_gradient(g):
        g = g.clone()
        g[E:2 * E] = 0.0
        return g

    params["attn_pool.attn.in_proj_bias"].register_hook(exact_key_bias_gradient)
    optimizer = torch.optim.AdamW(ordered, lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"],
                                  weight_decay=ADAMW["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    steps = []
    for step in range(ADAMW["total_steps"]):
        optimizer.zero_grad()
        y = explicit_forward(params, x.double(), additive, H, pos_q, pos_k)
        if readout and step == 0:  # the matrix read-out is F.interpolate's
            assert (grid_readout(y, Gq, Gk) - interpolate_readout(y, Gq, Gk)).abs().max() < 1e-12
        loss = F.mse_loss(grid_readout(y, Gq, Gk) if readout else y, target.double())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ordered, ADAMW["max_grad_norm"])
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        # float64 values rounded to float32: their last float64 bits depend on the CPU's kernels
        steps.append({"step": step, "loss": float(np.float32(loss.item())), "grad_norm": float(np.float32(norm.item())),
                      "lr": lr})
    name = "adamw_10_steps" + ("_readout" if readout else "") + ("_masked" if masked else "")
    golden = {
        "name": name,
        "description": "ten AdamW steps on the mean squared error to a fixed target, from upstream's initialisation" +
                       (", through the query-count ablation's read-out (grid_readout, 2 x 2 -> 3 x 3)" if readout else "") +
                       (", with a boolean attention mask (True: masked)" if masked else ""),
        "generator": "tests/reference/make_fixtures.py",
        "seed": seed,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "oracle": "torch.optim.AdamW, clip_grad_norm_ and LambdaLR in float64 on the float32 initial values, the key "
                  "bias's gradient at its exact value 0; losses, norms and final parameters rounded to float32",
        "config": {"embed_dim": E, "num_heads": H, "kv_dim": Kv, "grid_q": Gq, "grid_k": Gk, "n_queries": Q,
                   "n_keys": L, "batch": N, "eps": EPS, "readout": readout},
        "optimizer": ADAMW,
        "inputs": {"x": tensor_json(x), "target": tensor_json(target),
                   **({"mask": tensor_json(mask.float())} if masked else {})},
        "initial_params": {k: tensor_json(initial[k]) for k in sorted(initial, key=PARAM_ORDER.index)},
        "steps": steps,
        "final_params": {k: tensor_json(params[k].detach().float()) for k in sorted(params, key=PARAM_ORDER.index)},
    }
    os.makedirs(TRAINING_DIR, exist_ok=True)
    path = os.path.join(TRAINING_DIR, name + ".json")
    with open(path, "w") as f:
        f.write(dumps(golden))
    return path


def write_demo(seed=2000):
    """A small adapter with Qwen-VL's structure (E = 256, so H = E / 128 = 2; Kv = 104 = 1664 / 16;
    4x4 queries on an 8x8 key grid, as 16x16 on 32x32), bf16 weights with the stored pos_embed, like the
    real checkpoint; two images. Then the input of the fusion step: a token sequence with two
    <img> ... </img> spans, an embedding matrix, and numpy's splice of the demo's output into it."""
    E, Kv, Gq, Gk, N = 256, 104, 4, 8, 2
    H = E // 128
    params, x, _ = make_case(E, H, Kv, Gq, Gk, N, None, True, seed)
    params["attn_pool.query"] = params["attn_pool.query"] * 0.02     # Qwen-VL initialises queries with std 0.02
    stored = {k: as_stored(v, "BF16") for k, v in params.items()}
    stored["attn_pool.pos_embed"] = as_stored(torch.from_numpy(sincos_2d(E, Gq)), "BF16")
    intermediates = reference_forward(stored, x, None, H, "demo", exact_resize=True)
    y = intermediates["proj"]
    os.makedirs(DEMO_DIR, exist_ok=True)
    write_safetensors(os.path.join(DEMO_DIR, "adapter.safetensors"), {PREFIX + k: v for k, v in stored.items()}, "BF16")
    np.save(os.path.join(DEMO_DIR, "features.npy"), x.numpy())
    np.save(os.path.join(DEMO_DIR, "expected.npy"), y.numpy())
    os.makedirs(os.path.join(DEMO_DIR, "trace"), exist_ok=True)      # every stage, for the demo's comparison
    for stage, value in intermediates.items():
        np.save(os.path.join(DEMO_DIR, "trace", stage + ".npy"), np.ascontiguousarray(value.numpy(), dtype=np.float32))

    # Fusion: Qwen's ids <img> = 151857, </img> = 151858, the pad inside a span = 151859.
    gen = np.random.default_rng(seed + 1)
    Q = Gq * Gq
    text = lambda n: [int(t) for t in gen.integers(0, 151643, n)]
    ids = text(3) + [151857] + [151859] * Q + [151858] + text(5) + [151857] + [151859] * Q + [151858] + text(2)
    embeddings = randn(gen, len(ids), E).numpy()
    fused = embeddings.copy()
    starts = [i for i, t in enumerate(ids) if t == 151857]
    ends = [i for i, t in enumerate(ids) if t == 151858]
    for image, (a, b) in enumerate(zip(starts, ends)):
        fused[a + 1:b] = y[image].numpy()
    os.makedirs(FUSION_DIR, exist_ok=True)
    with open(os.path.join(FUSION_DIR, "ids.json"), "w") as f:
        f.write(json.dumps(ids) + "\n")
    np.save(os.path.join(FUSION_DIR, "embeddings.npy"), embeddings)
    np.save(os.path.join(FUSION_DIR, "image_features.npy"), y.numpy())   # the demo's output, (2, Q, E)
    np.save(os.path.join(FUSION_DIR, "expected.npy"), fused)


def count_parameters(E, H, Kv, Q):
    """Parameter counts of the adapter's torch.nn modules (on the meta device: nothing is allocated)."""
    meta = {"device": "meta"}
    modules = [torch.nn.MultiheadAttention(E, H, **meta), torch.nn.LayerNorm(E, **meta), torch.nn.LayerNorm(E, **meta)]
    if Kv != E:
        modules.append(torch.nn.Linear(Kv, E, bias=False, **meta))
    query = torch.nn.Parameter(torch.empty(Q, E, **meta))
    trainable = query.numel() + sum(p.numel() for m in modules for p in m.parameters())
    tail = sum(p.numel() for p in torch.nn.LayerNorm(E, **meta).parameters()) + E * E
    return {"config": {"embed_dim": E, "num_heads": H, "kv_dim": Kv, "n_queries": Q},
            "adapter_trainable": trainable, "pos_embed_frozen": Q * E, "adapter_trainable_with_tail": trainable + tail}


def write_parameter_counts():
    counts = {"generator": "tests/reference/make_fixtures.py", "torch_version": torch.__version__,
              "qwen_vl": count_parameters(4096, 32, 1664, 256),
              "demo": count_parameters(256, 2, 104, 16),
              "identity_kv": count_parameters(8, 2, 8, 9)}
    with open(os.path.join(REPO, "data", "parameter_counts.json"), "w") as f:
        f.write(json.dumps(counts, indent=2) + "\n")

# ---------------------------------------------------------------------------
# The two models on their own grids (data/fixtures/models/): Qwen-VL's adapter on non-square key grids, and
# MiniCPM-V 2.5 / 2.6's resampler on batches of images of different grids, padded, with a key padding mask. Computed
# by the torch.nn modules of resamplers.py (written from upstream's code), their intermediates captured by forward
# hooks, in float64 from the float32 parameters and inputs, rounded to float32.

MODELS_DIR = os.path.join(OUT_DIR, "models")

# name, description, model, E, H, Kv, Q, grids (h, w) per image, max_grid (MiniCPM-V's table size)
MODEL_CASES = [
    ("qwen_wide", "Qwen-VL's adapter on a 3 x 5 key grid (a wide image): the 2 x 2 query table resized to (3, 5); "
     "two images", "qwen_vl", 8, 2, 6, 4, [(3, 5), (3, 5)], None),
    ("qwen_tall", "Qwen-VL's adapter on a 4 x 2 key grid: the 3 x 3 table resized up along the rows and down along "
     "the columns; Kv == E (no kv_proj)", "qwen_vl", 8, 2, 8, 9, [(4, 2)], None),
    ("minicpmv_mixed", "MiniCPM-V: three images of 2 x 3, 3 x 3 and 1 x 2 patches padded to L = 9 (noise in the "
     "padding), a key padding mask; Q = 3 queries (no grid); the 70 x 70 table", "minicpm_v", 8, 2, 6, 3,
     [(2, 3), (3, 3), (1, 2)], (70, 70)),
    ("minicpmv_grown", "MiniCPM-V: a 2 x 5 and a 4 x 2 image, wider and taller than a 3 x 3 table, which upstream "
     "rebuilds at 4 x 5 before slicing; three heads; Kv == E", "minicpm_v", 12, 3, 12, 4, [(2, 5), (4, 2)], (3, 3)),
    ("minicpmv_single", "MiniCPM-V: one 3 x 4 image (no padding), one head", "minicpm_v", 8, 1, 10, 5, [(3, 4)],
     (70, 70)),
]


def model_checkpoint_name(model, name):
    """The checkpoint's name of a module parameter: Qwen-VL's under attn_pool. (its tail's bare, the prefix
    transformer.visual. dropped as in the other fixtures), MiniCPM-V's under resampler."""
    if model == "minicpm_v":
        return "resampler." + name
    return name if name in ("ln_post.weight", "ln_post.bias", "proj") else "attn_pool." + name


def draw_model_params(gen, E, Kv, Q, affine=True):
    """Random parameters by the modules' own names (in_proj packed), in the order drawn: the query, proj, kv_proj
    (when Kv != E), in_proj, out_proj, then the LayerNorms (at 1 and 0 unless `affine`)."""
    params = {"query": randn(gen, Q, E), "proj": randn(gen, E, E, scale=E ** -0.5)}
    if Kv != E:
        params["kv_proj.weight"] = randn(gen, E, Kv, scale=Kv ** -0.5)
    params["attn.in_proj_weight"] = randn(gen, 3 * E, E, scale=E ** -0.5)
    params["attn.in_proj_bias"] = randn(gen, 3 * E, scale=0.1)
    params["attn.out_proj.weight"] = randn(gen, E, E, scale=E ** -0.5)
    params["attn.out_proj.bias"] = randn(gen, E, scale=0.1)
    for ln in ("ln_q", "ln_kv", "ln_post"):
        params[ln + ".weight"] = 1.0 + randn(gen, E, scale=0.2) if affine else torch.ones(E)
        params[ln + ".bias"] = randn(gen, E, scale=0.2) if affine else torch.zeros(E)
    return params


def model_module(model, E, H, Kv, Q, max_grid, exact_resize=True):
    """The module of `model` in float64; Qwen-VL's key table from the exact resize (so that its ties round the same
    way on every CPU; checked against F.interpolate's)."""
    if model == "minicpm_v":
        return MiniCPMVResampler(Q, E, H, Kv, max_grid).double()
    module = QwenVLResampler(Q, E, H, Kv).double()
    if exact_resize:
        def exact_key_table(n_keys, grid, module=module):
            grid = tuple(grid or (math.isqrt(n_keys),) * 2)
            exact = resize_table_exact(module.pos_embed.detach(), module.grid_q, grid)
            assert torch.allclose(exact, module.__class__.key_table(module, n_keys, grid), rtol=0, atol=1e-12)
            return exact
        module.key_table = exact_key_table
    return module


def run_model(model, module, x, grids):
    """{trace name: float64 tensor} of `module` on x (N, L, Kv)."""
    if model == "minicpm_v":
        return trace_resampler(module, x, tgt_sizes=torch.tensor(grids))
    return trace_resampler(module, x, grid=grids[0])


def build_model_case(name, description, model, E, H, Kv, Q, grids, max_grid, seed):
    gen = np.random.default_rng(seed)
    N, L = len(grids), max(h * w for h, w in grids)
    x = randn(gen, N, L, Kv)
    params = draw_model_params(gen, E, Kv, Q)
    module = model_module(model, E, H, Kv, Q, max_grid)
    load_state(module, {k: v.double() for k, v in params.items()})
    intermediates = run_model(model, module, x.double(), grids)
    config = {"model": model, "embed_dim": E, "num_heads": H, "kv_dim": Kv, "n_queries": Q,
              "grids": [list(g) for g in grids], "n_keys": L, "batch": N, "eps": EPS}
    if max_grid:
        config["max_grid"] = list(max_grid)
    names = {n: model_checkpoint_name(model, n) for n in params}
    fixture = {
        **stamp(name, description, seed,
                "the torch.nn modules of tests/reference/resamplers.py (upstream's computation) in float64 on the "
                "float32 parameters and inputs, intermediates captured by forward hooks, rounded to float32"),
        "config": config,
        "tolerance": {"atol": ATOL, "rtol": RTOL},
        "inputs": {"x": tensor_json(x)},
        "params": {names[k]: tensor_json(v) for k, v in params.items()},
        "intermediates": {k: tensor_json(v.float().contiguous()) for k, v in intermediates.items()},
    }
    # Training: autograd's gradients of L = sum(y * G), G seeded, for both models (module_gradients: the explicit
    # steps, checked against autograd through the module itself), in float64 rounded to float32.
    upstream = randn(np.random.default_rng(seed + 10000), *intermediates["proj"].shape).double()
    call = {"tgt_sizes": torch.tensor(grids)} if model == "minicpm_v" else {"grid": tuple(grids[0])}
    gradients, param_grads = module_gradients(module, x.double(), upstream, tolerance=1e-10, **call)
    fixture["gradient_seed"] = seed + 10000
    fixture["gradients"] = {k: tensor_json(exact_zeros(v).float().contiguous()) for k, v in gradients.items()}
    fixture["param_gradients"] = {names[k]: tensor_json(exact_zeros(v).float().contiguous())
                                  for k, v in param_grads.items()}
    return fixture, params, x


# Command-line cases of the two models (data/cli/<name>/), like CLI_CASES: the weights stored under the real
# checkpoint's names, MiniCPM-V's beside tensors of other parts of the model that the reader must skip.
MODEL_CLI_CASES = {
    "qwen_wide": {"dtype": "F32"},
    "minicpmv_mixed": {"dtype": "BF16", "others": {"vpm.post_layernorm.weight": (6,), "llm.lm_head.weight": (16, 8)}},
}


def write_model_cli_case(case, params, x):
    name, model, E, H, Kv, Q, grids, max_grid = case[0], case[2], case[3], case[4], case[5], case[6], case[7], case[8]
    how = MODEL_CLI_CASES[name]
    folder = os.path.join(CLI_DIR, name)
    os.makedirs(folder, exist_ok=True)
    stored = {k: as_stored(v, how["dtype"]) for k, v in params.items()}
    module = model_module(model, E, H, Kv, Q, max_grid)
    load_state(module, {k: v.double() for k, v in stored.items()})
    expected = run_model(model, module, x.double(), grids)["proj"].float()
    prefix = "" if model == "minicpm_v" else PREFIX
    tensors = {prefix + model_checkpoint_name(model, k): v for k, v in stored.items()}
    gen = np.random.default_rng(99)
    for other, shape in how.get("others", {}).items():
        tensors[other] = randn(gen, *shape)
    write_safetensors(os.path.join(folder, "weights.safetensors"), tensors, how["dtype"])
    np.save(os.path.join(folder, "x.npy"), x.numpy())
    np.save(os.path.join(folder, "expected.npy"), expected.numpy())
    case_json = {"description": "command-line case written by tests/reference/make_fixtures.py from fixture " + name,
                 "model": model, "dtype": how["dtype"], "heads": H, "adapter_only": False,
                 "pos_embed_stored": False, "tolerance": {"atol": ATOL, "rtol": RTOL}, "oracle": ORACLE,
                 "weights": ["weights.safetensors"], "input": "x.npy", "expected": "expected.npy",
                 "grids": ",".join("%dx%d" % g for g in grids)}
    with open(os.path.join(folder, "case.json"), "w") as f:
        f.write(json.dumps(case_json, indent=2) + "\n")
    print("wrote %s/" % os.path.relpath(folder, REPO))


def write_model_fixtures():
    os.makedirs(MODELS_DIR, exist_ok=True)
    for index, case in enumerate(MODEL_CASES):
        path = os.path.join(MODELS_DIR, case[0] + ".json")
        fixture, params, x = build_model_case(*case, seed=4000 + index)
        with open(path, "w") as f:
            f.write(dumps(fixture))
        print("wrote %s" % os.path.relpath(path, REPO))
        if case[0] in MODEL_CLI_CASES:
            write_model_cli_case(case, params, x)



# ---------------------------------------------------------------------------
# `compare`'s proof (data/compare/): PyTorch's own dump of two shipped command-line cases (the modules of
# resamplers.py, captured by trace_resampler as dump_pytorch.py captures a porter's), the same dump under other
# names with a name map and nn.MultiheadAttention's (L, N, E) layout, and dumps of a "port" with one usual mistake
# injected each, computed step by step below, with the stage where `compare` must see the first difference.

COMPARE_DIR = os.path.join(REPO, "data", "compare")

# case, mistake, the first stage it changes, what it is
MISTAKES = [
    ("qwen_wide", "sincos_halves", "pos_q", "each half of the table as cosines then sines"),
    ("qwen_wide", "meshgrid_hw", "pos_q", "the first half encodes the row h, the second the column w"),
    ("qwen_wide", "bf16_table", "pos_q", "the query table stored in bf16, as a bf16 checkpoint stores pos_embed"),
    ("qwen_wide", "align_corners", "pos_k", "the key table resized with align_corners=True"),
    ("qwen_wide", "resize_hw_swapped", "pos_k", "a non-square key grid resized to (w, h) instead of (h, w)"),
    ("qwen_wide", "layernorm_unbiased", "ln_q", "every LayerNorm with the unbiased variance (divided by E - 1)"),
    ("qwen_wide", "no_key_table", "key_in", "the key table left out of the keys"),
    ("qwen_wide", "value_position", "v", "the key table added to the values too"),
    ("qwen_wide", "q_unscaled", "scores", "q not scaled by 1/sqrt(Dh) before the product"),
    ("qwen_wide", "proj_transposed", "proj", "proj used as an nn.Linear weight: x proj^T"),
    ("minicpmv_mixed", "mask_inverted", "key_padding_mask", "the key padding mask inverted (true = a real patch)"),
    ("minicpmv_mixed", "query_table", "q", "a position table added to the queries, as Qwen-VL and MiniCPM-V 2.0 do"),
    ("minicpmv_mixed", "table_first_rows", "pos_k", "each image's table as the first h*w rows of the 70 x 70 table"),
    ("minicpmv_mixed", "q_unscaled", "scores", "q not scaled by 1/sqrt(Dh) before the product"),
]


def port_table(E, h, w, mistake):
    """A port's 2D sin-cos table of an h x w grid, (h*w, E) float64, with its mistake."""
    columns, rows = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    first, second = (rows, columns) if mistake == "meshgrid_hw" else (columns, rows)
    halves = [torch.from_numpy(sincos_1d(E // 2, first)), torch.from_numpy(sincos_1d(E // 2, second))]
    if mistake == "sincos_halves":
        halves = [torch.cat([t[:, E // 4:], t[:, :E // 4]], dim=1) for t in halves]
    table = torch.cat(halves, dim=1).double()
    return table.to(torch.bfloat16).double() if mistake == "bf16_table" else table


class Rounded(dict):
    """A dict that rounds every value stored in it with `rounding` (none when None): a port that keeps each stage's
    output in a lower precision."""

    def __init__(self, rounding):
        super().__init__()
        self.rounding = rounding

    def __setitem__(self, key, value):
        super().__setitem__(key, self.rounding(value) if self.rounding else value)


def port_forward(model, p, x, grids, H, mistake=None, exact_resize=True, rounding=None):
    """A port of either model, step by step on module-named parameters `p` in their dtype (float64 for the fixtures,
    float32 for the precision budget), with one mistake injected (None: none), each stage's output rounded by
    `rounding` when given. Returns every intermediate under the trace's names. exact_resize: Qwen-VL's key table
    by resize_table_exact (the fixtures' way), else F.interpolate (full size)."""
    query = p["query"]
    Q, E = query.shape
    N, L, Kv = x.shape
    Dh = E // H
    dtype = query.dtype
    t = Rounded(rounding)

    def ln(v, name):
        if mistake == "ln_eps_1e5":  # nn.LayerNorm's default eps instead of the visual tower's 1e-6
            return F.layer_norm(v, (E,), p[name + ".weight"], p[name + ".bias"], 1e-5)
        if mistake == "layernorm_unbiased":
            mean, var = v.mean(-1, keepdim=True), v.var(-1, unbiased=True, keepdim=True)
            return (v - mean) / torch.sqrt(var + EPS) * p[name + ".weight"] + p[name + ".bias"]
        return F.layer_norm(v, (E,), p[name + ".weight"], p[name + ".bias"], EPS)

    if model == "qwen_vl":
        Gq = math.isqrt(Q)
        h, w = grids[0]
        t["pos_q"] = port_table(E, Gq, Gq, mistake).to(dtype)
        image = t["pos_q"].reshape(1, Gq, Gq, E).permute(0, 3, 1, 2)
        size = (w, h) if mistake == "resize_hw_swapped" else (h, w)
        if mistake == "bilinear_keys":
            resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        elif mistake == "align_corners" or not exact_resize:
            resized = F.interpolate(image, size=size, mode="bicubic", align_corners=mistake == "align_corners")
        else:
            resized = resize_table_exact(t["pos_q"], Gq, size).reshape(1, size[0], size[1], E).permute(0, 3, 1, 2)
        t["pos_k"] = resized.permute(0, 2, 3, 1).reshape(L, E)
        pos_k = t["pos_k"].expand(N, L, E)
    else:
        tables, padding = torch.zeros(N, L, E, dtype=dtype), torch.zeros(N, L, dtype=dtype)
        big = port_table(E, 70, 70, mistake).to(dtype)
        for n, (h, w) in enumerate(grids):
            if mistake == "table_first_rows":
                tables[n, :h * w] = big[:h * w]
            else:
                tables[n, :h * w] = big.reshape(70, 70, E)[:h, :w].reshape(h * w, E)
            padding[n, h * w:] = 1.0
        if mistake == "mask_inverted":
            padding = 1.0 - padding
        pos_k = tables
    t["ln_q"] = ln(query, "ln_q")
    if model == "qwen_vl":
        t["query_in"] = t["ln_q"] + t["pos_q"]
        query_in = t["query_in"]
    else:
        query_in = t["ln_q"] + (port_table(E, 1, Q, None).to(dtype) if mistake == "query_table" else 0.0)
    w_q, w_k, w_v = p["attn.in_proj_weight"].chunk(3)
    b_q, b_k, b_v = p["attn.in_proj_bias"].chunk(3)
    if mistake == "kv_chunks_swapped":  # in_proj's key and value parts read in the wrong order
        w_k, w_v, b_k, b_v = w_v, w_k, b_v, b_k
    t["q"] = F.linear(query_in, w_q, b_q)
    if model == "minicpm_v":
        t["pos_k"], t["key_padding_mask"] = pos_k, padding
    t["kv_proj"] = F.linear(x, p["kv_proj.weight"]) if "kv_proj.weight" in p else x * 1.0
    t["ln_kv"] = ln(t["kv_proj"], "ln_kv")
    t["key_in"] = t["ln_kv"] + (0.0 if mistake == "no_key_table" else pos_k)
    t["k"] = F.linear(t["key_in"], w_k, b_k)
    t["v"] = F.linear(t["ln_kv"] + (pos_k if mistake == "value_position" else 0.0), w_v, b_v)
    scale = 1.0 if mistake == "q_unscaled" else 1.0 / math.sqrt(Dh)
    if mistake == "heads_interleaved":  # head h takes channels h, h + H, h + 2H, ... (and gives them back there)
        qh = (t["q"] * scale).reshape(Q, Dh, H).permute(2, 0, 1)
        kh = t["k"].reshape(N, L, Dh, H).permute(0, 3, 1, 2)
        vh = t["v"].reshape(N, L, Dh, H).permute(0, 3, 1, 2)
    else:
        qh = (t["q"] * scale).reshape(Q, H, Dh).permute(1, 0, 2)
        kh = t["k"].reshape(N, L, H, Dh).permute(0, 2, 1, 3)
        vh = t["v"].reshape(N, L, H, Dh).permute(0, 2, 1, 3)
    t["scores"] = torch.matmul(qh.unsqueeze(0), kh.transpose(-2, -1))
    masked = t["scores"]
    if model == "minicpm_v":
        masked = masked.masked_fill(t["key_padding_mask"].bool()[:, None, None, :], float("-inf"))
    t["attn_weights"] = torch.softmax(masked, dim=-2 if mistake == "softmax_over_queries" else -1)
    if mistake == "heads_interleaved":
        t["attended"] = torch.matmul(t["attn_weights"], vh).permute(0, 2, 3, 1).reshape(N, Q, E)
    else:
        t["attended"] = torch.matmul(t["attn_weights"], vh).permute(0, 2, 1, 3).reshape(N, Q, E)
    w_o = p["attn.out_proj.weight"]
    t["out"] = F.linear(t["attended"], w_o.T if mistake == "out_proj_transposed" else w_o, p["attn.out_proj.bias"])
    t["ln_post"] = ln(t["out"], "ln_post")
    t["proj"] = t["ln_post"] @ (p["proj"].T if mistake == "proj_transposed" else p["proj"])
    return t


def save_dump(folder, trace, names=None, layouts=()):
    """Each intermediate as folder/<name>.npy in float32 (under names[stage] when given; stages in `layouts` in
    nn.MultiheadAttention's (L, N, E) order)."""
    os.makedirs(folder, exist_ok=True)
    for stage, value in trace.items():
        value = value.float()
        if stage in layouts:
            value = value.permute(1, 0, 2)
        np.save(os.path.join(folder, (names or {}).get(stage, stage) + ".npy"), np.ascontiguousarray(value.numpy()))


# How `compare` runs each case: its arguments but --theirs, relative to the repository.
COMPARE_ARGUMENTS = {
    "qwen_wide": "--weights data/cli/qwen_wide/weights.safetensors --heads 2 --input data/cli/qwen_wide/x.npy --grids 3x5",
    "minicpmv_mixed": "--weights data/cli/minicpmv_mixed/weights.safetensors --heads 2 --input data/cli/minicpmv_mixed/x.npy "
                      "--grids 2x3,3x3,1x2",
}


# Ports whose forward is right and whose backward is not, for `compare --gradients` (docs/compare.md#gradients):
# each replaces one step of explicit_forward by an autograd Function with the same forward and a wrong backward.
# case, mistake, the first gradient it changes (in the order compare lists them; "parameter NAME" for a parameter's
# own gradient), what it is
GRADIENT_MISTAKES = [
    ("qwen_wide", "proj_backward_untransposed", "ln_post", "y = a @ proj differentiated as dL/da = dL/dy proj, not dL/dy proj^T"),
    ("qwen_wide", "ln_post_backward_no_mean", "out", "ln_post's backward without the mean terms: dL/dx = rstd gamma dL/dy"),
    ("qwen_wide", "out_proj_backward_untransposed", "attended", "out_proj's backward with W_o^T: dL/d attended = dL/d out W_o^T"),
    ("qwen_wide", "softmax_backward_no_rowsum", "scores", "the softmax's backward without the row sum: P * dP"),
    ("qwen_wide", "value_path_dropped", "ln_kv", "X's gradient from the keys alone: the value path's dv W_v not added"),
    ("qwen_wide", "ln_kv_backward_no_gamma", "kv_proj", "ln_kv's backward without the weight gamma on dL/dy"),
    ("qwen_wide", "query_gradient_first_image", "q", "the shared queries' gradient from the first image, not summed over the batch"),
    ("qwen_wide", "proj_weight_gradient_transposed", "parameter proj", "proj's own gradient transposed: dL/dy^T a for a^T dL/dy"),
]
GRADIENT_SEED = 0   # the upstream gradient dL/d proj: dump_pytorch.py --gradients' default seed


def ln_rows(t, eps=EPS):
    """(x - mean) * rstd over the last axis, and rstd."""
    mean = t.mean(-1, keepdim=True)
    rstd = 1.0 / torch.sqrt(((t - mean) ** 2).mean(-1, keepdim=True) + eps)
    return (t - mean) * rstd, rstd


class LayerNormBackwardWrong(torch.autograd.Function):
    """F.layer_norm forward; backward without the mean terms ("no_mean") or without gamma ("no_gamma")."""

    @staticmethod
    def forward(ctx, t, w, b, mistake):
        ctx.save_for_backward(t, w)
        ctx.mistake = mistake
        return F.layer_norm(t, (t.shape[-1],), w, b, EPS)

    @staticmethod
    def backward(ctx, g):
        t, w = ctx.saved_tensors
        xhat, rstd = ln_rows(t)
        rows = tuple(range(g.dim() - 1))
        if ctx.mistake == "no_mean":
            dx = g * w * rstd
        else:  # no_gamma: the right equation, on dL/dy instead of dL/dy * gamma
            dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
        return dx, (g * xhat).sum(rows), g.sum(rows), None


class MatmulBackwardWrong(torch.autograd.Function):
    """y = a @ W (proj); backward with dL/da = g W ("untransposed") or dL/dW transposed ("weight_transposed")."""

    @staticmethod
    def forward(ctx, a, w, mistake):
        ctx.save_for_backward(a, w)
        ctx.mistake = mistake
        return a @ w

    @staticmethod
    def backward(ctx, g):
        a, w = ctx.saved_tensors
        dw = torch.einsum("nqi,nqj->ij", a, g)
        if ctx.mistake == "untransposed":
            return g @ w, dw, None
        return g @ w.T, dw.T, None


class LinearBackwardUntransposed(torch.autograd.Function):
    """y = a W^T + b (out_proj); backward with dL/da = g W^T instead of g W."""

    @staticmethod
    def forward(ctx, a, w, b):
        ctx.save_for_backward(a, w)
        return F.linear(a, w, b)

    @staticmethod
    def backward(ctx, g):
        a, w = ctx.saved_tensors
        return g @ w.T, torch.einsum("nqo,nqi->oi", g, a), g.sum((0, 1))


class SoftmaxBackwardNoRowSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s):
        p = torch.softmax(s, dim=-1)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, g):
        p, = ctx.saved_tensors
        return p * g


class SharedQueryFirstImage(torch.autograd.Function):
    """The queries (H, Q, Dh) repeated for N images; backward takes the first image's gradient, not the sum."""

    @staticmethod
    def forward(ctx, t, N):
        return t.unsqueeze(0).expand(N, *t.shape).contiguous()

    @staticmethod
    def backward(ctx, g):
        return g[0], None


def gradient_mistake_steps(mistake, N):
    """The explicit_forward steps a gradient mistake replaces."""
    return {
        None: {},
        "proj_backward_untransposed": {"proj": lambda a, w: MatmulBackwardWrong.apply(a, w, "untransposed")},
        "ln_post_backward_no_mean": {"ln_post": lambda t, w, b: LayerNormBackwardWrong.apply(t, w, b, "no_mean")},
        "out_proj_backward_untransposed": {"out": LinearBackwardUntransposed.apply},
        "softmax_backward_no_rowsum": {"softmax": SoftmaxBackwardNoRowSum.apply},
        "value_path_dropped": {"v": lambda X, w, b: F.linear(X.detach(), w, b)},
        "ln_kv_backward_no_gamma": {"ln_kv": lambda t, w, b: LayerNormBackwardWrong.apply(t, w, b, "no_gamma")},
        "query_gradient_first_image": {"batch_q": lambda t: SharedQueryFirstImage.apply(t, N)},
        "proj_weight_gradient_transposed": {"proj": lambda a, w: MatmulBackwardWrong.apply(a, w, "weight_transposed")},
    }[mistake]


# The order compare --gradients lists the gradients in: the backward's, from the output (stages 08, 07).
GRADIENT_ORDER = ["ln_post", "out", "attended", "attn_weights", "scores", "k", "v", "key_in", "ln_kv", "kv_proj",
                  "q", "query_in", "ln_q", "x"]


def zeroed_gradients(grads, param_grads):
    """Both sets of a dump's gradients with exact_zeros judged against the dump's largest gradient (a tensor that is
    exactly 0 has only noise to judge itself by)."""
    scale = max(float(g.abs().max()) for g in list(grads.values()) + list(param_grads.values()))
    return ({n: exact_zeros(g, scale) for n, g in grads.items()}, {n: exact_zeros(g, scale) for n, g in param_grads.items()})


def save_gradients(where, grads, param_grads):
    """A dump's gradients as compare --gradients reads them: where/<stage>.npy and where/parameters/<name>.npy."""
    save_dump(where, grads)
    save_dump(os.path.join(where, "parameters"), param_grads)


def write_gradient_dumps(folder, name, H, grid):
    """PyTorch autograd's gradients of qwen_wide for L = sum(proj * G), G seeded (gradients/proj.npy): the right
    dump (backward/pytorch/gradients/) and each GRADIENT_MISTAKES port's (backward/<mistake>/gradients/), each holding
    <stage>.npy for every intermediate's gradient (proj.npy: G), x.npy, and parameters/<checkpoint name>.npy for every
    parameter's."""
    ckpt = {k[len(PREFIX):]: torch.from_numpy(v).double()
            for k, v in read_safetensors(os.path.join(CLI_DIR, name, "weights.safetensors")).items()}
    x = torch.from_numpy(np.load(os.path.join(CLI_DIR, name, "x.npy"))).double()
    Q, E = ckpt["attn_pool.query"].shape
    N = x.shape[0]
    Gq = math.isqrt(Q)
    pos_q = torch.from_numpy(sincos_2d(E, Gq)).double()
    pos_k = resize_table_exact(pos_q, Gq, grid)
    upstream = randn(np.random.default_rng(GRADIENT_SEED), N, Q, E).double()

    def dump(mistake):  # (intermediates' gradients, parameters' gradients)
        return zeroed_gradients(*autograd_gradients(ckpt, x, upstream, H, pos_q, pos_k, None,
                                                    gradient_mistake_steps(mistake, N)))

    def by_label(grads, param_grads):  # {"stage": dL/d stage, "parameter NAME": dL/d NAME}, in compare's words
        return {**grads, **{"parameter " + n: g for n, g in param_grads.items()}}

    right_pair = dump(None)
    right = by_label(*right_pair)
    assert torch.equal(right["proj"], upstream)
    order = GRADIENT_ORDER + ["parameter " + n for n in PARAM_ORDER if n in ckpt]
    save_gradients(os.path.join(folder, "backward", "pytorch", "gradients"), *right_pair)
    listing = []
    for case_name, mistake, first, what in GRADIENT_MISTAKES:
        if case_name != name:
            continue
        wrong_pair = dump(mistake)
        wrong = by_label(*wrong_pair)
        at = order.index(first)
        for earlier in order[:at]:   # the port agrees up to its mistake, and differs there
            assert torch.allclose(wrong[earlier], right[earlier], rtol=1e-9, atol=1e-12), (mistake, earlier)
        assert (wrong[first] - right[first]).abs().max() > 1e-2 * right[first].abs().max(), (mistake, first)
        save_gradients(os.path.join(folder, "backward", mistake, "gradients"), *wrong_pair)
        listing.append({"case": name, "mistake": mistake, "first_gradient": first, "what": what,
                        "dump": "data/compare/%s/backward/%s" % (name, mistake),
                        "arguments": COMPARE_ARGUMENTS[name] + " --gradients"})
    return listing


def write_compare_cases():
    """The cases' stored weights (data/cli/<case>/), PyTorch's dump, the renamed dump and the mistakes."""
    cases = {c[0]: c for c in MODEL_CASES}
    listing = []
    for name in ("qwen_wide", "minicpmv_mixed"):
        case = cases[name]
        model, E, H, Kv, Q, grids, max_grid = case[2], case[3], case[4], case[5], case[6], case[7], case[8]
        stored = {k.split("attn_pool.")[-1].replace("resampler.", "").replace(PREFIX, ""): torch.from_numpy(v)
                  for k, v in read_safetensors(os.path.join(CLI_DIR, name, "weights.safetensors")).items()
                  if k.startswith(("resampler.", PREFIX))}
        params = {k: v.double() for k, v in stored.items()}
        x = torch.from_numpy(np.load(os.path.join(CLI_DIR, name, "x.npy"))).double()
        module = model_module(model, E, H, Kv, Q, max_grid)
        load_state(module, params)
        reference = run_model(model, module, x, grids)
        folder = os.path.join(COMPARE_DIR, name)
        save_dump(os.path.join(folder, "pytorch"), reference)
        port = port_forward(model, params, x, grids, H)
        for stage, value in reference.items():      # the port without a mistake is PyTorch's computation
            assert torch.allclose(port[stage], value, rtol=1e-9, atol=1e-12), (name, stage)
        if name == "qwen_wide":                       # the same dump under a porter's names and layout
            names = {"ln_kv": "resampler.ln_kv.out", "key_in": "attn.key", "v": "attn.v_proj",
                     "out": "attn.out", "proj": "visual.output"}
            save_dump(os.path.join(folder, "renamed"), reference, names, layouts=("key_in", "out"))
            name_map = {"stages": {"ln_kv": "resampler.ln_kv.out.npy", "key_in": {"file": "attn.key.npy", "layout": "LNE"},
                                   "v": "attn.v_proj.npy", "out": {"file": "attn.out.npy", "layout": "LNE"},
                                   "proj": "visual.output.npy"}}
            with open(os.path.join(folder, "renamed", "names.json"), "w") as f:
                f.write(json.dumps(name_map, indent=2) + "\n")
        for case_name, mistake, first, what in MISTAKES:
            if case_name != name:
                continue
            trace = port_forward(model, params, x, grids, H, mistake)
            save_dump(os.path.join(folder, "mistakes", mistake), trace)
            listing.append({"case": name, "mistake": mistake, "first_stage": first, "what": what,
                            "dump": "data/compare/%s/mistakes/%s" % (name, mistake),
                            "arguments": COMPARE_ARGUMENTS[name]})
        if name == "qwen_wide":  # the injected backward mistakes: on Qwen-VL's case
            gradient_listing = write_gradient_dumps(folder, name, H, tuple(grids[0]))
        else:  # MiniCPM-V's: PyTorch's gradients (resamplers.module_gradients), for a right port to match
            upstream = randn(np.random.default_rng(GRADIENT_SEED), *reference["proj"].shape).double()
            save_gradients(os.path.join(folder, "backward", "pytorch", "gradients"),
                           *zeroed_gradients(*module_gradients(module, x, upstream, tolerance=1e-10,
                                                               tgt_sizes=torch.tensor(grids))))
    with open(os.path.join(COMPARE_DIR, "mistakes.json"), "w") as f:
        f.write(json.dumps({"generator": "tests/reference/make_fixtures.py", "torch_version": torch.__version__,
                            "mistakes": listing, "gradient_seed": GRADIENT_SEED,
                            "gradient_mistakes": gradient_listing}, indent=2) + "\n")
    print("wrote data/compare/ (%d mistakes)" % len(listing))


# ---------------------------------------------------------------------------
# The course's own data (data/course/): the optimiser alone over ten steps (exercise 10-adamw) and the
# port-debugging lab's mystery dumps (exercises port-1 to port-5, docs/course/lesson-9-porting.md).

COURSE_DIR = os.path.join(REPO, "data", "course")


def write_optimizer_golden(seed=3200):
    """torch.optim.AdamW (the paper's betas, eps and weight decay), clip_grad_norm_ at 1.0 and LambdaLR's warm-up +
    cosine (learning_rate_factor) on three parameter tensors, fed ten fixed gradients, in float64 from float32 values:
    each step's learning rate, the gradients' norm before clipping and every parameter after the update, rounded to
    float32. The gradients' scale changes from step to step, so that some steps are clipped and some are not."""
    gen = np.random.default_rng(seed)
    shapes = {"weight": (3, 4), "bias": (4,), "query": (2, 2)}
    initial = {k: randn(gen, *shape) for k, shape in shapes.items()}
    scales = [2.0, 0.1, 0.5, 3.0, 0.05, 0.2, 1.5, 0.02, 0.4, 0.08]
    gradients = [{k: randn(gen, *shape, scale=scales[step]) for k, shape in shapes.items()}
                 for step in range(ADAMW["total_steps"])]
    params = {k: v.double().clone().requires_grad_(True) for k, v in initial.items()}
    ordered = [params[k] for k in shapes]
    optimizer = torch.optim.AdamW(ordered, lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"],
                                  weight_decay=ADAMW["weight_decay"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    steps = []
    for step, grads in enumerate(gradients):
        for k in shapes:
            params[k].grad = grads[k].double().clone()
        norm = torch.nn.utils.clip_grad_norm_(ordered, ADAMW["max_grad_norm"])
        clipped = {k: params[k].grad.float() for k in shapes}
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        schedule.step()
        steps.append({"step": step, "lr": lr, "grad_norm": float(np.float32(norm.item())),
                      "gradients": {k: tensor_json(grads[k]) for k in shapes},
                      "clipped": {k: tensor_json(clipped[k]) for k in shapes},
                      "params": {k: tensor_json(params[k].detach().float()) for k in shapes}})
    golden = {"name": "optimizer_10_steps",
              "description": "ten updates of AdamW with gradient clipping and the warm-up + cosine schedule, on fixed "
                             "gradients (the course's exercise 10-adamw)",
              "generator": "tests/reference/make_fixtures.py", "seed": seed, "torch_version": torch.__version__,
              "numpy_version": np.__version__,
              "oracle": "torch.optim.AdamW, clip_grad_norm_ and LambdaLR in float64 on float32 values; norms, clipped "
                        "gradients and parameters rounded to float32",
              "optimizer": ADAMW, "initial_params": {k: tensor_json(initial[k]) for k in shapes}, "steps": steps}
    os.makedirs(TRAINING_DIR, exist_ok=True)
    path = os.path.join(TRAINING_DIR, "optimizer_10_steps.json")
    with open(path, "w") as f:
        f.write(dumps(golden))
    return path


def write_layernorm_wide(seed=3400):
    """LayerNorm where float32 sums are not enough (exercise 04-layernorm): rows of E = 1024 values of mean 1000 and
    standard deviation 0.01 (a float32 running sum of them loses about 1e-3 of the mean, a tenth of a standard
    deviation), random gamma and beta; torch.nn.functional.layer_norm in float64 on the float32 values, rounded to
    float32."""
    gen = np.random.default_rng(seed)
    R, E = 4, 1024
    x = (torch.from_numpy(1000.0 + gen.standard_normal((R, E)) * 0.01)).float()
    gamma = 1.0 + randn(gen, E, scale=0.1)
    beta = randn(gen, E, scale=0.1)
    # F.layer_norm's float64 sums run in an order that depends on the CPU's kernels, enough to round a float32 value
    # the other way; the file holds the same LayerNorm with exactly rounded sums (math.fsum), checked against it.
    rows = []
    for r in range(R):
        values = [float(v) for v in x[r].tolist()]
        mean = math.fsum(values) / E
        var = math.fsum((v - mean) ** 2 for v in values) / E
        rstd = 1.0 / math.sqrt(var + EPS)
        rows.append([(v - mean) * rstd * float(g) + float(b) for v, g, b in zip(values, gamma.tolist(), beta.tolist())])
    exact = torch.tensor(rows, dtype=torch.float64)
    assert (exact - F.layer_norm(x.double(), (E,), gamma.double(), beta.double(), EPS)).abs().max() < 1e-9
    y = exact.float()
    golden = {"name": "layernorm_wide", "description": "LayerNorm on rows of mean 1000 and standard deviation 0.01, "
              "E = 1024: the sums need double", "generator": "tests/reference/make_fixtures.py", "seed": seed,
              "torch_version": torch.__version__, "numpy_version": np.__version__,
              "oracle": "LayerNorm in float64 with exactly rounded sums (math.fsum) on the float32 values, equal to "
                        "F.layer_norm's float64 to 1e-9, rounded to float32", "eps": EPS,
              "x": tensor_json(x), "gamma": tensor_json(gamma), "beta": tensor_json(beta), "expected": tensor_json(y)}
    os.makedirs(COURSE_DIR, exist_ok=True)
    path = os.path.join(COURSE_DIR, "layernorm_wide.json")
    with open(path, "w") as f:
        f.write(dumps(golden))
    return path


def write_softmax_masked(seed=3500):
    """The softmax of exercise 06-softmax on rows PyTorch masks wholly (every key masked): torch's softmax of a row of
    -inf is NaN, which the project keeps. Scores (4, 6), a boolean mask (True = masked) with row 1 partly masked and
    row 2 wholly; F.softmax(scores + additive mask) in float64, rounded to float32. The JSON holds the finite rows' values and which rows
    are NaN (JSON has no NaN)."""
    gen = np.random.default_rng(seed)
    scores = randn(gen, 4, 6)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1, ::2] = True
    mask[2, :] = True
    # in float64, rounded to float32: the same bits whichever exp kernel the CPU runs
    additive = torch.zeros(4, 6, dtype=torch.float64).masked_fill(mask, float("-inf"))
    weights = F.softmax(scores.double() + additive, dim=-1).float()
    nan_rows = [r for r in range(4) if bool(torch.isnan(weights[r]).all())]
    assert nan_rows == [2] and not bool(torch.isnan(weights[[0, 1, 3]]).any())
    golden = {"name": "softmax_masked", "description": "softmax over rows, one of them wholly masked (PyTorch: NaN)",
              "generator": "tests/reference/make_fixtures.py", "seed": seed, "torch_version": torch.__version__,
              "numpy_version": np.__version__, "oracle": "torch.nn.functional.softmax(scores + additive mask, dim=-1) in float64, rounded to float32",
              "scores": tensor_json(scores), "mask": tensor_json(mask), "nan_rows": nan_rows,
              "expected": tensor_json(torch.nan_to_num(weights, nan=0.0)),
              "note": "the rows in nan_rows are NaN in PyTorch's output; they are stored as 0 here, JSON having no NaN"}
    path = os.path.join(COURSE_DIR, "softmax_masked.json")
    with open(path, "w") as f:
        f.write(dumps(golden))
    return path


def lab_hash(*parts):
    """FNV-1a, 64 bits, of "qwenvl-port-lab:" and the parts joined by ":" (the checker's lab_hash): the lab's answers
    are stored hashed, so that reading data/ does not give them away."""
    h = 0xcbf29ce484222325
    for byte in ("qwenvl-port-lab:" + ":".join(parts)).encode():
        h = ((h ^ byte) * 0x100000001b3) % (1 << 64)
    return "%016x" % h


# The bugs a student chooses from: code, the stage it changes first, what it is, and what the dump would show if it
# were this bug (the checker prints it when this code is named for a stage where it is not the port's bug).
PORT_LAB_BUGS = [
    ("sincos-halves", "pos_q", "each half of the 2-D table as cosines, then sines",
     "within each half of pos_q's channels, the two quarters would be PyTorch's two quarters swapped"),
    ("meshgrid-hw", "pos_q", "the table's first half encodes the row h, the second the column w",
     "pos_q's two halves of channels would be PyTorch's two halves swapped"),
    ("bf16-table", "pos_q", "the query table stored in bf16",
     "pos_q would differ from PyTorch's by at most 2^-8 of each value, everywhere"),
    ("sincos-omega-over-d", "pos_q", "the frequencies 10000^(-i/(E/2)) instead of 10000^(-i/(E/4)): the exponent over the 1-D table's width D, not D/2",
     "pos_q's first channel of each quarter (frequency 1) would agree, the slower ones not"),
    ("align-corners", "pos_k", "the key table resized with align_corners=True",
     "F.interpolate(pos_q as an image, size=(h, w), mode='bicubic', align_corners=True) would give the port's pos_k"),
    ("bilinear-keys", "pos_k", "the key table resized bilinearly",
     "F.interpolate(pos_q as an image, size=(h, w), mode='bilinear', align_corners=False) would give the port's pos_k"),
    ("resize-hw-swapped", "pos_k", "the key table resized to (w, h) instead of (h, w)",
     "the port's pos_k would be the table resized to the transposed grid: read as (w, h, E) it is smooth"),
    ("layernorm-unbiased", "ln_q", "every LayerNorm with the unbiased variance (divided by E - 1)",
     "every LayerNorm's x_hat would be sqrt(E / (E - 1)) times PyTorch's: compare's LayerNorm diagnosis says which"),
    ("ln-eps-1e-5", "ln_q", "every LayerNorm with nn.LayerNorm's default eps, 1e-5, instead of 1e-6",
     "the difference would be largest on rows of small variance (the queries) and vanish on rows of variance 1: "
     "compare's LayerNorm diagnosis tries other eps values"),
    ("ln-eps-outside", "ln_q", "eps added to the standard deviation, outside the square root",
     "the difference would be largest on rows of small variance; compare's LayerNorm diagnosis tries this too"),
    ("no-query-table", "query_in", "the query table left out of the queries", "query_in would equal ln_q"),
    ("no-key-table", "key_in", "the key table left out of the keys", "key_in would equal ln_kv"),
    ("kv-chunks-swapped", "k", "in_proj's key and value parts exchanged: W_v and b_v used for the keys, W_k and b_k "
     "for the values", "k would be key_in W_v^T + b_v from the dump's own key_in (in_proj_weight's rows [2E, 3E))"),
    ("k-weight-transposed", "k", "W_k used untransposed: key_in W_k instead of key_in W_k^T",
     "k would be key_in @ W_k + b_k from the dump's own key_in: W_k is square, so no shape tells"),
    ("k-no-bias", "k", "the key projection's bias b_k left out",
     "k minus PyTorch's would be the same vector, -b_k, on every row"),
    ("value-position", "v", "the key table added to the values too",
     "v would be (ln_kv + pos_k) W_v^T + b_v, computed from the dump's own ln_kv and pos_k"),
    ("q-unscaled", "scores", "q not scaled by 1/sqrt(Dh) before the product",
     "every score would be sqrt(Dh) times PyTorch's: one constant factor"),
    ("q-over-sqrt-e", "scores", "q scaled by 1/sqrt(E) instead of 1/sqrt(Dh)",
     "every score would be sqrt(Dh / E) = 1/sqrt(H) times PyTorch's: one constant factor"),
    ("heads-interleaved", "scores", "head h given channels h, h + H, h + 2H, ... instead of [h Dh, (h + 1) Dh)",
     "head h's scores would be q[:, h::H] k[:, h::H]^T / sqrt(Dh) from the dump's own q and k"),
    ("softmax-over-queries", "attn_weights", "the softmax taken over the queries (dim=-2) instead of the keys",
     "each COLUMN of a head's weights (one key, every query) would sum to 1, not each row"),
    ("softmax-no-max", "attn_weights", "the softmax without subtracting the row's maximum",
     "nothing would change unless exp overflows: these scores are far too small for that"),
    ("out-proj-transposed", "out", "out_proj's weight used untransposed: attended W_o instead of attended W_o^T",
     "out would be attended @ W_o + b_o from the dump's own attended: W_o is square, so no shape tells"),
    ("out-proj-no-bias", "out", "out_proj's bias left out",
     "out minus PyTorch's would be the same vector, -b_o, on every row"),
    ("proj-transposed", "proj", "proj used as an nn.Linear weight: ln_post proj^T",
     "proj would be ln_post @ proj^T from the dump's own ln_post"),
]
# The five mysteries: which bug each port has (the answers; the files hold only their hashes).
PORT_LAB_MYSTERIES = ["heads_interleaved", "kv_chunks_swapped", "out_proj_transposed", "bilinear_keys",
                      "softmax_over_queries"]
PORT_LAB_CASE = {"E": 16, "H": 4, "Kv": 12, "Gq": 3, "grid": (4, 6), "N": 2, "seed": 3300}


def write_port_lab():
    """The lab's case (upstream's initialisation with small random biases and LayerNorm parameters, so that no
    parameter is trivially 0 or 1; the queries keep upstream's std of 0.02), its weights and features, and five dumps
    of a port, each with one bug from PORT_LAB_BUGS, with the answers hashed."""
    c = PORT_LAB_CASE
    E, H, Kv, Gq, (h, w), N = c["E"], c["H"], c["Kv"], c["Gq"], c["grid"], c["N"]
    gen = np.random.default_rng(c["seed"])
    initial = upstream_init(E, Kv, Gq * Gq, gen)
    for name in ("attn_pool.attn.in_proj_bias", "attn_pool.attn.out_proj.bias", "attn_pool.ln_q.bias",
                 "attn_pool.ln_kv.bias", "ln_post.bias"):
        initial[name] = randn(gen, *initial[name].shape, scale=0.1)
    for name in ("attn_pool.ln_q.weight", "attn_pool.ln_kv.weight", "ln_post.weight"):
        initial[name] = 1.0 + randn(gen, E, scale=0.1)
    x = randn(gen, N, h * w, Kv)
    folder = os.path.join(COURSE_DIR, "port-lab")
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, "weights.safetensors"), {PREFIX + k: v for k, v in initial.items()}, "F32")
    np.save(os.path.join(folder, "x.npy"), x.numpy())
    params = {k.replace("attn_pool.", ""): v.double() for k, v in initial.items()}
    reference = port_forward("qwen_vl", params, x.double(), [(h, w)], H)
    codes = {code for code, *_ in PORT_LAB_BUGS}
    mysteries = []
    for number, mistake in enumerate(PORT_LAB_MYSTERIES, start=1):
        code = mistake.replace("_", "-").replace("1e5", "1e-5")
        assert code in codes, code
        first = [stage for code_, stage, *_ in PORT_LAB_BUGS if code_ == code][0]
        trace = port_forward("qwen_vl", params, x.double(), [(h, w)], H, mistake)
        # the bug changes its stage first, and every stage before it is PyTorch's
        names = list(trace.keys())
        for stage in names[:names.index(first)]:
            assert torch.equal(trace[stage], reference[stage]), (mistake, stage)
        assert (trace[first] - reference[first]).abs().max() > 1e-3, (mistake, first)
        name = "mystery-%d" % number
        save_dump(os.path.join(folder, name), trace)
        mysteries.append({"name": name, "dump": "data/course/port-lab/" + name,
                          "stage_hash": lab_hash(name, first), "answer_hash": lab_hash(name, first, code)})
    lab = {"generator": "tests/reference/make_fixtures.py", "seed": c["seed"], "torch_version": torch.__version__,
           "description": "the port-debugging lab (docs/course/lesson-9-porting.md): five dumps of a port of "
                          "Qwen-VL's adapter, each with one bug; the answers are stored as FNV-1a hashes",
           "arguments": "--weights data/course/port-lab/weights.safetensors --heads %d --input "
                        "data/course/port-lab/x.npy --grids %dx%d" % (H, h, w),
           "mysteries": mysteries,
           "bugs": [{"code": code, "first_stage": stage, "what": what, "if_it_were": sign}
                    for code, stage, what, sign in PORT_LAB_BUGS]}
    with open(os.path.join(folder, "lab.json"), "w") as f:
        f.write(json.dumps(lab, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------------------
# The readers' corpus (data/readers/): valid files from other writers, each of which the .npy and safetensors
# readers (src/io/) must read, or refuse with the message their headers document. Listed, with what each must give,
# in data/readers/corpus.json; tests/test_readers.cpp walks the list. Every value is written exactly (k / 8, or a
# float64 / 3 whose float32 rounding is listed), so nothing depends on the CPU.

READERS_DIR = os.path.join(REPO, "data", "readers")
# The .npy files carry this suffix, not .npy: the test "write_npy writes byte for byte the file numpy wrote: every
# float32 .npy under data/" (tests/test_stages.cpp) takes every *.npy under data/ to be one numpy wrote as format 1.0
# in C order, which format 2.0 and 3.0, Fortran order and refused dtypes are not.
NPY_SUFFIX = ".npy.corpus"

# Every dtype the safetensors format lists (huggingface/safetensors, safetensors/src/tensor.rs, `enum Dtype`), in
# its order, with its bits per element. The reference writer lays tensors out in the reverse of this order (largest
# alignment first), then by name.
SAFETENSORS_BITS = [("BOOL", 8), ("F4", 4), ("F6_E2M3", 6), ("F6_E3M2", 6), ("U8", 8), ("I8", 8), ("F8_E5M2", 8),
                    ("F8_E4M3", 8), ("F8_E8M0", 8), ("F8_E4M3FNUZ", 8), ("F8_E5M2FNUZ", 8), ("I16", 16), ("U16", 16),
                    ("F16", 16), ("BF16", 16), ("I32", 32), ("U32", 32), ("F32", 32), ("C64", 64), ("F64", 64),
                    ("I64", 64), ("U64", 64)]
READ_DTYPES = ("F32", "F16", "BF16")  # what the reader converts to float32 (src/io/safetensors.hpp)


def write_safetensors_as_upstream(path, tensors, metadata):
    """A safetensors file laid out as the reference implementation (safetensors' Rust `serialize`) lays it out:
    tensors sorted by dtype, largest alignment first, then by name; the header's JSON with "__metadata__" first and
    the tensors in offset order, padded with spaces to a multiple of 8 bytes. `tensors`: name -> (dtype, shape,
    raw little-endian bytes)."""
    order = {dtype: i for i, (dtype, _) in enumerate(SAFETENSORS_BITS)}
    bits = dict(SAFETENSORS_BITS)
    entries = []
    for name in sorted(tensors, key=lambda n: (-order[tensors[n][0]], n)):
        dtype, shape, raw = tensors[name]
        assert len(raw) * 8 == math.prod(shape) * bits[dtype], name
        entries.append((name, dtype, shape, raw))
    return write_entries(path, entries, metadata, metadata_first=True)


def every_dtype_tensors():
    """One (2, 3) tensor of every dtype of the format ((2, 4) for the sub-byte F4 and F6, whole bytes), zero-size
    ones of shapes (0,) and (3, 0), and a 0-d one, under names the adapter does not use. Returns name -> (dtype,
    shape, raw) and the manifest's entries (the float32 values of the dtypes the reader converts; the error's words
    for the others)."""
    k = np.arange(6)
    eighths = ((k - 2) / 8).astype(np.float32)          # exact in F32, F16 and BF16
    raw = {
        "BOOL": np.array([1, 0, 1, 0, 0, 1], np.uint8).tobytes(),
        "U8": (k * 40).astype(np.uint8).tobytes(),
        "I8": (k - 3).astype(np.int8).tobytes(),
        "F8_E5M2": bytes([0x00, 0x3C, 0x40, 0xBC, 0x7B, 0x01]),
        "F8_E4M3": bytes([0x00, 0x38, 0x40, 0xB8, 0x7E, 0x01]),
        "F8_E8M0": bytes([0x7F, 0x80, 0x7E, 0x00, 0xFE, 0x81]),
        "F8_E4M3FNUZ": bytes([0x00, 0x40, 0x48, 0xC0, 0x7F, 0x01]),
        "F8_E5M2FNUZ": bytes([0x00, 0x40, 0x44, 0xC0, 0x7F, 0x01]),
        "I16": ((k - 3) * 1000).astype("<i2").tobytes(),
        "U16": (k * 10000).astype("<u2").tobytes(),
        "F16": eighths.astype("<f2").tobytes(),
        "BF16": (eighths.view(np.uint32) >> 16).astype("<u2").tobytes(),
        "I32": ((k - 3) * 100000).astype("<i4").tobytes(),
        "U32": (k * 800000000).astype("<u4").tobytes(),
        "F32": eighths.astype("<f4").tobytes(),
        "C64": (eighths + 1j * (k / 4)).astype("<c8").tobytes(),
        "F64": ((k - 2) / 3).astype("<f8").tobytes(),
        "I64": ((k - 3) * 10 ** 12).astype("<i8").tobytes(),
        "U64": (k.astype(np.uint64) * np.uint64(3 * 10 ** 18)).astype("<u8").tobytes(),
        "F4": bytes([0x21, 0x43, 0x65, 0x87]),                   # (2, 4): 32 bits
        "F6_E2M3": bytes([0x41, 0x10, 0x83, 0x10, 0x51, 0x87]),  # (2, 4): 48 bits
        "F6_E3M2": bytes([0x82, 0x20, 0x06, 0x21, 0xA2, 0x0E]),
    }
    tensors, listing = {}, []
    for dtype, bits in SAFETENSORS_BITS:
        shape = (2, 3) if bits % 8 == 0 else (2, 4)
        name = "corpus.dtype." + dtype
        tensors[name] = (dtype, shape, raw[dtype])
        entry = {"name": name, "dtype": dtype, "shape": list(shape), "bits": bits}
        if dtype in READ_DTYPES:
            entry["values"] = [float(v) for v in eighths]
        else:
            entry["error"] = ["tensor '%s'" % name, "has dtype %s" % dtype, "only F32, F16 and BF16 are read"]
        listing.append(entry)
    for name, dtype, shape, values in [("corpus.empty.F32", "F32", (0,), []),
                                       ("corpus.empty.BF16", "BF16", (3, 0), []),
                                       ("corpus.empty.F4", "F4", (0, 5), None),
                                       ("corpus.scalar.F32", "F32", (), [0.25])]:
        tensors[name] = (dtype, shape, np.array(values or [], "<f4").tobytes())
        entry = {"name": name, "dtype": dtype, "shape": list(shape), "bits": dict(SAFETENSORS_BITS)[dtype]}
        if values is None:
            entry["error"] = ["tensor '%s'" % name, "has dtype %s" % dtype, "only F32, F16 and BF16 are read"]
        else:
            entry["values"] = values
        listing.append(entry)
    return tensors, listing


def npy_corpus():
    """(name, how numpy wrote it, writer, expectation): expectation is ("read", float32 values as stored, is_bool)
    or ("refuse", the words the one-line error must hold besides the file's path)."""
    a = ((np.arange(12, dtype=np.float32) - 5) / 8).reshape(3, 4)   # exact in float32

    def version(v):
        return lambda f: np.lib.format.write_array(f, a, version=v)

    def save(x, pickle=False):
        return lambda f: np.save(f, x, allow_pickle=pickle)

    def read(x, is_bool=False):
        return ("read", np.asarray(x, dtype=np.float32), is_bool)

    def refuse(*words):
        return ("refuse", list(words))

    f64 = ((np.arange(12) - 5) / 3).reshape(3, 4)      # float64; read as its float32 rounding
    flags = np.array([[True, False, True], [False, False, True]])
    unsupported = ["is not supported", "float16, float32 or float64; bool for a mask"]
    # float16 specials, each exact in float32: the smallest subnormal, a subnormal, the largest finite, -0, 1/3 rounded
    halves = np.array([2.0 ** -24, 3 * 2.0 ** -20, 65504.0, -0.0, 1.0 / 3.0], dtype=np.float16)
    return [
        ("f4_v1.0", "np.lib.format.write_array(f, a, version=(1, 0))", version((1, 0)), read(a)),
        ("f4_v2.0", "np.lib.format.write_array(f, a, version=(2, 0))", version((2, 0)), read(a)),
        ("f4_v3.0", "np.lib.format.write_array(f, a, version=(3, 0))", version((3, 0)), read(a)),
        ("f4_1d", "np.save(f, a.ravel()[:5])", save(a.ravel()[:5].copy()), read(a.ravel()[:5])),
        ("f4_3d", "np.save(f, a.reshape(3, 2, 2))", save(a.reshape(3, 2, 2)), read(a.reshape(3, 2, 2))),
        ("f4_0d", "np.save(f, np.float32(0.375))", save(np.float32(0.375)), read(np.float32(0.375))),
        ("f4_empty_0x4", "np.save(f, np.zeros((0, 4), np.float32))", save(np.zeros((0, 4), np.float32)),
         read(np.zeros((0, 4)))),
        ("f4_empty_2x0x3", "np.save(f, np.zeros((2, 0, 3), np.float32))", save(np.zeros((2, 0, 3), np.float32)),
         read(np.zeros((2, 0, 3)))),
        ("f8", "np.save(f, (np.arange(12) - 5) / 3) as (3, 4) float64", save(f64), read(f64.astype(np.float32))),
        ("b1", "np.save(f, a (2, 3) bool array)", save(flags), read(flags, is_bool=True)),
        ("f4_fortran", "np.save(f, np.asfortranarray(a))", save(np.asfortranarray(a)), read(a)),
        ("f4_transposed", "np.save(f, a.T) (a transposed view is Fortran-contiguous: numpy saves it so)", save(a.T),
         read(np.ascontiguousarray(a.T))),
        ("f8_fortran_3d", "np.save(f, np.asfortranarray(a.reshape(3, 2, 2).astype(np.float64)))",
         save(np.asfortranarray(a.reshape(3, 2, 2).astype(np.float64))), read(a.reshape(3, 2, 2))),
        ("i4", "np.save(f, a.astype(np.int32))", save((a * 8).astype(np.int32)), refuse("dtype '<i4'", *unsupported)),
        ("i8", "np.save(f, np.arange(4))", save(np.arange(4, dtype=np.int64)), refuse("dtype '<i8'", *unsupported)),
        ("u1", "np.save(f, np.arange(4, dtype=np.uint8))", save(np.arange(4, dtype=np.uint8)),
         refuse("dtype '|u1'", *unsupported)),
        ("f2", "np.save(f, a.astype(np.float16))", save(a.astype(np.float16)), read(a.astype(np.float16))),
        ("f2_specials", "np.save(f, float16 subnormals, the largest finite, -0 and 1/3)", save(halves), read(halves)),
        ("f4_big_endian", "np.save(f, a.astype('>f4'))", save(a.astype(">f4")),
         refuse("dtype '>f4'", "is big-endian", "little-endian")),
        ("f8_big_endian", "np.save(f, a.astype('>f8'))", save(a.astype(">f8")),
         refuse("dtype '>f8'", "is big-endian", "little-endian")),
        ("c8", "np.save(f, (a + 1j).astype(np.complex64))", save((a + 1j).astype(np.complex64)),
         refuse("dtype '<c8'", *unsupported)),
        ("unicode", "np.save(f, np.array(['ab', 'cde']))", save(np.array(["ab", "cde"])),
         refuse("dtype '<U3'", *unsupported)),
        ("object", "np.save(f, np.array([1, 'a'], dtype=object), allow_pickle=True)",
         save(np.array([1, "a"], dtype=object), pickle=True), refuse("dtype '|O'", *unsupported)),
        ("structured", "np.save(f, np.zeros(2, dtype=[('x', '<f4'), ('y', '<i4')]))",
         save(np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")])),
         refuse("dtype [('x', '<f4'), ('y', '<i4')]", "structured", *unsupported)),
    ]


def write_reader_corpus():
    """data/readers/: .npy files numpy wrote (format versions, orders, dtypes), a safetensors file with a tensor
    of every dtype of the format and zero-size ones beside the adapter's, three sharded checkpoints whose index and
    shards disagree, and corpus.json saying what each must give."""
    manifest = {"generator": "tests/reference/make_fixtures.py (write_reader_corpus)",
                "numpy_version": np.__version__,
                "note": ("paths are relative to data/readers/; the .npy files end in %s (see NPY_SUFFIX in the "
                         "generator); 'error' lists words the one-line message holds besides the file's path"
                         % NPY_SUFFIX),
                "npy": [], "safetensors": [], "sharded": []}
    npy_dir = os.path.join(READERS_DIR, "npy")
    os.makedirs(npy_dir, exist_ok=True)
    for name, how, write, expect in npy_corpus():
        file = "npy/" + name + NPY_SUFFIX
        with open(os.path.join(READERS_DIR, file), "wb") as f:
            write(f)
        entry = {"file": file, "written_by": how, "read": expect[0] == "read"}
        if expect[0] == "read":
            entry.update({"shape": list(expect[1].shape), "values": [float(v) for v in expect[1].ravel()],
                          "bool": expect[2]})
        else:
            entry["error"] = expect[1]
        manifest["npy"].append(entry)

    # The adapter's tensors of a tiny case, as F32, with a tensor of every dtype beside them.
    plain = "../cli/resize_up/weights.safetensors"
    adapter = {name: ("F32", value.shape, value.astype("<f4").tobytes())
               for name, value in read_safetensors(os.path.join(CLI_DIR, "resize_up", "weights.safetensors")).items()}
    run = {"same_output_as": plain, "input": "../cli/resize_up/x.npy", "heads": 2}
    metadata = {"format": "pt", "generator": "tests/reference/make_fixtures.py (write_reader_corpus)"}
    st_dir = os.path.join(READERS_DIR, "safetensors")
    os.makedirs(st_dir, exist_ok=True)
    extra, listing = every_dtype_tensors()
    write_safetensors_as_upstream(os.path.join(st_dir, "every_dtype.safetensors"), {**adapter, **extra}, metadata)
    manifest["safetensors"].append({"file": "safetensors/every_dtype.safetensors", "read": True,
                                    "written_by": "write_safetensors_as_upstream (the reference writer's layout)",
                                    "adapter_tensors": sorted(adapter), "extra_tensors": listing, **run})

    # Sharded: the attention pool in shard 1, the tower's tail in shard 2, and an index that disagrees with them.
    names = sorted(adapter)
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    home = {n: shard_names[0] if ".attn_pool." in n else shard_names[1] for n in names}
    dropped = PREFIX + "ln_post.bias"
    cases = [
        ("index_missing", "the index lists %s in shard 2, which does not hold it (no shard does)" % dropped,
         {dropped: None}, {}, False),
        ("index_wrong_shard", "the index lists %s in shard 1; only shard 2 holds it" % dropped,
         {}, {dropped: shard_names[0]}, False),
        ("index_unlisted", "shard 2 also holds two tensors the index does not list: lm_head.weight, and a second copy "
         "(zeros) of %sattn_pool.query, which the index lists in shard 1" % PREFIX, {}, {}, True),
    ]
    for case, description, moved, relisted, readable in cases:
        folder = os.path.join(READERS_DIR, "sharded", case)
        os.makedirs(folder, exist_ok=True)
        total = 0
        for shard in shard_names:
            part = {n: adapter[n] for n in names if home[n] == shard and n not in moved}
            if case == "index_unlisted" and shard == shard_names[1]:
                query = adapter[PREFIX + "attn_pool.query"]
                part["lm_head.weight"] = ("F32", (4, 8), ((np.arange(32) - 16) / 8).astype("<f4").tobytes())
                part[PREFIX + "attn_pool.query"] = ("F32", query[1], bytes(len(query[2])))
            total += write_safetensors_as_upstream(os.path.join(folder, shard), part, metadata)
        weight_map = {n: relisted.get(n, home[n]) for n in names}
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            f.write(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
        entry = {"file": "sharded/%s/model.safetensors.index.json" % case, "description": description,
                 "read": readable}
        if readable:
            entry.update({"tensors": names, "ignored": [{"name": n, "file": shard_names[1]}
                                                        for n in ("lm_head.weight", PREFIX + "attn_pool.query")], **run})
        else:
            shard = shard_names[0] if relisted else shard_names[1]
            entry["error"] = ["tensor '%s'" % dropped, "is listed in " + shard, "which does not hold it"]
        manifest["sharded"].append(entry)

    with open(os.path.join(READERS_DIR, "corpus.json"), "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")


def main():
    torch.set_num_threads(1)
    write_parameter_counts()
    os.makedirs(OUT_DIR, exist_ok=True)
    for index, case in enumerate(CASES):
        seed = 1000 + index
        fixture, params, x, mask = build_case(*case, seed=seed)
        path = os.path.join(OUT_DIR, case[0] + ".json")
        with open(path, "w") as f:
            f.write(dumps(fixture))
        print("wrote %s (%d bytes)" % (os.path.relpath(path, REPO), os.path.getsize(path)))
        folder = write_cli_case(case[0], case[3], params, x, mask, CLI_CASES[case[0]])
        print("wrote %s/" % os.path.relpath(folder, REPO))
    write_demo()
    print("wrote data/demo/ and data/fusion/")
    print("wrote %s" % os.path.relpath(write_training_golden(), REPO))
    print("wrote %s" % os.path.relpath(write_training_golden(seed=3001, readout=True), REPO))
    print("wrote %s" % os.path.relpath(write_training_golden(seed=3002, masked=True), REPO))
    print("wrote %s" % os.path.relpath(write_readout_golden(), REPO))
    print("wrote %s" % os.path.relpath(write_optimizer_golden(), REPO))
    write_model_fixtures()
    write_compare_cases()
    print("wrote %s/" % os.path.relpath(write_port_lab(), REPO))
    print("wrote %s" % os.path.relpath(write_layernorm_wide(), REPO))
    print("wrote %s" % os.path.relpath(write_softmax_masked(), REPO))
    write_reader_corpus()
    print("wrote data/readers/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
