#!/usr/bin/python3
"""`import qwenvl` against the golden fixtures (docs/python.md), run by ctest:

    PYTHONPATH=build/release/python /usr/bin/python3 tests/python/test_qwenvl.py -v

Every readable stage, both whole forward passes, the backward passes, the files and ten AdamW steps, through the
Python module, against the values PyTorch wrote (data/fixtures/, data/fusion/, data/training/); and the module's
errors: a shape error is a ValueError carrying the C++ stage's own message, a bad file a RuntimeError naming it.
"""

import glob
import json
import os
import subprocess
import tempfile
import unittest

import numpy as np

import qwenvl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, "data")
FIXTURES = [qwenvl.load_fixture(p) for p in sorted(glob.glob(os.path.join(DATA, "fixtures", "*.json")))]
MODEL_FIXTURES = [qwenvl.load_fixture(p) for p in sorted(glob.glob(os.path.join(DATA, "fixtures", "models", "*.json")))]


def close(test, got, want, atol, rtol, what):
    """|got - want| <= atol + rtol |want| everywhere (torch.allclose's rule, want the expected value)."""
    got, want = np.asarray(got), np.asarray(want)
    test.assertEqual(got.shape, want.shape, what)
    err = np.abs(got.astype(np.float64) - want)
    bad = ~(err <= atol + rtol * np.abs(want))
    test.assertFalse(bad.any(), "%s: %d of %d values differ, max |a-b| = %.3g" % (what, bad.sum(), bad.size, err.max()))


class Models(unittest.TestCase):
    """MiniCPM-V's resampler and Qwen-VL's non-square grids (data/fixtures/models/, docs/models.md)."""

    def test_both_models_every_intermediate(self):
        self.assertGreaterEqual(len(MODEL_FIXTURES), 5)
        for f in MODEL_FIXTURES:
            with self.subTest(fixture=f["name"]):
                c = f["config"]
                if c.model == qwenvl.Model.minicpm_v:
                    out, trace = qwenvl.minicpmv_forward(f["weights"], c, f["x"], f["grids"], trace=True,
                                                         max_grid=f["max_grid"])
                else:
                    out, trace = qwenvl.adapter_forward(f["weights"], c, f["x"], trace=True, grid=f["grids"][0])
                y, tail_trace = qwenvl.tower_tail_forward(f["tail"], out, c.eps, trace=True)
                trace.update(tail_trace)
                self.assertEqual(sorted(trace), sorted(f["expected"]))
                for name, want in f["expected"].items():
                    close(self, trace[name], want, f["atol"], f["rtol"], name)

    def test_a_wrong_grid_is_a_value_error(self):
        f = next(f for f in MODEL_FIXTURES if f["config"].model == qwenvl.Model.minicpm_v)
        with self.assertRaisesRegex(ValueError, "does not fit"):
            qwenvl.minicpmv_forward(f["weights"], f["config"], f["x"], [(100, 100)] * f["x"].shape[0])


