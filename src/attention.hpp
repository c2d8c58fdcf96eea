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

#include "linear.hpp"
#include "shapes.hpp"

namespace qwenvl {

// Head h of a (R, E) tensor: its channels [h*Dh, (h+1)*Dh) as an (R, Dh) block read in place (row stride E).
Block head_block(const Block& x, std::size_t head, std::size_t num_heads);
Block head_block(const Matrix& x, std::size_t head, std::size_t num_heads);

// (Q, Dh), (L, Dh) -> (Q, L):  S = q_scaled k^T, where q_scaled = q / sqrt(Dh) was divided before the
// product, as PyTorch does (multi_head_attention divides all of q once, then takes each head's block).
Matrix attention_scores(const Block& q_scaled_head, const Block& k_head);

// O_h = A_h v_h: weights (Q, L) times the head's values (L, Dh), written into channels [h*Dh, (h+1)*Dh) of
// `attended` (Q, E), which concatenates the heads.
void attend_values(const Matrix& weights, const Block& v_head, Matrix& attended, std::size_t head, std::size_t num_heads);

// e^x for x <= 0 (and NaN), as the softmax needs it after subtracting each row's maximum: within 3e-7 of
// std::exp relative to it, 0 below -87.3 and at -inf, NaN for NaN. Plain arithmetic the compiler can vectorise.
float exp_nonpositive(float x);

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
// The same with k and v given as (L, E) blocks, e.g. image n of a batch (N, L, E), read in place.
AttentionOutput multi_head_attention(const Matrix& q, const Block& k, const Block& v, std::size_t num_heads,
                                     const Matrix* mask, bool keep_per_head = true);

}  // namespace qwenvl
