#include "stages/03_resize.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include <xtensor/xview.hpp>

#include "stages/01_feature_input.hpp"

namespace qwenvl {

namespace {
constexpr float A = -0.75f;
float cubic_near(float d) { return ((A + 2.0f) * d - (A + 3.0f)) * d * d + 1.0f; }          // |d| <= 1
float cubic_far(float d) { return ((A * d - 5.0f * A) * d + 8.0f * A) * d - 4.0f * A; }     // 1 < |d| < 2
}  // namespace

std::array<float, 4> cubic_weights(float t) {
    return {cubic_far(t + 1.0f), cubic_near(t), cubic_near(1.0f - t), cubic_far(2.0f - t)};
}

float source_coordinate(std::size_t in, std::size_t out, std::size_t j) {
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    return scale * (static_cast<float>(j) + 0.5f) - 0.5f;
}

namespace {
// The four clamped source indices and their weights for output index j along one axis.
struct Taps {
    std::array<std::size_t, 4> index;
    std::array<float, 4> weight;
};

Taps taps_for(std::size_t in, std::size_t out, std::size_t j) {
    const float s = source_coordinate(in, out, j);
    const float i0 = std::floor(s);
    Taps taps;
    taps.weight = cubic_weights(s - i0);
    for (int k = 0; k < 4; ++k) {
        const long i = static_cast<long>(i0) - 1 + k;
        taps.index[k] = static_cast<std::size_t>(std::clamp(i, 0L, static_cast<long>(in) - 1));
    }
    return taps;
}
}  // namespace

Matrix resize_bicubic(const Matrix& table, std::size_t grid_in, std::size_t grid_out) {
    return resize_bicubic(table, grid_in, Grid{grid_out, grid_out});
}

Matrix resize_bicubic(const Matrix& table, std::size_t grid_in, Grid out) {
    const char* fn = "resize_bicubic";
    require(grid_in > 0 && out.h > 0 && out.w > 0, fn, "grid sides must be positive");
    check_shape(fn, "table", table, {grid_in * grid_in, ANY});
    const std::size_t channels = table.shape(1);
    Matrix resized = xt::zeros<float>({out.cells(), channels});
    for (std::size_t oy = 0; oy < out.h; ++oy) {
        const Taps ty = taps_for(grid_in, out.h, oy);  // four source rows h
        for (std::size_t ox = 0; ox < out.w; ++ox) {
            const Taps tx = taps_for(grid_in, out.w, ox);  // four source columns w
            auto value = xt::row(resized, oy * out.w + ox);  // (C,): all channels of one output cell
            // Along w first, within each of the four source rows, then along h: the order PyTorch's CPU
            // kernel sums them in, so that the last bits agree too.
            for (int a = 0; a < 4; ++a) {
                Vector along_w = xt::zeros<float>({channels});
                for (int b = 0; b < 4; ++b) along_w += tx.weight[b] * xt::row(table, ty.index[a] * grid_in + tx.index[b]);
                value += ty.weight[a] * along_w;
            }
        }
    }
    return resized;
}

Matrix key_position_table(const Matrix& pos_q, std::size_t n_keys) {
    const std::size_t grid_q = grid_side(pos_q.shape(0), "key_position_table: the query count Q");
    const std::size_t grid_k = grid_side(n_keys, "key_position_table: the key count L");
    if (grid_q == grid_k) return pos_q;
    return resize_bicubic(pos_q, grid_q, grid_k);
}

Matrix key_position_table(const Matrix& pos_q, Grid keys) {
    if (keys.h == keys.w) return key_position_table(pos_q, keys.cells());  // the square grid, as upstream
    const std::size_t grid_q = grid_side(pos_q.shape(0), "key_position_table: the query count Q");
    return resize_bicubic(pos_q, grid_q, keys);
}

}  // namespace qwenvl
