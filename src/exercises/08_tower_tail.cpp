// Exercise 08-tower-tail: write tower_tail_forward (docs/course/README.md, lesson 6).
//   check:     cmake --build --preset release --target check-08-tower-tail
//   read:      docs/course/lesson-6-adapter.md
//   solution:  src/stages/08_tower_tail.cpp, the project's own stage (read it once you pass)
//
// The visual tower ends with `x = self.ln_post(x); x = x @ self.proj` on the adapter's output. For each image n:
//   ln_post = layer_norm(out[n], tail.ln_post_weight, tail.ln_post_bias, eps)   (Q, E)   "ln_post"
//   y[n]    = matmul(ln_post, tail.proj)                                        (Q, E)   "proj"
// recording both with record_item(trace, name, n, N, value). The pitfall: proj is used as x @ proj, a plain
// product; it is NOT an nn.Linear weight (x proj^T would be the mistake, and the square shape hides it).
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
