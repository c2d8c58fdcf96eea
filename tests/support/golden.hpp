// tests/support/golden.hpp: helpers shared by the golden tests.
#pragma once

#include <catch2/catch.hpp>
#include <xtensor/xsort.hpp>

#include "core/compare.hpp"
#include "fixture_files.hpp"
#include "io/fixture.hpp"

namespace qwenvl_test {

inline std::vector<qwenvl::Fixture> all_fixtures() {
    std::vector<qwenvl::Fixture> fixtures;
    for (const auto& path : fixture_paths(QWENVL_DATA_DIR "/fixtures")) fixtures.push_back(qwenvl::load_fixture(path));
    REQUIRE(fixtures.size() >= 6);
    return fixtures;
}

// The fixtures, loaded once per test binary.
inline const std::vector<qwenvl::Fixture>& fixtures() {
    static const std::vector<qwenvl::Fixture> loaded = all_fixtures();
    return loaded;
}

// Checks `got` against PyTorch's value of `stage` in fixture `f`; a failure names the fixture, the stage,
// the first index outside the tolerance and both values.
inline void check_stage(const qwenvl::Fixture& f, const std::string& stage, const xt::xarray<float>& got) {
    const auto& want = f.expect(stage);
    const qwenvl::Comparison c = qwenvl::compare(got, want, f.atol, f.rtol);
    INFO("fixture " << f.name << ", stage " << stage << ": " << qwenvl::describe(c, want));
    CHECK(c.ok());
}

// Gradients are held to |got - want| <= kAtol + kScale max|want| + kRtol |want| per element: float32 arithmetic
// against autograd's float64 values rounded to float32. A float32 sum's rounding scales with its terms, not with its
// result: an element near 0 in a gradient whose other elements are large carries an error of a few float32 ulps
// of those. kScale (about 17 ulps of the tensor's largest value) is that share; without it, small_variance's
// dL/d query, whose rows reach 75 and pass through LayerNorm rows of rstd 440, held its element of -0.0665 to
// within 1.3e-5 on the readable path and 3.8e-5 on the fast path (the sums in another order), against a bound of
// 1.7e-5: a pass by luck, not by margin. Elsewhere kAtol and kRtol leave a margin of about 10x.
inline constexpr double kAtol = 1e-5, kRtol = 1e-4, kScale = 2e-6;

inline void check_gradient(const qwenvl::Fixture& f, const std::string& what, const xt::xarray<float>& got,
                    const xt::xarray<float>& want) {
    const double largest = want.size() ? static_cast<double>(xt::amax(xt::abs(want))()) : 0.0;
    const qwenvl::Comparison c = qwenvl::compare(got, want, kAtol + kScale * largest, kRtol);
    INFO(f.name << ": dL/d " << what << ": " << qwenvl::describe(c, want));
    CHECK(c.ok());
}

}  // namespace qwenvl_test
