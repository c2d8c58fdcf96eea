// Exercise 06-softmax-backward: write softmax_rows_backward (docs/course/README.md, lesson 7).
//   check:     cmake --build --preset release --target check-06-softmax-backward
//   read:      docs/course/lesson-7-training.md
//   solution:  src/stages/06_attention.cpp, the project's own stage (read it once you pass)
//
// Given the weights p (Q, L) the forward pass computed and dL/dp (Q, L) -> dL/ds (Q, L). Per row:
//   dL/ds_j = p_j (dL/dp_j - sum_i p_i dL/dp_i)
// Every weight of a row depends on every score of the row (they share the denominator): that is the sum. The
// pitfall: p_j dL/dp_j alone, the gradient of exp rather than of the softmax. A masked place has p_j = 0 and gets 0.
#include "stages/06_attention.hpp"

namespace qwenvl {

Matrix softmax_rows_backward(const Matrix& weights, const Matrix& d_weights) {
    // TODO: replace this placeholder with the gradient of the scores.
    (void)d_weights;
    return xt::zeros<float>(weights.shape());
}

}  // namespace qwenvl
