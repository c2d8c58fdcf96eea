// Invariants and error paths of each stage, on both paths where both have the function. These hold whatever the
// fixtures say; the golden values are in test_golden.cpp.
#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <map>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <limits>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <xtensor/xrandom.hpp>
#include <xtensor/xview.hpp>

#include "core/compare.hpp"
#include "core/memory.hpp"
#include "core/trace.hpp"
#include "fast/adapter.hpp"
#include "fast/attention.hpp"
#include "fast/gemm.hpp"
#include "fast/lanes.hpp"
#include "fast/layernorm.hpp"
#include "fast/resize.hpp"
#include "fast/sincos.hpp"
#include "fast/threads.hpp"
#include "io/fixture.hpp"
#include "io/checkpoint.hpp"
#include "temp_files.hpp"
#include "io/npy.hpp"
#include "io/safetensors.hpp"
#include "io/safetensors_writer.hpp"
#include "safetensors_writer.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/02_sincos.hpp"
#include "stages/03_resize.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/05_projections.hpp"
#include "stages/06_attention.hpp"
#include "stages/07_adapter.hpp"
#include "stages/09_fusion.hpp"

using namespace qwenvl;
using Catch::Matchers::Contains;

TEST_CASE("check_shape names the function, the argument and both shapes", "[shapes]") {
    Matrix m({2, 3});
    CHECK_NOTHROW(check_shape("f", "m", m, {2, ANY}));
    CHECK_THROWS_WITH(check_shape("layer_norm", "gamma", m, {2, 4}),
                      "layer_norm: gamma has shape (2, 3), expected (2, 4)");
    CHECK_THROWS_AS(check_shape("f", "m", m, {2, 3, 1}), ShapeError);
}

