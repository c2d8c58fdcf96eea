#include "stages/05_projections.hpp"

#include <xtensor/xnoalias.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xview.hpp>

namespace qwenvl {

Matrix matmul(const Matrix& a, const Matrix& b) {
    check_shape("matmul", "b", b, {a.shape(1), ANY});
    const std::size_t R = a.shape(0), K = a.shape(1), M = b.shape(1);
    Matrix y = xt::zeros<float>({R, M});
    // Row i of y is the sum over k of a_ik times row k of b. Adding whole rows (the i-k-j order of the three
    // loops) reads memory in order and runs on vector instructions; each y_ij still sums its K products from
    // k = 0 up, one after another, as the i-j-k order would. (xt::noalias: y's row and b's row are different
    // memory, so xtensor need not build the sum in a temporary first.)
    for (std::size_t i = 0; i < R; ++i) {
        auto y_i = xt::row(y, i);  // a view: row i of y itself, not a copy
        for (std::size_t k = 0; k < K; ++k) xt::noalias(y_i) += a(i, k) * xt::row(b, k);
    }
    return y;
}

Matrix linear(const Matrix& x, const Matrix& weight, const Vector& bias) {
    check_shape("linear", "weight", weight, {ANY, x.shape(1)});
    check_shape("linear", "bias", bias, {weight.shape(0)});
    const Matrix weight_t = xt::transpose(weight);  // (in, out)
    return matmul(x, weight_t) + bias;              // the bias is added to every row
}

Matrix kv_projection(const Matrix& x, const Matrix& w_kv) {
    if (w_kv.size() == 0) return x;  // nn.Identity: Kv == E, no tensor in the checkpoint
    check_shape("kv_projection", "w_kv", w_kv, {ANY, x.shape(1)});
    const Matrix w_kv_t = xt::transpose(w_kv);  // (Kv, E)
    return matmul(x, w_kv_t);
}

std::size_t in_proj_offset(std::size_t part, std::size_t E) { return part * E; }

InProjection split_in_proj(const Matrix& in_proj_weight, const Vector& in_proj_bias) {
    const char* fn = "split_in_proj";
    require(in_proj_weight.shape(0) % 3 == 0, fn,
            "in_proj_weight has shape " + shape_string(shape_of(in_proj_weight)) + ", expected (3E, E)");
    const std::size_t E = in_proj_weight.shape(0) / 3;
    check_shape(fn, "in_proj_weight", in_proj_weight, {3 * E, E});
    check_shape(fn, "in_proj_bias", in_proj_bias, {3 * E});
    auto rows = [&](std::size_t part) {
        return Matrix(xt::view(in_proj_weight, xt::range(in_proj_offset(part, E), in_proj_offset(part + 1, E)), xt::all()));
    };
    auto entries = [&](std::size_t part) {
        return Vector(xt::view(in_proj_bias, xt::range(in_proj_offset(part, E), in_proj_offset(part + 1, E))));
    };
    return InProjection{rows(0), rows(1), rows(2), entries(0), entries(1), entries(2)};
}

PackedInProjection pack_in_proj(const InProjection& parts) {
    const std::size_t E = parts.w_q.shape(0);
    PackedInProjection packed{Matrix({3 * E, E}), Vector::from_shape({3 * E})};
    const Matrix* weights[3] = {&parts.w_q, &parts.w_k, &parts.w_v};
    const Vector* biases[3] = {&parts.b_q, &parts.b_k, &parts.b_v};
    for (std::size_t part = 0; part < 3; ++part) {
        check_shape("pack_in_proj", "a weight", *weights[part], {E, E});
        check_shape("pack_in_proj", "a bias", *biases[part], {E});
        auto rows = xt::range(in_proj_offset(part, E), in_proj_offset(part + 1, E));
        xt::view(packed.weight, rows, xt::all()) = *weights[part];
        xt::view(packed.bias, rows) = *biases[part];
    }
    return packed;
}

MatmulGradients matmul_backward(const Matrix& a, const Matrix& b, const Matrix& dy) {
    check_shape("matmul_backward", "dy", dy, {a.shape(0), b.shape(1)});
    const Matrix b_t = xt::transpose(b);
    const Matrix a_t = xt::transpose(a);
    return MatmulGradients{matmul(dy, b_t), matmul(a_t, dy)};
}

LinearGradients linear_backward(const Matrix& x, const Matrix& weight, const Matrix& dy) {
    check_shape("linear_backward", "weight", weight, {ANY, x.shape(1)});
    check_shape("linear_backward", "dy", dy, {x.shape(0), weight.shape(0)});
    const Matrix dy_t = xt::transpose(dy);  // (out, R)
    return LinearGradients{matmul(dy, weight), matmul(dy_t, x), xt::sum(dy, {0})};
}

KvProjectionGradients kv_projection_backward(const Matrix& x, const Matrix& w_kv, const Matrix& dy) {
    if (w_kv.size() == 0) return KvProjectionGradients{dy, Matrix()};  // nn.Identity
    check_shape("kv_projection_backward", "w_kv", w_kv, {ANY, x.shape(1)});
    check_shape("kv_projection_backward", "dy", dy, {x.shape(0), w_kv.shape(0)});
    const Matrix dy_t = xt::transpose(dy);  // (E, L)
    return KvProjectionGradients{matmul(dy, w_kv), matmul(dy_t, x)};
}

}  // namespace qwenvl
