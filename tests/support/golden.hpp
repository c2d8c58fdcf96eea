// tests/support/golden.hpp: helpers shared by the golden tests.
#pragma once

#include <catch2/catch.hpp>

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

}  // namespace qwenvl_test
