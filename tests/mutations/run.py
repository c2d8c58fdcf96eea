#!/usr/bin/python3
"""Break the code on purpose, one realistic bug at a time, and show which tests catch it.

    /usr/bin/python3 tests/mutations/run.py [--only ID ...] [--list] [--fullsize]

Each mutation below is a bug a port of this adapter has made or could make (docs/testing.md lists them with the
tests that catch each). For each one the script patches one source file (an exact text replacement, which must
match once), rebuilds the library, `qwenvl-adapter` and the tests in their own build folder (build/mutations,
Release), runs ctest without the full-size test, restores the file, and records which tests failed. A mutation
that no test catches is reported as SURVIVED, and the script exits with 1; so does a change marked harmless (the
same numbers up to rounding, which no test of a value should reject) that such a test rejects. The report is also written to
build/mutations/report.md. With --fullsize, each mutation's error at Qwen-VL's size is measured too: the mutated
build's readable path against the unmutated one's on the same full-size image (`qwenvl-bench --readable-trace`,
about 40 s a mutation; docs/course/break-it-and-see.md). The source tree is restored after every mutation, also
when the script is interrupted (Ctrl-C; it finishes the command it is waiting for first). About 20 to 40 s per
mutation on 2 cores.
"""

import argparse
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, "build", "mutations")

