// Exercise 02-sincos: write sincos_1d and sincos_2d (docs/course/README.md, lesson 2).
//   check:     cmake --build --preset release --target check-02-sincos
//   read:      docs/course/lesson-2-sincos.md; notebooks/02_sincos_table.ipynb
//   solution:  src/stages/02_sincos.cpp, the project's own stage (read it once you pass)
//
// sincos_1d(D, positions) -> (P, D), P = positions.size(), D even. With D/2 frequencies
//   omega_i = 1 / 10000^(i / (D/2)),   i = 0 .. D/2 - 1
//   row p   = [sin(p omega_0) ... sin(p omega_{D/2-1}),  cos(p omega_0) ... cos(p omega_{D/2-1})]
// (all the sines first, then all the cosines; compute in float, as numpy's float32 does).
//
// sincos_2d(E, G) -> (G*G, E), E divisible by 4 (throw std::invalid_argument otherwise: E/2 must split into sines
// and cosines). Row r = h*G + w is the patch in grid row h, column w:
//   channels [0, E/2)  = sincos_1d(E/2, ...) of the COLUMN index w
//   channels [E/2, E)  = sincos_1d(E/2, ...) of the ROW index h
// The pitfall: the reference builds the grid with numpy.meshgrid(w, h), so the half it calls "h" holds w.
// Putting h first is the classic mistake, and every value of the table is then wrong.
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