TEST_CASE("feature input: the patch count must be a perfect square, the values finite", "[features]") {
    CHECK(grid_side(1024, "L") == 32);
    CHECK(grid_side(9, "L") == 3);
    CHECK_THROWS_WITH(grid_side(1000, "L"), Contains("1000 is not a perfect square"));
    CHECK_THROWS(grid_side(0, "L"));
    xt::xarray<float> two_d = xt::ones<float>({4, 5});
    CHECK(shape_of(as_feature_batch(two_d)) == std::vector<std::size_t>{1, 4, 5});
    xt::xarray<float> batch = xt::ones<float>({3, 9, 2});
    CHECK(shape_of(as_feature_batch(batch)) == std::vector<std::size_t>{3, 9, 2});
    CHECK_THROWS_WITH(as_feature_batch(xt::xarray<float>(xt::ones<float>({1, 8, 2}))), Contains("perfect square"));
    batch(1, 2, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(as_feature_batch(batch), Contains("NaN or infinite"));
    CHECK_THROWS(as_feature_batch(xt::xarray<float>(xt::ones<float>({4}))));
}

TEST_CASE("feature input: the batch holds the features' values in order, copied or moved, at seeded random shapes",
          "[features]") {
    std::mt19937 rng(1101);
    for (int trial = 0; trial < 20; ++trial) {
        const std::size_t side = 1 + rng() % 6, L = side * side, Kv = 1 + rng() % 9, N = 1 + rng() % 3;
        const bool unbatched = trial % 2 == 0;
        xt::xarray<float> features = unbatched ? xt::xarray<float>::from_shape({L, Kv}) : xt::xarray<float>::from_shape({N, L, Kv});
        std::uniform_real_distribution<float> value(-3.0f, 3.0f);
        for (float& f : features) f = value(rng);
        const std::vector<float> flat(features.begin(), features.end());
        const std::vector<std::size_t> expected = {unbatched ? 1 : N, L, Kv};
        const Tensor3 copied = as_feature_batch(features);
        CHECK(shape_of(copied) == expected);
        CHECK(std::vector<float>(copied.begin(), copied.end()) == flat);
        CHECK(std::vector<float>(features.begin(), features.end()) == flat);  // the caller's array is untouched
        const Tensor3 moved = as_feature_batch(std::move(features));
        CHECK(shape_of(moved) == expected);
        CHECK(std::vector<float>(moved.begin(), moved.end()) == flat);
    }
}

TEST_CASE("sin-cos table: position 0 is all sines 0 then all cosines 1, in both halves", "[sincos]") {
    const std::size_t E = 16;
    const Matrix t = sincos_2d(E, 4);
    REQUIRE(shape_of(t) == std::vector<std::size_t>{16, E});
    for (std::size_t c = 0; c < E; ++c) CHECK(t(0, c) == ((c % (E / 2)) < E / 4 ? 0.0f : 1.0f));
}

TEST_CASE("sin-cos table: the first half encodes the column w, the second the row h", "[sincos]") {
    const std::size_t E = 8, G = 3;
    const Matrix t = sincos_2d(E, G);
    for (std::size_t h = 0; h < G; ++h)
        for (std::size_t w = 0; w < G; ++w) {
            const Matrix col = sincos_1d(E / 2, {static_cast<float>(w)});
            const Matrix row = sincos_1d(E / 2, {static_cast<float>(h)});
            for (std::size_t c = 0; c < E / 2; ++c) {
                CHECK(t(h * G + w, c) == col(0, c));
                CHECK(t(h * G + w, E / 2 + c) == row(0, c));
            }
        }
    CHECK_THROWS_WITH(sincos_2d(6, 2), Contains("divisible by 4"));
}

TEST_CASE("sin-cos table, fast: equal to the readable table bit for bit on random widths and grids (seeded)", "[sincos][fast]") {
    std::mt19937 rng(26);
    std::uniform_int_distribution<std::size_t> quarter(1, 96), side(1, 40);
    for (int trial = 0; trial < 40; ++trial) {
        const std::size_t E = 4 * quarter(rng);
        const Grid grid{side(rng), side(rng)};
        INFO("E " << E << ", grid " << grid.h << " x " << grid.w);
        CHECK(bool(fast::sincos_2d(E, grid) == sincos_2d(E, grid)));
    }
    CHECK(bool(fast::sincos_2d(4096, Grid{16, 16}) == sincos_2d(4096, 16)));  // Qwen-VL's own table
    CHECK_THROWS_WITH(fast::sincos_2d(6, Grid{2, 2}), Contains("divisible by 4"));
    CHECK_THROWS_WITH(fast::sincos_2d(8, Grid{0, 2}), Contains("positive"));
}

TEST_CASE("bicubic: weights sum to 1, a constant grid stays constant, equal grids are left alone", "[resize]") {
    for (float t : {0.0f, 0.25f, 0.5f, 0.9f}) {
        const auto w = cubic_weights(t);
        CHECK(w[0] + w[1] + w[2] + w[3] == Approx(1.0f).margin(1e-6));
    }
    CHECK(cubic_weights(0.0f)[1] == 1.0f);
    CHECK(source_coordinate(16, 32, 0) == -0.25f);
    const Matrix constant = xt::ones<float>({9, 4}) * 0.5f;
    const Matrix up = resize_bicubic(constant, 3, 5);
    for (float v : up) CHECK(v == Approx(0.5f).margin(1e-6));
    const Matrix table = sincos_2d(8, 3);
    CHECK((key_position_table(table, 9) == table));
    CHECK_THROWS(key_position_table(table, 10));
}

TEST_CASE("bicubic, fast: equal to the readable resize bit for bit, up, down and to non-square grids, from a matrix or "
          "strided rows",
          "[resize][fast]") {
    xt::random::seed(5);
    for (std::size_t C : {std::size_t(4), std::size_t(13), std::size_t(64)}) {
        const Matrix table = xt::random::randn<float>({std::size_t(16), C});  // a 4 x 4 grid of C channels
        for (const Grid out : {Grid{7, 7}, Grid{2, 2}, Grid{3, 9}, Grid{5, 1}, Grid{4, 4}}) {
            INFO("C " << C << ", to " << out.h << " x " << out.w);
            CHECK(bool(fast::resize_bicubic(table, 4, out) == resize_bicubic(table, 4, out)));
            CHECK(bool(fast::key_position_table(table, out) == key_position_table(table, out)));
            // read in place from rows of a wider tensor (a stored pos_embed is a block of the mapped file)
            Matrix wider = xt::zeros<float>({std::size_t(16), C + 3});
            xt::view(wider, xt::all(), xt::range(1, C + 1)) = table;
            const fast::Block rows(wider.data() + 1, 16, C, C + 3);
            CHECK(bool(fast::resize_bicubic(rows, 4, out) == resize_bicubic(table, 4, out)));
            CHECK(bool(fast::key_position_table(rows, out) == key_position_table(table, out)));
        }
    }
    CHECK_THROWS_WITH(fast::key_position_table(Matrix(xt::zeros<float>({std::size_t(10), std::size_t(4)})), Grid{2, 2}),
                      Contains("query count Q"));
}

namespace {
// Each row's mean and biased variance.
void check_standardized(const Matrix& y) {
    for (std::size_t r = 0; r < y.shape(0); ++r) {
        const auto row = xt::view(y, r);
        double mean = 0, var = 0;
        for (float v : row) mean += v;
        mean /= y.shape(1);
        for (float v : row) var += (v - mean) * (v - mean);
        var /= y.shape(1);  // biased, as PyTorch
        CHECK(mean == Approx(0.0).margin(1e-6));
        CHECK(var == Approx(1.0).margin(1e-5));
    }
}
}  // namespace

TEST_CASE("LayerNorm with gamma 1 and beta 0: every row has mean 0 and variance 1, on both paths", "[layernorm]") {
    xt::random::seed(7);
    for (std::size_t E : {13, 64}) {  // with and without a remainder after the fast path's 8 lanes
        const Matrix x = xt::random::randn<float>(std::array<std::size_t, 2>{5, E}, 3.0f, 2.0f);
        const Vector ones = xt::ones<float>({E}), zeros = xt::zeros<float>({E});
        check_standardized(layer_norm(x, ones, zeros, 1e-6f));
        Matrix y = x;
        fast::layer_norm_in_place(y, ones, zeros, 1e-6f);
        check_standardized(y);
        CHECK_THROWS_AS(layer_norm(x, Vector(xt::ones<float>({E - 1})), zeros, 1e-6f), ShapeError);
        CHECK_THROWS_AS(fast::layer_norm_in_place(y, Vector(xt::ones<float>({E - 1})), zeros, 1e-6f), ShapeError);
    }
}

TEST_CASE("LayerNorm: the fast path's in-place rows equal the readable layer_norm to a float rounding", "[layernorm]") {
    xt::random::seed(8);
    for (std::size_t E : {13, 64}) {
        const Matrix x = xt::random::randn<float>(std::array<std::size_t, 2>{6, E}, 1.0f, 4.0f);
        const Vector gamma = xt::random::randn<float>(std::array<std::size_t, 1>{E});
        const Vector beta = xt::random::randn<float>(std::array<std::size_t, 1>{E});
        Matrix y = x;
        fast::layer_norm_in_place(y, gamma, beta, 1e-6f);
        const Matrix readable = layer_norm(x, gamma, beta, 1e-6f);
        CHECK(compare(y, readable, 1e-6, 1e-6).ok());
        Tensor3 batch = xt::reshape_view(x, {std::size_t(2), std::size_t(3), E});
        fast::layer_norm_in_place(batch, gamma, beta, 1e-6f);
        CHECK((Matrix(xt::reshape_view(batch, {std::size_t(6), E})) == y));  // the batch overload: the same rows
    }
}

TEST_CASE("softmax: rows sum to 1, masked places get 0, a fully masked row is NaN as in PyTorch, on both paths", "[attention]") {
    xt::random::seed(3);
    const Matrix s = xt::random::randn<float>({4, 11});
    xt::xtensor<bool, 2> masked = xt::zeros<bool>({4, 11});
    masked(0, 3) = true;
    for (std::size_t c = 0; c < 11; ++c) masked(2, c) = true;
    const Matrix m = additive_mask(masked);
    CHECK(m(0, 3) == -std::numeric_limits<float>::infinity());
    CHECK(m(0, 2) == 0.0f);
    CHECK((attention_mask(xt::xarray<float>(xt::cast<float>(masked)), true) == m));  // as a file stores it: 1 = masked
    CHECK((attention_mask(xt::xarray<float>(s), false) == s));                      // a float mask is used as it is
    CHECK_THROWS_WITH(attention_mask(xt::xarray<float>(xt::zeros<float>({2, 3, 4})), true), Contains("expected (Q, L)"));
    const Matrix big = s * 1000.0f;
    for (auto softmax : {&softmax_rows, &fast::softmax_rows}) {
        const Matrix p = softmax(s, nullptr);
        for (std::size_t r = 0; r < 4; ++r) CHECK(xt::sum(xt::view(p, r))() == Approx(1.0f).margin(1e-6));
        const Matrix pm = softmax(s, &m);
        CHECK(pm(0, 3) == 0.0f);
        CHECK(xt::sum(xt::view(pm, 0))() == Approx(1.0f).margin(1e-6));
        CHECK(std::isnan(pm(2, 0)));
        // Large scores do not overflow: the row maximum is subtracted first.
        for (float v : softmax(big, nullptr)) CHECK(std::isfinite(v));
        const Matrix unmasked = softmax(s, nullptr), readable = softmax_rows(s, nullptr);
        CHECK(compare(unmasked, readable, 1e-7, 1e-6).ok());  // the two paths agree
    }
}

TEST_CASE("lanes: lane_max finds the largest value at every place for every length to 200, lane_sum equals a plain sum", "[attention]") {
    std::mt19937 rng(5);
    std::normal_distribution<float> normal(0.0f, 10.0f);
    CHECK(fast::lane_max(nullptr, 0) == -std::numeric_limits<float>::infinity());
    for (std::size_t n = 1; n <= 200; ++n) {
        std::vector<float> x(n);
        for (float& v : x) v = normal(rng);
        double plain = 0.0;
        for (float v : x) plain += v;
        CHECK(fast::lane_sum(x.data(), n, [](float v) { return double(v); }) == Approx(plain).margin(1e-9));
        for (std::size_t at = 0; at < n; ++at) {  // the largest value in each place in turn: every lane and the tail
            std::vector<float> y = x;
            y[at] = 1000.0f;
            if (fast::lane_max(y.data(), n) != 1000.0f) FAIL_CHECK("n = " << n << ", largest at " << at);
        }
    }
    const std::vector<float> low(130, -std::numeric_limits<float>::infinity());
    CHECK(fast::lane_max(low.data(), low.size()) == -std::numeric_limits<float>::infinity());
}

TEST_CASE("softmax: fast rows of 1000 (64-lane maxima and their tail) agree with the readable softmax", "[attention]") {
    xt::random::seed(13);
    const Matrix s = xt::random::randn<float>({3, 1000}) * 4.0f;
    CHECK(compare(fast::softmax_rows(s, nullptr), softmax_rows(s, nullptr), 1e-7, 1e-6).ok());
}

TEST_CASE("softmax's exponential: within 3e-7 of std::exp on [-87, 0], 0 far below and at -inf, NaN stays NaN", "[attention]") {
    double worst = 0.0;
    for (int i = 0; i <= 870000; ++i) {
        const float x = -static_cast<float>(i) * 1e-4f;
        const double exact = std::exp(static_cast<double>(x));
        worst = std::max(worst, std::abs(fast::exp_nonpositive(x) - exact) / exact);
    }
    CHECK(worst < 3e-7);  // 2 to 3 float ulp; leaving out the r^6 term makes it 2.4e-6
    CHECK(fast::exp_nonpositive(0.0f) == 1.0f);
    for (float x : {-87.2f, -88.0f, -100.0f, -1e30f}) {
        CHECK(fast::exp_nonpositive(x) >= 0.0f);
        CHECK(fast::exp_nonpositive(x) <= 1.2e-38f);  // below the smallest normal float: at most that far from e^x
    }
    CHECK(fast::exp_nonpositive(-std::numeric_limits<float>::infinity()) == 0.0f);
    CHECK(std::isnan(fast::exp_nonpositive(std::numeric_limits<float>::quiet_NaN())));
}

TEST_CASE("attention: a head block is the head's channels in place, and weights rows sum to 1, on both paths", "[attention]") {
    xt::random::seed(11);
    const Matrix x = xt::random::randn<float>({3, 8});
    for (std::size_t h = 0; h < 4; ++h) {
        const fast::Block b = fast::head_block(fast::whole(x), h, 4);
        CHECK((b.rows == 3 && b.cols == 2 && b.stride == 8));
        for (std::size_t r = 0; r < 3; ++r)
            for (std::size_t c = 0; c < 2; ++c) CHECK(b.data[r * b.stride + c] == x(r, 2 * h + c));
    }
    CHECK_THROWS_WITH(fast::head_block(fast::whole(x), 0, 3), Contains("does not divide"));

    const Matrix q = xt::random::randn<float>({4, 8}), k = xt::random::randn<float>({9, 8}), v = xt::random::randn<float>({9, 8});
    const AttentionOutput readable = multi_head_attention(q, k, v, 2, nullptr);
    const AttentionOutput fast = fast::multi_head_attention(q, fast::whole(k), fast::whole(v), 2, nullptr, true);
    for (const AttentionOutput* a : {&readable, &fast}) {
        CHECK(shape_of(a->weights) == std::vector<std::size_t>{2, 4, 9});
        CHECK(shape_of(a->attended) == std::vector<std::size_t>{4, 8});
        for (std::size_t h = 0; h < 2; ++h)
            for (std::size_t r = 0; r < 4; ++r) CHECK(xt::sum(xt::view(a->weights, h, r))() == Approx(1.0f).margin(1e-6));
    }
    CHECK(compare(fast.attended, readable.attended, 1e-6, 1e-5).ok());
    // Every query attending to key 2 alone gets key 2's value in every head's channels.
    xt::xtensor<bool, 2> only_key_2 = xt::ones<bool>({4, 9});
    for (std::size_t r = 0; r < 4; ++r) only_key_2(r, 2) = false;
    const Matrix mask = additive_mask(only_key_2);
    const AttentionOutput one = multi_head_attention(q, k, v, 2, &mask);
    for (std::size_t r = 0; r < 4; ++r)
        for (std::size_t c = 0; c < 8; ++c) CHECK(one.attended(r, c) == v(2, c));
    const Matrix wrong_mask = xt::zeros<float>({4, 8});
    CHECK_THROWS_AS(multi_head_attention(q, k, v, 2, &wrong_mask), ShapeError);
    CHECK_THROWS_AS(fast::multi_head_attention(q, fast::whole(k), fast::whole(v), 2, &wrong_mask, false), ShapeError);
    CHECK_THROWS_WITH(multi_head_attention(q, k, v, 3, nullptr), Contains("does not divide"));
}

TEST_CASE("linear: x W^T + b against a hand-computed 2x2 case, and matmul is x @ W", "[linear]") {
    const Matrix x = {{1.0f, 2.0f}};
    const Matrix W = {{1.0f, 0.0f}, {3.0f, 4.0f}, {0.5f, 0.5f}};  // (out=3, in=2)
    const Vector b = {0.0f, 1.0f, -1.0f};
    CHECK((linear(x, W, b) == Matrix{{1.0f, 12.0f, 0.5f}}));
    CHECK((fast::linear(x, W, b) == Matrix{{1.0f, 12.0f, 0.5f}}));
    const Matrix P = {{1.0f, 2.0f}, {3.0f, 4.0f}};
    CHECK((matmul(x, P) == Matrix{{7.0f, 10.0f}}));  // x @ P, not x P^T (which is {5, 11})
    const Tensor3 x3 = xt::reshape_view(x, {std::size_t(1), std::size_t(1), std::size_t(2)});
    CHECK((fast::matmul(x3, P) == Tensor3{{{7.0f, 10.0f}}}));
    CHECK((kv_projection(x, W) == Matrix{{1.0f, 11.0f, 1.5f}}));  // x W^T, no bias
    CHECK((fast::kv_projection(fast::whole(x), W) == Matrix{{1.0f, 11.0f, 1.5f}}));
    CHECK((kv_projection(x, Matrix()) == x));  // nn.Identity when there is no weight
    CHECK_THROWS_AS(linear(x, Matrix(xt::ones<float>({3, 3})), b), ShapeError);
    CHECK_THROWS_AS(fast::linear(x, Matrix(xt::ones<float>({3, 3})), b), ShapeError);
    CHECK_THROWS_AS(matmul(x, Matrix(xt::ones<float>({3, 3}))), ShapeError);

    Matrix packed = xt::zeros<float>({6, 2});
    packed(2, 0) = 5.0f;
    const InProjection p = split_in_proj(packed, Vector(xt::zeros<float>({6})));
    CHECK(p.w_k(0, 0) == 5.0f);
    CHECK_THROWS(split_in_proj(Matrix(xt::zeros<float>({5, 2})), Vector(xt::zeros<float>({5}))));
}

TEST_CASE("derive_config: Qwen-VL's head rule and the checks on E and H", "[adapter]") {
    AdapterWeights w;
    const std::size_t E = 256;
    w.query = xt::zeros<float>({std::size_t(16), E});
    w.kv_proj = xt::zeros<float>({E, std::size_t(40)});
    w.in_proj = split_in_proj(Matrix(xt::zeros<float>({3 * E, E})), Vector(xt::zeros<float>({3 * E})));
    w.out_proj_weight = xt::zeros<float>({E, E});
    for (Vector* v : {&w.out_proj_bias, &w.ln_q_weight, &w.ln_q_bias, &w.ln_kv_weight, &w.ln_kv_bias})
        *v = xt::zeros<float>({E});
    const AdapterConfig c = derive_config(w);
    CHECK(c.num_heads == 2);  // E / 128
    CHECK(c.kv_dim == 40);
    CHECK(c.grid_q == 4);
    CHECK_THROWS_WITH(derive_config(w, 3), Contains("does not divide"));
    w.query = xt::zeros<float>({std::size_t(15), E});
    CHECK_THROWS_WITH(derive_config(w), Contains("perfect square"));
}

TEST_CASE("trace: items fill a (count, ...) tensor one image at a time, and a wrong item is refused", "[trace]") {
    Trace trace;
    trace.record_item("k", 0, 2, Matrix{{1, 2}, {3, 4}});
    trace.record_item("k", 1, 2, Matrix{{5, 6}, {7, 8}});
    const xt::xarray<float> expected = Tensor3{{{1, 2}, {3, 4}}, {{5, 6}, {7, 8}}};
    CHECK(trace.get("k") == expected);
    CHECK_THROWS_AS(trace.record_item("k", 1, 2, Matrix{{1, 2, 3}}), std::out_of_range);  // another shape
    CHECK_THROWS_AS(trace.record_item("k", 2, 2, Matrix{{1, 2}, {3, 4}}), std::out_of_range);  // past the end
    CHECK_THROWS_AS(trace.record_item("v", 1, 2, Matrix{{1, 2}, {3, 4}}), std::out_of_range);  // before item 0
}

TEST_CASE("compare: the golden check fails on a difference above the tolerance and on NaN", "[compare]") {
    const xt::xarray<float> expected = {{0.5f, -1.0f}, {2.0f, 3.0f}};
    xt::xarray<float> got = expected;
    CHECK(compare(got, expected, 1e-5, 1e-5).ok());
    got(1, 0) += 1e-3f;
    const Comparison c = compare(got, expected, 1e-5, 1e-5);
    CHECK_FALSE(c.ok());
    CHECK(c.first_failure == 2);
    CHECK_THAT(describe(c, expected), Contains("(1, 0)") && Contains("expected 2"));
    got = expected;
    got(0, 1) = std::numeric_limits<float>::quiet_NaN();
    CHECK_FALSE(compare(got, expected, 1e-5, 1e-5).ok());
    CHECK(std::isnan(compare(got, expected, 1e-5, 1e-5).max_abs_error));
    CHECK_FALSE(compare(xt::xarray<float>(xt::zeros<float>({4})), expected, 1, 1).ok());
}

// --- Conversions and layouts, by value (each of these caught a realistic bug only indirectly before) ---

TEST_CASE("f16 and bf16 conversions, subnormals and specials included, by value", "[io]") {
    CHECK(f16_to_float(0x3C00) == 1.0f);
    CHECK(f16_to_float(0xC000) == -2.0f);
    CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));          // the smallest subnormal half, 2^-24
    CHECK(f16_to_float(0x03FF) == 1023.0f * std::ldexp(1.0f, -24));  // the largest subnormal half
    CHECK(f16_to_float(0x8200) == -std::ldexp(1.0f, -15));          // a negative subnormal, 512 * 2^-24
    CHECK(f16_to_float(0x0400) == std::ldexp(1.0f, -14));           // the smallest normal half
    CHECK(f16_to_float(0x7BFF) == 65504.0f);                        // the largest finite half
    CHECK(std::isinf(f16_to_float(0x7C00)));
    CHECK(std::isnan(f16_to_float(0x7E00)));
    CHECK(std::signbit(f16_to_float(0x8000)));
    CHECK(bf16_to_float(0x3F80) == 1.0f);  // the top 16 bits of the float32 1.0 = 0x3F800000
    CHECK(bf16_to_float(0xC040) == -3.0f);
    CHECK(bf16_to_float(0x3F81) == 1.0f + std::ldexp(1.0f, -7));
    CHECK(bf16_to_float(0x0001) == std::ldexp(1.0f, -133));  // a float32 subnormal
    CHECK(std::isinf(bf16_to_float(0x7F80)));
    const std::uint8_t raw[4] = {0x80, 0x3F, 0x00, 0x3C};  // little-endian: bf16 1.0 then, read as f16, ...
    float out[2];
    convert_to_float("BF16", raw, 2, out);
    CHECK(out[0] == 1.0f);
    convert_to_float("F16", raw + 2, 1, out);
    CHECK(out[0] == 1.0f);  // 0x3C00
}

