// stages/08_tower_tail.hpp: stage 08, the visual tower's tail after the adapter (docs/stages/08-tower-tail.md).
//
// Qwen-VL's VisionTransformer ends with `x = self.ln_post(x); x = x @ self.proj` on the adapter's output:
//   y = LN_post(out) @ proj            (N, Q, E)     proj (E, E) used as x @ W, NOT as an nn.Linear weight
#pragma once

#include "core/shapes.hpp"
#include "core/trace.hpp"

namespace qwenvl {

// The visual tower's tail (prefix transformer.visual.).
struct TowerTail {
    Vector ln_post_weight, ln_post_bias;  // (E,) ln_post
    Matrix proj;                          // (E, E) proj, used as x @ proj
};

// out (N, Q, E) -> y (N, Q, E) = LN_post(out) @ proj. Records ln_post and proj in `trace` when given.
Tensor3 tower_tail_forward(const TowerTail& tail, const Tensor3& out, float eps, Trace* trace = nullptr);

}  // namespace qwenvl
