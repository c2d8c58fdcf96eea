// stages/05_projections.hpp: stage 05, the adapter's matrix products (docs/stages/05-projections.md):
// kv_proj, the packed Q/K/V input projection, out_proj, and the tower's `proj`.
//
// Weights follow nn.Linear's (out, in) convention: y = x W^T + b. The one exception is the tower's
// `proj` (E, E), which the reference applies as a right multiplication, y = x @ W (plain matmul).
// Every product here goes through `matmul`, one loop nest a reader can step into.
#pragma once

#include "core/shapes.hpp"

namespace qwenvl {

// a (R, K) @ b (K, M) -> (R, M):  y_ij = sum_k a_ik b_kj, k from 0 up, in float.
// Mirrors torch.matmul on matrices, and `x @ self.proj` in the visual tower.
Matrix matmul(const Matrix& a, const Matrix& b);

// x (R, in), weight (out, in), bias (out,) -> (R, out):  y = x W^T + b.   Mirrors F.linear(x, W, b).
Matrix linear(const Matrix& x, const Matrix& weight, const Vector& bias);

// kv_proj: x (L, Kv) -> (L, E) = x W_kv^T with W_kv (E, Kv), no bias. An empty W_kv (size 0) is the
// reference's nn.Identity, used when Kv == E: the features are returned unchanged.
Matrix kv_projection(const Matrix& x, const Matrix& w_kv);

// nn.MultiheadAttention packs the three input projections into one tensor: rows [0, E) are W_q,
// [E, 2E) W_k, [2E, 3E) W_v, and likewise for the bias. Mirrors in_proj_weight.chunk(3).
struct InProjection {
    Matrix w_q, w_k, w_v;  // (E, E) each
    Vector b_q, b_k, b_v;  // (E,) each
};
// The first row of part `part` (0: q, 1: k, 2: v) in the packed (3E, E) weight, and its first entry in the bias.
std::size_t in_proj_offset(std::size_t part, std::size_t E);
InProjection split_in_proj(const Matrix& in_proj_weight, const Vector& in_proj_bias);
// The inverse: the three parts packed back into in_proj_weight (3E, E) and in_proj_bias (3E,), as the checkpoint
// stores them (a training run's gradients and updated weights are written so).
struct PackedInProjection {
    Matrix weight;  // (3E, E)
    Vector bias;    // (3E,)
};
PackedInProjection pack_in_proj(const InProjection& parts);

// Backward (training), given the forward pass's inputs and dL/dy:
//   y = a @ b        (matmul):  dL/da = dy b^T,   dL/db = a^T dy
//   y = x W^T + b    (linear):  dL/dx = dy W,     dL/dW = dy^T x,   dL/db = sum over the rows of dy
//   y = x W_kv^T     (kv_proj): as linear without a bias; the identity (empty W_kv) passes dy on unchanged
struct MatmulGradients {
    Matrix da, db;
};
MatmulGradients matmul_backward(const Matrix& a, const Matrix& b, const Matrix& dy);
struct LinearGradients {
    Matrix dx, dweight;  // (R, in), (out, in)
    Vector dbias;        // (out,)
};
LinearGradients linear_backward(const Matrix& x, const Matrix& weight, const Matrix& dy);
struct KvProjectionGradients {
    Matrix dx, dw_kv;  // (L, Kv), (E, Kv); dw_kv empty for the identity
};
KvProjectionGradients kv_projection_backward(const Matrix& x, const Matrix& w_kv, const Matrix& dy);

}  // namespace qwenvl
