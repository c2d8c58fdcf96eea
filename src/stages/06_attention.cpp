#include "stages/06_attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include <xtensor/xview.hpp>

#include "stages/05_projections.hpp"

namespace qwenvl {

Matrix softmax_rows(const Matrix& scores, const Matrix* mask) {
    if (mask) check_shape("softmax_rows", "mask", *mask, shape_of(scores));
    const std::size_t rows = scores.shape(0), cols = scores.shape(1);
    const Matrix s = mask ? Matrix(scores + *mask) : scores;
    Matrix weights(s.shape());
    for (std::size_t r = 0; r < rows; ++r) {
        float top = -std::numeric_limits<float>::infinity();  // the row's maximum
        for (std::size_t c = 0; c < cols; ++c) top = std::max(top, s(r, c));
        // Every exponent is <= 0: no overflow. A fully masked row has top = -inf, and -inf - -inf = NaN.
        double sum = 0.0;
        for (std::size_t c = 0; c < cols; ++c) sum += std::exp(s(r, c) - top);
        for (std::size_t c = 0; c < cols; ++c) weights(r, c) = static_cast<float>(std::exp(s(r, c) - top) / sum);
    }
    return weights;
}

Matrix additive_mask(const xt::xtensor<bool, 2>& masked) {
    const float minus_inf = -std::numeric_limits<float>::infinity();
    return xt::where(masked, minus_inf, 0.0f);
}

AttentionOutput multi_head_attention(const Matrix& q, const Matrix& k, const Matrix& v, std::size_t num_heads,
                                     const Matrix* mask) {
    const char* fn = "multi_head_attention";
    const std::size_t Q = q.shape(0), E = q.shape(1), L = k.shape(0), H = num_heads;
    require(H > 0 && E % H == 0, fn, "num_heads " + std::to_string(H) + " does not divide the width " + std::to_string(E));
    const std::size_t Dh = E / H;
    check_shape(fn, "k", k, {L, E});
    check_shape(fn, "v", v, {L, E});
    if (mask) check_shape(fn, "mask", *mask, {Q, L});

    AttentionOutput result{Matrix({Q, E}), Tensor3({H, Q, L}), Tensor3({H, Q, L})};
    const Matrix q_scaled = q / std::sqrt(static_cast<float>(Dh));  // PyTorch scales q, not the scores
    for (std::size_t h = 0; h < H; ++h) {
        auto channels = xt::range(h * Dh, (h + 1) * Dh);  // this head's channels
        const Matrix q_h = xt::view(q_scaled, xt::all(), channels);  // (Q, Dh)
        const Matrix k_h = xt::view(k, xt::all(), channels);         // (L, Dh)
        const Matrix v_h = xt::view(v, xt::all(), channels);         // (L, Dh)
        const Matrix k_h_t = xt::transpose(k_h);                     // (Dh, L)

        const Matrix scores = matmul(q_h, k_h_t);           // (Q, L)
        const Matrix weights = softmax_rows(scores, mask);  // (Q, L)
        const Matrix attended_h = matmul(weights, v_h);     // (Q, Dh)

        xt::view(result.scores, h) = scores;
        xt::view(result.weights, h) = weights;
        xt::view(result.attended, xt::all(), channels) = attended_h;
    }
    return result;
}

Matrix softmax_rows_backward(const Matrix& weights, const Matrix& d_weights) {
    check_shape("softmax_rows_backward", "d_weights", d_weights, shape_of(weights));
    const std::size_t rows = weights.shape(0), cols = weights.shape(1);
    Matrix d_scores(weights.shape());
    for (std::size_t r = 0; r < rows; ++r) {
        double weighted = 0.0;  // sum_i p_i dL/dp_i
        for (std::size_t c = 0; c < cols; ++c) weighted += static_cast<double>(weights(r, c)) * d_weights(r, c);
        for (std::size_t c = 0; c < cols; ++c)
            d_scores(r, c) = static_cast<float>(weights(r, c) * (d_weights(r, c) - weighted));
    }
    return d_scores;
}

AttentionGradients multi_head_attention_backward(const Matrix& q, const Matrix& k, const Matrix& v,
                                                 const Tensor3& weights, const Matrix& d_attended, std::size_t num_heads) {
    const char* fn = "multi_head_attention_backward";
    const std::size_t Q = q.shape(0), E = q.shape(1), L = k.shape(0), H = num_heads;
    require(H > 0 && E % H == 0, fn, "num_heads " + std::to_string(H) + " does not divide the width " + std::to_string(E));
    const std::size_t Dh = E / H;
    check_shape(fn, "k", k, {L, E});
    check_shape(fn, "v", v, {L, E});
    check_shape(fn, "weights", weights, {H, Q, L});
    check_shape(fn, "d_attended", d_attended, {Q, E});

    AttentionGradients grads{Matrix({Q, E}), Matrix({L, E}), Matrix({L, E}), Tensor3({H, Q, L}), Tensor3({H, Q, L})};
    const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
    const Matrix q_scaled = q * scale;  // as the forward pass scaled it
    for (std::size_t h = 0; h < H; ++h) {
        auto channels = xt::range(h * Dh, (h + 1) * Dh);  // this head's channels
        const Matrix q_h = xt::view(q_scaled, xt::all(), channels);     // (Q, Dh)
        const Matrix k_h = xt::view(k, xt::all(), channels);            // (L, Dh)
        const Matrix v_h = xt::view(v, xt::all(), channels);            // (L, Dh)
        const Matrix a_h = xt::view(weights, h);                        // (Q, L)
        const Matrix d_o_h = xt::view(d_attended, xt::all(), channels);  // (Q, Dh)

        const Matrix a_h_t = xt::transpose(a_h);
        const Matrix v_h_t = xt::transpose(v_h);
        const Matrix dv_h = matmul(a_h_t, d_o_h);                 // (L, Dh)
        const Matrix d_a_h = matmul(d_o_h, v_h_t);                // (Q, L)
        const Matrix d_s_h = softmax_rows_backward(a_h, d_a_h);   // (Q, L)
        const Matrix d_s_h_t = xt::transpose(d_s_h);
        const Matrix dq_h = matmul(d_s_h, k_h) * scale;           // (Q, Dh): through the scaling of q
        const Matrix dk_h = matmul(d_s_h_t, q_h);                 // (L, Dh): q_h already scaled

        xt::view(grads.dq, xt::all(), channels) = dq_h;
        xt::view(grads.dk, xt::all(), channels) = dk_h;
        xt::view(grads.dv, xt::all(), channels) = dv_h;
        xt::view(grads.d_weights, h) = d_a_h;
        xt::view(grads.d_scores, h) = d_s_h;
    }
    return grads;
}

}  // namespace qwenvl
