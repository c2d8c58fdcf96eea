// layernorm.hpp: LayerNorm, used three times in the adapter (ln_q, ln_kv) and once in the tower's tail (ln_post).
//
// Paper: the adapter is a cross-attention layer; Qwen-VL's Resampler normalises its keys and queries with
// LayerNorm before the attention, and the visual tower normalises the adapter's output (ln_post).
// Mirrors torch.nn.LayerNorm(E, eps=1e-6):
//   mean = (1/E) sum_c x_c,   var = (1/E) sum_c (x_c - mean)^2      (biased: divide by E, not E-1)
//   y_c  = (x_c - mean) / sqrt(var + eps) * gamma_c + beta_c        (eps inside the square root)
#pragma once

#include "shapes.hpp"

namespace qwenvl {

// (R, E) -> (R, E): each row standardised to mean 0 and variance 1 (before the affine step).
Matrix standardize_rows(const Matrix& x, float eps);

// (R, E) -> (R, E) with gamma, beta of shape (E,).
Matrix layer_norm(const Matrix& x, const Vector& gamma, const Vector& beta, float eps);

// (N, R, E) -> (N, R, E): the same over the last axis.
Tensor3 layer_norm(const Tensor3& x, const Vector& gamma, const Vector& beta, float eps);

// (R, E), overwriting x: the adapter's ln_kv, which would otherwise hold an image's (L, E) features twice.
void layer_norm_in_place(Matrix& x, const Vector& gamma, const Vector& beta, float eps);

}  // namespace qwenvl
