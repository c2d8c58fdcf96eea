// stages/04_layernorm.hpp: stage 04, LayerNorm (docs/stages/04-layernorm.md).
//
// The adapter normalises its keys (ln_kv) and its queries (ln_q) before the cross-attention, and the visual
// tower normalises the adapter's output (ln_post). The paper's section 2.1 does not name them; Qwen-VL's
// `Resampler` and `VisionTransformer` build them as torch.nn.LayerNorm(E, eps=1e-6). For each row x of E values:
//   mean = (1/E) sum_c x_c
//   var  = (1/E) sum_c (x_c - mean)^2             biased: divide by E, not E - 1
//   y_c  = (x_c - mean) / sqrt(var + eps) * gamma_c + beta_c      eps inside the square root
#pragma once

#include "core/shapes.hpp"

namespace qwenvl {

// x (R, E), gamma (E,), beta (E,) -> (R, E). Mirrors torch.nn.LayerNorm(E, eps) applied to each row.
// The two sums are kept in double, so the result is within one float rounding of the exact value.
Matrix layer_norm(const Matrix& x, const Vector& gamma, const Vector& beta, float eps);

// Backward (training): given x (R, E), gamma and dL/dy (R, E), the gradients of the loss L. Per row, with
// x_hat = (x - mean) / sqrt(var + eps) and g = dL/dy * gamma (the gradient reaching x_hat):
//   dL/dgamma_c = sum_r dy_rc x_hat_rc          dL/dbeta_c = sum_r dy_rc
//   dL/dx_c     = (g_c - mean(g) - x_hat_c mean(g x_hat)) / sqrt(var + eps)
// (mean and var depend on every x_c of the row: the two mean terms are their share). Mirrors autograd's
// gradients of torch.nn.LayerNorm.
struct LayerNormGradients {
    Matrix dx;            // (R, E)
    Vector dgamma, dbeta;  // (E,)
};
LayerNormGradients layer_norm_backward(const Matrix& x, const Vector& gamma, const Matrix& dy, float eps);

}  // namespace qwenvl
