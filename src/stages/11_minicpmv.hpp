// stages/11_minicpmv.hpp: a second model, MiniCPM-V 2.5 / 2.6's resampler (docs/stages/11-minicpmv.md).
//
// MiniCPM-V (Yao et al., arXiv 2408.01800, section 2.2) compresses each image slice's visual tokens with "one layer
// cross-attention" of learned queries, Qwen-VL's adapter adapted to slices of any shape. Read from its
// resampler.py (Hugging Face openbmb/MiniCPM-V-2_6) and vLLM's port (Resampler2_5), it is stage 07 with the same
// parameters (prefix resampler.: query, kv_proj, attn.in_proj_*, attn.out_proj.*, ln_q, ln_kv) and four changes:
//   - no position term on the queries:   q = LN_q(query) W_q^T + b_q                     (Q, E)
//   - each image n has its own grid (h_n, w_n) of L_n = h_n w_n patches (its tgt_size). Its key table is the 2D
//     sin-cos table of that grid, rows [:h_n, :w_n] of a table built for a max_grid (70 x 70), which upstream
//     rebuilds larger when an image exceeds it (_adjust_pos_cache). No resize.
//   - the batch is padded to L = max_n L_n: x (N, L, Kv), the table padded with zero rows, and a key padding mask
//     (true from L_n on) adds -inf to those keys' scores, so no query attends to the padding:
//       X_n = LN_kv(x_n W_kv^T)   key_n = X_n + P_k,n   value_n = X_n   out_n = MHA(q, k_n, v_n; mask_n) W_o^T + b_o
//   - ln_post and proj are the resampler's own (resampler.ln_post, resampler.proj): stage 08 computes them.
// Trace names: ln_q, q, then per image pos_k (N, L, E), key_padding_mask (N, L; 1 = padding), kv_proj, ln_kv,
// key_in, k, v, scores, attn_weights, attended, out (as stage 07), then ln_post and proj.
#pragma once

#include <vector>

#include <xtensor/xtensor.hpp>

#include "core/shapes.hpp"
#include "core/trace.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/07_adapter.hpp"

namespace qwenvl {

// The size of upstream's table cache at construction: MiniCPM-V's max_size (70, 70).
inline constexpr Grid kMiniCpmvMaxGrid{70, 70};

// The grid of the table upstream slices from: max_grid, grown on each axis to the batch's largest h and w
// (_adjust_pos_cache).
Grid table_grid(Grid max_grid, const std::vector<Grid>& grids);

// Rows [:image.h, :image.w] of a (table.h * table.w, E) table of the `table` grid, in row-major order:
// (image.h * image.w, E). Mirrors pos_embed[:h, :w, :].reshape(h * w, -1).
Matrix slice_table(const Matrix& table, Grid table_grid, Grid image);

// (L,) true for the key positions of an image of `image` grid that are padding: L_n = h*w and on.
xt::xtensor<bool, 1> key_padding(Grid image, std::size_t n_keys);

// The resampler on a batch: x (N, L, Kv), image n's patches in rows [0, L_n) (L_n = grids[n].cells() <= L, the
// rest padding) -> out (N, Q, E), before ln_post and proj. Records every intermediate in `trace` when given.
Tensor3 minicpmv_forward(const AdapterWeights& weights, const AdapterConfig& config, const Tensor3& x,
                         const std::vector<Grid>& grids, Grid max_grid = kMiniCpmvMaxGrid, Trace* trace = nullptr);

}  // namespace qwenvl
