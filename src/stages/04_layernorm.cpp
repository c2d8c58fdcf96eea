#include "stages/04_layernorm.hpp"

#include <cmath>
#include <vector>

#include <xtensor/xbuilder.hpp>

namespace qwenvl {

namespace {
// Row r's mean and 1 / sqrt(var + eps), var its biased variance: two passes, sums in double.
struct RowStatistics {
    double mean, rstd;
};
RowStatistics row_statistics(const Matrix& x, std::size_t r, float eps) {
    const std::size_t E = x.shape(1);
    double mean = 0.0;
    for (std::size_t c = 0; c < E; ++c) mean += x(r, c);
    mean /= static_cast<double>(E);

    double var = 0.0;
    for (std::size_t c = 0; c < E; ++c) var += (x(r, c) - mean) * (x(r, c) - mean);
    var /= static_cast<double>(E);  // biased, as PyTorch

    return RowStatistics{mean, 1.0 / std::sqrt(var + static_cast<double>(eps))};
}
}  // namespace

Matrix layer_norm(const Matrix& x, const Vector& gamma, const Vector& beta, float eps) {
    const std::size_t R = x.shape(0), E = x.shape(1);
    check_shape("layer_norm", "gamma", gamma, {E});
    check_shape("layer_norm", "beta", beta, {E});
    require(E > 0, "layer_norm", "x has no channels");
    Matrix y(x.shape());
    for (std::size_t r = 0; r < R; ++r) {
        const RowStatistics row = row_statistics(x, r, eps);
        for (std::size_t c = 0; c < E; ++c)
            y(r, c) = static_cast<float>((x(r, c) - row.mean) * row.rstd * gamma(c) + beta(c));
    }
    return y;
}

LayerNormGradients layer_norm_backward(const Matrix& x, const Vector& gamma, const Matrix& dy, float eps) {
    const std::size_t R = x.shape(0), E = x.shape(1);
    check_shape("layer_norm_backward", "gamma", gamma, {E});
    check_shape("layer_norm_backward", "dy", dy, {R, E});
    require(E > 0, "layer_norm_backward", "x has no channels");
    LayerNormGradients grads{Matrix(x.shape()), xt::zeros<float>({E}), xt::zeros<float>({E})};
    std::vector<double> x_hat(E), g(E);
    for (std::size_t r = 0; r < R; ++r) {
        const RowStatistics row = row_statistics(x, r, eps);  // the forward pass's, again
        const double mean = row.mean, rstd = row.rstd;

        double mean_g = 0.0, mean_g_x_hat = 0.0;
        for (std::size_t c = 0; c < E; ++c) {
            x_hat[c] = (x(r, c) - mean) * rstd;
            g[c] = static_cast<double>(dy(r, c)) * gamma(c);
            mean_g += g[c];
            mean_g_x_hat += g[c] * x_hat[c];
            grads.dgamma(c) += static_cast<float>(dy(r, c) * x_hat[c]);
            grads.dbeta(c) += dy(r, c);
        }
        mean_g /= static_cast<double>(E);
        mean_g_x_hat /= static_cast<double>(E);
        for (std::size_t c = 0; c < E; ++c)
            grads.dx(r, c) = static_cast<float>((g[c] - mean_g - x_hat[c] * mean_g_x_hat) * rstd);
    }
    return grads;
}

}  // namespace qwenvl
