#include "linear.hpp"

#include <algorithm>

#include <xtensor-blas/xblas.hpp>
#include <xtensor/xview.hpp>

namespace qwenvl {

Block whole(const Matrix& m) { return Block{m.data(), m.shape(0), m.shape(1), m.shape(1)}; }

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
    using index = xt::blas_index_t;
    cxxblas::gemm<index>(cxxblas::StorageOrder::RowMajor, cxxblas::Transpose::NoTrans,
                         transpose_b ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                         static_cast<index>(a.rows), static_cast<index>(M), static_cast<index>(K), 1.0f, a.data,
                         static_cast<index>(a.stride), b.data, static_cast<index>(b.stride), accumulate ? 1.0f : 0.0f, out,
                         static_cast<index>(out_stride));
}

namespace {
// C (R, M) = A (R, K) times B, where B is (M, K) and transposed when `transpose_b`, else (K, M): three
// contiguous row-major buffers.
// With `accumulate`, C += A B instead.
void gemm(const float* a, const float* b, float* c, std::size_t R, std::size_t K, std::size_t M, bool transpose_b,
          bool accumulate = false) {
    gemm_block(Block{a, R, K, K}, transpose_b ? Block{b, M, K, K} : Block{b, K, M, M}, transpose_b, c, M, accumulate);
}

// y (rows, M) = x W^T + b, the way PyTorch's addmm does it: every row of y starts as b and sgemm adds the
// product onto it (beta = 1). One pass over y fewer than adding b afterwards, and the same sums as PyTorch's.
void linear_with_bias(const float* x, const Matrix& weight, const Vector& bias, float* y, std::size_t rows) {
    const std::size_t K = weight.shape(1), M = weight.shape(0);
    for (std::size_t r = 0; r < rows; ++r) std::copy(bias.data(), bias.data() + M, y + r * M);
    gemm(x, weight.data(), y, rows, K, M, true, /*accumulate=*/true);
}
}  // namespace

Matrix linear(const Matrix& x, const Matrix& weight) {
    check_shape("linear", "weight", weight, {ANY, x.shape(1)});
    Matrix y({x.shape(0), weight.shape(0)});
    gemm(x.data(), weight.data(), y.data(), x.shape(0), x.shape(1), weight.shape(0), true);
    return y;
}

Matrix linear(const Matrix& x, const Matrix& weight, const Vector& bias) {
    check_shape("linear", "weight", weight, {ANY, x.shape(1)});
    check_shape("linear", "bias", bias, {weight.shape(0)});
    Matrix y({x.shape(0), weight.shape(0)});
    linear_with_bias(x.data(), weight, bias, y.data(), x.shape(0));
    return y;
}

Tensor3 linear(const Tensor3& x, const Matrix& weight) {
    check_shape("linear", "weight", weight, {ANY, x.shape(2)});
    Tensor3 y({x.shape(0), x.shape(1), weight.shape(0)});
    gemm(x.data(), weight.data(), y.data(), x.shape(0) * x.shape(1), x.shape(2), weight.shape(0), true);
    return y;
}

Tensor3 linear(const Tensor3& x, const Matrix& weight, const Vector& bias) {
    check_shape("linear", "weight", weight, {ANY, x.shape(2)});
    check_shape("linear", "bias", bias, {weight.shape(0)});
    Tensor3 y({x.shape(0), x.shape(1), weight.shape(0)});
    linear_with_bias(x.data(), weight, bias, y.data(), x.shape(0) * x.shape(1));
    return y;
}

Matrix matmul(const Matrix& x, const Matrix& weight) {
    check_shape("matmul", "weight", weight, {x.shape(1), ANY});
    Matrix y({x.shape(0), weight.shape(1)});
    gemm(x.data(), weight.data(), y.data(), x.shape(0), x.shape(1), weight.shape(1), false);
    return y;
}

Tensor3 matmul(const Tensor3& x, const Matrix& weight) {
    check_shape("matmul", "weight", weight, {x.shape(2), ANY});
    Tensor3 y({x.shape(0), x.shape(1), weight.shape(1)});
    gemm(x.data(), weight.data(), y.data(), x.shape(0) * x.shape(1), x.shape(2), weight.shape(1), false);
    return y;
}

Tensor3 kv_projection(const Tensor3& x, const Matrix& w_kv) {
    if (w_kv.size() == 0) return x;  // nn.Identity: Kv == E, no tensor in the checkpoint
    check_shape("kv_projection", "w_kv", w_kv, {ANY, x.shape(2)});
    return linear(x, w_kv);
}

Matrix kv_projection(const Block& image, const Matrix& w_kv) {
    Matrix y({image.rows, w_kv.size() == 0 ? image.cols : w_kv.shape(0)});
    if (w_kv.size() == 0) {  // nn.Identity: a copy of the image's rows
        for (std::size_t r = 0; r < image.rows; ++r)
            std::copy(image.data + r * image.stride, image.data + r * image.stride + image.cols, y.data() + r * image.cols);
        return y;
    }
    check_shape("kv_projection", "w_kv", w_kv, {ANY, image.cols});
    gemm_block(image, whole(w_kv), true, y.data(), y.shape(1));
    return y;
}

InProjection split_in_proj(const Matrix& in_proj_weight, const Vector& in_proj_bias) {
    const char* fn = "split_in_proj";
    require(in_proj_weight.shape(0) % 3 == 0, fn,
            "in_proj_weight has shape " + shape_string(shape_of(in_proj_weight)) + ", expected (3E, E)");
    const std::size_t E = in_proj_weight.shape(0) / 3;
    check_shape(fn, "in_proj_weight", in_proj_weight, {3 * E, E});
    check_shape(fn, "in_proj_bias", in_proj_bias, {3 * E});
    auto rows = [&](std::size_t block) { return Matrix(xt::view(in_proj_weight, xt::range(block * E, (block + 1) * E), xt::all())); };
    auto part = [&](std::size_t block) { return Vector(xt::view(in_proj_bias, xt::range(block * E, (block + 1) * E))); };
    return InProjection{rows(0), rows(1), rows(2), part(0), part(1), part(2)};
}

}  // namespace qwenvl
