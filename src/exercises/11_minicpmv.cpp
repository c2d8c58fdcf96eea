// Exercise 11-minicpmv: MiniCPM-V's key tables: each image's slice of one big table, and the key padding mask
// (docs/course/lesson-9-porting.md).
//   check:     cmake --build --preset release --target check-11-minicpmv
//   read:      docs/course/lesson-9-porting.md
//   solution:  src/stages/11_minicpmv.cpp, the project's own stage (read it once you pass)
//
// MiniCPM-V resamples a batch of image slices of different shapes at once. Image n has its own grid of h_n rows and
// w_n columns, L_n = h_n w_n patches; the batch is padded to L = the largest L_n. Its key table is not resized: it is
// cut from one 2-D sin-cos table built for a larger grid (70 x 70 unless an image is larger).
//   table_grid(max_grid, grids) -> the grid of that big table: max_grid, grown on each axis to the largest h and the
//     largest w among the images (upstream rebuilds its cached table larger when an image does not fit).
//   slice_table(table (T.h * T.w, E), T, image) -> (image.h * image.w, E): the rows [:image.h] and columns
//     [:image.w] of the table seen as a (T.h, T.w, E) grid, in row-major order, as pos_embed[:h, :w, :].reshape(h*w, -1).
//   key_padding(image, L) -> (L,) booleans: true where key j is padding (j >= image.h * image.w), as PyTorch's
//     key_padding_mask (true = ignored).
// The pitfalls: the image's cell (i, j) is row i * T.w + j of the big table (its width), not i * image.w + j, so the
// first h * w rows of the table are NOT the slice; the mask is true for padding, not for real patches.
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
