// Exercise 02-sincos: write sincos_1d and sincos_2d (docs/course/README.md, lesson 2).
//   check:     cmake --build --preset release --target check-02-sincos
//   read:      docs/course/lesson-2-sincos.md; notebooks/02_sincos_table.ipynb
//   solution:  src/stages/02_sincos.cpp, the project's own stage (read it once you pass)
//
// sincos_1d(D, positions) -> (P, D), P = positions.size(), D even: one row of D values per position.
// sincos_2d(E, G) -> (G*G, E), row r = h*G + w the patch in grid row h, column w; E not divisible by 4 throws
// std::invalid_argument (require, core/shapes.hpp). Built from two 1-D tables, one per half of the channels.
// Which half holds which index, the order of sines and cosines, the frequencies and the precision: lesson 2 (its
// worked example is small enough to check your first rows by hand).
#include <cmath>
#include <vector>

#include "stages/02_sincos.hpp"

namespace qwenvl {

Matrix sincos_1d(std::size_t dim, const std::vector<float>& positions) {
    // TODO: replace this placeholder with the table.
    return xt::zeros<float>({positions.size(), dim});
}

Matrix sincos_2d(std::size_t embed_dim, std::size_t grid) {
    // TODO: replace this placeholder: two 1-D tables side by side (use sincos_1d).
    return xt::zeros<float>({grid * grid, embed_dim});
}

}  // namespace qwenvl
