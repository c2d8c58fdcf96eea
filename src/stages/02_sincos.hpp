// stages/02_sincos.hpp: stage 02, the 2D sin-cos position tables (docs/stages/02-sincos.md).
//
// Paper (Qwen-VL, section 2.1): "2D absolute positional encodings are incorporated into the
// query-key pairs of the cross-attention mechanism" so that compression keeps positional detail.
// Qwen-VL builds them with MAE's fixed sin-cos construction (get_2d_sincos_pos_embed), in float32,
// and stores the result as the frozen parameter `attn_pool.pos_embed` of shape (Q, E).
#pragma once

#include <vector>

#include "core/shapes.hpp"
#include "stages/01_feature_input.hpp"

namespace qwenvl {

// 1D table, (P, D) for P positions, D even.
//   omega_i = 10000^(-i / (D/2)),  i = 0 .. D/2 - 1
//   row p = [sin(p omega_0) .. sin(p omega_{D/2-1}), cos(p omega_0) .. cos(p omega_{D/2-1})]
// All sines first, then all cosines (not interleaved). Mirrors MAE's get_1d_sincos_pos_embed_from_grid.
Matrix sincos_1d(std::size_t dim, const std::vector<float>& positions);

// 2D table, (G*G, E) for a G x G grid, E divisible by 4. Row r = h*G + w (row-major over the grid).
// Channels [0, E/2) are the 1D table of the COLUMN index w, channels [E/2, E) that of the ROW index h.
// (The reference's numpy.meshgrid uses 'xy' indexing, so the half it calls "h" holds w.)
// Mirrors MAE's / Qwen-VL's get_2d_sincos_pos_embed(E, G).
Matrix sincos_2d(std::size_t embed_dim, std::size_t grid);

// 2D table of a grid of h rows and w columns, (h*w, E): row r = i*w + j holds column j's table in channels
// [0, E/2) and row i's in [E/2, E), as above. Mirrors MiniCPM-V's get_2d_sincos_pos_embed(E, (h, w)), whose
// (h, w, E) result is this table reshaped. Rows [:h', :w'] of the (h, w) table are the (h', w') table: each row
// depends only on its own (i, j).
Matrix sincos_2d(std::size_t embed_dim, Grid grid);

}  // namespace qwenvl