TEST_CASE("float_to_bf16 rounds to nearest with ties to even, as torch's .to(torch.bfloat16), and a BF16 file "
          "written with it reads back those values", "[io]") {
    const float ulp = std::ldexp(1.0f, -7);  // bf16's spacing in [1, 2): 7 stored fraction bits
    CHECK(float_to_bf16(1.0f) == 0x3F80);
    CHECK(float_to_bf16(-3.0f) == 0xC040);
    CHECK(float_to_bf16(1.0f + ulp / 2) == 0x3F80);                          // a tie: to the even 1.0
    CHECK(float_to_bf16(1.0f + 3 * ulp / 2) == 0x3F82);                      // a tie: to the even 1 + 2 ulp
    CHECK(float_to_bf16(1.0f + ulp / 2 + std::ldexp(1.0f, -23)) == 0x3F81);  // just above the tie: up
    CHECK(float_to_bf16(1.0f + ulp / 2 - std::ldexp(1.0f, -23)) == 0x3F80);  // just below: down
    CHECK(float_to_bf16(-(1.0f + 3 * ulp / 2)) == 0xBF82);                   // the sign kept
    CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);       // past bf16's largest: infinity
    CHECK(float_to_bf16(std::ldexp(1.0f, -133)) == 0x0001);                  // a float32 subnormal, exact
    CHECK(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
    // a NaN whose payload lies only in the dropped bits stays a NaN (plain truncation would make it infinity)
    std::uint32_t low_nan_bits = 0x7F800001u;
    float low_nan;
    std::memcpy(&low_nan, &low_nan_bits, 4);
    CHECK(std::isnan(bf16_to_float(float_to_bf16(low_nan))));

    qwenvl_test::TempDir tmp;
    const std::string path = tmp / "w.safetensors";
    const xt::xarray<float> values = {{1.0f, 1.0f + ulp / 2, 1.0f + 3 * ulp / 2}, {-0.1f, 3.0e38f, 1.0e-40f}};
    write_safetensors_bf16(path, {{"w", values}});
    WeightFiles files;
    files.add(path);
    CHECK(files.entry("w").dtype == "BF16");
    CHECK(files.entry("w").shape == std::vector<std::size_t>{2, 3});
    xt::xarray<float> back = xt::zeros<float>({2, 3});
    files.read_into("w", 0, 6, back.data());
    for (std::size_t i = 0; i < values.size(); ++i) CHECK(back.flat(i) == bf16_to_float(float_to_bf16(values.flat(i))));
    CHECK(back(0, 1) == 1.0f);
    CHECK(back(0, 2) == 1.0f + 2 * ulp);
}

