#include "fast/resize.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "fast/threads.hpp"
#include "stages/03_resize.hpp"

namespace qwenvl::fast {

namespace {
// Output index j's four source indices along one axis (clamped to [0, in)) and their weights, as stage 03 takes them.
struct AxisTaps {
    std::array<std::size_t, 4> at;
    std::array<float, 4> weight;
};

std::vector<AxisTaps> axis_taps(std::size_t in, std::size_t out) {
    std::vector<AxisTaps> taps(out);
    for (std::size_t j = 0; j < out; ++j) {
        const float s = source_coordinate(in, out, j), first = std::floor(s);
        taps[j].weight = cubic_weights(s - first);
        for (long k = 0; k < 4; ++k)
            taps[j].at[k] = static_cast<std::size_t>(std::clamp(static_cast<long>(first) - 1 + k, 0L, static_cast<long>(in) - 1));
    }
    return taps;
}
}  // namespace

Matrix resize_bicubic(const Block& table, std::size_t grid_in, Grid out) {
    const char* fn = "fast::resize_bicubic";
    require(grid_in > 0 && out.h > 0 && out.w > 0, fn, "grid sides must be positive");
    check_shape(fn, "table", dims(table), {grid_in * grid_in, ANY});
    require(!table.is_packed(), fn, "the table must be float32");
    const std::size_t C = table.cols;
    const std::vector<AxisTaps> rows = axis_taps(grid_in, out.h), cols = axis_taps(grid_in, out.w);
    Matrix resized({out.cells(), C});
    parallel_for(out.cells(), 16, [&](std::size_t first, std::size_t end) {
        for (std::size_t cell = first; cell < end; ++cell) {
            const AxisTaps &ty = rows[cell / out.w], &tx = cols[cell % out.w];
            float* value = resized.data() + cell * C;
            std::fill(value, value + C, 0.0f);
            for (int a = 0; a < 4; ++a) {
                const float* src[4];
                for (int b = 0; b < 4; ++b) src[b] = table.data + (ty.at[a] * grid_in + tx.at[b]) * table.stride;
                const float wy = ty.weight[a], w0 = tx.weight[0], w1 = tx.weight[1], w2 = tx.weight[2], w3 = tx.weight[3];
                for (std::size_t c = 0; c < C; ++c) {
                    const float along_w = (((0.0f + w0 * src[0][c]) + w1 * src[1][c]) + w2 * src[2][c]) + w3 * src[3][c];
                    value[c] += wy * along_w;
                }
            }
        }
    });
    return resized;
}

Matrix key_position_table(const Block& pos_q, Grid keys) {
    const std::size_t grid_q = grid_side(pos_q.rows, "fast::key_position_table: the query count Q");
    if (keys.h == grid_q && keys.w == grid_q) return copy_of(pos_q);
    return fast::resize_bicubic(pos_q, grid_q, keys);
}

}  // namespace qwenvl::fast
