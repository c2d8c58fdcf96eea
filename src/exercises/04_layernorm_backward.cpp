// Exercise 04-layernorm-backward: write layer_norm_backward (docs/course/README.md, lesson 7).
//   check:     cmake --build --preset release --target check-04-layernorm-backward
//   read:      docs/course/lesson-7-training.md
//   solution:  src/stages/04_layernorm.cpp, the project's own stage (read it once you pass)
//
// Given the forward pass's input x (R, E), gamma (E,) and dL/dy (R, E). Per row, with mean, var as in the forward
// pass, rstd = 1 / sqrt(var + eps), x_hat_c = (x_c - mean) rstd and g_c = dL/dy_c gamma_c:
//   dL/dx_c     = (g_c - mean_c'(g) - x_hat_c mean_c'(g x_hat)) rstd
//   dL/dgamma_c = sum over rows of dL/dy_c x_hat_c            dL/dbeta_c = sum over rows of dL/dy_c
// The two mean terms are there because mean and var depend on every x of the row. The pitfall: leaving one out
// (the gradient of x * rstd with rstd held constant). Keep the sums in double.
#include <cmath>
#include <vector>

#include "stages/04_layernorm.hpp"

namespace qwenvl {

LayerNormGradients layer_norm_backward(const Matrix& x, const Vector& gamma, const Matrix& dy, float eps) {
    // TODO: replace this placeholder with the three gradients.
    (void)dy;
    (void)eps;
    return LayerNormGradients{xt::zeros<float>(x.shape()), xt::zeros<float>(gamma.shape()), xt::zeros<float>(gamma.shape())};
}

}  // namespace qwenvl
