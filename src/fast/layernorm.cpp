#include "fast/layernorm.hpp"

#include <algorithm>
#include <cmath>

#include "fast/lanes.hpp"
#include "fast/threads.hpp"

namespace qwenvl::fast {

namespace {
// `rows` rows of E values starting at `x`, each overwritten with (x - mean) / sqrt(var + eps) * gamma + beta.
void normalize_rows(float* x, std::size_t rows, std::size_t E, Values gamma, Values beta, float eps) {
    const char* fn = "fast::layer_norm_in_place";
    check_shape(fn, "gamma", std::vector<std::size_t>{gamma.size}, {E});
    check_shape(fn, "beta", std::vector<std::size_t>{beta.size}, {E});
    require(E > 0, fn, "x has no channels");
    const float* g = gamma.data;
    const float* b = beta.data;
    // Rows split over the fast path's threads (fast/threads.hpp), at least 2^16 values each.
    parallel_for(rows, std::max<std::size_t>((std::size_t(1) << 16) / E, 1), [&](std::size_t begin, std::size_t end) {
        for (std::size_t r = begin; r < end; ++r) {
            float* row = x + r * E;
            const double mean = lane_sum(row, E, [](float v) { return double(v); }) / static_cast<double>(E);
            const double var = lane_sum(row, E, [mean](float v) { return (v - mean) * (v - mean); }) / static_cast<double>(E);
            const double rstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
            for (std::size_t c = 0; c < E; ++c) row[c] = static_cast<float>((row[c] - mean) * rstd * g[c] + b[c]);
        }
    });
}
}  // namespace

void layer_norm_in_place(Matrix& x, Values gamma, Values beta, float eps) {
    normalize_rows(x.data(), x.shape(0), x.shape(1), gamma, beta, eps);
}

void layer_norm_in_place(Tensor3& x, Values gamma, Values beta, float eps) {
    normalize_rows(x.data(), x.shape(0) * x.shape(1), x.shape(2), gamma, beta, eps);
}

}  // namespace qwenvl::fast
