// fast/gemm.hpp: the matrix products of the fast path, through OpenBLAS's sgemm.
//
// Replaces stages/05_projections (`matmul`, `linear`, `kv_projection`), whose loop nest runs at a few GFLOP/s,
// with OpenBLAS's sgemm reached through xtensor-blas's cxxblas binding (about 150-230 GFLOP/s on this
// project's 2-core machines). Measured gain at full size (`qwenvl-bench --gains`, docs/fast-path.md): 31x for
// the key projection, 35x for kv_proj, 33x for proj. The operands are row-major buffers read in place: whole
// tensors, or blocks such as one attention head of a (Q, E) matrix or one image of an (N, L, Kv) batch, so
// nothing is copied out first. Proven equal to the stages by the same golden tests (tests/test_golden.cpp).
#pragma once

#include <cstdint>

#include "core/shapes.hpp"

namespace qwenvl::fast {

// A row-major block of a matrix: `rows` x `cols` values from `data`, consecutive rows `stride` floats apart
// (BLAS's leading dimension). A whole contiguous (R, C) matrix is {data, R, C, C}; one attention head of a
// (R, E) matrix is {data + h*Dh, R, Dh, E}, read in place without copying it out. A Matrix converts to the
// block of all of it (an empty Matrix to an empty block), so the fast path takes weights held in tensors or
// read in place from a mapped checkpoint (io/checkpoint.hpp's map_adapter) alike.
// A weight may instead stay in the 16-bit format it is stored in (a bf16 or f16 checkpoint read in place, io's
// map_adapter): `packed` points at its elements of `bytes` bytes each (rows `stride` elements apart) and `widen`
// turns a run of them into float32. Only the products take such a block: gemm_block widens the columns each of its
// parts computes into a buffer the process keeps (two of 32 MiB at full size, transparent huge pages), so that no
// float32 copy of the whole checkpoint is made (at full size 368 MB of fresh pages, about 17 us each here).
struct Packed {
    const std::uint8_t* data = nullptr;
    std::size_t bytes = 0;
    void (*widen)(const std::uint8_t* raw, std::size_t count, float* out) = nullptr;
};
struct Block {
    const float* data = nullptr;
    std::size_t rows = 0, cols = 0, stride = 0;
    Packed packed;  // set instead of `data` for a weight kept in 16 bits
    Block() = default;
    Block(const float* data, std::size_t rows, std::size_t cols, std::size_t stride)
        : data(data), rows(rows), cols(cols), stride(stride) {}
    Block(Packed packed, std::size_t rows, std::size_t cols, std::size_t stride)
        : rows(rows), cols(cols), stride(stride), packed(packed) {}
    Block(const Matrix& m);  // NOLINT(google-explicit-constructor): a whole matrix
    bool empty() const { return rows == 0 || cols == 0; }
    bool is_packed() const { return packed.data != nullptr; }
};
Block whole(const Matrix& m);
// A copy of the block as a Matrix of its own, its values widened to float32 when it is packed.
Matrix copy_of(const Block& b);
// The block's shape {rows, cols}, for check_shape.
std::vector<std::size_t> dims(const Block& b);

// A buffer kept from call to call (fast/adapter.hpp's Workspace): made anew with `shape` unless it has it already.
template <class Tensor>
void ensure_shape(Tensor& buffer, const typename Tensor::shape_type& shape) {
    if (buffer.shape() != shape) buffer = Tensor(shape);
}

// A run of `size` floats read in place: a bias, or a LayerNorm's weight or bias. A Vector converts to all of it.
struct Values {
    const float* data = nullptr;
    std::size_t size = 0;
    Values() = default;
    Values(const float* data, std::size_t size) : data(data), size(size) {}
    Values(const Vector& v) : data(v.data()), size(v.size()) {}  // NOLINT(google-explicit-constructor)
};

// out = a b^T (transpose_b) or a b, written into a block of a.rows rows with row stride out_stride; with
// `accumulate`, out += a b^T (or a b) instead (sgemm's beta = 1). Every product of the project goes through it. b may be
// packed (16 bits): the output is then the same, bit for bit, as with b widened to float32 first.
// With `transpose_a`, a^T takes a's place (a.cols rows of a.rows values): the backward pass's weight gradients,
// dW = dy^T x, summed over every row of a batch in one product.
void gemm_block(const Block& a, const Block& b, bool transpose_b, float* out, std::size_t out_stride,
                bool accumulate = false, bool transpose_a = false);

// Replaces stages' linear: (R, in) x (out, in) + (out,) -> (R, out), y = x W^T + b, the way PyTorch's addmm
// does it: every row of y starts as b and sgemm adds the product onto it (beta = 1).
// The weight is a contiguous (out, in) block.
Matrix linear(const Matrix& x, const Block& weight, Values bias);
// The same on every row of a batch (N, R, in) -> (N, R, out), as one sgemm (out_proj on the whole batch).
Tensor3 linear(const Tensor3& x, const Block& weight, Values bias);

// The same into an existing (R, out) matrix y, overwritten: how fast::adapter_forward reuses one image's buffers
// for the next image.
void linear_into(const Matrix& x, const Block& weight, Values bias, Matrix& y);

// Replaces stages' matmul on a batch: (N, R, K) x (K, M) -> (N, R, M), y = x @ W, one sgemm (the tower's proj).
Tensor3 matmul(const Tensor3& x, const Block& weight);

// Replaces stages' kv_projection for one image read in place from a batch: (L, Kv) block -> (L, E).
// An empty W_kv is nn.Identity (Kv == E): a copy of the image's rows.
Matrix kv_projection(const Block& image, const Block& w_kv);
// The same into an existing (L, E) matrix y, overwritten.
void kv_projection_into(const Block& image, const Block& w_kv, Matrix& y);

}  // namespace qwenvl::fast
