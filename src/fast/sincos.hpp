// fast/sincos.hpp: the 2D sin-cos position table, fast.
//
// Replaces stages/02_sincos's `sincos_2d` where the fast path builds a table (the query side of a checkpoint that
// stores no pos_embed, and each MiniCPM-V image's table). The stage evaluates sin and cos for every cell of the
// grid, h*w*E/2 of each; but a cell's first half depends only on its column j and its second half only on its row i,
// so this evaluates stage 02's `sincos_1d` once per distinct column and row (w + h positions instead of 2*h*w) and
// copies those rows into place: the same float32 operations on the same values, so the table is the same bit for
// bit. Full size (E = 4096, 16 x 16): 256 x fewer sines and cosines; measured gain in docs/fast-path.md#the-sin-cos-table.
#pragma once

#include "core/shapes.hpp"
#include "stages/01_feature_input.hpp"

namespace qwenvl::fast {

// (h*w, E): row r = i*w + j holds sincos_1d(E/2, {j}) in channels [0, E/2) and sincos_1d(E/2, {i}) in [E/2, E),
// equal to stage 02's sincos_2d(E, grid). E divisible by 4, both sides positive.
Matrix sincos_2d(std::size_t embed_dim, Grid grid);

}  // namespace qwenvl::fast
