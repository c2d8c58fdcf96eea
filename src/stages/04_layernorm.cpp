#include "stages/04_layernorm.hpp"

#include <cmath>

namespace qwenvl {

Matrix layer_norm(const Matrix& x, const Vector& gamma, const Vector& beta, float eps) {
    const std::size_t R = x.shape(0), E = x.shape(1);
    check_shape("layer_norm", "gamma", gamma, {E});
    check_shape("layer_norm", "beta", beta, {E});
    require(E > 0, "layer_norm", "x has no channels");
    Matrix y(x.shape());
    for (std::size_t r = 0; r < R; ++r) {
        double mean = 0.0;
        for (std::size_t c = 0; c < E; ++c) mean += x(r, c);
        mean /= static_cast<double>(E);

        double var = 0.0;
        for (std::size_t c = 0; c < E; ++c) var += (x(r, c) - mean) * (x(r, c) - mean);
        var /= static_cast<double>(E);  // biased, as PyTorch

        const double rstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
        for (std::size_t c = 0; c < E; ++c) y(r, c) = static_cast<float>((x(r, c) - mean) * rstd * gamma(c) + beta(c));
    }
    return y;
}

}  // namespace qwenvl