class Stages(unittest.TestCase):
    def test_fixtures_are_all_there(self):
        self.assertGreaterEqual(len(FIXTURES), 8)

    def test_each_stage_on_pytorchs_inputs(self):
        for f in FIXTURES:
            with self.subTest(fixture=f["name"]):
                e, w, c, tol = f["expected"], f["weights"], f["config"], (f["atol"], f["rtol"])
                close(self, qwenvl.sincos_2d(c.embed_dim, c.grid_q), e["pos_q"], *tol, "pos_q")
                close(self, qwenvl.key_position_table(e["pos_q"], f["x"].shape[1]), e["pos_k"], *tol, "pos_k")
                close(self, qwenvl.layer_norm(w.query, w.ln_q_weight, w.ln_q_bias, c.eps), e["ln_q"], *tol, "ln_q")
                w_q, w_k, w_v = np.split(w.in_proj_weight, 3)
                b_q, b_k, b_v = np.split(w.in_proj_bias, 3)
                close(self, qwenvl.linear(e["query_in"], w_q, b_q), e["q"], *tol, "q")
                for n in range(f["x"].shape[0]):
                    close(self, qwenvl.kv_projection(f["x"][n], w.kv_proj), e["kv_proj"][n], *tol, "kv_proj")
                    close(self, qwenvl.layer_norm(e["kv_proj"][n], w.ln_kv_weight, w.ln_kv_bias, c.eps), e["ln_kv"][n],
                          *tol, "ln_kv")
                    close(self, qwenvl.linear(e["key_in"][n], w_k, b_k), e["k"][n], *tol, "k")
                    close(self, qwenvl.linear(e["ln_kv"][n], w_v, b_v), e["v"][n], *tol, "v")
                    a = qwenvl.multi_head_attention(e["q"], e["k"][n], e["v"][n], c.num_heads, f["mask"])
                    close(self, a["scores"], e["scores"][n], *tol, "scores")
                    close(self, a["weights"], e["attn_weights"][n], *tol, "attn_weights")
                    close(self, a["attended"], e["attended"][n], *tol, "attended")
                    for h in range(c.num_heads):
                        close(self, qwenvl.softmax_rows(e["scores"][n][h], f["mask"]), e["attn_weights"][n][h], *tol,
                              "softmax_rows")
                    close(self, qwenvl.linear(e["attended"][n], w.out_proj_weight, w.out_proj_bias), e["out"][n], *tol,
                          "out")
                close(self, qwenvl.tower_tail_forward(f["tail"], e["out"], c.eps), e["proj"], *tol, "proj")

    def test_both_whole_forward_passes_record_every_intermediate(self):
        for f in FIXTURES:
            with self.subTest(fixture=f["name"]):
                tol = (f["atol"], f["rtol"])
                out, trace = qwenvl.adapter_forward(f["weights"], f["config"], f["x"], f["mask"], trace=True)
                y, tail_trace = qwenvl.tower_tail_forward(f["tail"], out, f["config"].eps, trace=True)
                trace.update(tail_trace)
                y_fast, fast_trace = qwenvl.fast_forward(f["weights"], f["config"], f["x"], f["tail"], f["mask"],
                                                         trace=True)
                self.assertEqual(sorted(trace), sorted(f["expected"]))  # the same names (the file's order is PyTorch's)
                self.assertEqual(list(fast_trace), list(trace))  # and the two paths record them in the same order
                for name, want in f["expected"].items():
                    close(self, trace[name], want, *tol, "readable " + name)
                    close(self, fast_trace[name], want, *tol, "fast " + name)
                close(self, y_fast, f["expected"]["proj"], *tol, "fast output")

    def test_fusion_equals_pytorchs(self):
        ids = json.load(open(os.path.join(DATA, "fusion", "ids.json")))
        fused = qwenvl.fuse_image_features(ids, qwenvl.read_npy(os.path.join(DATA, "fusion", "embeddings.npy")),
                                           qwenvl.read_npy(os.path.join(DATA, "fusion", "image_features.npy")))
        np.testing.assert_array_equal(fused, qwenvl.read_npy(os.path.join(DATA, "fusion", "expected.npy")))
        self.assertEqual(len(qwenvl.image_spans(ids)), 2)


