// fast/resize.hpp: the position table resized to the key grid, fast.
//
// Replaces stages/03_resize's `resize_bicubic` and `key_position_table`: the same taps (`cubic_weights` at
// `source_coordinate`, clamped at the border) and the same order of sums (along w within each of the four source
// rows, then along h, each sum starting from 0 as the stage's does), on raw rows with the channel loop innermost,
// without the stage's (C,) temporaries, and the output cells split over the fast path's threads. It is part of
// fast::prepare_query_side, which `run` pays once per call: full size (16 x 16 to 32 x 32, E = 4096) 35-38 ->
// 18-21 ms, about 10 ms of which are the first touch of the table's fresh pages (docs/fast-path.md#the-key-table).
#pragma once

#include "core/shapes.hpp"
#include "fast/gemm.hpp"
#include "stages/01_feature_input.hpp"

namespace qwenvl::fast {

// A (G_in*G_in, C) table, seen as a G_in x G_in grid of C channels, resized bicubically to out.h x out.w cells,
// (out.h*out.w, C). As F.interpolate(..., size=(h, w), mode='bicubic', align_corners=False). The table is a Matrix
// or a block of float rows (a stored pos_embed, read in place).
Matrix resize_bicubic(const Block& table, std::size_t grid_in, Grid out);

// P_k (keys.h*keys.w, E) from P_q (Q, E): a copy of P_q when the key grid is the query grid, else P_q resized.
Matrix key_position_table(const Block& pos_q, Grid keys);

}  // namespace qwenvl::fast
