// Exercise 11-minicpmv: MiniCPM-V's key tables: each image's slice of one big table, and the key padding mask
// (docs/course/lesson-9-porting.md).
//   check:     cmake --build --preset release --target check-11-minicpmv
//   read:      docs/course/lesson-9-porting.md
//   solution:  src/stages/11_minicpmv.cpp, the project's own stage (read it once you pass)
//
// MiniCPM-V resamples a batch of image slices of different shapes at once: image n has a grid of h_n rows and w_n
// columns, L_n = h_n w_n patches, the batch padded to L = the largest L_n. Its key table is cut from one 2-D sin-cos
// table built for a larger grid, not resized.
//   table_grid(max_grid, grids) -> the grid of that big table (upstream grows its cached table when an image does
//     not fit).
//   slice_table(table (T.h * T.w, E), T, image) -> (image.h * image.w, E): the image's part of the table, as
//     pos_embed[:h, :w, :].reshape(h * w, -1) with pos_embed the table seen as (T.h, T.w, E).
//   key_padding(image, L) -> (L,) booleans: PyTorch's key_padding_mask for the image.
// Which rows form the slice, and what the mask's true means: lesson 9.
#include <algorithm>

#include <xtensor/xview.hpp>

#include "stages/11_minicpmv.hpp"

namespace qwenvl {

Grid table_grid(Grid max_grid, const std::vector<Grid>& grids) {
    // TODO: replace this placeholder with the grown grid.
    (void)grids;
    return max_grid;
}

Matrix slice_table(const Matrix& table, Grid table_grid, Grid image) {
    // TODO: replace this placeholder with the slice.
    (void)table_grid;
    return xt::zeros<float>({image.h * image.w, table.shape(1)});
}

xt::xtensor<bool, 1> key_padding(Grid image, std::size_t n_keys) {
    // TODO: replace this placeholder with the mask.
    (void)image;
    return xt::zeros<bool>({n_keys});
}

}  // namespace qwenvl
