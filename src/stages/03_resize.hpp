// stages/03_resize.hpp: stage 03, the bicubic resize of the position table to the key grid (docs/stages/03-resize.md).
//
// Qwen-VL stores one (Q, E) table for a G_q x G_q grid (16 x 16) and, when an image has a different
// number of patches (32 x 32 at 448 pixels), resizes it as an image of E channels with
// torch.nn.functional.interpolate(mode='bicubic', align_corners=False) (get_abs_pos in the reference).
// The maintainers: the table "is always stored in 256 length" and resized at run time (Qwen-VL issue 215).
#pragma once

#include <array>

#include "core/shapes.hpp"
#include "stages/01_feature_input.hpp"

namespace qwenvl {

// Keys cubic convolution, A = -0.75 (PyTorch's choice), evaluated at the four taps around a sample
// whose fractional offset from its left neighbour is t in [0, 1):
//   weights = k(t + 1), k(t), k(1 - t), k(2 - t)
//   k(d) = ((A+2)|d| - (A+3))|d|^2 + 1            for |d| <= 1
//   k(d) = ((A|d| - 5A)|d| + 8A)|d| - 4A          for 1 < |d| < 2
std::array<float, 4> cubic_weights(float t);

// Source coordinate of output index j when resizing `in` samples to `out` (align_corners=False):
//   s = (in / out) * (j + 0.5) - 0.5        (may be negative near the border)
float source_coordinate(std::size_t in, std::size_t out, std::size_t j);

// Bicubic resize of a (G_in*G_in, C) table, seen as a G_in x G_in grid of C channels (row r = h*G_in + w),
// to a (G_out*G_out, C) table. Taps outside the grid are clamped to the border.
// Mirrors F.interpolate(table.reshape(1, G_in, G_in, C).permute(0, 3, 1, 2), (G_out, G_out), 'bicubic').
Matrix resize_bicubic(const Matrix& table, std::size_t grid_in, std::size_t grid_out);

// The same to a grid of out.h rows and out.w columns, (out.h*out.w, C): each axis with its own scale
// (G_in / h down the rows, G_in / w along them). Mirrors F.interpolate(..., size=(h, w), mode='bicubic').
Matrix resize_bicubic(const Matrix& table, std::size_t grid_in, Grid out);

// The key-side table P_k (L, E) from the query-side table P_q (Q, E): P_q itself when L == Q,
// otherwise P_q resized bicubically to the key grid. Mirrors get_abs_pos(pos_embed, L).
Matrix key_position_table(const Matrix& pos_q, std::size_t n_keys);

// The same for a key grid of keys.h rows and keys.w columns (a non-square image), (keys.h*keys.w, E).
// Upstream's get_abs_pos only knows square grids; this resizes as F.interpolate does to size=(h, w).
Matrix key_position_table(const Matrix& pos_q, Grid keys);

}  // namespace qwenvl
