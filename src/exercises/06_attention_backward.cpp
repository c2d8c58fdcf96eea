// Exercise 06-attention-backward: write multi_head_attention_backward (docs/course/README.md, lesson 7).
//   check:     cmake --build --preset release --target check-06-attention-backward
//   read:      docs/course/lesson-7-training.md
//   solution:  src/stages/06_attention.cpp, the project's own stage (read it once you pass)
//
// One image: q (Q, E), k, v (L, E), the forward pass's weights (H, Q, L) and dL/d attended (Q, E) ->
// dq (Q, E), dk, dv (L, E), d_weights and d_scores (H, Q, L). Go back through lesson 5's three steps of a head,
// with lesson 7: remember what the forward pass did to q before the product. softmax_rows_backward is the
// project's (or yours, from 06-softmax-backward). Use matmul (stage 05); copy a transposed view into a Matrix
// before the product, and pass xt::range(...) straight into xt::view (stored in a `const auto`, it does not
// compile).
#include <cmath>

#include <xtensor/xmanipulation.hpp>
#include <xtensor/xview.hpp>

#include "stages/05_projections.hpp"
#include "stages/06_attention.hpp"

namespace qwenvl {

AttentionGradients multi_head_attention_backward(const Matrix& q, const Matrix& k, const Matrix& v,
                                                 const Tensor3& weights, const Matrix& d_attended, std::size_t num_heads) {
    // TODO: replace this placeholder with the heads' gradients.
    (void)v;
    (void)weights;
    (void)d_attended;
    const std::size_t Q = q.shape(0), E = q.shape(1), L = k.shape(0), H = num_heads;
    return AttentionGradients{xt::zeros<float>({Q, E}), xt::zeros<float>({L, E}), xt::zeros<float>({L, E}),
                              xt::zeros<float>({H, Q, L}), xt::zeros<float>({H, Q, L})};
}

}  // namespace qwenvl
