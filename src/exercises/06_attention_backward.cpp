// Exercise 06-attention-backward: write multi_head_attention_backward (docs/course/README.md, lesson 7).
//   check:     cmake --build --preset release --target check-06-attention-backward
//   read:      docs/course/lesson-7-training.md
//   solution:  src/stages/06_attention.cpp, the project's own stage (read it once you pass)
//
// One image: q (Q, E), k, v (L, E), the forward pass's weights (H, Q, L) and dL/d attended (Q, E). For each head h
// (channels [h*Dh, (h+1)*Dh), Dh = E / H), with O_h = A_h v_h and S_h = (q_h / sqrt(Dh)) k_h^T:
//   dL/dv_h = A_h^T dO_h                 (L, Dh)     -> dv's channels of head h
//   dL/dA_h = dO_h v_h^T                 (Q, L)      -> d_weights[h]
//   dL/dS_h = softmax_rows_backward(A_h, dL/dA_h)    -> d_scores[h]
//   dL/dq_h = dL/dS_h k_h / sqrt(Dh)     (Q, Dh)     -> dq's channels
//   dL/dk_h = dL/dS_h^T (q_h / sqrt(Dh)) (L, Dh)     -> dk's channels
// The pitfall: forgetting that q was scaled by 1/sqrt(Dh) in the forward pass (dq too large by sqrt(Dh)).
// Use matmul (stage 05); copy a transposed view into a Matrix before the product.
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
