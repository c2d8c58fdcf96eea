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

// How close two tensors of the same shape are, for `compare` (a port against this project): the largest |a - b|, the
// largest |a - b| relative to the largest |b|, the cosine similarity of the two as flat vectors, and the median and
// largest distance in float32 units in the last place (ULPs: how many float32 values lie between a and b; 0 when
// equal, 1 for neighbours). NaN or infinite entries are counted (`non_finite`) and leave the other numbers NaN.
struct Agreement {
    double max_abs = 0.0, max_rel = 0.0, cosine = 1.0;
    double ulp_median = 0.0, ulp_max = 0.0;
    std::size_t non_finite = 0;
};
Agreement agreement(const xt::xarray<float>& actual, const xt::xarray<float>& expected);

// The distance between two floats in ULPs (the count of float32 values from a to b), as a double.
double ulp_distance(float a, float b);

// One line: "ok, max |a-b| = 2.4e-07 over 128 values" or "3 of 128 values differ; first at flat index 5
// (1, 0, 5): got 0.25, expected 0.5; max |a-b| = ..." or the two shapes when they differ.
std::string describe(const Comparison& c, const xt::xarray<float>& expected);

}  // namespace qwenvl
