// stages/06_attention.hpp: stage 06, multi-head cross-attention, the inside of torch.nn.MultiheadAttention
// between its input and output projections (docs/stages/06-attention.md).
//
// Paper (Qwen-VL, section 2.1): "a single-layer cross-attention module ... uses a group of trainable
// vectors (Embeddings) as query vectors and the image features from the visual encoder as keys".
// For one image, given q (Q, E), k (L, E), v (L, E) already projected, and for each head h
// (channels [h*Dh, (h+1)*Dh)):
//   S_h = (q_h / sqrt(Dh)) k_h^T            (Q, L)   q scaled before the product, as PyTorch does
//   A_h = softmax_rows(S_h + M)             (Q, L)   M: the optional (Q, L) additive mask
//   O_h = A_h v_h                           (Q, Dh)
//   O = [O_0 | O_1 | ... | O_{H-1}]         (Q, E)   heads concatenated (`attended`; out_proj follows)
#pragma once

#include <xtensor/xtensor.hpp>

#include "core/shapes.hpp"

namespace qwenvl {

// scores (Q, L), mask (Q, L) or nullptr -> (Q, L): softmax over each row of scores + mask.
//   p_j = exp(s_j - max_i s_i) / sum_i exp(s_i - max_i s_i)
// Subtracting the row's maximum keeps exp from overflowing and does not change the result. A row whose every
// entry is -inf (fully masked) becomes NaN, as it does in PyTorch.
Matrix softmax_rows(const Matrix& scores, const Matrix* mask);

// attn_mask from a boolean mask: true (masked) -> -inf, false -> 0. Mirrors PyTorch's conversion.
Matrix additive_mask(const xt::xtensor<bool, 2>& masked);

struct AttentionOutput {
    Matrix attended;  // (Q, E)     heads concatenated, before out_proj
    Tensor3 scores;   // (H, Q, L)  before the mask and softmax
    Tensor3 weights;  // (H, Q, L)  after the softmax (PyTorch's average_attn_weights=False)
};

// One image: q (Q, E), k (L, E), v (L, E) already projected; H heads (H divides E); mask (Q, L) or nullptr.
AttentionOutput multi_head_attention(const Matrix& q, const Matrix& k, const Matrix& v, std::size_t num_heads,
                                     const Matrix* mask);

// Backward of softmax_rows (training): given the weights p (Q, L) the forward pass computed and dL/dp, the
// gradient reaching the scores (and the mask, which is not trained):
//   dL/ds_j = p_j (dL/dp_j - sum_i p_i dL/dp_i)
// A masked place has p_j = 0 and so gets no gradient.
Matrix softmax_rows_backward(const Matrix& weights, const Matrix& d_weights);

// Backward of multi_head_attention for one image (training): given q (Q, E), k, v (L, E), the forward pass's
// weights (H, Q, L) and dL/d attended (Q, E). For each head h, with O_h = A_h v_h and S_h = (q_h / sqrt(Dh)) k_h^T:
//   dL/dv_h = A_h^T dO_h            dL/dA_h = dO_h v_h^T            dL/dS_h = softmax_rows_backward(A_h, dL/dA_h)
//   dL/dq_h = dL/dS_h k_h / sqrt(Dh)                                dL/dk_h = dL/dS_h^T q_h / sqrt(Dh)
struct AttentionGradients {
    Matrix dq, dk, dv;   // (Q, E), (L, E), (L, E)
    Tensor3 d_weights;   // (H, Q, L)  dL/dA_h
    Tensor3 d_scores;    // (H, Q, L)  dL/dS_h (before the mask: the mask only shifts them)
};
AttentionGradients multi_head_attention_backward(const Matrix& q, const Matrix& k, const Matrix& v,
                                                 const Tensor3& weights, const Matrix& d_attended, std::size_t num_heads);

}  // namespace qwenvl
