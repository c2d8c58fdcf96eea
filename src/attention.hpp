// attention.hpp: stage 5, multi-head cross-attention (the inside of torch.nn.MultiheadAttention).
//
// Paper (Qwen-VL, section 2.1): "a single-layer cross-attention module ... uses a group of trainable
// vectors (Embeddings) as query vectors and the image features from the visual encoder as keys".
// The projections before and after (in_proj, out_proj) live in linear.hpp; this is what
// F.multi_head_attention_forward does between them, for one image:
//   for each head h (channels [h*Dh, (h+1)*Dh)):
//     S_h = (q_h / sqrt(Dh)) k_h^T            (Q, L)   q scaled before the product, as PyTorch
//     A_h = softmax_rows(S_h + M)             (Q, L)   M: the optional (Q, L) additive mask
//     O_h = A_h v_h                           (Q, Dh)
//   O = [O_0 | O_1 | ... | O_{H-1}]           (Q, E)   heads concatenated
#pragma once

#include <xtensor/xtensor.hpp>

#include "shapes.hpp"

namespace qwenvl {

// Head h of a (R, E) tensor as a contiguous (R, Dh) copy (BLAS needs contiguous operands).
Matrix head_slice(const Matrix& x, std::size_t head, std::size_t num_heads);

// Writes a (R, Dh) head back into channels [h*Dh, (h+1)*Dh) of a (R, E) tensor.
void merge_head(Matrix& merged, const Matrix& head_values, std::size_t head, std::size_t num_heads);

// (Q, Dh), (L, Dh) -> (Q, L):  S = (q / sqrt(Dh)) k^T.
Matrix attention_scores(const Matrix& q_head, const Matrix& k_head);

// (Q, L) -> (Q, L): softmax over each row of scores + mask (mask may be nullptr).
// Numerically stable: the row's maximum is subtracted before exp. A row whose every entry is -inf
// (fully masked) becomes NaN, as it does in PyTorch.
Matrix softmax_rows(const Matrix& scores, const Matrix* mask);

// attn_mask for boolean masks: true (masked) -> -inf, false -> 0. Mirrors PyTorch's conversion.
Matrix additive_mask(const xt::xtensor<bool, 2>& masked);

struct AttentionOutput {
    Matrix attended;  // (Q, E)     heads merged, before out_proj
    Tensor3 scores;   // (H, Q, L)  before the mask and softmax
    Tensor3 weights;  // (H, Q, L)  after the softmax (PyTorch's average_attn_weights=False)
};

// One image: q (Q, E), k (L, E), v (L, E) already projected; mask (Q, L) or nullptr.
// With keep_per_head false, scores and weights are left empty (saves memory at full size).
AttentionOutput multi_head_attention(const Matrix& q, const Matrix& k, const Matrix& v, std::size_t num_heads,
                                     const Matrix* mask, bool keep_per_head = true);

}  // namespace qwenvl