# id, the bug, file, the correct text, the broken text[, "harmless": a change that is not a bug, expected to pass]
MUTATIONS = [
    ("sincos-halves", "sin and cos halves swapped", "src/stages/02_sincos.cpp",
     "table(p, i) = std::sin(angle);\n            table(p, half + i) = std::cos(angle);",
     "table(p, i) = std::cos(angle);\n            table(p, half + i) = std::sin(angle);"),
    ("sincos-hw", "h and w swapped (the meshgrid pitfall)", "src/stages/02_sincos.cpp",
     "column[i * grid.w + j] = static_cast<float>(j);\n            row[i * grid.w + j] = static_cast<float>(i);",
     "column[i * grid.w + j] = static_cast<float>(i);\n            row[i * grid.w + j] = static_cast<float>(j);"),
    ("sincos-exponent", "frequency exponent i / D instead of i / (D/2)", "src/stages/02_sincos.cpp",
     "static_cast<float>(i) / (static_cast<float>(dim) / 2.0f)", "static_cast<float>(i) / static_cast<float>(dim)"),
    ("bicubic-a", "bicubic A = -0.5 (not PyTorch's -0.75)", "src/stages/03_resize.cpp",
     "constexpr float A = -0.75f;", "constexpr float A = -0.5f;"),
    ("bicubic-offset", "no half-pixel offset (align_corners=True-like source coordinate)", "src/stages/03_resize.cpp",
     "return scale * (static_cast<float>(j) + 0.5f) - 0.5f;", "return scale * static_cast<float>(j);"),
    ("bicubic-align-corners", "the source coordinate of align_corners=True, j (in - 1) / (out - 1)",
     "src/stages/03_resize.cpp",
     "return scale * (static_cast<float>(j) + 0.5f) - 0.5f;",
     "return out > 1 ? static_cast<float>(j) * static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.0f;"),
    ("grid-int-sqrt", "int(sqrt(L)) accepted without checking that L is a perfect square",
     "src/stages/01_feature_input.cpp",
     "if (count == 0 || side * side != count)", "if (count == 0)"),
    ("ln-unbiased", "LayerNorm with the unbiased variance", "src/stages/04_layernorm.cpp",
     "var /= static_cast<double>(E);", "var /= static_cast<double>(E - 1);"),
    ("ln-eps-outside", "LayerNorm's eps outside the square root", "src/stages/04_layernorm.cpp",
     "1.0 / std::sqrt(var + static_cast<double>(eps))", "1.0 / (std::sqrt(var) + static_cast<double>(eps))"),
    ("ln-affine-swapped", "LayerNorm's weight and bias swapped", "src/stages/04_layernorm.cpp",
     "* row.rstd * gamma(c) + beta(c)", "* row.rstd * beta(c) + gamma(c)"),
    ("q-over-sqrt-e", "q scaled by 1/sqrt(E), the whole width, not one head's", "src/stages/06_attention.cpp",
     "const Matrix q_scaled = q / std::sqrt(static_cast<float>(Dh));",
     "const Matrix q_scaled = q / std::sqrt(static_cast<float>(E));"),
    ("k-scaled", "k scaled by 1/sqrt(Dh) instead of q (the same scores up to rounding)", "src/stages/06_attention.cpp",
     "const Matrix q_scaled = q / std::sqrt(static_cast<float>(Dh));  // PyTorch scales q, not the scores\n"
     "    for (std::size_t h = 0; h < H; ++h) {\n"
     "        auto channels = xt::range(h * Dh, (h + 1) * Dh);  // this head's channels\n"
     "        const Matrix q_h = xt::view(q_scaled, xt::all(), channels);  // (Q, Dh)\n"
     "        const Matrix k_h = xt::view(k, xt::all(), channels);         // (L, Dh)\n",
     "const Matrix q_scaled = q;\n"
     "    for (std::size_t h = 0; h < H; ++h) {\n"
     "        auto channels = xt::range(h * Dh, (h + 1) * Dh);  // this head's channels\n"
     "        const Matrix q_h = xt::view(q_scaled, xt::all(), channels);  // (Q, Dh)\n"
     "        const Matrix k_h = xt::view(k, xt::all(), channels) / std::sqrt(static_cast<float>(Dh));\n",
     "harmless"),
    ("q-unscaled", "q not scaled by 1/sqrt(Dh)", "src/stages/06_attention.cpp",
     "const Matrix q_scaled = q / std::sqrt(static_cast<float>(Dh));", "const Matrix q_scaled = q;"),
    ("q-over-dh", "q scaled by 1/Dh", "src/stages/06_attention.cpp",
     "const Matrix q_scaled = q / std::sqrt(static_cast<float>(Dh));",
     "const Matrix q_scaled = q / static_cast<float>(Dh);"),
    ("softmax-no-max", "softmax without subtracting the row maximum", "src/stages/06_attention.cpp",
     "for (std::size_t c = 0; c < cols; ++c) top = std::max(top, s(r, c));", "top = 0.0f;"),
    ("mask-sign", "the float mask subtracted instead of added", "src/stages/06_attention.cpp",
     "Matrix(scores + *mask)", "Matrix(scores - *mask)"),
    ("position-on-values", "the position table added to the values too", "src/stages/07_adapter.cpp",
     "const Matrix v = linear(X, w.in_proj.w_v, w.in_proj.b_v);",
     "const Matrix v = linear(key_in, w.in_proj.w_v, w.in_proj.b_v);"),
    ("resized-on-queries", "the resized (key) table on the queries", "src/stages/07_adapter.cpp",
     "const Matrix query_in = ln_q + pos_q;", "const Matrix query_in = ln_q + pos_k;"),
    ("heads-e-64", "heads E / 64 instead of E / 128", "src/stages/07_adapter.cpp",
     "c.num_heads = num_heads ? num_heads : E / 128;", "c.num_heads = num_heads ? num_heads : E / 64;"),
    ("proj-transposed", "proj applied as an nn.Linear weight (x proj^T)", "src/stages/08_tower_tail.cpp",
     "matmul(ln_post, tail.proj);", "matmul(ln_post, Matrix(xt::transpose(tail.proj)));"),
    ("in-proj-kv-swapped", "in_proj's k and v blocks swapped", "src/stages/05_projections.cpp",
     "std::size_t in_proj_offset(std::size_t part, std::size_t E) { return part * E; }",
     "std::size_t in_proj_offset(std::size_t part, std::size_t E) { return (part == 0 ? 0 : 3 - part) * E; }"),
    ("kv-square-identity", "a square kv_proj weight treated as the identity", "src/stages/05_projections.cpp",
     "if (w_kv.size() == 0) return x;", "if (w_kv.size() == 0 || w_kv.shape(0) == w_kv.shape(1)) return x;"),
    ("fusion-one-late", "image features spliced one position late", "src/stages/09_fusion.cpp",
     "xt::range(a + 1, b)", "xt::range(a + 2, b + 1)"),
    ("bf16-low-half", "bf16 bits put in the low half of the float32", "src/io/safetensors.cpp",
     "const std::uint32_t word = static_cast<std::uint32_t>(bits) << 16;",
     "const std::uint32_t word = static_cast<std::uint32_t>(bits);"),
    ("f16-subnormal", "f16 subnormals with an exponent one too large", "src/io/safetensors.cpp",
     "        exponent = 113;", "        exponent = 114;"),
    ("offsets-check", "safetensors data offsets not checked against the data's size", "src/io/safetensors.cpp",
     "if (begin > end || end > data_size)", "if (begin > end)"),
    ("mapped-bias-unsplit", "mapped weights: every part of in_proj takes the bias's first E values", "src/io/checkpoint.cpp",
     "*biases[part] = take_values(m, in_b, in_proj_offset(part, E), E);", "*biases[part] = take_values(m, in_b, 0, E);"),
    ("npy-fortran", "written .npy headers say Fortran order", "src/io/npy.cpp",
     "'fortran_order': False", "'fortran_order': True"),
    # The second model (stage 11) and non-square grids.
    ("minicpmv-mask-inverted", "MiniCPM-V's key padding mask inverted (true on the real patches)",
     "src/stages/11_minicpmv.cpp", "for (std::size_t l = image.cells(); l < n_keys; ++l) padding(l) = true;",
     "for (std::size_t l = 0; l < image.cells(); ++l) padding(l) = true;"),
    ("minicpmv-slice-flat", "MiniCPM-V's table taken as the first h*w rows of the large table, not [:h, :w]",
     "src/stages/11_minicpmv.cpp", "xt::row(slice, i * image.w + j) = xt::row(table, i * table_grid.w + j);",
     "xt::row(slice, i * image.w + j) = xt::row(table, i * image.w + j);"),
    ("minicpmv-query-table", "a position table added to MiniCPM-V's queries (as Qwen-VL does)",
     "src/stages/11_minicpmv.cpp", "const Matrix q = linear(ln_q, w.in_proj.w_q, w.in_proj.b_q);",
     "const Matrix q = linear(Matrix(ln_q + sincos_2d(E, Grid{1, Q})), w.in_proj.w_q, w.in_proj.b_q);"),
    ("resize-hw-swapped", "a non-square key grid resized with h and w exchanged", "src/stages/03_resize.cpp",
     "const Taps ty = taps_for(grid_in, out.h, oy);", "const Taps ty = taps_for(grid_in, out.w, oy);"),
    # Training: the backward passes and the optimiser.
    ("ln-backward-no-variance-term", "LayerNorm's backward without the variance's share", "src/stages/04_layernorm.cpp",
     "(g[c] - mean_g - x_hat[c] * mean_g_x_hat) * rstd", "(g[c] - mean_g) * rstd"),
    ("softmax-backward-no-sum", "softmax's backward without the weighted sum", "src/stages/06_attention.cpp",
     "weights(r, c) * (d_weights(r, c) - weighted)", "weights(r, c) * d_weights(r, c)"),
    ("attention-backward-unscaled", "attention's backward: dq without the 1/sqrt(Dh)", "src/stages/06_attention.cpp",
     "const Matrix dq_h = matmul(d_s_h, k_h) * scale;", "const Matrix dq_h = matmul(d_s_h, k_h);"),
    ("adamw-no-bias-correction", "AdamW without its bias corrections", "src/stages/10_training.cpp",
     "value -= lr / correction1 * first / (std::sqrt(second) / std::sqrt(correction2) + config.eps);",
     "value -= lr * first / (std::sqrt(second) + config.eps);"),
    ("reconstruct-unnormalised", "the ablation's task: patches not normalised", "src/stages/10_training.cpp",
     "b.x(n, p, c) = static_cast<float>((image(p, c) - mean) / std::sqrt(variance));",
     "b.x(n, p, c) = static_cast<float>(image(p, c) - mean);"),
    ("readout-backward-unscaled", "the read-out's backward: each output's gradient summed over its patches, not weighted",
     "src/stages/10_training.cpp",
     "const Matrix readout_t = xt::transpose(readout);  // (Q, G^2)",
     "const Matrix readout_t = xt::transpose(xt::ceil(xt::abs(readout)));  // (Q, G^2)"),
    # The fast path's own copies of the numerics.
    ("fast-q-unscaled", "fast path: q not scaled by 1/sqrt(Dh)", "src/fast/attention.cpp",
     "scaled[c] = row[c] / scale;", "scaled[c] = row[c];"),
    ("fast-resize-mirrored", "fast path: the bicubic weights taken at 1 - t (mirrored taps)", "src/fast/resize.cpp",
     "taps[j].weight = cubic_weights(s - first);", "taps[j].weight = cubic_weights(1.0f - (s - first));"),
    ("fast-workspace-not-resized", "fast path: a kept workspace not remade when the sizes change", "src/fast/gemm.hpp",
     "if (buffer.shape() != shape) buffer = Tensor(shape);", "if (buffer.size() == 0) buffer = Tensor(shape);"),
    ("fast-softmax-no-max", "fast path: softmax without the row maximum", "src/fast/attention.cpp",
     "const float top = lane_max(out, cols);", "const float top = 0.0f;"),
    ("fast-max-first-lane", "fast path: the row maximum taken from the first of its 64 partial maxima",
     "src/fast/lanes.hpp", "    for (float v : lane) top = v > top ? v : top;", "    top = lane[0];"),
    ("fast-mask-sign", "fast path: the float mask subtracted", "src/fast/attention.cpp",
     "for (std::size_t c = 0; c < cols; ++c) out[c] += m[c];", "for (std::size_t c = 0; c < cols; ++c) out[c] -= m[c];"),
    ("fast-exp-taylor", "fast path: the exponential's r^6 term dropped", "src/fast/attention.cpp",
     "mul_add(1.0f / 720, r, 1.0f / 120)", "(1.0f / 120)"),
    ("fast-ln-unbiased", "fast path: LayerNorm with the unbiased variance", "src/fast/layernorm.cpp",
     "[mean](float v) { return (v - mean) * (v - mean); }) / static_cast<double>(E);",
     "[mean](float v) { return (v - mean) * (v - mean); }) / static_cast<double>(E - 1);"),
    ("fast-ln-eps-outside", "fast path: LayerNorm's eps outside the square root", "src/fast/layernorm.cpp",
     "1.0 / std::sqrt(var + static_cast<double>(eps))", "1.0 / (std::sqrt(var) + static_cast<double>(eps))"),
    # Training: a mask, the optimiser, the checkpoint, the resume
    ("train-mask-dropped", "train_step drops the attention mask", "src/stages/10_training.cpp",
     "const Tensor3 out = adapter_forward(w, c, x, mask, &forward);",
     "const Tensor3 out = adapter_forward(w, c, x, nullptr, &forward);"),
    ("min-lr-ignored", "the cosine decays to 0, not to the minimum learning rate", "src/stages/10_training.cpp",
     "return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + std::cos(pi * progress));",
     "return c.lr * 0.5 * (1.0 + std::cos(pi * progress));"),
    ("adamw-eps-torch-default", "AdamW's eps torch's default 1e-8, not the paper's 1e-6", "src/stages/10_training.hpp",
     "double eps = 1e-6;", "double eps = 1e-8;"),
    ("resume-min-lr-default", "--resume takes the minimum learning rate's default, not the checkpoint's",
     "src/cli/train.cpp", "            settings[key] = saved;",
     "            settings[key] = key == \"min_lr\" ? number_text(std::stod(files.metadata(\"lr\")) / 200.0) : saved;"),
    ("resume-seed-unchecked", "--resume takes a different --seed without refusing it", "src/cli/train.cpp",
     "if (given(args, flag) && canonical(args, flag) != saved)",
     "if (given(args, flag) && flag != \"--seed\" && canonical(args, flag) != saved)"),
    ("resume-log-uncut", "--resume appends to loss.csv without cutting a killed run's rows", "src/cli/train.cpp",
     "const std::size_t rows = cut_loss_log(log_path, optimiser.step);", "const std::size_t rows = optimiser.step;"),
    ("train-partials-kept", "a killed run's temporary files are left in the folder", "src/cli/train.cpp",
     "    remove_partial_files(dir);  // a killed run's", ""),
    ("train-no-force-needed", "a new run overwrites a non-empty folder without --force", "src/cli/train.cpp",
     "!std::filesystem::is_empty(dir, ec) && !args.flags.at(\"--force\")", "false"),
    ("train-sigterm-default", "SIGTERM kills train at once (no handler): no checkpoint of the step, no 130",
     "src/cli/train.cpp", "        sigaction(SIGTERM, &ask, &old_term);", ""),
    # Readers' formats
    ("npy-fortran-as-c", "a Fortran-order .npy read as if it were C order", "src/io/npy.cpp",
     "    if (!a.fortran_order || a.shape.size() < 2) return out;\n    return xt::xarray<float>(xt::transpose(out));",
     "    return xt::xarray<float>(xt::reshape_view(out, a.shape));"),
    ("npy-big-endian-read", "a big-endian '>f4' .npy read as little-endian", "src/io/npy.cpp",
     "    if (a.descr == \"<f4\") element = 4;", "    if (a.descr == \"<f4\" || a.descr == \">f4\") element = 4;"),
    ("index-unlisted-read", "a sharded checkpoint's tensors read from every shard, not only where the index says",
     "src/io/safetensors.cpp", "add_safetensors((folder / shard).string(), &listed[shard]);",
     "add_safetensors((folder / shard).string(), nullptr);"),
    # compare
    ("compare-names-stage-before", "compare names the stage before the first that differs", "src/cli/compare.cpp",
     "            first_bad = stage;", "            first_bad = seen.empty() ? stage : seen.back();"),
    ("compare-padding-compared", "compare compares MiniCPM-V's padding keys", "src/cli/compare.cpp",
     "if (c.model == Model::minicpm_v && zero_padding(stage, grids, theirs) + zero_padding(stage, grids, mine))",
     "if (false)"),
    ("compare-bool-refused", "compare refuses a boolean key_padding_mask dump", "src/cli/compare.cpp",
     "if (is_bool && stage != \"key_padding_mask\")", "if (is_bool)"),
    # the Python module
    ("python-mask-as-numbers", "Python: a boolean mask read as the numbers 0 and 1", "src/python/qwenvl_module.cpp",
     "        if (array.dtype().kind() == 'b') {", "        if (false) {"),
    ("python-strides-ignored", "Python: an array's memory copied in its own order, not row-major",
     "src/python/qwenvl_module.cpp",
     "using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;",
     "using FloatArray = py::array_t<float, py::array::forcecast>;"),
    ("python-complex-cast", "Python: a complex array cast to float (numpy drops the imaginary part)",
     "src/python/qwenvl_module.cpp", "if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f')",
     "if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f' && kind != 'c')"),
    # the fast path on every grid shape
    ("fast-keys-square-guess", "fast path: the key grid taken as square whatever grid is given (L == Q hides it)",
     "src/fast/adapter.cpp", "    keys = key_grid(n_keys, keys, \"fast::prepare_query_side: the patch count L\");",
     "    keys = key_grid(n_keys, Grid{}, \"fast::prepare_query_side: the patch count L\");"),
    ("fast-resize-hw", "fast path: the resize's rows and columns exchanged on a non-square grid", "src/fast/resize.cpp",
     "axis_taps(grid_in, out.h), cols = axis_taps(grid_in, out.w);",
     "axis_taps(grid_in, out.w), cols = axis_taps(grid_in, out.h);"),
    ("fast-minicpmv-trace-unmasked", "fast path: MiniCPM-V's traced run attends to the padding keys",
     "src/fast/adapter.cpp", "const Tensor3 out_n = adapter_forward(w, c, side, image, &mask, &one);",
     "const Tensor3 out_n = adapter_forward(w, c, side, image, nullptr, &one);"),
    ("train-nan-continues", "train goes on, and saves, after the loss became NaN", "src/cli/train.cpp",
     "if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {", "if (false) {"),
    ("heads-not-recorded", "run and info ignore the head count a checkpoint of train records", "src/cli/common.cpp",
     "    if (given) return given;", "    return given;"),
    ("compare-padding-4d-only", "compare clears the padding's columns of per-head weights only, not of head-averaged ones",
     "src/cli/compare.cpp", "const bool keys_are_columns = stage == \"scores\" || stage == \"attn_weights\";",
     "const bool keys_are_columns = (stage == \"scores\" || stage == \"attn_weights\") && t.dimension() == 4;"),
]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, **kw)