class Backward(unittest.TestCase):
    ATOL, RTOL = 1e-5, 1e-4  # tests/test_gradients.cpp's

    def test_each_backward_on_autograds_gradients(self):
        for f in FIXTURES:
            with self.subTest(fixture=f["name"]):
                e, g, w, c = f["expected"], f["gradients"], f["weights"], f["config"]
                tol = (self.ATOL, self.RTOL)
                dq = 0
                for n in range(f["x"].shape[0]):
                    ln = qwenvl.layer_norm_backward(e["kv_proj"][n], w.ln_kv_weight, g["ln_kv"][n], c.eps)
                    close(self, ln["dx"], g["kv_proj"][n], *tol, "dL/d kv_proj")
                    for h in range(c.num_heads):
                        close(self, qwenvl.softmax_rows_backward(e["attn_weights"][n][h], g["attn_weights"][n][h]),
                              g["scores"][n][h], *tol, "dL/d scores")
                    a = qwenvl.multi_head_attention_backward(e["q"], e["k"][n], e["v"][n], e["attn_weights"][n],
                                                             g["attended"][n], c.num_heads)
                    close(self, a["dk"], g["k"][n], *tol, "dL/d k")
                    close(self, a["dv"], g["v"][n], *tol, "dL/d v")
                    dq = dq + a["dq"]
                close(self, dq, g["q"], *tol, "dL/d q")

    def test_whole_backward_equals_autograd(self):
        for f in FIXTURES:
            with self.subTest(fixture=f["name"]):
                tol = (self.ATOL, self.RTOL)
                out, trace = qwenvl.adapter_forward(f["weights"], f["config"], f["x"], f["mask"], trace=True)
                tail = qwenvl.tower_tail_backward(f["tail"], out, f["gradients"]["proj"], f["config"].eps)
                params, grads = qwenvl.adapter_backward(f["weights"], f["config"], f["x"], trace, tail["d_out"])
                for name in ("out", "attended", "q", "k", "v", "ln_kv", "kv_proj", "x"):
                    want = f["gradients"][name]
                    close(self, tail["d_out"] if name == "out" else grads[name], want, *tol, "dL/d " + name)
                for name, want in f["param_gradients"].items():
                    got = tail[name] if name in tail else params[name]
                    if name == "attn_pool.attn.in_proj_bias":  # b_k's gradient is exactly 0 in exact arithmetic
                        E = f["config"].embed_dim
                        got, want = got.copy(), want.copy()
                        got[E:2 * E] = want[E:2 * E] = 0
                    close(self, got, want, *tol, "dL/d " + name)


class Errors(unittest.TestCase):
    def test_shape_errors_are_value_errors_with_the_stages_message(self):
        with self.assertRaisesRegex(ValueError, r"^layer_norm: gamma has shape \(3,\), expected \(8,\)$"):
            qwenvl.layer_norm(np.ones((2, 8)), np.ones(3), np.zeros(8))
        with self.assertRaisesRegex(ValueError, r"^layer_norm: x has shape \(8,\), expected 2 axes$"):
            qwenvl.layer_norm(np.ones(8), np.ones(8), np.zeros(8))
        with self.assertRaisesRegex(ValueError, r"^linear: weight has shape \(4, 3\), expected \(\*, 5\)$"):
            qwenvl.linear(np.ones((2, 5)), np.ones((4, 3)), np.zeros(4))
        with self.assertRaisesRegex(ValueError, "1000 is not a perfect square"):
            qwenvl.grid_side(1000, "L")
        with self.assertRaisesRegex(ValueError, "num_heads 3 does not divide the width 8"):
            qwenvl.multi_head_attention(np.ones((4, 8)), np.ones((9, 8)), np.ones((9, 8)), 3)
        with self.assertRaisesRegex(ValueError, "NaN or infinite"):
            qwenvl.as_feature_batch(np.full((4, 3), np.nan))
        f = qwenvl.load_fixture(os.path.join(DATA, "fixtures", "batch3.json"))   # its own copy: the weights change below
        x = f["x"].copy()
        x[0, 0, 0] = np.inf
        for fn in (qwenvl.adapter_forward, qwenvl.fast_forward):
            with self.assertRaisesRegex(ValueError, "^%s: x holds NaN or infinite values" % fn.__name__):
                fn(f["weights"], f["config"], x)
        w = f["weights"]
        w.query = np.ones((1, f["config"].embed_dim), np.float32)   # would broadcast if unchecked
        with self.assertRaisesRegex(ValueError, r"^adapter_forward: query has shape \(1, 8\), expected \(4, 8\)$"):
            qwenvl.adapter_forward(w, f["config"], f["x"])

    def test_bad_files_are_runtime_errors_naming_the_file(self):
        with tempfile.TemporaryDirectory() as tmp:  # under TMPDIR: the build folder when ctest runs it
            bad = os.path.join(tmp, "bad.npy")
            with open(bad, "wb") as out:
                out.write(b"not an npy file")
            with self.assertRaisesRegex(RuntimeError, "^" + bad):
                qwenvl.read_npy(bad)
            with self.assertRaisesRegex(RuntimeError, "missing.safetensors"):
                qwenvl.load_adapter(os.path.join(tmp, "missing.safetensors"))

    def test_npy_round_trip_and_float64_input(self):
        with tempfile.TemporaryDirectory() as tmp:
            values = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 7  # converted to float32
            path = os.path.join(tmp, "v.npy")
            qwenvl.write_npy(path, values)
            np.testing.assert_array_equal(qwenvl.read_npy(path), values.astype(np.float32))
            np.testing.assert_array_equal(np.load(path), values.astype(np.float32))


