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

// Backward (training): given the adapter's output out (N, Q, E) and dL/dy (N, Q, E), through y = LN_post(out) @ proj:
//   dL/dproj = sum_n LN_post(out_n)^T dy_n      dL/d LN_post(out_n) = dy_n proj^T      (matmul_backward)
//   then ln_post's gradients (layer_norm_backward), summed over the images.
// Records dL/d ln_post under "ln_post" and dL/d out under "out" in `gradients` when given.
struct TailGradients {
    Tensor3 d_out;                        // (N, Q, E), what the adapter's backward starts from
    Vector ln_post_weight, ln_post_bias;  // (E,)
    Matrix proj;                          // (E, E)
};
TailGradients tower_tail_backward(const TowerTail& tail, const Tensor3& out, const Tensor3& d_y, float eps,
                                  Trace* gradients = nullptr);

}  // namespace qwenvl
