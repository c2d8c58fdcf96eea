// stages/01_feature_input.hpp: stage 01, the feature input (docs/stages/01-feature-input.md).
//
// Paper (Qwen-VL, section 2.1): the adapter takes "the image features from the visual encoder" as
// the keys of its cross-attention. Here those are the ViT's patch features, one row per patch,
// on a square grid of G_k x G_k patches (448 / 14 = 32 for Qwen-VL, so L = 1024 rows of Kv = 1664).
#pragma once

#include <xtensor/xarray.hpp>

#include "core/shapes.hpp"

namespace qwenvl {

// A grid of h rows and w columns of patches: h*w cells in row-major order (cell r = i*w + j for row i, column j).
// Qwen-VL's key grids are square (32 x 32 at 448 pixels); MiniCPM-V gives each image its own (h, w), its
// `tgt_size`.
struct Grid {
    std::size_t h = 0, w = 0;
    std::size_t cells() const { return h * w; }
};

// The grid of `count` cells: `requested` when it has h, w > 0 (checked to hold `count` cells), else the square
// grid (grid_side). Throws std::invalid_argument naming `what` otherwise.
Grid key_grid(std::size_t count, Grid requested, const char* what);

// Side G of a square grid holding `count` cells; throws std::invalid_argument naming `what`
// when `count` is not a perfect square (the reference's int(math.sqrt(L)) would silently truncate).
std::size_t grid_side(std::size_t count, const char* what);

// Patch features as a batch: (L, Kv) becomes (1, L, Kv); (N, L, Kv) is kept.
// Checks: rank 2 or 3, L > 0 a perfect square, Kv > 0, every value finite. square_grid = false drops the
// perfect-square check, for features whose grids are given (a non-square image, MiniCPM-V's padded batch).
// Taken by value: pass std::move(features) and the batch keeps their memory, uncopied (7 MB an image at full size).
Tensor3 as_feature_batch(xt::xarray<float> features, bool square_grid = true);

}  // namespace qwenvl
