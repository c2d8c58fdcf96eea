// Exercise 08-tower-tail: write tower_tail_forward (docs/course/README.md, lesson 6).
//   check:     cmake --build --preset release --target check-08-tower-tail
//   read:      docs/course/lesson-6-adapter.md
//   solution:  src/stages/08_tower_tail.cpp, the project's own stage (read it once you pass)
//
// The visual tower ends with `x = self.ln_post(x); x = x @ self.proj` on the adapter's output (N, Q, E) -> (N, Q, E).
// Record ln_post's output and the result with record_item(trace, name, n, N, value) as "ln_post" and "proj".
// How proj is used, and why its square shape hides the mistake: lesson 6.
#include <xtensor/xview.hpp>

#include "stages/04_layernorm.hpp"
#include "stages/05_projections.hpp"
#include "stages/08_tower_tail.hpp"

namespace qwenvl {

Tensor3 tower_tail_forward(const TowerTail& tail, const Tensor3& out, float eps, Trace* trace) {
    // TODO: replace this placeholder with ln_post and proj.
    (void)tail;
    (void)eps;
    (void)trace;
    return xt::zeros<float>(out.shape());
}

}  // namespace qwenvl
