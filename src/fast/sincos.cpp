#include "fast/sincos.hpp"

#include <algorithm>
#include <vector>

#include "stages/02_sincos.hpp"

namespace qwenvl::fast {

Matrix sincos_2d(std::size_t embed_dim, Grid grid) {
    require(embed_dim > 0 && embed_dim % 4 == 0, "fast::sincos_2d",
            "embed_dim " + std::to_string(embed_dim) + " must be divisible by 4 (two halves of sines and cosines)");
    require(grid.h > 0 && grid.w > 0, "fast::sincos_2d", "the grid's sides must be positive");
    const std::size_t half = embed_dim / 2;
    std::vector<float> columns(grid.w), rows(grid.h);
    for (std::size_t j = 0; j < grid.w; ++j) columns[j] = static_cast<float>(j);
    for (std::size_t i = 0; i < grid.h; ++i) rows[i] = static_cast<float>(i);
    const Matrix by_column = qwenvl::sincos_1d(half, columns);  // (w, E/2): one row per distinct column j
    const Matrix by_row = qwenvl::sincos_1d(half, rows);        // (h, E/2): one row per distinct row i
    Matrix table({grid.cells(), embed_dim});
    for (std::size_t i = 0; i < grid.h; ++i)
        for (std::size_t j = 0; j < grid.w; ++j) {
            float* out = table.data() + (i * grid.w + j) * embed_dim;
            std::copy(by_column.data() + j * half, by_column.data() + (j + 1) * half, out);
            std::copy(by_row.data() + i * half, by_row.data() + (i + 1) * half, out + half);
        }
    return table;
}

}  // namespace qwenvl::fast
