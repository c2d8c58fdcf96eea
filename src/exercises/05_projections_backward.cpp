// Exercise 05-projections-backward: the projections' gradients, dx, dW and db (docs/course/lesson-7-training.md).
//   check:     cmake --build --preset release --target check-05-projections-backward
//   read:      docs/course/lesson-7-training.md
//   solution:  src/stages/05_projections.cpp, the project's own stage (read it once you pass)
//
// Given the forward pass's inputs and dL/dy, the gradient of the loss with respect to each input:
//   matmul_backward(a (R, K), b (K, C), dy (R, C)), y = a @ b          -> da (R, K), db (K, C)
//   linear_backward(x (R, in), W (out, in), dy (R, out)), y = x W^T + b  -> dx (R, in), dweight (out, in), dbias (out,)
//   kv_projection_backward(x (L, Kv), W_kv (E, Kv), dy (L, E))          -> dx (L, Kv), dw_kv (E, Kv); for the identity
//                                                                          (W_kv empty): dx = dy, dw_kv empty
// Work each out from y_ij = sum_k x_ik W_jk + b_j (lesson 7): which entries of y does x_ik reach, through which
// weight? Every gradient has the shape of the value it is the gradient of.
#include <xtensor/xview.hpp>

#include "stages/05_projections.hpp"

namespace qwenvl {

MatmulGradients matmul_backward(const Matrix& a, const Matrix& b, const Matrix& dy) {
    // TODO: replace this placeholder with da and db.
    (void)dy;
    return {xt::zeros<float>(a.shape()), xt::zeros<float>(b.shape())};
}

LinearGradients linear_backward(const Matrix& x, const Matrix& weight, const Matrix& dy) {
    // TODO: replace this placeholder with dx, dweight and dbias.
    (void)dy;
    return {xt::zeros<float>(x.shape()), xt::zeros<float>(weight.shape()), xt::zeros<float>({weight.shape(0)})};
}

KvProjectionGradients kv_projection_backward(const Matrix& x, const Matrix& w_kv, const Matrix& dy) {
    // TODO: replace this placeholder with dx and dw_kv (the identity when w_kv is empty).
    (void)dy;
    return {xt::zeros<float>(x.shape()), xt::zeros<float>(w_kv.shape())};
}

}  // namespace qwenvl