TEST_CASE("kv_projection: a square weight is a projection, not the identity, on both paths", "[linear]") {
    const Matrix x = {{1.0f, 2.0f}, {3.0f, -1.0f}};
    const Matrix w = {{0.0f, 1.0f}, {2.0f, 0.5f}};  // (E, Kv) with Kv == E: x W^T
    const Matrix expected = {{2.0f, 3.0f}, {-1.0f, 5.5f}};
    CHECK((kv_projection(x, w) == expected));
    CHECK((fast::kv_projection(fast::whole(x), w) == expected));
}

TEST_CASE("split_in_proj: the first E rows are W_q, the next E W_k, the last E W_v, by value", "[linear]") {
    Matrix packed = Matrix::from_shape({6, 2});
    Vector bias = Vector::from_shape({6});
    for (std::size_t r = 0; r < 6; ++r) {
        packed(r, 0) = static_cast<float>(10 * r);
        packed(r, 1) = static_cast<float>(10 * r + 1);
        bias(r) = static_cast<float>(100 + r);
    }
    const InProjection p = split_in_proj(packed, bias);
    CHECK((p.w_q == Matrix{{0, 1}, {10, 11}}));
    CHECK((p.w_k == Matrix{{20, 21}, {30, 31}}));
    CHECK((p.w_v == Matrix{{40, 41}, {50, 51}}));
    CHECK((p.b_q == Vector{100, 101}));
    CHECK((p.b_k == Vector{102, 103}));
    CHECK((p.b_v == Vector{104, 105}));
}

TEST_CASE("safetensors header: data offsets past the data are refused by the offsets check's own message", "[io]") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
    std::vector<std::uint8_t> bytes(8 + header.size());
    const std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<std::uint8_t>(n >> (8 * i));
    std::copy(header.begin(), header.end(), bytes.begin() + 8);
    CHECK(parse_safetensors_header(bytes.data(), bytes.size(), bytes.size() + 12).tensors.size() == 2);
    CHECK_THROWS_WITH(parse_safetensors_header(bytes.data(), bytes.size(), bytes.size() + 11),
                      Contains("'b': data_offsets [8, 12] lie outside the 11 bytes of data"));
}

