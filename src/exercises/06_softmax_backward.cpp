// Exercise 06-softmax-backward: write softmax_rows_backward (docs/course/README.md, lesson 7).
//   check:     cmake --build --preset release --target check-06-softmax-backward
//   read:      docs/course/lesson-7-training.md
//   solution:  src/stages/06_attention.cpp, the project's own stage (read it once you pass)
//
// Given the weights p (Q, L) the forward pass computed and dL/dp (Q, L) -> dL/ds (Q, L), s the scores (with the
// mask added). Derive it (lesson 7): every weight of a row shares the row's denominator. A masked place (p_j = 0)
// gets 0.
#include "stages/06_attention.hpp"

namespace qwenvl {

Matrix softmax_rows_backward(const Matrix& weights, const Matrix& d_weights) {
    // TODO: replace this placeholder with the gradient of the scores.
    (void)d_weights;
    return xt::zeros<float>(weights.shape());
}

}  // namespace qwenvl
