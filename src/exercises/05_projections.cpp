// Exercise 05-projections: write matmul, linear and kv_projection (docs/course/README.md, lesson 4).
//   check:     cmake --build --preset release --target check-05-projections
//   read:      docs/course/lesson-4-layernorm-projections.md
//   solution:  src/stages/05_projections.cpp, the project's own stage (read it once you pass)
//
// matmul:        a (R, K) @ b (K, M) -> (R, M)
// linear:        x (R, in), W (out, in), b (out,) -> (R, out), as torch's F.linear
// kv_projection: x (L, Kv), W_kv (E, Kv) -> (L, E), no bias; an EMPTY W_kv (size 0) is the reference's nn.Identity
//                (used when Kv == E): x unchanged.
// How a weight's stored shape tells you how it is used, and the one weight that breaks the rule: lesson 4.
// check_shape (core/shapes.hpp) checks the shapes.
#include <xtensor/xmanipulation.hpp>

#include "stages/05_projections.hpp"

namespace qwenvl {

Matrix matmul(const Matrix& a, const Matrix& b) {
    // TODO: replace this placeholder with the product.
    return xt::zeros<float>({a.shape(0), b.shape(1)});
}

Matrix linear(const Matrix& x, const Matrix& weight, const Vector& bias) {
    // TODO: replace this placeholder (use matmul).
    (void)bias;
    return xt::zeros<float>({x.shape(0), weight.shape(0)});
}

Matrix kv_projection(const Matrix& x, const Matrix& w_kv) {
    // TODO: replace this placeholder.
    return xt::zeros<float>({x.shape(0), w_kv.size() ? w_kv.shape(0) : x.shape(1)});
}

}  // namespace qwenvl