TEST_CASE("load_adapter reads the packed in_proj from a file into W_q, W_k, W_v at the right rows, by value", "[io]") {
    const std::size_t E = 4, Q = 4;
    const std::string a = "transformer.visual.attn_pool.";
    std::map<std::string, xt::xarray<float>> tensors;
    xt::xarray<float> packed = xt::xarray<float>::from_shape({3 * E, E}), bias = xt::xarray<float>::from_shape({3 * E});
    for (std::size_t r = 0; r < 3 * E; ++r) {
        for (std::size_t c = 0; c < E; ++c) packed(r, c) = static_cast<float>(100 * r + c);
        bias(r) = static_cast<float>(1000 + r);
    }
    tensors[a + "attn.in_proj_weight"] = packed;
    tensors[a + "attn.in_proj_bias"] = bias;
    tensors[a + "query"] = xt::zeros<float>({Q, E});
    tensors[a + "attn.out_proj.weight"] = xt::zeros<float>({E, E});
    for (const char* v : {"attn.out_proj.bias", "ln_q.weight", "ln_q.bias", "ln_kv.weight", "ln_kv.bias"})
        tensors[a + v] = xt::zeros<float>({E});
    const std::filesystem::path file = std::filesystem::temp_directory_path() / "qwenvl-in-proj.safetensors";
    qwenvl_test::write_safetensors_f32(file.string(), tensors);
    WeightFiles files;
    files.add(file.string());
    const LoadedAdapter m = load_adapter(files, kDefaultPrefix, 1, false);
    std::filesystem::remove(file);
    const InProjection& p = m.weights.in_proj;
    CHECK(p.w_q(0, 0) == 0.0f);
    CHECK(p.w_q(3, 2) == 302.0f);
    CHECK(p.w_k(0, 1) == 401.0f);   // row E of the packed weight
    CHECK(p.w_v(3, 3) == 1103.0f);  // row 3E - 1
    CHECK(p.b_q(0) == 1000.0f);
    CHECK(p.b_k(0) == 1004.0f);
    CHECK(p.b_v(3) == 1011.0f);
    const InProjection split = split_in_proj(Matrix(packed), Vector(bias));  // the same rows as the in-memory split
    CHECK((split.w_k == p.w_k));
    CHECK((split.b_v == p.b_v));
}

