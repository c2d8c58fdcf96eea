// Exercise 03-resize-nonsquare: the key table of a non-square key grid (docs/course/lesson-3-resize.md).
//   check:     cmake --build --preset release --target check-03-resize-nonsquare
//   read:      docs/course/lesson-3-resize.md; notebooks/03_resizing_the_table.ipynb
//   solution:  src/stages/03_resize.cpp, the project's own stage (read it once you pass)
//
// An image that is not square gives a key grid of h rows and w columns (h != w), L = h w keys. Its key table is the
// (G_q x G_q) query table resized as an image of E channels to (h, w), as
// F.interpolate(table, size=(h, w), mode='bicubic', align_corners=False) does: each axis on its own, the rows from
// G_q to h, the columns from G_q to w.
//
// resize_bicubic(table (G_in*G_in, C), G_in, out) -> (out.h * out.w, C): row r = i * out.w + j for output row i
//   (of out.h) and output column j (of out.w). The source coordinate and the four taps of each axis come from that
//   axis's own sizes (source_coordinate(G_in, out.h, i) for the rows, source_coordinate(G_in, out.w, j) for the
//   columns); cubic_weights and source_coordinate are stage 03's (you wrote them in 03-resize; here they are the
//   project's). Sum along w first, then along h, as in 03-resize.
// key_position_table(pos_q (Q, E), keys) -> (keys.h * keys.w, E): pos_q itself when the key grid is the query grid,
//   else the resize. A square key grid must give what the square version gives.
// The pitfalls: (h, w) is (rows, columns): a grid of 3 rows and 5 columns is Grid{3, 5}, and F.interpolate's size is
// (h, w); the row index of the table is i * w + j, with the WIDTH; swapping h and w still gives h * w rows, so no
// shape check catches it.
#include <cmath>

#include <xtensor/xview.hpp>

#include "stages/01_feature_input.hpp"
#include "stages/03_resize.hpp"

namespace qwenvl {

Matrix resize_bicubic(const Matrix& table, std::size_t grid_in, Grid out) {
    // TODO: replace this placeholder with the resize to out.h rows and out.w columns.
    (void)grid_in;
    return xt::zeros<float>({out.h * out.w, table.shape(1)});
}

Matrix key_position_table(const Matrix& pos_q, Grid keys) {
    // TODO: replace this placeholder: pos_q when the grids are equal, else the resize.
    return xt::zeros<float>({keys.h * keys.w, pos_q.shape(1)});
}

}  // namespace qwenvl
