// Exercise 04-layernorm: write layer_norm (docs/course/README.md, lesson 4).
//   check:     cmake --build --preset release --target check-04-layernorm
//   read:      docs/course/lesson-4-layernorm-projections.md; notebooks/04_a_stage_in_numpy.ipynb
//   solution:  src/stages/04_layernorm.cpp, the project's own stage (read it once you pass)
//
// x (R, E), gamma (E,), beta (E,) -> y (R, E): each row of E values normalised on its own, as torch.nn.LayerNorm.
// check_shape (core/shapes.hpp) checks gamma and beta. The check includes rows of mean 1000 and standard deviation
// 0.01, where sums in float are not enough. The equation, a row worked by hand and the classic mistakes: lesson 4.
#include <cmath>

#include "stages/04_layernorm.hpp"

namespace qwenvl {

Matrix layer_norm(const Matrix& x, const Vector& gamma, const Vector& beta, float eps) {
    // TODO: replace this placeholder with the normalisation.
    (void)gamma;
    (void)beta;
    (void)eps;
    return xt::zeros<float>(x.shape());
}

}  // namespace qwenvl
