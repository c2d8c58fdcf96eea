#include "attention.hpp"

#include <cmath>
#include <limits>

#include <xtensor/xview.hpp>

#include "linear.hpp"

namespace qwenvl {

namespace {
std::size_t head_dim(const char* fn, std::size_t E, std::size_t H) {
    require(H > 0 && E % H == 0, fn,
            "num_heads " + std::to_string(H) + " does not divide the width " + std::to_string(E));
    return E / H;
}
}  // namespace

Matrix head_slice(const Matrix& x, std::size_t head, std::size_t num_heads) {
    const std::size_t Dh = head_dim("head_slice", x.shape(1), num_heads);
    require(head < num_heads, "head_slice", "head index out of range");
    return xt::view(x, xt::all(), xt::range(head * Dh, (head + 1) * Dh));
}

void merge_head(Matrix& merged, const Matrix& head_values, std::size_t head, std::size_t num_heads) {
    const std::size_t Dh = head_dim("merge_head", merged.shape(1), num_heads);
    check_shape("merge_head", "head_values", head_values, {merged.shape(0), Dh});
    xt::view(merged, xt::all(), xt::range(head * Dh, (head + 1) * Dh)) = head_values;
}

Matrix attention_scores(const Matrix& q_head, const Matrix& k_head) {
    check_shape("attention_scores", "k_head", k_head, {ANY, q_head.shape(1)});
    const float scale = std::sqrt(static_cast<float>(q_head.shape(1)));
    const Matrix q_scaled = q_head / scale;  // PyTorch divides q by sqrt(Dh) before the product
    return linear(q_scaled, k_head);        // q k^T is F.linear(q, k)
}

Matrix softmax_rows(const Matrix& scores, const Matrix* mask) {
    if (mask) check_shape("softmax_rows", "mask", *mask, shape_of(scores));
    const std::size_t rows = scores.shape(0), cols = scores.shape(1);
    Matrix p(scores.shape());
    for (std::size_t r = 0; r < rows; ++r) {
        float top = -std::numeric_limits<float>::infinity();
        for (std::size_t c = 0; c < cols; ++c) {
            p(r, c) = scores(r, c) + (mask ? (*mask)(r, c) : 0.0f);
            top = std::max(top, p(r, c));
        }
        double total = 0.0;
        for (std::size_t c = 0; c < cols; ++c) {
            p(r, c) = std::exp(p(r, c) - top);  // -inf - -inf = NaN for a fully masked row, as PyTorch
            total += p(r, c);
        }
        for (std::size_t c = 0; c < cols; ++c) p(r, c) = static_cast<float>(p(r, c) / total);
    }
    return p;
}

Matrix additive_mask(const xt::xtensor<bool, 2>& masked) {
    Matrix m(masked.shape());
    for (std::size_t i = 0; i < masked.size(); ++i)
        m.data()[i] = masked.data()[i] ? -std::numeric_limits<float>::infinity() : 0.0f;
    return m;
}

AttentionOutput multi_head_attention(const Matrix& q, const Matrix& k, const Matrix& v, std::size_t num_heads,
                                     const Matrix* mask, bool keep_per_head) {
    const char* fn = "multi_head_attention";
    const std::size_t Q = q.shape(0), E = q.shape(1), L = k.shape(0);
    const std::size_t H = num_heads;
    head_dim(fn, E, H);
    check_shape(fn, "k", k, {L, E});
    check_shape(fn, "v", v, {L, E});
    if (mask) check_shape(fn, "mask", *mask, {Q, L});

    AttentionOutput result;
    result.attended = Matrix({Q, E});
    if (keep_per_head) {
        result.scores = Tensor3({H, Q, L});
        result.weights = Tensor3({H, Q, L});
    }
    for (std::size_t h = 0; h < H; ++h) {
        const Matrix scores = attention_scores(head_slice(q, h, H), head_slice(k, h, H));  // (Q, L)
        const Matrix weights = softmax_rows(scores, mask);                                  // (Q, L)
        const Matrix v_h = head_slice(v, h, H);                                             // (L, Dh)
        const Matrix o_h = matmul(weights, v_h);                                            // (Q, Dh)
        merge_head(result.attended, o_h, h, H);
        if (keep_per_head) {
            xt::view(result.scores, h) = scores;
            xt::view(result.weights, h) = weights;
        }
    }
    return result;
}

}  // namespace qwenvl
