// Exercise 06-attention: write multi_head_attention (docs/course/README.md, lesson 5).
//   check:     cmake --build --preset release --target check-06-attention
//   read:      docs/course/lesson-5-attention.md; notebooks/05_where_the_queries_look.ipynb
//   solution:  src/stages/06_attention.cpp, the project's own stage (read it once you pass)
//
// One image: q (Q, E), k (L, E), v (L, E) already projected, H heads of Dh = E / H channels, mask (Q, L) or
// nullptr -> result.scores (H, Q, L) before the mask and the softmax, result.weights (H, Q, L) after it, and
// result.attended (Q, E), each head's output in its own channels. Which channels a head owns, and the scale:
// lesson 5. Use matmul (stage 05) and softmax_rows.
// xt::view(m, xt::all(), xt::range(a, b)) is a block of columns: copy it into a Matrix before matmul, and pass
// xt::range(...) straight into xt::view (stored in a `const auto`, it does not compile).
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
