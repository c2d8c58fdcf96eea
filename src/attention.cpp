#include "attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

Block head_block(const Block& x, std::size_t head, std::size_t num_heads) {
    const std::size_t Dh = head_dim("head_block", x.cols, num_heads);
    require(head < num_heads, "head_block", "head " + std::to_string(head) + " of " + std::to_string(num_heads));
    return Block{x.data + head * Dh, x.rows, Dh, x.stride};
}

Block head_block(const Matrix& x, std::size_t head, std::size_t num_heads) { return head_block(whole(x), head, num_heads); }

Matrix attention_scores(const Block& q_scaled_head, const Block& k_head) {
    require(k_head.cols == q_scaled_head.cols, "attention_scores",
            "q has " + std::to_string(q_scaled_head.cols) + " channels per head, k " + std::to_string(k_head.cols));
    Matrix scores({q_scaled_head.rows, k_head.rows});
    gemm_block(q_scaled_head, k_head, true, scores.data(), k_head.rows);  // q k^T
    return scores;
}

void attend_values(const Matrix& weights, const Block& v_head, Matrix& attended, std::size_t head, std::size_t num_heads) {
    const std::size_t E = attended.shape(1), Dh = head_dim("attend_values", E, num_heads);
    check_shape("attend_values", "weights", weights, {attended.shape(0), v_head.rows});
    require(v_head.cols == Dh && head < num_heads, "attend_values", "the value block is not one head of the output");
    gemm_block(whole(weights), v_head, false, attended.data() + head * Dh, E);  // A v, into the head's channels
}

float exp_nonpositive(float x) {
    // e^x = 2^k * e^r with k = round(x / ln 2) and r = x - k ln 2, |r| <= ln2 / 2. ln 2 is split into a part
    // with few bits (exact when multiplied by k) and the rest, so that r keeps its low bits (Cody and Waite).
    constexpr float log2e = 1.44269504f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    constexpr float round_magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    // The arithmetic below runs on t in [-87, 0], where 2^k is a normal float and k a small integer; NaN and
    // arguments below -87 are answered at the end. (Converting a NaN to an integer would be undefined behaviour.)
    const float t = x > -87.0f ? (x < 0.0f ? x : 0.0f) : -87.0f;
    const float k = (t * log2e + round_magic) - round_magic;
    const float r = (t - k * ln2_hi) - k * ln2_lo;
    // e^r by its Taylor series to r^6, in Horner form: the first omitted term, r^7/7!, is below 1.3e-7 e^r.
    const float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    const std::int32_t bits = (static_cast<std::int32_t>(k) + 127) << 23;  // the float 2^k, built from its exponent
    float two_k;
    std::memcpy(&two_k, &bits, sizeof two_k);
    // Below -87.3, e^x is under the smallest normal float: 0, as for -inf. NaN (a fully masked row) stays NaN.
    return x >= -87.0f ? p * two_k : (x < -87.0f ? 0.0f : x);
}

Matrix softmax_rows(const Matrix& scores, const Matrix* mask) {
    if (mask) check_shape("softmax_rows", "mask", *mask, shape_of(scores));
    const std::size_t rows = scores.shape(0), cols = scores.shape(1);
    Matrix p(scores.shape());
    // Each loop below is written so that the compiler can vectorise it: plain loops over a row, and the two
    // reductions (the maximum and the sum) kept in `kLanes` independent partial results, combined at the end.
    // (A single running maximum or sum is a chain of dependent steps that the compiler may not reorder.)
    constexpr std::size_t kLanes = 8;
    for (std::size_t r = 0; r < rows; ++r) {
        const float* s = scores.data() + r * cols;
        const float* m = mask ? mask->data() + r * cols : nullptr;
        float* out = p.data() + r * cols;
        if (m)
            for (std::size_t c = 0; c < cols; ++c) out[c] = s[c] + m[c];
        else
            std::copy(s, s + cols, out);

        float lane_max[kLanes];
        std::fill(lane_max, lane_max + kLanes, -std::numeric_limits<float>::infinity());
        const std::size_t whole = cols - cols % kLanes;
        for (std::size_t c = 0; c < whole; c += kLanes)
            for (std::size_t j = 0; j < kLanes; ++j) lane_max[j] = out[c + j] > lane_max[j] ? out[c + j] : lane_max[j];
        float top = *std::max_element(lane_max, lane_max + kLanes);
        for (std::size_t c = whole; c < cols; ++c) top = std::max(top, out[c]);

        // Subtracting the row's maximum keeps every exponent <= 0: no overflow. A fully masked row has
        // top = -inf and -inf - -inf = NaN, which exp_nonpositive passes on, as PyTorch does.
        for (std::size_t c = 0; c < cols; ++c) out[c] = exp_nonpositive(out[c] - top);

        double lane_sum[kLanes] = {};  // sums in double, as before: 1e-7 relative whatever the row's length
        for (std::size_t c = 0; c < whole; c += kLanes)
            for (std::size_t j = 0; j < kLanes; ++j) lane_sum[j] += out[c + j];
        double total = 0.0;
        for (double v : lane_sum) total += v;
        for (std::size_t c = whole; c < cols; ++c) total += out[c];

        const float sum = static_cast<float>(total);
        for (std::size_t c = 0; c < cols; ++c) out[c] /= sum;
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
    return multi_head_attention(q, whole(k), whole(v), num_heads, mask, keep_per_head);
}

AttentionOutput multi_head_attention(const Matrix& q, const Block& k, const Block& v, std::size_t num_heads,
                                     const Matrix* mask, bool keep_per_head) {
    const char* fn = "multi_head_attention";
    const std::size_t Q = q.shape(0), E = q.shape(1), L = k.rows;
    const std::size_t H = num_heads, Dh = head_dim(fn, E, H);
    check_shape(fn, "k", std::vector<std::size_t>{k.rows, k.cols}, {L, E});
    check_shape(fn, "v", std::vector<std::size_t>{v.rows, v.cols}, {L, E});
    if (mask) check_shape(fn, "mask", *mask, {Q, L});

    AttentionOutput result;
    result.attended = Matrix({Q, E});
    if (keep_per_head) {
        result.scores = Tensor3({H, Q, L});
        result.weights = Tensor3({H, Q, L});
    }
    const Matrix q_scaled = q / std::sqrt(static_cast<float>(Dh));  // PyTorch scales q before the product
    for (std::size_t h = 0; h < H; ++h) {
        // The heads are read in place (head_block), not copied out: the products take a row stride.
        const Matrix scores = attention_scores(head_block(q_scaled, h, H), head_block(k, h, H));  // (Q, L)
        const Matrix weights = softmax_rows(scores, mask);                                         // (Q, L)
        attend_values(weights, head_block(v, h, H), result.attended, h, H);                       // (Q, Dh)
        if (keep_per_head) {
            xt::view(result.scores, h) = scores;
            xt::view(result.weights, h) = weights;
        }
    }
    return result;
}

}  // namespace qwenvl