def build():
    """Everything the tests use (the library, the programs, the tests, the Python module, the exercise checker)."""
    r = run(["cmake", "--build", BUILD, "-j2"])
    return r.returncode == 0, r.stdout + r.stderr


# The readable path's stages in the order it computes them (core/trace.hpp).
STAGES = ["pos_q", "pos_k", "ln_q", "query_in", "q", "kv_proj", "ln_kv", "key_in", "k", "v", "scores", "attn_weights",
          "attended", "out", "ln_post", "proj"]
REFERENCE = os.path.join(BUILD, "fullsize-reference")
MUTATED = os.path.join(BUILD, "fullsize-mutated")


def readable_trace(folder):
    """The readable path on one full-size image (qwenvl-bench --readable-trace): every stage in `folder`."""
    os.makedirs(folder, exist_ok=True)
    r = run([os.path.join(BUILD, "qwenvl-bench"), "--readable-trace", folder])
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def fullsize_error():
    """The mutated build's readable path against the unmutated one's, on the same full-size image: the largest
    difference of the output, its largest value, and the first stage whose difference exceeds 1e-3 of its largest
    value (where the mistake shows first)."""
    import numpy as np
    ok, log = readable_trace(MUTATED)
    if not ok:
        return "the full-size run fails: " + log.splitlines()[-1][:100]
    first, out = None, None
    for stage in STAGES:
        want = np.load(os.path.join(REFERENCE, stage + ".npy"))
        got = np.load(os.path.join(MUTATED, stage + ".npy"))
        diff = np.abs(got.astype(np.float64) - want).max() if got.shape == want.shape else np.inf
        if first is None and not diff <= 1e-3 * np.abs(want).max():
            first = stage
        if stage == "proj":
            out = (diff, np.abs(want).max())
    return "%.3g (largest value %.3g)%s" % (out[0], out[1], ", first at `%s`" % first if first else ", no stage beyond 1e-3")