namespace {
// A small adapter with its tail, every tensor random, under the checkpoint's names: E = 8, Kv = 6, Q = 4.
std::map<std::string, xt::xarray<float>> small_checkpoint(const std::string& a) {
    xt::random::seed(7);
    std::map<std::string, xt::xarray<float>> t;
    const std::size_t E = 8, Kv = 6, Q = 4;
    t[a + "attn_pool.query"] = xt::random::randn<float>({Q, E});
    t[a + "attn_pool.kv_proj.weight"] = xt::random::randn<float>({E, Kv});
    t[a + "attn_pool.attn.in_proj_weight"] = xt::random::randn<float>({3 * E, E});
    t[a + "attn_pool.attn.in_proj_bias"] = xt::random::randn<float>({3 * E});
    t[a + "attn_pool.attn.out_proj.weight"] = xt::random::randn<float>({E, E});
    for (const char* v : {"attn.out_proj.bias", "ln_q.weight", "ln_q.bias", "ln_kv.weight", "ln_kv.bias"})
        t[a + "attn_pool." + v] = xt::random::randn<float>({E});
    t[a + "ln_post.weight"] = xt::random::randn<float>({E});
    t[a + "ln_post.bias"] = xt::random::randn<float>({E});
    t[a + "proj"] = xt::random::randn<float>({E, E});
    return t;
}

// The fast forward pass with the tail on 2 images of 4 patches, from either kind of loaded weights.
Tensor3 small_forward(const fast::Weights& w, const fast::TailWeights& tail, const AdapterConfig& c) {
    xt::random::seed(11);
    const Tensor3 x = xt::random::randn<float>({std::size_t(2), std::size_t(4), c.kv_dim});
    const fast::QuerySide side = fast::prepare_query_side(w, c, 4);
    return fast::tower_tail_forward(tail, fast::adapter_forward(w, c, side, x), c.eps);
}

// Rewrites a safetensors file with `extra` more spaces at the end of its header, so its data moves by `extra` bytes.
void pad_header(const std::filesystem::path& file, std::size_t extra) {
    const std::vector<std::uint8_t> raw = qwenvl::read_file(file.string());
    std::string bytes(raw.begin(), raw.end());
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
    bytes.insert(8 + n, std::string(extra, ' '));
    n += extra;
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(n >> (8 * i));
    std::ofstream(file, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
}  // namespace

namespace {
// Writes `halves` (16-bit values, `dtype` BF16 or F16) as one safetensors file, shapes from `shapes`, its header
// padded to 8 bytes as the library's writer pads it (which writes F32 only).
void write_safetensors_16(const std::string& path, const std::string& dtype,
                          const std::map<std::string, std::vector<std::uint16_t>>& halves,
                          const std::map<std::string, std::vector<std::size_t>>& shapes) {
    nlohmann::json header = nlohmann::json::object();
    std::string data;
    for (const auto& [name, values] : halves) {
        header[name] = {{"dtype", dtype}, {"shape", shapes.at(name)}, {"data_offsets", {data.size(), data.size() + 2 * values.size()}}};
        for (std::uint16_t v : values) data += std::string{static_cast<char>(v & 0xFF), static_cast<char>(v >> 8)};
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    qwenvl_test::write_raw_safetensors(path, text, data);
}
}  // namespace

TEST_CASE("map_at_huge_boundary: whole pages from a 2 MiB boundary, readable and writable when asked, nothing kept "
          "past them, over seeded sizes",
          "[io]") {
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)), huge = std::size_t(2) << 20;
    std::mt19937 rng(2602);
    std::vector<std::size_t> sizes = {1, page, huge, huge + 1, 5 * huge};
    for (int i = 0; i < 20; ++i) sizes.push_back(1 + rng() % (12 * huge));
    for (const std::size_t bytes : sizes) {
        INFO(bytes);
        const std::size_t kept = (bytes + page - 1) / page * page;
        std::uint8_t* const at = map_at_huge_boundary(bytes, PROT_READ | PROT_WRITE);
        REQUIRE(at != nullptr);
        CHECK(reinterpret_cast<std::uintptr_t>(at) % huge == 0);
        at[0] = 1;
        at[kept - 1] = 2;  // every page of the rounded size is there
        CHECK(int(at[0]) + int(at[kept - 1]) == 3);
        CHECK(::msync(at + kept, page, MS_ASYNC) == -1);  // the tail given back: not mapped
        CHECK(errno == ENOMEM);
        CHECK(::munmap(at, bytes) == 0);
        // a reservation: a file mapped over it at the same place
        std::uint8_t* const place = map_at_huge_boundary(bytes, PROT_NONE, MAP_NORESERVE);
        REQUIRE(place != nullptr);
        CHECK(reinterpret_cast<std::uintptr_t>(place) % huge == 0);
        CHECK(::mmap(place, bytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == place);
        CHECK(int(place[kept - 1]) == 0);
        CHECK(::munmap(place, bytes) == 0);
    }
}

TEST_CASE("map_adapter on BF16 and F16 checkpoints (pos_embed stored): the fast forward is the one on the same values "
          "stored as F32, bit for bit, with the weights, the query and pos_embed kept in 16 bits",
          "[io][fast]") {
    const std::string prefix = kDefaultPrefix;
    std::mt19937 rng(1605);
    for (const std::string dtype : {"BF16", "F16"}) {
        INFO(dtype);
        std::map<std::string, xt::xarray<float>> tensors = small_checkpoint(prefix);
        tensors[prefix + "attn_pool.pos_embed"] = xt::zeros<float>({std::size_t(4), std::size_t(8)});  // Q = 4: 2 x 2
        std::map<std::string, std::vector<std::uint16_t>> halves;
        std::map<std::string, std::vector<std::size_t>> shapes;
        for (auto& [name, t] : tensors) {
            shapes[name] = std::vector<std::size_t>(t.shape().begin(), t.shape().end());
            for (float& v : t) {
                std::uint16_t half;
                if (dtype == "BF16") {
                    std::uint32_t bits;
                    std::memcpy(&bits, &v, 4);
                    half = static_cast<std::uint16_t>(bits >> 16);
                    v = bf16_to_float(half);
                } else {  // sign, an exponent giving 2^-3 to 2^2, ten random mantissa bits
                    half = static_cast<std::uint16_t>(((rng() & 1) << 15) | ((12 + rng() % 6) << 10) | (rng() & 0x3FF));
                    v = f16_to_float(half);
                }
                halves[name].push_back(half);
            }
        }
        qwenvl_test::TempDir tmp;
        write_safetensors_16(tmp / "half.safetensors", dtype, halves, shapes);
        qwenvl_test::write_safetensors_f32(tmp / "widened.safetensors", tensors);
        WeightFiles half_files, f32_files;
        half_files.add(tmp / "half.safetensors");
        f32_files.add(tmp / "widened.safetensors");
        const MappedAdapter half = map_adapter(half_files, prefix, 2, true);
        const MappedAdapter f32 = map_adapter(f32_files, prefix, 2, true);
        for (const fast::Block* b : {&half.weights.query, &half.weights.pos_embed, &half.weights.kv_proj, &half.weights.w_q,
                                     &half.weights.w_k, &half.weights.w_v, &half.weights.out_proj_weight, &half.tail.proj})
            CHECK(b->is_packed());
        CHECK(bool(fast::copy_of(half.weights.pos_embed) == fast::copy_of(f32.weights.pos_embed)));
        const Tensor3 from_half = small_forward(half.weights, half.tail, half.config);
        CHECK(bool(from_half == small_forward(f32.weights, f32.tail, f32.config)));
        // and run's way, the key table and features spent
        xt::random::seed(11);
        Tensor3 x = xt::random::randn<float>({std::size_t(2), std::size_t(4), half.config.kv_dim});
        const Tensor3 x_copy = x;
        const Tensor3 spent = fast::adapter_forward(half.weights, half.config, fast::prepare_query_side(half.weights, half.config, 4),
                                                    std::move(x));
        CHECK(bool(spent == fast::adapter_forward(f32.weights, f32.config, fast::prepare_query_side(f32.weights, f32.config, 4), x_copy)));
    }
}

TEST_CASE("map_adapter reads F32 weights in place, in_proj's three parts included, and gives load_adapter's forward bit for bit",
          "[io]") {
    const std::string prefix = kDefaultPrefix;
    const std::filesystem::path file = std::filesystem::temp_directory_path() / "qwenvl-mapped.safetensors";
    qwenvl_test::write_safetensors_f32(file.string(), small_checkpoint(prefix));
    WeightFiles files;
    files.add(file.string());
    const LoadedAdapter loaded = load_adapter(files, prefix, 2, true);
    const MappedAdapter mapped = map_adapter(files, prefix, 2, true);
    const std::size_t E = 8;
    CHECK(mapped.converted.empty());
    CHECK(mapped.bytes_converted == 0);
    CHECK(mapped.bytes_in_place == (4 * E + E * 6 + 3 * E * E + 3 * E + E * E + 5 * E + 2 * E + E * E) * sizeof(float));
    // W_k is the packed tensor's second block of E rows, in the mapping itself.
    CHECK(mapped.weights.w_k.data == mapped.files.float32_in_place(prefix + "attn_pool.attn.in_proj_weight", E * E, E * E));
    CHECK(mapped.weights.w_k.data[1] == loaded.weights.in_proj.w_k(0, 1));
    CHECK(mapped.weights.b_v.data[E - 1] == loaded.weights.in_proj.b_v(E - 1));
    const Tensor3 from_tensors = small_forward(loaded.weights, loaded.tail, loaded.config);
    CHECK((small_forward(mapped.weights, mapped.tail, mapped.config) == from_tensors));

    SECTION("data not 4-byte aligned is converted, with the same result") {
        pad_header(file, 2);
        WeightFiles shifted;
        shifted.add(file.string());
        const MappedAdapter copy = map_adapter(shifted, prefix, 2, true);
        CHECK(copy.bytes_in_place == 0);
        CHECK(copy.bytes_converted == mapped.bytes_in_place);
        CHECK((small_forward(copy.weights, copy.tail, copy.config) == from_tensors));
    }
    SECTION("a file cut short after its header was read is refused by name") {
        WeightFiles later;
        later.add(file.string());
        std::filesystem::resize_file(file, std::filesystem::file_size(file) - 4);
        CHECK_THROWS_WITH(map_adapter(later, prefix, 2, true),
                          Contains(file.string()) && Contains("changed since its header was read"));
    }
    std::filesystem::remove(file);
}

namespace {
// This process's resident set, in pages (/proc/self/statm's second field: anonymous and file pages alike).
long resident_pages() {
    long size = 0, resident = 0;
    std::ifstream("/proc/self/statm") >> size >> resident;
    return resident;
}
}  // namespace

TEST_CASE("release frees a converted weight or drops a mapped one's pages, and empties the block", "[io]") {
    const std::string prefix = kDefaultPrefix;
    const std::filesystem::path file = std::filesystem::temp_directory_path() / "qwenvl-release.safetensors";
    SECTION("converted: its memory is freed, and a released W_q is refused by shape, not read") {
        qwenvl_test::write_safetensors_f32(file.string(), small_checkpoint(prefix));
        pad_header(file, 2);  // data not 4-byte aligned: every tensor converted
        WeightFiles files;
        files.add(file.string());
        MappedAdapter mapped = map_adapter(files, prefix, 2, true);
        const float* w_q = mapped.weights.w_q.data;
        const auto held = [&](const float* p) {
            return std::any_of(mapped.converted.begin(), mapped.converted.end(), [&](const auto& c) { return c.get() == p; });
        };
        REQUIRE(held(w_q));
        release(mapped, mapped.weights.w_q);
        CHECK(mapped.weights.w_q.empty());
        CHECK_FALSE(held(w_q));
        CHECK(held(mapped.weights.w_k.data));  // the others untouched
        CHECK_THROWS_WITH(fast::prepare_query_side(mapped.weights, mapped.config, 4), Contains("w_q") || Contains("weight"));
    }
    SECTION("in place: its whole pages leave the resident set, the file's bytes stay") {
        // E = 1024, Kv = E (no kv_proj), no tail: W_q is 4 MiB of the mapping, 1024 pages of 4 KiB.
        const std::size_t E = 1024, Q = 4;
        const std::string a = prefix + "attn_pool.";
        std::map<std::string, xt::xarray<float>> t;
        t[a + "query"] = xt::zeros<float>({Q, E});
        t[a + "attn.in_proj_weight"] = xt::ones<float>({3 * E, E});
        t[a + "attn.out_proj.weight"] = xt::zeros<float>({E, E});
        for (const char* v : {"attn.in_proj_bias", "attn.out_proj.bias", "ln_q.weight", "ln_q.bias", "ln_kv.weight", "ln_kv.bias"})
            t[a + v] = xt::zeros<float>({std::string(v) == "attn.in_proj_bias" ? 3 * E : E});
        qwenvl_test::write_safetensors_f32(file.string(), t);
        t.clear();
        WeightFiles files;
        files.add(file.string());
        MappedAdapter mapped = map_adapter(files, prefix, 8, false);
        REQUIRE(mapped.converted.empty());
        const fast::Block w_q = mapped.weights.w_q;
        double sum = 0;
        for (std::size_t i = 0; i < E * E; ++i) sum += w_q.data[i];  // every page of W_q read: resident
        CHECK(sum == double(E * E));
        const long before = resident_pages();
        release(mapped, mapped.weights.w_q);
        const long after = resident_pages();
        const long pages = long(E * E * sizeof(float)) / ::sysconf(_SC_PAGESIZE);
        INFO("resident pages " << before << " -> " << after << "; W_q is " << pages);
        CHECK(mapped.weights.w_q.empty());
        CHECK(before - after >= pages - 1);  // all but a page cut by the block's start
        CHECK(w_q.data[E * E - 1] == 1.0f);  // still the file's bytes, mapped again on reading
    }
    std::filesystem::remove(file);
}

namespace {
// KiB of `path`'s pages resident in this process (its mappings' Rss in /proc/self/smaps), or -1 when none maps it.
long resident_kib(const std::string& path) {
    std::ifstream smaps("/proc/self/smaps");
    long total = -1;
    bool in_file = false;
    for (std::string line; std::getline(smaps, line);) {
        if (!line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) && line.find('-') < line.find(' ')) {
            in_file = line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0;
            if (in_file && total < 0) total = 0;
        } else if (in_file && line.rfind("Rss:", 0) == 0) {
            total += std::stol(line.substr(4));
        }
    }
    return total;
}
}  // namespace

TEST_CASE("map_adapter maps only the shards that hold the adapter's tensors", "[io]") {
    const std::string prefix = kDefaultPrefix;
    const std::filesystem::path dir = std::filesystem::temp_directory_path() / "qwenvl-sharded";
    std::filesystem::create_directories(dir);
    qwenvl_test::write_safetensors_f32((dir / "visual.safetensors").string(), small_checkpoint(prefix));
    qwenvl_test::write_safetensors_f32((dir / "lm.safetensors").string(),
                                       {{"transformer.h.0.mlp.w1.weight", xt::xarray<float>(xt::ones<float>({16, 8}))}});
    nlohmann::json index;
    for (const auto& [name, value] : small_checkpoint(prefix)) index["weight_map"][name] = "visual.safetensors";
    index["weight_map"]["transformer.h.0.mlp.w1.weight"] = "lm.safetensors";
    std::ofstream(dir / "model.safetensors.index.json") << index.dump();
    WeightFiles files;
    files.add((dir / "model.safetensors.index.json").string());
    CHECK(files.files().size() == 2);
    CHECK(files.mapped_files().empty());  // adding reads headers only
    // Each file is mapped when added and its header read through the mapping, whose pages are then given back:
    // none of either shard is resident yet.
    const std::string visual = (dir / "visual.safetensors").string(), lm = (dir / "lm.safetensors").string();
    CHECK(resident_kib(visual) == 0);
    CHECK(resident_kib(lm) == 0);
    const MappedAdapter mapped = map_adapter(files, prefix, 2, true);
    CHECK((mapped.files.mapped_files() == std::vector<std::string>{visual}));
    CHECK(resident_kib(lm) == 0);  // the language model's shard, never read, holds no page of this process
    std::filesystem::remove_all(dir);
}

TEST_CASE("write_npy writes byte for byte the file numpy wrote: every float32 .npy under data/", "[io]") {
    std::size_t files = 0;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(QWENVL_DATA_DIR)) {
        if (entry.path().extension() != ".npy") continue;
        const std::vector<std::uint8_t> original = read_file(entry.path().string());
        const NpyArray parsed = parse_npy(original.data(), original.size());
        if (parsed.descr != "<f4") continue;
        const std::filesystem::path copy = std::filesystem::temp_directory_path() / "qwenvl-npy-copy.npy";
        write_npy(copy.string(), read_npy_float(entry.path().string()));
        INFO(entry.path());
        CHECK((read_file(copy.string()) == original));
        std::filesystem::remove(copy);
        ++files;
    }
    CHECK(files >= 30);
    // A 1-D shape is written as numpy writes it, "(5,)".
    const std::filesystem::path one = std::filesystem::temp_directory_path() / "qwenvl-npy-1d.npy";
    const std::vector<float> values = {1, 2, 3, 4, 5};
    write_npy(one.string(), {5}, values.data());
    const std::vector<std::uint8_t> bytes = read_file(one.string());
    std::filesystem::remove(one);
    CHECK_THAT(std::string(bytes.begin(), bytes.end()), Contains("'shape': (5,), }"));
    CHECK((bytes.size() - 5 * sizeof(float)) % 64 == 0);  // the header ends at a multiple of 64 bytes
}

