#include "fast/gemm.hpp"

#include <algorithm>

#include <xtensor-blas/xblas.hpp>

#include "fast/threads.hpp"

namespace qwenvl::fast {

Block::Block(const Matrix& m) : Block(m.data(), m.shape(0), m.shape(1), m.shape(1)) {}
Block whole(const Matrix& m) { return Block(m); }
std::vector<std::size_t> dims(const Block& b) { return {b.rows, b.cols}; }

void gemm_block(const Block& a, const Block& b, bool transpose_b, float* out, std::size_t out_stride,
                bool accumulate) {
    const std::size_t M = transpose_b ? b.rows : b.cols, K = transpose_b ? b.cols : b.rows;
    require(a.cols == K, "gemm_block", "inner sizes differ: " + std::to_string(a.cols) + " and " + std::to_string(K));
    if (a.rows == 0 || M == 0) return;
    if (K == 0) {  // an empty sum: BLAS may leave `out` untouched
        if (accumulate) return;
        for (std::size_t r = 0; r < a.rows; ++r) std::fill(out + r * out_stride, out + r * out_stride + M, 0.0f);
        return;
    }
    // Inside an OwnThreads scope (fast/threads.hpp), a large product is split into blocks of output columns, one
    // per thread, each a single-threaded sgemm on its own rows of b^T (columns of b): every output value is the
    // same sum as one single-threaded sgemm of the whole (OpenBLAS's own threads sum in another order). Blocks are
    // multiples of 64 columns, and a product of fewer than 2^24 multiply-adds stays whole (a thread's start costs
    // about as much as 2^20).
    auto columns = [&](std::size_t begin, std::size_t end) {
        const std::size_t c0 = begin * 64, c1 = std::min(end * 64, M);
        if (c0 >= c1) return;
        const Block part = transpose_b ? Block{b.data + c0 * b.stride, c1 - c0, b.cols, b.stride}
                                       : Block{b.data + c0, b.rows, c1 - c0, b.stride};
        using index = xt::blas_index_t;
        cxxblas::gemm<index>(cxxblas::StorageOrder::RowMajor, cxxblas::Transpose::NoTrans,
                             transpose_b ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                             static_cast<index>(a.rows), static_cast<index>(c1 - c0), static_cast<index>(K), 1.0f, a.data,
                             static_cast<index>(a.stride), part.data, static_cast<index>(part.stride),
                             accumulate ? 1.0f : 0.0f, out + c0, static_cast<index>(out_stride));
    };
    const std::size_t blocks = (M + 63) / 64;
    if (static_cast<double>(a.rows) * static_cast<double>(M) * static_cast<double>(K) < double(1 << 24)) return columns(0, blocks);
    parallel_for(blocks, 1, columns);
}

namespace {
// Checks that `weight` is a contiguous (out, in) block and `bias` has `out` values.
void check_linear(const Block& weight, Values bias, std::size_t in) {
    check_shape("fast::linear", "weight", dims(weight), {ANY, in});
    require(weight.stride == weight.cols, "fast::linear", "the weight is not a contiguous block");
    check_shape("fast::linear", "bias", std::vector<std::size_t>{bias.size}, {weight.rows});
}

// y (rows, M) = x W^T + b for `rows` contiguous rows of x: each row of y starts as b, sgemm adds x W^T onto it.
void linear_rows(const float* x, std::size_t rows, const Block& weight, Values bias, float* y) {
    const std::size_t K = weight.cols, M = weight.rows;
    for (std::size_t r = 0; r < rows; ++r) std::copy(bias.data, bias.data + M, y + r * M);
    gemm_block(Block{x, rows, K, K}, weight, true, y, M, /*accumulate=*/true);
}
}  // namespace

Matrix linear(const Matrix& x, const Block& weight, Values bias) {
    check_linear(weight, bias, x.shape(1));
    Matrix y({x.shape(0), weight.rows});
    linear_rows(x.data(), x.shape(0), weight, bias, y.data());
    return y;
}

void linear_into(const Matrix& x, const Block& weight, Values bias, Matrix& y) {
    check_linear(weight, bias, x.shape(1));
    check_shape("fast::linear_into", "y", y, {x.shape(0), weight.rows});
    linear_rows(x.data(), x.shape(0), weight, bias, y.data());
}

Tensor3 linear(const Tensor3& x, const Block& weight, Values bias) {
    check_linear(weight, bias, x.shape(2));
    Tensor3 y({x.shape(0), x.shape(1), weight.rows});
    linear_rows(x.data(), x.shape(0) * x.shape(1), weight, bias, y.data());
    return y;
}

Tensor3 matmul(const Tensor3& x, const Block& weight) {
    check_shape("fast::matmul", "weight", dims(weight), {x.shape(2), ANY});
    const std::size_t rows = x.shape(0) * x.shape(1), K = x.shape(2), M = weight.cols;
    Tensor3 y({x.shape(0), x.shape(1), M});
    gemm_block(Block{x.data(), rows, K, K}, weight, false, y.data(), M);
    return y;
}

Matrix kv_projection(const Block& image, const Block& w_kv) {
    Matrix y({image.rows, w_kv.empty() ? image.cols : w_kv.rows});
    kv_projection_into(image, w_kv, y);
    return y;
}

void kv_projection_into(const Block& image, const Block& w_kv, Matrix& y) {
    check_shape("fast::kv_projection", "y", y, {image.rows, w_kv.empty() ? image.cols : w_kv.rows});
    if (w_kv.empty()) {  // nn.Identity: a copy of the image's rows
        for (std::size_t r = 0; r < image.rows; ++r)
            std::copy(image.data + r * image.stride, image.data + r * image.stride + image.cols, y.data() + r * image.cols);
        return;
    }
    check_shape("fast::kv_projection", "w_kv", dims(w_kv), {ANY, image.cols});
    gemm_block(image, w_kv, true, y.data(), y.shape(1));
}

}  // namespace qwenvl::fast
