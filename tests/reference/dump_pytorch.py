#!/usr/bin/python3
"""Dump a resampler's intermediates from PyTorch, under this project's stage names, for `qwenvl-adapter compare`.

    /usr/bin/python3 tests/reference/dump_pytorch.py --weights model.safetensors --input x.npy --out DIR
        [--grids 24x32,32x24] [--heads H] [--module upstream/resampler.py] [--dtype float32|bfloat16|float16]

Reads the checkpoint (safetensors, one file, several, or a model.safetensors.index.json), tells the model from its
names as the C++ does (transformer.visual.attn_pool.* is Qwen-VL's adapter with the tower's ln_post and proj;
resampler.* without a stored pos_embed is MiniCPM-V 2.5 / 2.6's resampler), builds the module, loads the weights,
runs it on the features x (N, L, Kv) and writes DIR/<stage>.npy for every stage (float32), the names `compare`
reads. The intermediates come from forward hooks and the attention's call (resamplers.trace_resampler).

--module FILE uses upstream's own Resampler class from FILE instead of this project's restatement
(tests/reference/resamplers.py), for MiniCPM-V: its resampler.py from the Hugging Face repository (the hooks find
the same submodules). Its `transformers` import is stubbed when transformers is not installed (only
is_deepspeed_zero3_enabled is used, and False is its answer off DeepSpeed). On a torch older than 2.0 (Debian 12
has 1.13), upstream's MultiheadAttention subclass, which calls torch 2's private helpers, is replaced by
nn.MultiheadAttention, the class it subclasses; the script says so. --dtype runs the module in bf16 or f16,
as a low-precision deployment would (inputs and weights converted; the dump is written in float32).

Then, with the same weights and features:

    qwenvl-adapter compare --weights model.safetensors --input x.npy --grids ... --theirs DIR

--gradients (float32 or float64) also writes autograd's gradients of the loss L = sum(proj * G), G a
seeded standard normal (N, Q, E) (--gradient-seed, default 0): DIR/gradients/proj.npy is G, the gradient a port's
backward starts from; DIR/gradients/<stage>.npy is dL/d each intermediate, x.npy dL/dx, and
DIR/gradients/parameters/<name>.npy dL/d each trainable parameter, by its checkpoint name without the model's
prefix (Qwen-VL: `transformer.visual.`, so attn_pool.attn.in_proj_weight, packed (3E, E), ln_post.weight, proj;
MiniCPM-V: `resampler.`, so attn.in_proj_weight, ln_post.weight, proj). They come from the explicit steps of
resamplers.explicit_forward, checked here against autograd through the module itself (nn.MultiheadAttention).
`compare --gradients` then checks a port's backward the same way (docs/compare.md#gradients).
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resamplers import (OUTSIDE_ATTN_POOL, MiniCPMVResampler, QwenVLResampler, load_state,  # noqa: E402
                        module_gradients, trace_resampler)
from safetensors_io import read_safetensors  # noqa: E402


def read_file_checked(path):
    """read_safetensors, with a malformed file's error (a truncated file, a header that is not JSON) named by it."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
    except OSError as e:
        fail("%s: cannot read (%s)" % (path, e.strerror))
    if size < 8 or n > size - 8:
        fail("%s: not a safetensors file (its first 8 bytes give a header of %d bytes, past the end of the file)"
             % (path, n if size >= 8 else 0))
    try:
        return read_safetensors(path)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        if str(e).startswith(path + ":"):
            raise
        fail("%s: not a readable safetensors file (%s: %s)" % (path, type(e).__name__, e))