class Files(unittest.TestCase):
    def test_a_sharded_bf16_checkpoint_runs_as_the_command_line_does(self):
        case = os.path.join(DATA, "cli", "batch3")
        how = json.load(open(os.path.join(case, "case.json")))
        weights, config, tail = qwenvl.load_adapter(os.path.join(case, "model.safetensors.index.json"),
                                                    num_heads=how.get("heads", 0))
        self.assertIsNotNone(tail)
        y = qwenvl.fast_forward(weights, config, qwenvl.read_npy(os.path.join(case, "x.npy")), tail)
        close(self, y, qwenvl.read_npy(os.path.join(case, "expected.npy")), how["tolerance"]["atol"],
              how["tolerance"]["rtol"], "output")


CLI = os.environ.get("QWENVL_CLI", os.path.join(REPO, "build", "release", "qwenvl-adapter"))

# Every dtype docs/python.md accepts for an array of numbers (converted to float32), and the values each holds exactly.
ACCEPTED_DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                   np.uint32, np.uint64]


def layouts(values):
    """The same values in other memory layouts: C order, Fortran order, reversed strides, a strided view."""
    reversed_ = np.ascontiguousarray(values[::-1])[::-1]              # negative stride on axis 0
    padded = np.zeros(values.shape[:-1] + (2 * values.shape[-1],), values.dtype)
    padded[..., ::2] = values                                         # every other column: stride 2 on the last axis
    return {"C": values, "Fortran": np.asfortranarray(values), "reversed": reversed_, "strided": padded[..., ::2]}