def failed_tests():
    r = run(["ctest", "--test-dir", BUILD, "-LE", "fullsize", "-j2"])
    return sorted(set(re.findall(r"^\s*\d+ - (.*?) \((?:Failed|Exception|SEGFAULT|Subprocess aborted|Timeout)\)\s*$",
                                 r.stdout, re.M))), r.returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="run only these mutation ids")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--fullsize", action="store_true",
                        help="also measure each mutation's error at Qwen-VL's size (qwenvl-bench --readable-trace, ~40 s each)")
    args = parser.parse_args()
    if args.list:
        for m in MUTATIONS:
            print("%-22s %s (%s)" % (m[0], m[1], m[2]))
        return 0
    chosen = [m for m in MUTATIONS if not args.only or m[0] in args.only]
    for mid, _, path, good, bad, *_ in chosen:  # every mutation must match its file exactly once, before anything runs
        count = open(os.path.join(REPO, path)).read().count(good)
        if count != 1:
            print("mutation %s: the text to break occurs %d times in %s" % (mid, count, path))
            return 2
    r = run(["cmake", "-S", ".", "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release", "-DQWENVL_NATIVE=ON"])
    if r.returncode != 0:
        print(r.stdout + r.stderr)
        return 2
    ok, log = build()
    if not ok or failed_tests()[1] != 0:
        print("the unmodified tree does not build or pass its tests in %s:\n%s" % (BUILD, log[-2000:]))
        return 2
    if args.fullsize:
        ok, log = readable_trace(REFERENCE)
        if not ok:
            print("the unmodified tree's full-size run failed:\n" + log)
            return 2
    rows, survived = [], []
    for mid, what, path, good, bad, *kind in chosen:
        harmless = kind == ["harmless"]
        full = os.path.join(REPO, path)
        original = open(full).read()
        try:
            open(full, "w").write(original.replace(good, bad))
            ok, log = build()
            failures, _ = failed_tests() if ok else (["(does not compile)"], 1)
            error = fullsize_error() if args.fullsize and ok else ""
        finally:
            open(full, "w").write(original)
        if harmless:  # no test of a value may reject it (the docs' verbatim code excerpts will notice the text)
            by_value = [f for f in failures if not f.startswith("docs:")]
            caught = "not a bug: " + (", ".join("`%s`" % f for f in by_value) + " FAILED" if by_value else
                                      "no test of a value fails" + (" (only `docs:` tests)" if failures else ""))
            unexpected = bool(by_value)
        else:
            caught = ", ".join("`%s`" % f for f in failures) if failures else "SURVIVED"
            unexpected = not failures
        if unexpected:
            survived.append(mid)
        rows.append("| `%s` | %s | `%s` | %d | %s |%s" % (mid, what, path, len(failures), caught,
                                                          " %s |" % error if args.fullsize else ""))
        print("%-22s %3d failing tests%s%s" % (mid, len(failures), "  UNEXPECTED" if unexpected else "",
                                              "; at full size: " + error if error else ""), flush=True)
    build()  # the restored tree, so that the folder ends as it began
    header = "| mutation | the bug | file | tests failing | which |" + (" error at Qwen-VL's size |" if args.fullsize else "")
    report = [header, "|" + "---|" * (header.count("|") - 1)] + rows
    os.makedirs(BUILD, exist_ok=True)
    with open(os.path.join(BUILD, "report.md"), "w") as f:
        f.write("\n".join(report) + "\n")
    print("\n%d mutations, %d as expected (bugs caught, harmless changes passed), %d not%s; report in "
          "build/mutations/report.md" % (len(chosen), len(chosen) - len(survived), len(survived),
                                          (": " + ", ".join(survived)) if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
