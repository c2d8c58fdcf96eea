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

}  // namespace qwenvl
