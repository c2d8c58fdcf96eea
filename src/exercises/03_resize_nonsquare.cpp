// Exercise 03-resize-nonsquare: the key table of a non-square key grid (docs/course/lesson-3-resize.md).
//   check:     cmake --build --preset release --target check-03-resize-nonsquare
//   read:      docs/course/lesson-3-resize.md; notebooks/03_resizing_the_table.ipynb
//   solution:  src/stages/03_resize.cpp, the project's own stage (read it once you pass)
//
// resize_bicubic(table (G_in*G_in, C), G_in, out) -> (out.h * out.w, C): the same resize as exercise 03-resize,
// to a grid of out.h rows and out.w columns.
// key_position_table(pos_q (Q, E), keys) -> (keys.h * keys.w, E): the key table of a key grid of keys.h rows and
// keys.w columns: pos_q itself when the key grid is the query grid, else the resize. A square key grid must give
// what the square version gives. source_coordinate and cubic_weights are the project's here (stage 03's header).
// What changes when h != w, and the pitfall no shape check catches: lesson 3.
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
