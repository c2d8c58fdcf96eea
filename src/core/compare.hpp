// compare.hpp: element-wise comparison with PyTorch's values, |a - b| <= atol + rtol * |b|
// (the rule of torch.allclose / numpy.isclose, with b the expected value).
#pragma once

#include <string>

#include <xtensor/xarray.hpp>

namespace qwenvl {

struct Comparison {
    bool same_shape = false;
    std::size_t count = 0;          // elements compared
    std::size_t failures = 0;       // elements outside the tolerance (NaN counts as a failure)
    double max_abs_error = 0.0;     // largest |a - b|
    std::size_t first_failure = 0;  // flat index of the first failing element (when failures > 0)
    float first_actual = 0.0f, first_expected = 0.0f;
    bool ok() const { return same_shape && failures == 0; }
};

Comparison compare(const xt::xarray<float>& actual, const xt::xarray<float>& expected, double atol, double rtol);

// One line: "ok, max |a-b| = 2.4e-07 over 128 values" or "3 of 128 values differ; first at flat index 5
// (1, 0, 5): got 0.25, expected 0.5; max |a-b| = ..." or the two shapes when they differ.
std::string describe(const Comparison& c, const xt::xarray<float>& expected);

}  // namespace qwenvl
