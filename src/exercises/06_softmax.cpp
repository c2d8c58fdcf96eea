// Exercise 06-softmax: write softmax_rows (docs/course/README.md, lesson 5).
//   check:     cmake --build --preset release --target check-06-softmax
//   read:      docs/course/lesson-5-attention.md
//   solution:  src/stages/06_attention.cpp, the project's own stage (read it once you pass)
//
// scores (Q, L), mask (Q, L) or nullptr -> weights (Q, L): for each query (a row), a softmax over its L keys. The
// mask is additive (0 keeps a key, -inf removes it, its weight then exactly 0); a row whose every entry is -inf
// becomes NaN, as in PyTorch. Keeping exp from overflowing, and where the mask goes: lesson 5.
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
