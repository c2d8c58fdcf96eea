// Exercise 03-resize: write source_coordinate and resize_bicubic (docs/course/README.md, lesson 3).
//   check:     cmake --build --preset release --target check-03-resize
//   read:      docs/course/lesson-3-resize.md; notebooks/03_resizing_the_table.ipynb
//   solution:  src/stages/03_resize.cpp, the project's own stage (read it once you pass)
//
// source_coordinate(in, out, j) -> where output sample j (of `out`) lands among the `in` input samples, in input
// units, as F.interpolate(mode='bicubic', align_corners=False) places it.
// resize_bicubic(table (G_in*G_in, C), G_in, G_out) -> (G_out*G_out, C): the table seen as a G_in x G_in image of
// C channels (row r = h*G + w), resized bicubically to G_out x G_out. cubic_weights(t) (stage 03's header, given)
// gives the four taps' weights.
// The coordinate, the taps, the border and the order of the sums (for the last bits to agree): lesson 3.
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
