// Exercise 06-softmax: write softmax_rows (docs/course/README.md, lesson 5).
//   check:     cmake --build --preset release --target check-06-softmax
//   read:      docs/course/lesson-5-attention.md
//   solution:  src/stages/06_attention.cpp, the project's own stage (read it once you pass)
//
// scores (Q, L), mask (Q, L) or nullptr -> weights (Q, L). For each row of s = scores + mask (one query, L keys):
//   p_j = exp(s_j - max_i s_i) / sum_i exp(s_i - max_i s_i)
// Subtracting the row's maximum changes nothing mathematically and keeps exp from overflowing. The mask is
// additive: 0 keeps a key, -inf removes it (its weight becomes exactly 0). A row whose every entry is -inf
// becomes NaN, as in PyTorch. The pitfalls: the softmax over a column instead of a row; the mask added after the
// maximum; exp without the maximum (overflow to inf, then inf / inf = NaN).
#include <algorithm>
#include <cmath>
#include <limits>

#include "stages/06_attention.hpp"

namespace qwenvl {

Matrix softmax_rows(const Matrix& scores, const Matrix* mask) {
    // TODO: replace this placeholder with the softmax of each row.
    (void)mask;
    return xt::zeros<float>(scores.shape());
}

}  // namespace qwenvl
