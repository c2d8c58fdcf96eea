#include "stages/01_feature_input.hpp"

#include <algorithm>
#include <cmath>

namespace qwenvl {

std::size_t grid_side(std::size_t count, const char* what) {
    std::size_t side = static_cast<std::size_t>(std::llround(std::sqrt(static_cast<double>(count))));
    if (count == 0 || side * side != count)
        throw std::invalid_argument(std::string(what) + ": " + std::to_string(count) +
                                    " is not a perfect square (the positions form a square grid)");
    return side;
}

Grid key_grid(std::size_t count, Grid requested, const char* what) {
    if (requested.h == 0 && requested.w == 0) {
        const std::size_t side = grid_side(count, what);
        return {side, side};
    }
    if (requested.h == 0 || requested.w == 0 || requested.cells() != count)
        throw std::invalid_argument(std::string(what) + ": a grid of " + std::to_string(requested.h) + " x " +
                                    std::to_string(requested.w) + " does not hold " + std::to_string(count) + " cells");
    return requested;
}

Tensor3 as_feature_batch(xt::xarray<float> features, bool square_grid) {
    const char* fn = "as_feature_batch";
    const std::string given = shape_string(shape_of(features));
    require(features.dimension() == 2 || features.dimension() == 3, fn,
            "features have shape " + given + ", expected (L, Kv) or (N, L, Kv)");
    if (features.dimension() == 2) features.reshape({std::size_t(1), features.shape(0), features.shape(1)});
    Tensor3 batch(std::move(features));  // the same memory, now typed (N, L, Kv): nothing copied
    require(batch.shape(0) > 0 && batch.shape(2) > 0, fn, "features have shape " + given + " with an empty axis");
    if (square_grid) grid_side(batch.shape(1), "as_feature_batch: the patch count L");
    const bool all_finite = std::all_of(batch.begin(), batch.end(), [](float value) { return std::isfinite(value); });
    require(all_finite, fn, "features hold a NaN or infinite value");
    return batch;
}

}  // namespace qwenvl
