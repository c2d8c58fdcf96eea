#include "fast/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include <xtensor/xview.hpp>

#include "fast/lanes.hpp"
#include "fast/threads.hpp"

namespace qwenvl::fast {

namespace {
std::size_t head_dim(const char* fn, std::size_t E, std::size_t H) {
    require(H > 0 && E % H == 0, fn,
            "num_heads " + std::to_string(H) + " does not divide the width " + std::to_string(E));
    return E / H;
}
}  // namespace

Block head_block(const Block& x, std::size_t head, std::size_t num_heads) {
    const std::size_t Dh = head_dim("fast::head_block", x.cols, num_heads);
    require(head < num_heads, "fast::head_block", "head " + std::to_string(head) + " of " + std::to_string(num_heads));
    return Block{x.data + head * Dh, x.rows, Dh, x.stride};
}

namespace {
// a * b + c. Where the CPU has FMA instructions (the Release preset's -march=native on this machine) with one
// rounding, std::fma's exact result rounded once; elsewhere with two, since std::fma without the instruction is a
// library call per value (softmax 40 times slower). So the fast softmax's last bits differ between a native build
// and one without -march=native (the Debug preset), within the exponential's tested 3e-7 either way. The project
// otherwise keeps a*b+c as two roundings in every build (-ffp-contract=off, CMakeLists.txt).
inline float mul_add(float a, float b, float c) {
#ifdef __FMA__
    return std::fma(a, b, c);
#else
    return a * b + c;
#endif
}

// exp_nonpositive's body, here so that the softmax's loop can inline it and run it on vector registers (GCC did not
// inline the exported function into the loop once it called std::fma, and the loop ran one value at a time).
inline float exp_of_nonpositive(float x) {
    // e^x = 2^k * e^r with k = round(x / ln 2) and r = x - k ln 2, |r| <= ln2 / 2. ln 2 is split into a part
    // with few bits (exact when multiplied by k) and the rest, so that r keeps its low bits (Cody and Waite).
    constexpr float log2e = 1.44269504f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    constexpr float round_magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    // The arithmetic below runs on t in [-87, 0], where 2^k is a normal float and k a small integer; NaN and
    // arguments below -87 are answered at the end. (Converting a NaN to an integer would be undefined behaviour.)
    // Written as two one-sided clamps, which compile to the CPU's min and max (a NaN x gives t = 0 here).
    float t = x < 0.0f ? x : 0.0f;
    t = t > -87.0f ? t : -87.0f;
    const float k = mul_add(t, log2e, round_magic) - round_magic;
    const float r = mul_add(k, -ln2_lo, mul_add(k, -ln2_hi, t));
    // e^r by its Taylor series to r^6, in Horner form. The first omitted term, r^7/7!, is at most 1.19e-7 at
    // |r| = ln2/2, that is 1.69e-7 of e^r there (r = -ln2/2, where e^r is smallest).
    const float p = mul_add(mul_add(mul_add(mul_add(mul_add(mul_add(1.0f / 720, r, 1.0f / 120), r, 1.0f / 24), r, 1.0f / 6),
                                                r, 0.5f), r, 1.0f), r, 1.0f);
    const std::int32_t bits = (static_cast<std::int32_t>(k) + 127) << 23;  // the float 2^k, built from its exponent
    float two_k;
    std::memcpy(&two_k, &bits, sizeof two_k);
    // Below -87 the answer is 0, at most e^-87 = 1.6e-38 from the true value, as for -inf.
    const float e = x >= -87.0f ? p * two_k : 0.0f;
    return x == x ? e : x;  // NaN (a fully masked row) stays NaN
}
}  // namespace

float exp_nonpositive(float x) { return exp_of_nonpositive(x); }

void softmax_rows_in_place(Matrix& x, const Matrix* mask) {
    if (mask) check_shape("fast::softmax_rows", "mask", *mask, shape_of(x));
    const std::size_t rows = x.shape(0), cols = x.shape(1);
    for (std::size_t r = 0; r < rows; ++r) {
        float* out = x.data() + r * cols;
        if (mask) {
            const float* m = mask->data() + r * cols;
            for (std::size_t c = 0; c < cols; ++c) out[c] += m[c];
        }
        // Subtracting the row's maximum keeps every exponent <= 0. A fully masked row has top = -inf and
        // -inf - -inf = NaN, which exp_nonpositive passes on, as PyTorch does.
        const float top = lane_max(out, cols);
        for (std::size_t c = 0; c < cols; ++c) out[c] = exp_of_nonpositive(out[c] - top);
        const float sum = static_cast<float>(lane_sum(out, cols, [](float v) { return double(v); }));
        // One division a row, as PyTorch's CPU softmax does (_vec_softmax_lastdim in ATen's SoftMaxKernel.cpp).
        const float inverse = 1.0f / sum;
        for (std::size_t c = 0; c < cols; ++c) out[c] *= inverse;
    }
}

Matrix softmax_rows(const Matrix& scores, const Matrix* mask) {
    Matrix p = scores;
    softmax_rows_in_place(p, mask);
    return p;
}

void attend_into(const Matrix& q, const Block& k, const Block& v, std::size_t num_heads, const Matrix* mask,
                 float* out, std::size_t out_stride, AttentionBuffers& buffers, float* scores, float* weights) {
    const char* fn = "fast::multi_head_attention";
    const std::size_t Q = q.shape(0), E = q.shape(1), L = k.rows;
    const std::size_t H = num_heads, Dh = head_dim(fn, E, H);
    check_shape(fn, "k", std::vector<std::size_t>{k.rows, k.cols}, {L, E});
    check_shape(fn, "v", std::vector<std::size_t>{v.rows, v.cols}, {L, E});
    if (mask) check_shape(fn, "mask", *mask, {Q, L});
    require(out_stride >= E, fn, "the output's row stride is less than E");

    ensure_shape(buffers.q_scaled, {Q, E});
    const float scale = std::sqrt(static_cast<float>(Dh));
    // The heads are split over the fast path's threads (fast/threads.hpp), each product single-threaded. Each
    // thread's one (Q, L) buffer serves all its heads: the scores, then, in place, the weights. A fresh 1 MB tensor
    // per head (two, scores and weights) cost 64 x 256 first touches of fresh pages per image at full size.
    const std::size_t parts = parallel_parts(H, 1);
    buffers.scores.resize(std::max(buffers.scores.size(), parts));
    for (std::size_t i = 0; i < parts; ++i) ensure_shape(buffers.scores[i], {Q, L});
    parallel_for_parts(H, 1, [&](std::size_t part, std::size_t first, std::size_t end) {
        Matrix& s = buffers.scores[part];
        // PyTorch scales q before the product. Each thread scales the columns of its own heads.
        for (std::size_t r = 0; r < Q; ++r) {
            const float* row = q.data() + r * E;
            float* scaled = buffers.q_scaled.data() + r * E;
            for (std::size_t c = first * Dh; c < end * Dh; ++c) scaled[c] = row[c] / scale;
        }
        for (std::size_t h = first; h < end; ++h) {
            gemm_block(head_block(whole(buffers.q_scaled), h, H), head_block(k, h, H), true, s.data(), L);  // q_h k_h^T
            if (scores) std::copy(s.data(), s.data() + Q * L, scores + h * Q * L);
            softmax_rows_in_place(s, mask);  // now the weights A_h
            gemm_block(whole(s), head_block(v, h, H), false, out + h * Dh, out_stride);  // A_h v_h
            if (weights) std::copy(s.data(), s.data() + Q * L, weights + h * Q * L);
        }
    });
}

AttentionOutput multi_head_attention(const Matrix& q, const Block& k, const Block& v, std::size_t num_heads,
                                     const Matrix* mask, bool keep_per_head) {
    const std::size_t Q = q.shape(0), E = q.shape(1), L = k.rows, H = num_heads;
    AttentionOutput result;
    result.attended = Matrix({Q, E});
    if (keep_per_head) {
        result.scores = Tensor3({H, Q, L});
        result.weights = Tensor3({H, Q, L});
    }
    AttentionBuffers buffers;
    attend_into(q, k, v, num_heads, mask, result.attended.data(), E, buffers, keep_per_head ? result.scores.data() : nullptr,
                keep_per_head ? result.weights.data() : nullptr);
    return result;
}

}  // namespace qwenvl::fast
