#!/usr/bin/python3
"""The precision budget of a port at Qwen-VL's full size: each stage's error against float32 PyTorch.

    /usr/bin/python3 tests/reference/precision_budget.py [--cli build/release/qwenvl-adapter]

Seeded random weights of Qwen-VL's adapter and tail (E = 4096, H = 32, Kv = 1664, 16 x 16 queries on 32 x 32 keys,
one image). The reference is PyTorch in float32: the module of resamplers.py, its intermediates captured by
hooks. Against it, each stage's largest |error| relative to the stage's largest |value|, and the cosine similarity,
for:
  - this project's fast path (`qwenvl-adapter run --trace`) on the F32 weights;
  - PyTorch in float32 on the weights stored in F16 and BF16 (pos_embed too, as a checkpoint stores it);
  - a port that rounds every stage's output to f16 or bf16 and computes in float32 (port_forward's rounding);
  - a whole bf16 port: BF16 weights and every stage rounded to bf16.
Writes data/precision/budget.json and the table in docs/precision.md (between its markers). Takes about 40 s on 2
cores; the weights file (360 MB) and the trace go to a temporary folder.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from make_fixtures import PREFIX, as_stored, draw_model_params, model_checkpoint_name, port_forward  # noqa: E402
from resamplers import QwenVLResampler, load_state, sincos_2d, trace_resampler  # noqa: E402
from safetensors_io import write_safetensors  # noqa: E402

E, H, KV, GQ, GK, N, SEED = 4096, 32, 1664, 16, 32, 1, 5000
SCENARIOS = [
    ("cpp_f32", "this project, F32 weights"),
    ("weights_f16", "F16 weights"),
    ("weights_bf16", "BF16 weights"),
    ("stages_f16", "every stage rounded to f16"),
    ("stages_bf16", "every stage rounded to bf16"),
    ("bf16_port", "BF16 weights, every stage bf16"),
]
BEGIN, END = "<!-- budget table: written by tests/reference/precision_budget.py -->", "<!-- end of the budget table -->"


def pytorch_trace(params, x):
    module = QwenVLResampler(GQ * GQ, E, H, KV)
    load_state(module, params)
    return trace_resampler(module, x, grid=(GK, GK))


def error(got, want):
    got, want = got.double().flatten(), want.double().flatten()
    largest = want.abs().max().item()
    abs_err = (got - want).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
    return {"max_abs": abs_err, "rel": abs_err / largest if largest else abs_err, "cosine": cosine}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cli", default=os.path.join(REPO, "build", "release", "qwenvl-adapter"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    gen = np.random.default_rng(SEED)
    Q, L = GQ * GQ, GK * GK
    x = torch.from_numpy(gen.standard_normal((N, L, KV)).astype(np.float32))
    params = draw_model_params(gen, E, KV, Q)
    params["query"] = params["query"] * 0.02                       # upstream initialises the queries with std 0.02
    params["pos_embed"] = torch.from_numpy(sincos_2d(E, GQ))
    reference = pytorch_trace(params, x)
    stages = list(reference)
    results = {}

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.safetensors")
        write_safetensors(weights, {PREFIX + model_checkpoint_name("qwen_vl", k): v for k, v in params.items()}, "F32")
        np.save(os.path.join(tmp, "x.npy"), x.numpy())
        subprocess.run([args.cli, "run", "--weights", weights, "--input", os.path.join(tmp, "x.npy"), "--output",
                        os.path.join(tmp, "y.npy"), "--trace", os.path.join(tmp, "trace")], check=True)
        results["cpp_f32"] = {s: error(torch.from_numpy(np.load(os.path.join(tmp, "trace", s + ".npy"))), reference[s])
                              for s in stages}

    bf16 = lambda t: t.to(torch.bfloat16).float()                  # noqa: E731
    f16 = lambda t: t.to(torch.float16).float()                    # noqa: E731
    for dtype in ("F16", "BF16"):
        stored = {k: as_stored(v, dtype) for k, v in params.items()}
        trace = pytorch_trace(stored, x)
        results["weights_" + dtype.lower()] = {s: error(trace[s], reference[s]) for s in stages}
    no_table = {k: v for k, v in params.items() if k != "pos_embed"}   # port_forward computes the table itself
    for name, rounding, p in (("stages_f16", f16, no_table), ("stages_bf16", bf16, no_table),
                              ("bf16_port", bf16, {k: as_stored(v, "BF16") for k, v in no_table.items()})):
        trace = port_forward("qwen_vl", p, x, [(GK, GK)], H, exact_resize=False, rounding=rounding)
        if name == "bf16_port":
            trace["pos_q"] = bf16(trace["pos_q"])                  # (rounded already: kept explicit)
        results[name] = {s: error(trace[s], reference[s]) for s in stages}

    out = {"generator": "tests/reference/precision_budget.py", "seed": SEED, "torch_version": torch.__version__,
           "config": {"embed_dim": E, "num_heads": H, "kv_dim": KV, "grid_q": GQ, "grid_k": GK, "batch": N},
           "reference": "PyTorch float32 (tests/reference/resamplers.py, hooks)",
           "scenarios": dict(SCENARIOS), "stages": stages, "errors": results}
    os.makedirs(os.path.join(REPO, "data", "precision"), exist_ok=True)
    with open(os.path.join(REPO, "data", "precision", "budget.json"), "w") as f:
        f.write(json.dumps(out, indent=1) + "\n")

    header = "| stage | " + " | ".join(title for _, title in SCENARIOS) + " |\n|---|" + "---|" * len(SCENARIOS) + "\n"
    rows = "".join("| `%s` | " % s + " | ".join("%.2g" % results[k][s]["rel"] for k, _ in SCENARIOS) + " |\n"
                   for s in stages)
    cosines = "| 1 - cosine, `proj` | " + " | ".join("%.1e" % (1 - results[k]["proj"]["cosine"]) for k, _ in SCENARIOS) + " |\n"
    page = os.path.join(REPO, "docs", "precision.md")
    text = open(page).read()
    before, rest = text.split(BEGIN)
    _, after = rest.split(END)
    with open(page, "w") as f:
        f.write(before + BEGIN + "\n" + header + rows + cosines + END + after)
    print("wrote data/precision/budget.json and the table in docs/precision.md")


if __name__ == "__main__":
    main()