TEST_CASE("npy: an array with an empty axis reads as an empty array (found by the fuzzer under UBSan)", "[io]") {
    const std::filesystem::path file = std::filesystem::temp_directory_path() / "qwenvl-empty.npy";
    write_npy(file.string(), {0, 4, 8}, nullptr);
    const xt::xarray<float> empty = read_npy_float(file.string());
    std::filesystem::remove(file);
    CHECK((empty.shape() == std::vector<std::size_t>{0, 4, 8}));
    CHECK(empty.size() == 0);
}

TEST_CASE("fusion: the rows strictly between <img> and </img> get the image's features, by value", "[fusion]") {
    const std::vector<std::int64_t> ids = {7, kImageStart, 151859, 151859, kImageEnd, 9};
    const Matrix embeddings = xt::zeros<float>({std::size_t(6), std::size_t(2)});
    const Tensor3 features = {{{1.0f, 2.0f}, {3.0f, 4.0f}}};  // one image, Q = 2, E = 2
    const Matrix fused = fuse_image_features(ids, embeddings, features);
    const Matrix expected = {{0, 0}, {0, 0}, {1, 2}, {3, 4}, {0, 0}, {0, 0}};
    CHECK((fused == expected));
    CHECK((image_spans(ids) == std::vector<std::pair<std::size_t, std::size_t>>{{1, 4}}));
    CHECK_THROWS_WITH(fuse_image_features({kImageStart, 0, kImageEnd}, Matrix(xt::zeros<float>({3, 2})), features),
                      Contains("holds 1 positions, expected 2"));
}

// --- the fast path's own threads (fast/threads.hpp) ---

extern "C" void openblas_set_num_threads(int);

TEST_CASE("fast threads: LayerNorm and the attention split over two threads equal them whole bit for bit, and a product "
          "split by columns gives the same bits every call, within float32 rounding of one sgemm", "[fast][threads]") {
    CHECK(fast::thread_count() == 1);  // outside a scope nothing splits
    xt::random::seed(11);
    const Matrix a = xt::random::randn<float>({300, 2048}), b = xt::random::randn<float>({700, 2048});
    const Matrix b_t = xt::transpose(b);
    // The products whole, by single-threaded sgemm. A block of columns is not always the same sums: OpenBLAS's
    // kernels sum a product's values in an order that depends on its width (0.3.21's Haswell kernels: 2.7% of the
    // values of a 256 x 4096 x 4096 product split in two halves differ in their last bits), so the fast path's
    // output depends on its thread count (docs/fast-path.md#threads).
    openblas_set_num_threads(1);
    Matrix whole_t({300, 700}), whole_n({300, 700});
    fast::gemm_block(fast::whole(a), fast::whole(b), true, whole_t.data(), 700);    // 430M multiply-adds: split in scope
    fast::gemm_block(fast::whole(a), fast::whole(b_t), false, whole_n.data(), 700);
    openblas_set_num_threads(2);  // as on a 2-core machine, whatever this one has
    Matrix x = xt::random::randn<float>({512, 256});
    const Vector gamma = xt::random::randn<float>({256}), beta = xt::random::randn<float>({256});
    Matrix x_whole = x;
    fast::layer_norm_in_place(x_whole, gamma, beta, 1e-6f);
    const Matrix q = xt::random::randn<float>({16, 64}), k = xt::random::randn<float>({40, 64}), v = xt::random::randn<float>({40, 64});
    const AttentionOutput att_whole = fast::multi_head_attention(q, fast::whole(k), fast::whole(v), 4, nullptr, true);
    {
        const fast::OwnThreads own;
        CHECK(fast::thread_count() == 2);
        Matrix split_t({300, 700}), split_n({300, 700}), again_t({300, 700}), again_n({300, 700});
        fast::gemm_block(fast::whole(a), fast::whole(b), true, split_t.data(), 700);
        fast::gemm_block(fast::whole(a), fast::whole(b_t), false, split_n.data(), 700);
        fast::gemm_block(fast::whole(a), fast::whole(b), true, again_t.data(), 700);
        fast::gemm_block(fast::whole(a), fast::whole(b_t), false, again_n.data(), 700);
        CHECK(bool(xt::all(xt::equal(split_t, again_t))));
        CHECK(bool(xt::all(xt::equal(split_n, again_n))));
        const float scale = xt::amax(xt::abs(whole_t))();  // the largest of 210,000 sums of 2048 products of unit normals
        CHECK(xt::amax(xt::abs(split_t - whole_t))() <= 1e-5f * scale);
        CHECK(xt::amax(xt::abs(split_n - whole_n))() <= 1e-5f * scale);
        fast::layer_norm_in_place(x, gamma, beta, 1e-6f);
        CHECK(bool(xt::all(xt::equal(x, x_whole))));
        const AttentionOutput att = fast::multi_head_attention(q, fast::whole(k), fast::whole(v), 4, nullptr, true);
        CHECK(bool(xt::all(xt::equal(att.attended, att_whole.attended))));
        CHECK(bool(xt::all(xt::equal(att.weights, att_whole.weights))));
    }
    CHECK(fast::thread_count() == 1);  // the scope gave OpenBLAS its threads back
}

