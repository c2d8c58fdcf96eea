// fast/attention.hpp: multi-head attention with the heads read in place and a vectorisable softmax.
//
// Replaces stages/06_attention (`multi_head_attention`, `softmax_rows`); measured at full size (`qwenvl-bench
// --gains`, docs/fast-path.md): the attention of one image 9x faster, the softmax alone 2.6x. Four changes, same
// equations:
//  - each head's q, k and v are read in place as strided blocks (fast/gemm.hpp) instead of copied out, and the
//    three products per head run through sgemm;
//  - the softmax's exponential is `exp_nonpositive`, plain arithmetic the compiler vectorises (std::exp is a
//    library call it cannot), and its maximum and sum are lane reductions (fast/lanes.hpp): 3x faster softmax;
//  - k and v may be blocks of a larger tensor, and the per-head scores and weights are kept only when asked for;
//  - one (Q, L) buffer serves every head, the softmax overwriting the scores with the weights: fresh 1 MB tensors
//    per head cost 64 x 256 first touches of fresh pages per image (attention 83 -> 61 ms at full size).
#pragma once

#include <vector>

#include "core/shapes.hpp"
#include "fast/gemm.hpp"
#include "stages/06_attention.hpp"

namespace qwenvl::fast {

// Head h of a (R, E) block: its channels [h*Dh, (h+1)*Dh) as an (R, Dh) block read in place (row stride E).
Block head_block(const Block& x, std::size_t head, std::size_t num_heads);

// e^x for x <= 0 (and NaN), as the softmax needs it after subtracting each row's maximum: within 3e-7 of
// std::exp relative to it on [-87, 0]; 0 below -87 (at most e^-87 = 1.6e-38 away) and at -inf; NaN for NaN. Plain arithmetic the compiler can vectorise.
float exp_nonpositive(float x);

// Replaces stages' softmax_rows: (Q, L) -> (Q, L), softmax over each row of scores + mask (mask may be nullptr).
Matrix softmax_rows(const Matrix& scores, const Matrix* mask);
// The same, overwriting x: how multi_head_attention turns each head's scores into its weights in one buffer.
void softmax_rows_in_place(Matrix& x, const Matrix* mask);

// What attend_into reuses from one call to the next: q / sqrt(Dh) (Q, E) and one (Q, L) buffer per thread, each
// serving its heads' scores and then, in place, their weights. Sized on first use, and again when a size changes.
struct AttentionBuffers {
    Matrix q_scaled;
    std::vector<Matrix> scores;
};

// One image's attention written into `out`, its (Q, E) rows with row stride out_stride; `scores` and `weights`,
// when not null, point at (H, Q, L) row-major floats that receive every head's scores and weights (the trace's
// own memory: Trace::item_slot). multi_head_attention below is this with
// buffers of its own; the forward pass (adapter.hpp's Workspace) passes its own, kept from image to image and
// from call to call, and writes each image's heads straight into its place in the batch.
void attend_into(const Matrix& q, const Block& k, const Block& v, std::size_t num_heads, const Matrix* mask,
                 float* out, std::size_t out_stride, AttentionBuffers& buffers, float* scores = nullptr,
                 float* weights = nullptr);

// One image: q (Q, E), k and v (L, E) blocks (whole matrices, or image n of an (N, L, E) batch read in place);
// mask (Q, L) or nullptr. With keep_per_head false, scores and weights are left empty (saves memory at full size).
AttentionOutput multi_head_attention(const Matrix& q, const Block& k, const Block& v, std::size_t num_heads,
                                     const Matrix* mask, bool keep_per_head);

}  // namespace qwenvl::fast
