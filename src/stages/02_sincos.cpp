#include "stages/02_sincos.hpp"

#include <cmath>

namespace qwenvl {

Matrix sincos_1d(std::size_t dim, const std::vector<float>& positions) {
    require(dim > 0 && dim % 2 == 0, "sincos_1d", "dim " + std::to_string(dim) + " must be even and positive");
    const std::size_t half = dim / 2;
    Matrix table({positions.size(), dim});
    for (std::size_t i = 0; i < half; ++i) {
        // float32 throughout, in the order numpy evaluates the reference: i / (D/2), 10000^that, 1 / that.
        float omega = static_cast<float>(i) / (static_cast<float>(dim) / 2.0f);
        omega = 1.0f / std::pow(10000.0f, omega);
        for (std::size_t p = 0; p < positions.size(); ++p) {
            const float angle = positions[p] * omega;
            table(p, i) = std::sin(angle);
            table(p, half + i) = std::cos(angle);
        }
    }
    return table;
}

Matrix sincos_2d(std::size_t embed_dim, std::size_t grid) { return sincos_2d(embed_dim, Grid{grid, grid}); }

Matrix sincos_2d(std::size_t embed_dim, Grid grid) {
    require(embed_dim > 0 && embed_dim % 4 == 0, "sincos_2d",
            "embed_dim " + std::to_string(embed_dim) + " must be divisible by 4 (two halves of sines and cosines)");
    require(grid.h > 0 && grid.w > 0, "sincos_2d", "the grid's sides must be positive");
    std::vector<float> column(grid.cells()), row(grid.cells());
    for (std::size_t i = 0; i < grid.h; ++i)
        for (std::size_t j = 0; j < grid.w; ++j) {
            column[i * grid.w + j] = static_cast<float>(j);
            row[i * grid.w + j] = static_cast<float>(i);
        }
    const std::size_t half = embed_dim / 2;
    const Matrix by_column = sincos_1d(half, column);  // (h*w, E/2)
    const Matrix by_row = sincos_1d(half, row);        // (h*w, E/2)
    Matrix table({grid.cells(), embed_dim});
    for (std::size_t r = 0; r < grid.cells(); ++r)
        for (std::size_t c = 0; c < half; ++c) {
            table(r, c) = by_column(r, c);
            table(r, half + c) = by_row(r, c);
        }
    return table;
}

}  // namespace qwenvl
