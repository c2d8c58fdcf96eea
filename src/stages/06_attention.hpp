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

}  // namespace qwenvl