TEST_CASE("fast gemm: a weight kept in bf16 or f16 (packed) gives the float32 weight's product bit for bit, both "
          "orientations, inner sizes below and above sgemm's block, on OpenBLAS's threads and split over the fast "
          "path's", "[fast][gemm]") {
    std::mt19937 rng(21);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    // raw 16-bit values of a random weight, and the same values as float32
    auto make = [&](std::size_t rows, std::size_t cols, bool brain, std::vector<std::uint8_t>& raw) {
        Matrix widened({rows, cols});
        raw.resize(2 * rows * cols);
        for (std::size_t i = 0; i < rows * cols; ++i) {
            float value = normal(rng);
            std::uint32_t bits;
            std::memcpy(&bits, &value, 4);
            // bf16: the top half; f16: a value f16 holds exactly (the top 11 significant bits, exponent in range)
            const std::uint16_t half = brain ? static_cast<std::uint16_t>(bits >> 16) : 0;
            if (brain) {
                raw[2 * i] = static_cast<std::uint8_t>(half & 0xFF), raw[2 * i + 1] = static_cast<std::uint8_t>(half >> 8);
                widened.flat(i) = bf16_to_float(half);
            } else {
                const std::uint16_t f16 = static_cast<std::uint16_t>(0x3C00 | (i * 2654435761u % 1024));  // in [1, 2)
                raw[2 * i] = static_cast<std::uint8_t>(f16 & 0xFF), raw[2 * i + 1] = static_cast<std::uint8_t>(f16 >> 8);
                widened.flat(i) = (i % 3 ? 1.0f : -1.0f) * f16_to_float(f16);
                raw[2 * i + 1] |= static_cast<std::uint8_t>(i % 3 ? 0 : 0x80);  // the sign
            }
        }
        return widened;
    };
    auto widen_bf16 = [](const std::uint8_t* raw, std::size_t n, float* out) { convert_to_float("BF16", raw, n, out); };
    auto widen_f16 = [](const std::uint8_t* raw, std::size_t n, float* out) { convert_to_float("F16", raw, n, out); };
    openblas_set_num_threads(2);  // outside a scope, OpenBLAS's own two threads, as on a 2-core machine
    // Inner sizes: 300 fits in one of sgemm's blocks; 1664 (Qwen-VL's Kv) and 4096 (its E) are summed in several,
    // and a packed weight is then widened and multiplied one block at a time.
    for (const std::size_t K : {std::size_t(300), std::size_t(1664), std::size_t(4096)})
        for (const bool brain : {true, false}) {
            INFO((brain ? "bf16" : "f16") << ", inner size " << K);
            const std::size_t R = K == 300 ? 256 : 48;  // rows of a
            const Matrix a = xt::random::randn<float>({R, K});
            std::vector<std::uint8_t> raw_t, raw_n;
            const Matrix b_t = make(700, K, brain, raw_t), b_n = make(K, 700, brain, raw_n);  // (out, in) and (in, out)
            const fast::Packed packed_t{raw_t.data(), 2, brain ? +widen_bf16 : +widen_f16};
            const fast::Packed packed_n{raw_n.data(), 2, brain ? +widen_bf16 : +widen_f16};
            for (const bool threads : {false, true}) {
                INFO((threads ? "split over the fast path's threads" : "on OpenBLAS's threads"));
                std::unique_ptr<fast::OwnThreads> own(threads ? new fast::OwnThreads : nullptr);
                for (const bool accumulate : {false, true}) {
                    INFO((accumulate ? "out += a b" : "out = a b"));
                    Matrix want_t = xt::ones<float>({R, std::size_t(700)}), want_n = want_t, got_t = want_t, got_n = want_t;
                    fast::gemm_block(fast::whole(a), fast::whole(b_t), true, want_t.data(), 700, accumulate);
                    fast::gemm_block(fast::whole(a), fast::Block(packed_t, 700, K, K), true, got_t.data(), 700, accumulate);
                    fast::gemm_block(fast::whole(a), fast::whole(b_n), false, want_n.data(), 700, accumulate);
                    fast::gemm_block(fast::whole(a), fast::Block(packed_n, K, 700, 700), false, got_n.data(), 700, accumulate);
                    CHECK(bool(xt::all(xt::equal(got_t, want_t))));
                    CHECK(bool(xt::all(xt::equal(got_n, want_n))));
                }
            }
        }
}

namespace {
// This process's threads, from /proc/self/task.
std::size_t process_threads() {
    return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator("/proc/self/task"),
                                                  std::filesystem::directory_iterator{}));
}
}  // namespace

TEST_CASE("fast threads: a scope stops OpenBLAS's idle threads, and its next threaded product starts them again",
          "[fast][threads]") {
    openblas_set_num_threads(2);
    xt::random::seed(12);
    const Matrix a = xt::random::randn<float>({256, 512}), b = xt::random::randn<float>({512, 512});
    Matrix before({256, 512}), after({256, 512});
    fast::gemm_block(fast::whole(a), fast::whole(b), false, before.data(), 512);  // OpenBLAS's two threads
    const std::size_t with_pool = process_threads();
    std::size_t in_scope = 0;
    {
        const fast::OwnThreads own;
        in_scope = process_threads();
    }
    CHECK(in_scope < with_pool);  // its workers joined: nothing of OpenBLAS's left to spin beside ours
    fast::gemm_block(fast::whole(a), fast::whole(b), false, after.data(), 512);
    CHECK(process_threads() > in_scope);  // started again by the threaded product
    CHECK(bool(xt::all(xt::equal(after, before))));  // and the same sums in the same order
}

TEST_CASE("fast threads: parallel_for runs every index once on two threads and passes an exception on",
          "[fast][threads]") {
    openblas_set_num_threads(2);
    const fast::OwnThreads own;
    std::vector<int> seen(1000, 0);
    std::set<std::thread::id> threads;
    std::mutex lock;
    fast::parallel_for(1000, 1, [&](std::size_t begin, std::size_t end) {
        CHECK(fast::thread_count() == 1);  // inside a part nothing splits again
        for (std::size_t i = begin; i < end; ++i) ++seen[i];
        const std::lock_guard<std::mutex> guard(lock);
        threads.insert(std::this_thread::get_id());
    });
    CHECK(std::count(seen.begin(), seen.end(), 1) == 1000);
    CHECK(threads.size() == 2);
    std::size_t parts = 0;
    fast::parallel_for(3, 2, [&](std::size_t, std::size_t) { ++parts; });  // 3 indices, at least 2 each: one part
    CHECK(parts == 1);
    CHECK_THROWS_WITH(fast::parallel_for(10, 1, [](std::size_t begin, std::size_t) {
                          if (begin > 0) throw std::invalid_argument("from the second thread");
                      }),
                      "from the second thread");
}
