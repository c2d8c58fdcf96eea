"""The two resamplers as torch.nn modules, and the capture of their intermediates under this project's trace names.

Used by make_fixtures.py (the golden fixtures of both models, the injected-mistake dumps for `compare`) and by
dump_pytorch.py (a porter's reference intermediates). Written from upstream's code, read, not copied:
- QwenVLResampler: Qwen-VL's `Resampler` (visual.py, `transformer.visual.attn_pool`) followed by the visual
  tower's tail (`ln_post`, then `x @ proj`). The key table is the query table resized bicubically to the key grid
  (upstream's get_abs_pos, square grids only; `grid=(h, w)` extends it to F.interpolate's size=(h, w)).
- MiniCPMVResampler: MiniCPM-V 2.5 / 2.6's `Resampler` (resampler.py of openbmb/MiniCPM-V-2_6, vLLM's
  Resampler2_5): no position term on the queries; each image's key table is rows [:h, :w] of a sin-cos table built
  for max_size (70, 70) and rebuilt larger when a batch holds a larger grid (_adjust_pos_cache); images padded to
  the longest with a key padding mask; ln_post and proj inside the resampler.

Both have the submodules upstream has under the same names (kv_proj, ln_q, ln_kv, attn, ln_post), so
`trace_resampler` captures upstream's own module the same way (forward hooks, and a look at the arguments the
attention is called with).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-6   # both build their LayerNorms with eps = 1e-6


def sincos_1d(dim, positions):
    """(P,) positions -> (P, dim): all sines, then all cosines, in upstream's float32 steps (i / (D/2), 10000 ** that,
    1 / that, p * omega). The power, sin and cos are computed in float64 and rounded to float32, the correctly
    rounded float32 value on any CPU (numpy's float32 SIMD kernels differ by an ulp between CPUs)."""
    i = np.arange(dim // 2, dtype=np.float32)
    exponent = i / np.float32(dim / 2.0)
    power = (10000.0 ** exponent.astype(np.float64)).astype(np.float32)
    omega = np.float32(1.0) / power
    angles = (positions.reshape(-1).astype(np.float32)[:, None] * omega[None, :]).astype(np.float64)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sincos_2d(dim, grid_h, grid_w=None):
    """(h*w, dim); row r = i*w + j; the first half encodes the column j (numpy's meshgrid 'xy'), the second the row."""
    grid_w = grid_h if grid_w is None else grid_w
    columns, rows = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
    return np.concatenate([sincos_1d(dim // 2, columns), sincos_1d(dim // 2, rows)], axis=1)


def resize_table(table, grid_in, grid_out):
    """(grid_in^2, E) -> (h*w, E) by F.interpolate bicubic, align_corners=False; grid_out an int or (h, w)."""
    h, w = (grid_out, grid_out) if isinstance(grid_out, int) else grid_out
    if (h, w) == (grid_in, grid_in):
        return table
    image = table.reshape(1, grid_in, grid_in, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=(h, w), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).flatten(0, 2)


class QwenVLResampler(torch.nn.Module):
    """Qwen-VL's adapter and the tower's tail: forward(x (N, L, Kv), attn_mask=None, grid=None) -> (N, Q, E)."""

    def __init__(self, n_queries, embed_dim, num_heads, kv_dim):
        super().__init__()
        self.grid_q = math.isqrt(n_queries)
        self.query = torch.nn.Parameter(torch.zeros(n_queries, embed_dim))
        self.pos_embed = torch.nn.Parameter(torch.from_numpy(sincos_2d(embed_dim, self.grid_q)), requires_grad=False)
        self.kv_proj = torch.nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else torch.nn.Identity()
        self.attn = torch.nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = torch.nn.LayerNorm(embed_dim, eps=EPS)
        self.ln_kv = torch.nn.LayerNorm(embed_dim, eps=EPS)
        self.ln_post = torch.nn.LayerNorm(embed_dim, eps=EPS)   # the tower's, after the adapter
        self.proj = torch.nn.Parameter(torch.zeros(embed_dim, embed_dim))

    def key_table(self, n_keys, grid=None):
        grid = grid or (math.isqrt(n_keys),) * 2
        return resize_table(self.pos_embed, self.grid_q, tuple(grid))

    def forward(self, x, attn_mask=None, grid=None):
        pos_k = self.key_table(x.shape[1], grid)                       # (L, E)
        X = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)               # (L, N, E)
        N = X.shape[1]
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, N, 1)         # (Q, N, E)
        out = self.attn(q + self.pos_embed.unsqueeze(1), X + pos_k.unsqueeze(1), X, attn_mask=attn_mask)[0]
        return self.ln_post(out.permute(1, 0, 2)) @ self.proj          # the tail: x @ proj, not a Linear


class MiniCPMVResampler(torch.nn.Module):
    """MiniCPM-V 2.5 / 2.6's resampler: forward(x (N, L, Kv) padded, tgt_sizes (N, 2) of (h, w)) -> (N, Q, E)."""

    def __init__(self, n_queries, embed_dim, num_heads, kv_dim, max_size=(70, 70)):
        super().__init__()
        self.embed_dim = embed_dim
        self.query = torch.nn.Parameter(torch.zeros(n_queries, embed_dim))
        self.kv_proj = torch.nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else torch.nn.Identity()
        self.attn = torch.nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = torch.nn.LayerNorm(embed_dim, eps=EPS)
        self.ln_kv = torch.nn.LayerNorm(embed_dim, eps=EPS)
        self.ln_post = torch.nn.LayerNorm(embed_dim, eps=EPS)
        self.proj = torch.nn.Parameter(torch.zeros(embed_dim, embed_dim))
        self.max_size = list(max_size)
        self.register_buffer("pos_embed", self.table(self.max_size), persistent=False)   # not in the checkpoint

    def table(self, size):
        h, w = size
        return torch.from_numpy(sincos_2d(self.embed_dim, h, w).reshape(h, w, -1))        # (h, w, E)

    def adjust_table(self, tgt_sizes):
        """Upstream's _adjust_pos_cache: a batch with a larger h or w rebuilds the table at the larger size."""
        h, w = int(tgt_sizes[:, 0].max()), int(tgt_sizes[:, 1].max())
        if h > self.max_size[0] or w > self.max_size[1]:
            self.max_size = [max(h, self.max_size[0]), max(w, self.max_size[1])]
            self.pos_embed = self.table(self.max_size).to(self.query.dtype)

    def forward(self, x, tgt_sizes):
        N, L, _ = x.shape
        self.adjust_table(tgt_sizes)
        lengths = tgt_sizes[:, 0] * tgt_sizes[:, 1]
        padding = torch.zeros(N, L, dtype=torch.bool)
        tables = []
        for n in range(N):
            h, w = (int(v) for v in tgt_sizes[n])
            tables.append(self.pos_embed[:h, :w, :].reshape(h * w, -1).to(x.dtype))
            padding[n, int(lengths[n]):] = True
        pos_k = torch.nn.utils.rnn.pad_sequence(tables, batch_first=True, padding_value=0.0)   # (N, max L_n, E)
        pos_k = F.pad(pos_k, (0, 0, 0, L - pos_k.shape[1])).permute(1, 0, 2)                   # (L, N, E)
        X = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)                                      # (L, N, E)
        q = self.ln_q(self.query).unsqueeze(1).repeat(1, N, 1)                                # (Q, N, E): no table
        out = self.attn(q, X + pos_k, X, key_padding_mask=padding)[0]
        return self.ln_post(out.permute(1, 0, 2)) @ self.proj


def trace_resampler(module, x, **call):
    """Runs `module(x, **call)` and returns {trace name: tensor}, every intermediate this project's trace records,
    from forward hooks on kv_proj, ln_kv, ln_q and ln_post, and from the arguments the attention is called with (its
    inputs query, key, value in (L, N, E) order, and its mask keywords). The steps inside nn.MultiheadAttention (q,
    k, v, the scores, the per-head weights, the heads before out_proj) are recomputed from those inputs with its own
    in_proj and out_proj parameters, and the per-head weights come from the module itself (need_weights=True,
    average_attn_weights=False). Works on upstream's own module: it has the same submodule names."""
    saved = {}
    hooks = [getattr(module, name).register_forward_hook(lambda m, i, o, name=name: saved.__setitem__(name, o))
             for name in ("kv_proj", "ln_kv", "ln_q", "ln_post")]
    attention = module.attn
    original = attention.forward
    calls = []

    def spy(query, key, value, *rest, **keywords):
        calls.append((query, key, value, rest, keywords))
        return original(query, key, value, *rest, **keywords)

    attention.forward = spy
    try:
        with torch.no_grad():
            y = module(x, **call)
            query, key, value, rest, keywords = calls[-1]
            keywords = {k: v for k, v in keywords.items() if k not in ("need_weights", "average_attn_weights")}
            out_lne, weights = original(query, key, value, *rest, need_weights=True, average_attn_weights=False, **keywords)
    finally:
        del attention.forward
        for h in hooks:
            h.remove()

    E, H = attention.embed_dim, attention.num_heads
    Dh = E // H
    L, N, _ = key.shape
    Q = query.shape[0]
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
    with torch.no_grad():
        query_in = query[:, 0]                                             # (Q, E): the same for every image
        key_in = key.permute(1, 0, 2)                                      # (N, L, E)
        q = F.linear(query_in, w_q, b_q)
        k = F.linear(key_in, w_k, b_k)
        v = F.linear(value.permute(1, 0, 2), w_v, b_v)
        qh = (q / math.sqrt(Dh)).reshape(Q, H, Dh).permute(1, 0, 2)
        kh = k.reshape(N, L, H, Dh).permute(0, 2, 1, 3)
        vh = v.reshape(N, L, H, Dh).permute(0, 2, 1, 3)
        scores = torch.matmul(qh.unsqueeze(0), kh.transpose(-2, -1))     # (N, H, Q, L), before any mask
        attended = torch.matmul(weights, vh).permute(0, 2, 1, 3).reshape(N, Q, E)
        out = out_lne.permute(1, 0, 2)
    trace = {}
    minicpmv = "key_padding_mask" in keywords
    if not minicpmv:                                                      # Qwen-VL: a table on the queries too
        trace["pos_q"] = module.pos_embed.detach()
        grid = tuple(call.get("grid") or (math.isqrt(L),) * 2)             # upstream's get_abs_pos: square grids
        trace["pos_k"] = (module.key_table(L, grid) if hasattr(module, "key_table")
                          else resize_table(module.pos_embed.detach(), math.isqrt(Q), grid))
    trace["ln_q"] = saved["ln_q"]
    if not minicpmv:
        trace["query_in"] = query_in
    trace["q"] = q
    if minicpmv:
        tgt_sizes = call["tgt_sizes"]
        tables = torch.zeros(N, L, E, dtype=key.dtype)
        for n in range(N):
            h, w = (int(v_) for v_ in tgt_sizes[n])
            tables[n, :h * w] = module.pos_embed[:h, :w, :].reshape(h * w, -1).to(key.dtype)
        trace["pos_k"] = tables
        trace["key_padding_mask"] = keywords["key_padding_mask"].to(key.dtype)
    trace.update({"kv_proj": saved["kv_proj"], "ln_kv": saved["ln_kv"], "key_in": key_in, "k": k, "v": v,
                  "scores": scores, "attn_weights": weights, "attended": attended, "out": out,
                  "ln_post": saved["ln_post"], "proj": y})
    return {name: t.detach() for name, t in trace.items()}


def load_state(module, params):
    """Copies `params` (name -> tensor, by the module's own parameter names; in_proj packed) into `module`."""
    with torch.no_grad():
        own = dict(module.named_parameters())
        for name, value in params.items():
            own[name].copy_(value)


def explicit_forward(params, x, additive, H, pos_q, pos_k, keep=lambda name, t: t, steps=None):
    """Qwen-VL's adapter and the tower's tail in explicit steps (F.linear, F.layer_norm, torch.softmax), every
    intermediate a tensor of autograd's graph: `params` by checkpoint name without the `transformer.visual.` prefix
    (in_proj packed), x (N, L, Kv); additive: the (Q, L) float mask or None. MiniCPM-V's resampler is the same steps
    with pos_q None (no query table, no query_in), pos_k (N, L, E) (each image's table, zero on the padding) and
    additive (N, 1, 1, L) (-inf on each image's padding keys). `keep(name, t)` sees each intermediate
    under its trace name (autograd_gradients keeps their gradients). `steps` replaces a step by its name (ln_kv,
    ln_q, v, batch_q, softmax, out, ln_post, proj) with a function of the same arguments: make_fixtures.py's ports
    with a wrong backward."""
    steps = steps or {}
    query = params["attn_pool.query"]
    Q, E = query.shape
    N, L, Kv = x.shape
    Dh = E // H

    def step(name, default, *args):
        return steps.get(name, default)(*args)

    def ln(t, prefix):  # the step is named by the LayerNorm: ln_kv, ln_q, ln_post
        return step(prefix.split(".")[-1], lambda t_, w, b: F.layer_norm(t_, (E,), w, b, EPS),
                    t, params[prefix + ".weight"], params[prefix + ".bias"])

    projected = keep("kv_proj", F.linear(x, params["attn_pool.kv_proj.weight"]) if Kv != E else x * 1.0)
    X = keep("ln_kv", ln(projected, "attn_pool.ln_kv"))
    lq = keep("ln_q", ln(query, "attn_pool.ln_q"))
    query_in = keep("query_in", lq + pos_q) if pos_q is not None else lq
    key_in = keep("key_in", X + pos_k)
    w_q, w_k, w_v = params["attn_pool.attn.in_proj_weight"].chunk(3)
    b_q, b_k, b_v = params["attn_pool.attn.in_proj_bias"].chunk(3)
    q = keep("q", F.linear(query_in, w_q, b_q))
    k = keep("k", F.linear(key_in, w_k, b_k))
    v = keep("v", step("v", F.linear, X, w_v, b_v))
    qh = (q / math.sqrt(Dh)).reshape(Q, H, Dh).permute(1, 0, 2)
    kh = k.reshape(N, L, H, Dh).permute(0, 2, 1, 3)
    vh = v.reshape(N, L, H, Dh).permute(0, 2, 1, 3)
    every_image = step("batch_q", lambda t: t.unsqueeze(0), qh)                       # the queries are shared
    scores = keep("scores", torch.matmul(every_image, kh.transpose(-2, -1)))          # (N, H, Q, L)
    weights = keep("attn_weights", step("softmax", lambda s: torch.softmax(s, dim=-1),
                                        scores + additive if additive is not None else scores))
    attended = keep("attended", torch.matmul(weights, vh).permute(0, 2, 1, 3).reshape(N, Q, E))
    out = keep("out", step("out", F.linear, attended, params["attn_pool.attn.out_proj.weight"],
                           params["attn_pool.attn.out_proj.bias"]))
    after_ln_post = keep("ln_post", ln(out, "ln_post"))
    return keep("proj", step("proj", torch.matmul, after_ln_post, params["proj"]))


def autograd_gradients(params, x, upstream, H, pos_q, pos_k, additive=None, steps=None):
    """Autograd's gradients of L = sum(y * upstream), y = explicit_forward(...): ({trace name: dL/d that
    intermediate, "x" included; "proj" is the upstream gradient itself}, {checkpoint name: dL/d that parameter}),
    in the dtype of the inputs. The position tables are constants (pos_embed is frozen upstream)."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    x = x.detach().clone().requires_grad_(True)
    saved = {}

    def keep(name, t):
        t.retain_grad()
        saved[name] = t
        return t

    y = explicit_forward(params, x, additive, H, pos_q, pos_k, keep, steps)
    (y * upstream).sum().backward()
    gradients = {name: t.grad.detach().clone() for name, t in saved.items()}
    gradients["x"] = x.grad.detach().clone()
    return gradients, {name: p.grad.detach().clone() for name, p in params.items() if p.grad is not None}


OUTSIDE_ATTN_POOL = ("ln_post.weight", "ln_post.bias", "proj")   # Qwen-VL's tail: the tower's, not attn_pool's


def module_gradients(module, x, upstream, grid=None, tgt_sizes=None, tolerance=1e-4):
    """Autograd's gradients of L = sum(module(x) * upstream) for either model's module (this file's, or upstream's:
    the same parameter names): ({trace name: dL/d that intermediate, "x" included}, {module parameter name: dL/d
    it}). From the explicit steps (autograd_gradients), the tables and the mask read from the module; checked
    against autograd through the module itself (dL/dx and every parameter's within `tolerance` of the largest value,
    or AssertionError). Qwen-VL: grid (h, w); MiniCPM-V: tgt_sizes (N, 2)."""
    N, L, _ = x.shape
    H = module.attn.num_heads
    # Autograd through the module first: MiniCPM-V's forward also grows its table for the batch (_adjust_pos_cache)
    x_module = x.detach().clone().requires_grad_(True)
    module.zero_grad()
    call = {"grid": tuple(grid)} if tgt_sizes is None else {"tgt_sizes": tgt_sizes}
    (module(x_module, **call) * upstream).sum().backward()
    if tgt_sizes is None:
        pos_q, pos_k, additive = module.pos_embed.detach(), module.key_table(L, tuple(grid)).detach(), None
    else:
        E = module.query.shape[1]
        pos_q = None
        pos_k = torch.zeros(N, L, E, dtype=x.dtype)
        additive = torch.zeros(N, 1, 1, L, dtype=x.dtype)
        for n in range(N):
            h, w = (int(v) for v in tgt_sizes[n])
            pos_k[n, :h * w] = module.pos_embed[:h, :w, :].reshape(h * w, -1).to(x.dtype)
            additive[n, ..., h * w:] = float("-inf")
    named = {(k if k in OUTSIDE_ATTN_POOL else "attn_pool." + k): p.detach()
             for k, p in module.named_parameters() if k != "pos_embed"}
    gradients, by_name = autograd_gradients(named, x, upstream, H, pos_q, pos_k, additive)
    param_grads = {k[len("attn_pool."):] if k.startswith("attn_pool.") else k: g for k, g in by_name.items()}
    by_module = {k: p.grad for k, p in module.named_parameters() if p.grad is not None}
    by_module["x"] = x_module.grad
    for name, theirs in by_module.items():
        ours = gradients["x"] if name == "x" else param_grads[name]
        scale = float(ours.abs().max()) or 1.0
        assert float((theirs - ours).abs().max()) <= tolerance * scale, \
            "the explicit steps' dL/d %s differ from the module's autograd by %.3g (largest %.3g)" % (
                name, float((theirs - ours).abs().max()), scale)
    return gradients, param_grads
