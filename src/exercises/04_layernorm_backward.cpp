// Exercise 04-layernorm-backward: write layer_norm_backward (docs/course/README.md, lesson 7).
//   check:     cmake --build --preset release --target check-04-layernorm-backward
//   read:      docs/course/lesson-7-training.md
//   solution:  src/stages/04_layernorm.cpp, the project's own stage (read it once you pass)
//
// Given the forward pass's input x (R, E), gamma (E,) and dL/dy (R, E) -> dL/dx (R, E), dL/dgamma (E,),
// dL/dbeta (E,) (summed over the rows). Derive them from the forward equation (lesson 4), with lesson 7: what does
// each x_c reach besides y_c? Keep the sums in double.
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
