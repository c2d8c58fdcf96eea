// fast/gemm.hpp: the matrix products of the fast path, through OpenBLAS's sgemm.
//
// Replaces stages/05_projections (`matmul`, `linear`, `kv_projection`), whose loop nest runs at a few GFLOP/s,
// with OpenBLAS's sgemm reached through xtensor-blas's cxxblas binding (about 150-230 GFLOP/s on this
// project's 2-core machines). Measured gain at full size (`qwenvl-bench --gains`, docs/fast-path.md): 31x for
// the key projection, 35x for kv_proj, 33x for proj. The operands are row-major buffers read in place: whole
// tensors, or blocks such as one attention head of a (Q, E) matrix or one image of an (N, L, Kv) batch, so
// nothing is copied out first. Proven equal to the stages by the same golden tests (tests/test_golden.cpp).
#pragma once

#include "core/shapes.hpp"

namespace qwenvl::fast {

// A row-major block of a matrix: `rows` x `cols` values from `data`, consecutive rows `stride` floats apart
// (BLAS's leading dimension). A whole contiguous (R, C) matrix is {data, R, C, C}; one attention head of a
// (R, E) matrix is {data + h*Dh, R, Dh, E}, read in place without copying it out.
struct Block {
    const float* data;
    std::size_t rows, cols, stride;
};
Block whole(const Matrix& m);

// out = a b^T (transpose_b) or a b, written into a block of a.rows rows with row stride out_stride; with
// `accumulate`, out += a b^T (or a b) instead (sgemm's beta = 1). The single call of sgemm in the project.
void gemm_block(const Block& a, const Block& b, bool transpose_b, float* out, std::size_t out_stride,
                bool accumulate = false);

// Replaces stages' linear: (R, in) x (out, in) + (out,) -> (R, out), y = x W^T + b, the way PyTorch's addmm
// does it: every row of y starts as b and sgemm adds the product onto it (beta = 1).
Matrix linear(const Matrix& x, const Matrix& weight, const Vector& bias);
// The same on every row of a batch (N, R, in) -> (N, R, out), as one sgemm (out_proj on the whole batch).
Tensor3 linear(const Tensor3& x, const Matrix& weight, const Vector& bias);

// Replaces stages' matmul on a batch: (N, R, K) x (K, M) -> (N, R, M), y = x @ W, one sgemm (the tower's proj).
Tensor3 matmul(const Tensor3& x, const Matrix& weight);

// Replaces stages' kv_projection for one image read in place from a batch: (L, Kv) block -> (L, E).
// An empty W_kv is nn.Identity (Kv == E): a copy of the image's rows.
Matrix kv_projection(const Block& image, const Matrix& w_kv);

}  // namespace qwenvl::fast
