// Exercise 06-attention: write multi_head_attention (docs/course/README.md, lesson 5).
//   check:     cmake --build --preset release --target check-06-attention
//   read:      docs/course/lesson-5-attention.md; notebooks/05_where_the_queries_look.ipynb
//   solution:  src/stages/06_attention.cpp, the project's own stage (read it once you pass)
//
// One image: q (Q, E), k (L, E), v (L, E) already projected, H heads of Dh = E / H channels, mask (Q, L) or
// nullptr. Head h owns the channels [h*Dh, (h+1)*Dh):
//   S_h = (q_h / sqrt(Dh)) k_h^T          (Q, L)     -> result.scores[h]
//   A_h = softmax_rows(S_h, mask)         (Q, L)     -> result.weights[h]
//   O_h = A_h v_h                         (Q, Dh)    -> result.attended[:, h*Dh : (h+1)*Dh]
// The pitfalls: scaling by 1/sqrt(E) (the whole width) instead of 1/sqrt(Dh); scaling the scores by 1/Dh; heads
// taken as interleaved channels instead of contiguous blocks. Use matmul (stage 05) and softmax_rows.
// xt::view(m, xt::all(), xt::range(a, b)) is a block of columns; copy it into a Matrix before matmul.
#include <cmath>

#include <xtensor/xview.hpp>

#include "stages/05_projections.hpp"
#include "stages/06_attention.hpp"

namespace qwenvl {

AttentionOutput multi_head_attention(const Matrix& q, const Matrix& k, const Matrix& v, std::size_t num_heads,
                                     const Matrix* mask) {
    // TODO: replace this placeholder with the heads' attention.
    (void)v;
    (void)mask;
    const std::size_t Q = q.shape(0), E = q.shape(1), L = k.shape(0), H = num_heads;
    return AttentionOutput{xt::zeros<float>({Q, E}), xt::zeros<float>({H, Q, L}), xt::zeros<float>({H, Q, L})};
}

}  // namespace qwenvl
