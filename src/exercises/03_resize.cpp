// Exercise 03-resize: write source_coordinate and resize_bicubic (docs/course/README.md, lesson 3).
//   check:     cmake --build --preset release --target check-03-resize
//   read:      docs/course/lesson-3-resize.md; notebooks/03_resizing_the_table.ipynb
//   solution:  src/stages/03_resize.cpp, the project's own stage (read it once you pass)
//
// The stored (Q, E) table is for the 16 x 16 query grid; the keys lie on a 32 x 32 grid, so the table is resized
// as an image of E channels, as F.interpolate(mode='bicubic', align_corners=False) does.
//
// source_coordinate(in, out, j): where output sample j of `out` lands among the `in` input samples:
//   s = (in / out) * (j + 0.5) - 0.5                 (align_corners=False; negative near the border)
//
// resize_bicubic(table (G_in*G_in, C), G_in, G_out) -> (G_out*G_out, C). Row r = h*G + w. For output cell (oy, ox),
// along each axis: s = source_coordinate(...), i0 = floor(s), weights = cubic_weights(s - i0) (given, stage 03's
// header) for the four taps i0 - 1, i0, i0 + 1, i0 + 2, each clamped to [0, G_in - 1]. The value is the sum over
// the 4 x 4 taps of weight_y[a] * weight_x[b] * table[row of (tap_y[a], tap_x[b])], every channel at once.
// For the last bits to agree with PyTorch, sum along w first (within each of the four source rows), then along h.
// The pitfalls: align_corners=True's s = j (in - 1) / (out - 1) is another convention; (int)s is not floor(s)
// for s < 0; the grid's rows are h (slow) and its columns w (fast).
#include <algorithm>
#include <cmath>

#include <xtensor/xview.hpp>

#include "stages/03_resize.hpp"

namespace qwenvl {

float source_coordinate(std::size_t in, std::size_t out, std::size_t j) {
    // TODO: replace this placeholder with the source coordinate.
    (void)in;
    (void)out;
    (void)j;
    return 0.0f;
}

Matrix resize_bicubic(const Matrix& table, std::size_t grid_in, std::size_t grid_out) {
    // TODO: replace this placeholder with the resize.
    (void)grid_in;
    return xt::zeros<float>({grid_out * grid_out, table.shape(1)});
}

}  // namespace qwenvl
