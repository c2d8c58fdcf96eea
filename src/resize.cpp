#include "resize.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "features.hpp"

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
    const char* fn = "resize_bicubic";
    require(grid_in > 0 && grid_out > 0, fn, "grid sides must be positive");
    check_shape(fn, "table", table, {grid_in * grid_in, ANY});
    const std::size_t channels = table.shape(1);
    Matrix out({grid_out * grid_out, channels});
    std::vector<float> along_w(channels);
    for (std::size_t oy = 0; oy < grid_out; ++oy) {
        const Taps ty = taps_for(grid_in, grid_out, oy);
        for (std::size_t ox = 0; ox < grid_out; ++ox) {
            const Taps tx = taps_for(grid_in, grid_out, ox);
            float* value = &out(oy * grid_out + ox, 0);
            std::fill(value, value + channels, 0.0f);
            // Along the row (w) first for each of the four source rows, then along the column (h), in the
            // order PyTorch's CPU kernel sums them. The channel loop is innermost so that it runs over
            // contiguous memory (one table row at a time) and the compiler vectorises it.
            for (int a = 0; a < 4; ++a) {
                const std::size_t row = ty.index[a] * grid_in;
                std::fill(along_w.begin(), along_w.end(), 0.0f);
                for (int b = 0; b < 4; ++b) {
                    const float* source = &table(row + tx.index[b], 0);
                    for (std::size_t c = 0; c < channels; ++c) along_w[c] += tx.weight[b] * source[c];
                }
                for (std::size_t c = 0; c < channels; ++c) value[c] += ty.weight[a] * along_w[c];
            }
        }
    }
    return out;
}

Matrix key_position_table(const Matrix& pos_q, std::size_t n_keys) {
    const std::size_t grid_q = grid_side(pos_q.shape(0), "key_position_table: the query count Q");
    const std::size_t grid_k = grid_side(n_keys, "key_position_table: the key count L");
    if (grid_q == grid_k) return pos_q;
    return resize_bicubic(pos_q, grid_q, grid_k);
}

}  // namespace qwenvl
