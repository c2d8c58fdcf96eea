// linear.hpp: the adapter's matrix products (stage 4: kv_proj, the Q/K/V projections, out_proj, proj).
//
// Weights follow nn.Linear's (out, in) convention: y = x W^T + b. The one exception is the tower's
// `proj` (E, E), which the reference applies as a right multiplication, y = x @ W (see matmul).
// All products run through gemm_block: OpenBLAS's sgemm, reached through xtensor-blas's BLAS binding, on
// row-major buffers read in place (whole tensors, or blocks such as one attention head).
#pragma once

#include "shapes.hpp"

namespace qwenvl {

// (R, in) x (out, in) -> (R, out):  y = x W^T.         Mirrors F.linear(x, W) without bias.
Matrix linear(const Matrix& x, const Matrix& weight);
// (R, in) x (out, in) + (out,) -> (R, out):  y = x W^T + b.   Mirrors F.linear(x, W, b).
Matrix linear(const Matrix& x, const Matrix& weight, const Vector& bias);
// (N, R, in) -> (N, R, out): the same on every row of a batch.
Tensor3 linear(const Tensor3& x, const Matrix& weight);
Tensor3 linear(const Tensor3& x, const Matrix& weight, const Vector& bias);

// (R, K) x (K, M) -> (R, M): y = x @ W.   Mirrors torch.matmul; `x @ self.proj` in the visual tower.
Matrix matmul(const Matrix& x, const Matrix& weight);
Tensor3 matmul(const Tensor3& x, const Matrix& weight);

// A row-major block of a matrix: `rows` x `cols` values from `data`, consecutive rows `stride` floats apart
// (BLAS's leading dimension). A whole contiguous (R, C) matrix is {data, R, C, C}; one attention head of a
// (R, E) matrix is {data + h*Dh, R, Dh, E}, read in place without copying it out.
struct Block {
    const float* data;
    std::size_t rows, cols, stride;
};
Block whole(const Matrix& m);

// out = a b^T (transpose_b) or a b, written into a block of a.rows rows with row stride out_stride; with
// `accumulate`, out += a b^T (or a b) instead (sgemm's beta = 1).
// The single path to OpenBLAS's sgemm (through xtensor-blas's cxxblas binding) for every product here.
void gemm_block(const Block& a, const Block& b, bool transpose_b, float* out, std::size_t out_stride,
                bool accumulate = false);

// kv_proj: (N, L, Kv) -> (N, L, E) with W_kv (E, Kv), no bias. An empty W_kv (size 0) is the
// reference's nn.Identity, used when Kv == E; the features are then returned unchanged.
Tensor3 kv_projection(const Tensor3& x, const Matrix& w_kv);
// The same for one image, (L, Kv) -> (L, E), read in place from a batch as a block (adapter_forward).
Matrix kv_projection(const Block& image, const Matrix& w_kv);

// nn.MultiheadAttention packs the three input projections into one tensor: rows [0, E) are W_q,
// [E, 2E) W_k, [2E, 3E) W_v, and likewise for the bias. Mirrors in_proj_weight.chunk(3).
struct InProjection {
    Matrix w_q, w_k, w_v;  // (E, E) each
    Vector b_q, b_k, b_v;  // (E,) each
};
InProjection split_in_proj(const Matrix& in_proj_weight, const Vector& in_proj_bias);

}  // namespace qwenvl