class AgainstTheCommandLine(unittest.TestCase):
    """The module and `qwenvl-adapter run` on the same random inputs give the same bytes, whatever the arrays'
    dtype or strides and whatever the mask's kind; seeded, each case's seed in its failure message."""

    def run_cli(self, case, how, x, mask, grids, readable, tmp):
        x_path, out_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
        np.save(x_path, x)
        argv = [CLI, "run", "--input", x_path, "--output", out_path, "--heads", str(how["heads"])]
        for w in how["weights"]:
            argv += ["--weights", os.path.join(case, w)]
        if grids:
            argv += ["--grids", ",".join("%dx%d" % g for g in grids)]
        if mask is not None:
            np.save(os.path.join(tmp, "m.npy"), mask)
            argv += ["--mask", os.path.join(tmp, "m.npy")]
        if readable:
            argv.append("--readable")
        done = subprocess.run(argv, capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        return np.load(out_path)

    def module_forward(self, weights, config, tail, x, mask, grids, readable):
        if config.model == qwenvl.Model.minicpm_v:
            return qwenvl.tower_tail_forward(tail, qwenvl.minicpmv_forward(weights, config, x, grids), config.eps)
        if readable or grids:
            out = qwenvl.adapter_forward(weights, config, x, mask, grid=grids[0] if grids else (0, 0))
            return qwenvl.tower_tail_forward(tail, out, config.eps)
        return qwenvl.fast_forward(weights, config, x, tail, mask)

    def test_random_inputs_every_dtype_layout_and_mask_kind(self):
        cases = sorted(d for d in glob.glob(os.path.join(DATA, "cli", "*")) if os.path.isdir(d))
        self.assertGreaterEqual(len(cases), 8)
        for case in cases:
            with open(os.path.join(case, "case.json")) as f:
                how = json.load(f)
            if how["adapter_only"]:
                continue
            weights, config, tail = qwenvl.load_adapter([os.path.join(case, w) for w in how["weights"]],
                                                        num_heads=how["heads"])
            L = np.load(os.path.join(case, how["input"])).shape[-2]
            grids = [tuple(int(v) for v in g.split("x")) for g in how["grids"].split(",")] if how.get("grids") else []
            for seed in range(3):
                rng = np.random.default_rng(1000 * len(case) + seed)
                n = len(grids) if config.model == qwenvl.Model.minicpm_v else int(rng.integers(1, 6))
                if grids and config.model == qwenvl.Model.qwen_vl:
                    grids = grids[:1] * n
                # integers from -8 to 8: every accepted dtype holds them exactly (unsigned ones: 0 to 8)
                x = rng.integers(-8, 9, size=(n, L, config.kv_dim)).astype(np.float32) / 4
                mask = None
                kind = ("none", "bool", "float")[seed] if config.model == qwenvl.Model.qwen_vl else "none"
                if kind != "none":
                    masked = rng.random((config.n_queries, L)) < 0.3
                    masked[:, int(rng.integers(0, L))] = False     # every query keeps a key
                    mask = masked if kind == "bool" else np.where(masked, -np.inf, 0).astype(np.float32)
                where = "case %s seed %d (N %d, mask %s)" % (os.path.basename(case), seed, n, kind)
                # the module has the fast path for Qwen-VL's square grids only (fast_forward); the readable one always
                paths = (True,) if grids else (False, True)
                with tempfile.TemporaryDirectory() as tmp:
                    for readable in paths:
                        want = self.run_cli(case, how, x, mask, grids, readable, tmp)
                        got = self.module_forward(weights, config, tail, x, mask, grids, readable)
                        np.testing.assert_array_equal(got, want, where + (" readable" if readable else " fast"))
                want = self.module_forward(weights, config, tail, x, mask, grids, False)
                for layout, values in layouts(x).items():
                    got = self.module_forward(weights, config, tail, values, mask, grids, False)
                    np.testing.assert_array_equal(got, want, where + " layout " + layout)
                for dtype in ACCEPTED_DTYPES:
                    exact = x * 4 if np.issubdtype(dtype, np.integer) else x   # integers: x * 4 is -32..32
                    if np.issubdtype(dtype, np.unsignedinteger):
                        exact = np.abs(exact)
                    want = self.module_forward(weights, config, tail, exact.astype(np.float32), mask, grids, False)
                    got = self.module_forward(weights, config, tail, exact.astype(dtype), mask, grids, False)
                    np.testing.assert_array_equal(got, want, where + " dtype " + np.dtype(dtype).name)

    def test_a_boolean_mask_is_true_where_masked_as_in_pytorch(self):
        scores = np.zeros((2, 3))
        masked = np.array([[False, True, False], [True, True, False]])
        np.testing.assert_array_equal(qwenvl.softmax_rows(scores, masked), [[0.5, 0, 0.5], [0, 0, 1]])
        np.testing.assert_array_equal(qwenvl.softmax_rows(scores, masked),
                                      qwenvl.softmax_rows(scores, np.where(masked, -np.inf, 0)))
        f = next(f for f in FIXTURES if f["name"] == "bool_mask")
        as_bool = np.isneginf(f["mask"])
        for fn in (qwenvl.adapter_forward, qwenvl.fast_forward):
            np.testing.assert_array_equal(fn(f["weights"], f["config"], f["x"], mask=as_bool),
                                          fn(f["weights"], f["config"], f["x"], mask=f["mask"]), fn.__name__)
        q = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
        k = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
        got = qwenvl.multi_head_attention(q, k, k, 2, masked)["weights"]
        np.testing.assert_array_equal(got[:, masked], 0)

    def test_a_refused_dtype_is_a_value_error_naming_the_argument(self):
        for bad in (np.zeros((2, 8), np.complex64), np.array([["a"] * 8] * 2), np.zeros((2, 8), object),
                    np.zeros((2, 8), "datetime64[s]")):
            with self.subTest(dtype=str(bad.dtype)):
                with self.assertRaisesRegex(ValueError, "^layer_norm: x "):
                    qwenvl.layer_norm(bad, np.ones(8), np.zeros(8))
                with self.assertRaisesRegex(ValueError, "^softmax_rows: mask "):
                    qwenvl.softmax_rows(np.zeros((2, 8)), bad)
        with self.assertRaisesRegex(ValueError, "^linear: weight is an array of booleans"):
            qwenvl.linear(np.ones((2, 3)), np.ones((4, 3), bool), np.zeros(4))


class Training(unittest.TestCase):
    def test_ten_adamw_steps_equal_pytorchs(self):
        for name in ("adamw_10_steps.json", "adamw_10_steps_readout.json", "adamw_10_steps_masked.json"):
            with self.subTest(name):
                self.ten_steps(json.load(open(os.path.join(DATA, "training", name))))

    def test_the_readout_equals_pytorchs(self):
        golden = json.load(open(os.path.join(DATA, "training", "readout.json")))
        for case in golden["cases"]:
            y, target = (np.array(case[k]["data"], np.float32).reshape(case[k]["shape"]) for k in ("y", "target"))
            readout = qwenvl.readout_matrix(case["grid_q"], case["grid_out"])
            z = qwenvl.grid_readout(readout, y)
            close(self, z, np.array(case["z"]["data"], np.float32).reshape(case["z"]["shape"]), 1e-6, 1e-5, "z")
            loss, d_z = qwenvl.mse_loss(z, target)
            self.assertLessEqual(abs(loss - case["loss"]), 1e-5 * case["loss"])
            close(self, qwenvl.grid_readout_backward(readout, d_z),
                  np.array(case["d_y"]["data"], np.float32).reshape(case["d_y"]["shape"]), 1e-6, 1e-5, "d_y")
        x, target = qwenvl.reconstruct_task(2, 4, 8, 1)
        self.assertEqual(x.shape, (2, 16, 8))
        np.testing.assert_array_equal(x, target)

    def ten_steps(self, golden):

        def array(t):
            return np.array(t["data"], dtype=np.float32).reshape(t["shape"])

        cfg, opt = golden["config"], golden["optimizer"]
        weights, tail = qwenvl.AdapterWeights(), qwenvl.TowerTail()
        weights.kv_proj = np.zeros((cfg["embed_dim"], cfg["kv_dim"]), np.float32)
        qwenvl.set_trainable_parameters({k: array(v) for k, v in golden["initial_params"].items()}, weights, tail)
        config = qwenvl.derive_config(weights, cfg["num_heads"])
        config.eps = cfg["eps"]
        adamw = qwenvl.AdamWConfig()
        adamw.lr, adamw.min_lr, (adamw.beta1, adamw.beta2), adamw.eps = opt["lr"], opt["min_lr"], opt["betas"], opt["eps"]
        adamw.weight_decay, adamw.max_grad_norm = opt["weight_decay"], opt["max_grad_norm"]
        adamw.warmup_steps, adamw.total_steps = opt["warmup_steps"], opt["total_steps"]
        optimizer = qwenvl.AdamW(adamw)
        x, target = array(golden["inputs"]["x"]), array(golden["inputs"]["target"])
        mask = array(golden["inputs"]["mask"]) == 1 if "mask" in golden["inputs"] else None   # True: masked
        readout = qwenvl.readout_matrix(cfg["grid_q"], cfg["grid_k"]) if cfg["readout"] else None
        for want in golden["steps"]:
            if readout is None:
                got = qwenvl.train_step(weights, tail, config, x, target, optimizer, mask)
            else:
                got = qwenvl.readout_train_step(weights, tail, config, x, readout, target, optimizer)
            self.assertLessEqual(abs(got["loss"] - want["loss"]), 1e-5 * want["loss"], "step %d" % want["step"])
            norm_rtol = 1e-5 if readout is None else 3e-5   # as tests/test_training.cpp
            self.assertLessEqual(abs(got["grad_norm"] - want["grad_norm"]), norm_rtol * want["grad_norm"])
            self.assertAlmostEqual(got["lr"], want["lr"], delta=1e-12)
        self.assertEqual(optimizer.step, 10)
        params = qwenvl.trainable_parameters(weights, tail)
        close(self, params["attn_pool.query"], array(golden["final_params"]["attn_pool.query"]), 1e-5, 1e-4, "query")


if __name__ == "__main__":
    unittest.main()