def read_checkpoint(paths):
    tensors = {}
    for path in paths:
        if path.endswith(".json"):
            try:
                with open(path) as f:
                    index = json.load(f)
                shards = sorted(set(index["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                fail("%s: not a safetensors index (%s: %s)" % (path, type(e).__name__, e))
            folder = os.path.dirname(path)
            for shard in shards:
                tensors.update(read_file_checked(os.path.join(folder, shard)))
        else:
            tensors.update(read_file_checked(path))
    return tensors


def layout(tensors):
    """(model, {module parameter name: tensor}) from the checkpoint's names."""
    if "transformer.visual.attn_pool.query" in tensors:
        params = {k[len("transformer.visual.attn_pool."):]: v for k, v in tensors.items()
                  if k.startswith("transformer.visual.attn_pool.")}
        for k in ("ln_post.weight", "ln_post.bias", "proj"):
            params[k] = tensors["transformer.visual." + k]
        return "qwen_vl", params
    if "resampler.query" in tensors:
        if "resampler.pos_embed" in tensors:
            sys.exit("dump_pytorch.py: resampler.pos_embed is stored: MiniCPM-V 2.0's resampler, not supported")
        return "minicpm_v", {k[len("resampler."):]: v for k, v in tensors.items() if k.startswith("resampler.")}
    sys.exit("dump_pytorch.py: neither transformer.visual.attn_pool.query (Qwen-VL) nor resampler.query (MiniCPM-V) found")


def upstream_class(path):
    """The Resampler class of upstream's own file, with a stand-in for `transformers` when it is missing."""
    try:
        import transformers.integrations  # noqa: F401
    except ImportError:
        stub = types.ModuleType("transformers")
        stub.integrations = types.ModuleType("transformers.integrations")
        stub.integrations.is_deepspeed_zero3_enabled = lambda: False
        sys.modules["transformers"] = stub
        sys.modules["transformers.integrations"] = stub.integrations
    spec = importlib.util.spec_from_file_location("upstream_resampler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Resampler


def fail(message):
    sys.exit("dump_pytorch.py: " + message)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", action="append", required=True,
                        help="a .safetensors file (repeatable) or a model.safetensors.index.json")
    parser.add_argument("--input", required=True, help=".npy features, (L, Kv) or (N, L, Kv)")
    parser.add_argument("--out", required=True, help="the folder for <stage>.npy")
    parser.add_argument("--grids", default="", help="HxW[,HxW...]: Qwen-VL's key grid, or MiniCPM-V's per image")
    parser.add_argument("--heads", type=int, default=0, help="attention heads (default E / 128; small cases need it)")
    parser.add_argument("--module", default="", help="upstream's own MiniCPM-V resampler.py")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                        help="the precision the module runs in (float16 needs a PyTorch with float16 CPU kernels; "
                             "Debian's 1.13 has none)")
    parser.add_argument("--gradients", action="store_true",
                        help="also write autograd's gradients of L = sum(proj * G) to DIR/gradients/")
    parser.add_argument("--gradient-seed", type=int, default=0, help="the seed of G, the upstream gradient")
    args = parser.parse_args()
    try:
        dump(args)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, json.JSONDecodeError) as e:
        fail("%s: %s" % (type(e).__name__, e))


def dump(args):
    model, params = layout(read_checkpoint(args.weights))
    if args.gradients and args.dtype not in ("float32", "float64"):
        fail("--gradients runs in float32 or float64, not %s" % args.dtype)
    if args.dtype == "float16":  # older PyTorch has no float16 products or bicubic resize on the CPU
        try:
            half = torch.ones(1, 1, 4, 4, dtype=torch.float16)
            torch.nn.functional.interpolate(half, size=(3, 3), mode="bicubic", align_corners=False)
            half[0, 0] @ half[0, 0]
        except RuntimeError as e:
            fail("--dtype float16: PyTorch %s has no float16 kernels on the CPU (%s); use --dtype bfloat16, the "
                 "other 16-bit type (docs/precision.md)" % (torch.__version__, e))
    try:
        x = np.load(args.input)
    except (OSError, ValueError, EOFError) as e:
        fail("%s: not a readable .npy file (%s)" % (args.input, e))
    if x.dtype.kind != "f":
        fail("%s: features of dtype %s, expected float16, float32 or float64" % (args.input, x.dtype))
    if x.ndim not in (2, 3):
        fail("%s: features of shape %s, expected (L, Kv) or (N, L, Kv)" % (args.input, x.shape))
    if x.ndim == 2:
        x = x[None]
    N, L, Kv = x.shape
    Q, E = params["query"].shape
    kv_dim = params["kv_proj.weight"].shape[1] if "kv_proj.weight" in params else E
    if Kv != kv_dim:
        fail("%s: features of width Kv = %d, but the checkpoint's %s takes %d" %
             (args.input, Kv, "kv_proj" if "kv_proj.weight" in params else "width E (no kv_proj)", kv_dim))
    H = args.heads or E // 128
    if H == 0 or E % H:
        if args.heads:
            fail("--heads %d does not divide E = %d" % (H, E))
        fail("E = %d gives %d heads by the rule E / 128: give --heads (a divisor of E)" % (E, H))
    try:
        grids = [tuple(int(v) for v in g.split("x")) for g in args.grids.split(",")] if args.grids else []
    except ValueError:
        fail("--grids takes HxW[,HxW...], got '%s'" % args.grids)
    if len(grids) == 1:
        grids = grids * N
    if not grids and model == "minicpm_v":
        fail("MiniCPM-V's resampler needs each image's grid of patches: --grids HxW[,HxW...]")
    if not grids:
        if math.isqrt(L) ** 2 != L:
            fail("%d patches are not a square grid: give --grids HxW" % L)
        grids = [(math.isqrt(L), math.isqrt(L))] * N
    if len(grids) != N or any(min(g) < 1 for g in grids):
        fail("--grids gives %d grids for %d images" % (len(grids), N))
    if model == "qwen_vl" and (len(set(grids)) != 1 or grids[0][0] * grids[0][1] != L):
        fail("Qwen-VL's adapter takes one key grid of L = %d patches for the batch" % L)
    if model == "minicpm_v" and max(h * w for h, w in grids) > L:
        fail("a grid holds more patches than the features' L = %d" % L)
    if args.module:
        if model != "minicpm_v":
            sys.exit("dump_pytorch.py: --module is for MiniCPM-V's resampler.py (Qwen-VL's tail lives outside it)")
        module = upstream_class(args.module)(Q, E, H, kv_dim, adaptive=True)
        if int(torch.__version__.split(".")[0]) < 2:
            # MiniCPM-V 2.6's own MultiheadAttention subclass calls torch 2's private helpers (F._none_or_dtype,
            # _canonical_mask). On an older torch its attention is replaced by torch's nn.MultiheadAttention, which
            # it subclasses (same parameters, same computation); the rest of upstream's forward runs as written.
            module.attn = torch.nn.MultiheadAttention(E, H)
            print("dump_pytorch.py: torch %s: upstream's attention replaced by nn.MultiheadAttention" % torch.__version__)
    elif model == "minicpm_v":
        module = MiniCPMVResampler(Q, E, H, kv_dim)
    else:
        module = QwenVLResampler(Q, E, H, kv_dim)
    dtype = getattr(torch, args.dtype)
    module = module.to(dtype)
    load_state(module, {k: torch.from_numpy(v) for k, v in params.items() if k != "pos_embed"})
    if model == "qwen_vl" and "pos_embed" in params:      # a stored table replaces the computed one
        load_state(module, {"pos_embed": torch.from_numpy(params["pos_embed"])})
    features = torch.from_numpy(x).to(dtype)
    if model == "minicpm_v":
        trace = trace_resampler(module, features, tgt_sizes=torch.tensor(grids))
    else:
        trace = trace_resampler(module, features, grid=grids[0])
    os.makedirs(args.out, exist_ok=True)
    for stage, value in trace.items():
        np.save(os.path.join(args.out, stage + ".npy"), np.ascontiguousarray(value.float().numpy()))
    print("dump_pytorch.py: %s, %d stages in %s (N=%d, L=%d, Kv=%d, E=%d, H=%d, Q=%d, %s)"
          % (model, len(trace), args.out, N, L, Kv, E, H, Q, args.dtype))
    if args.gradients:
        dump_gradients(args, module, params, features, grids, H)


def dump_gradients(args, module, params, features, grids, H):
    """Autograd's gradients of L = sum(proj * G) from the explicit steps, checked against the module's own autograd,
    written to DIR/gradients/ (the module docstring)."""
    dtype = getattr(torch, args.dtype)
    N = features.shape[0]
    Q, E = params["query"].shape
    upstream = torch.from_numpy(np.random.default_rng(args.gradient_seed).standard_normal((N, Q, E)).astype(np.float32))
    try:
        if isinstance(module, QwenVLResampler):
            gradients, param_grads = module_gradients(module, features, upstream.to(dtype), grid=grids[0])
        else:
            gradients, param_grads = module_gradients(module, features, upstream.to(dtype), tgt_sizes=torch.tensor(grids))
    except AssertionError as e:
        fail(str(e))
    # Parameters by checkpoint name without the model's prefix: Qwen-VL's adapter under attn_pool. (its tail bare,
    # as the tower holds it), MiniCPM-V's as its resampler names them
    qwen = isinstance(module, QwenVLResampler)
    folder = os.path.join(args.out, "gradients")
    os.makedirs(os.path.join(folder, "parameters"), exist_ok=True)
    for name, value in gradients.items():
        np.save(os.path.join(folder, name + ".npy"), np.ascontiguousarray(value.float().numpy()))
    for name, value in param_grads.items():
        stored = ("attn_pool." + name if qwen and name not in OUTSIDE_ATTN_POOL else name)
        np.save(os.path.join(folder, "parameters", stored + ".npy"), np.ascontiguousarray(value.float().numpy()))
    print("dump_pytorch.py: G (proj.npy), %d intermediates' gradients and %d parameters' in %s (L = sum(proj * G), G "
          "seeded %d; checked against the module's autograd)" % (len(gradients) - 1, len(param_grads), folder,
                                                                 args.gradient_seed))

if __name__ == "__main__":
    main()
