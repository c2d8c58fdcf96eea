#include "core/compare.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "core/shapes.hpp"

namespace qwenvl {

Comparison compare(const xt::xarray<float>& actual, const xt::xarray<float>& expected, double atol, double rtol) {
    Comparison c;
    c.same_shape = shape_of(actual) == shape_of(expected);
    if (!c.same_shape) return c;
    c.count = expected.size();
    for (std::size_t i = 0; i < c.count; ++i) {
        const double a = actual.data()[i], b = expected.data()[i];
        const double err = std::fabs(a - b);
        const bool good = err <= atol + rtol * std::fabs(b);  // false for NaN
        const bool worse = std::isnan(err) ? !std::isnan(c.max_abs_error) : err > c.max_abs_error;  // NaN sticks
        if (worse) c.max_abs_error = err;
        if (!good && c.failures++ == 0) {
            c.first_failure = i;
            c.first_actual = static_cast<float>(a);
            c.first_expected = static_cast<float>(b);
        }
    }
    return c;
}

namespace {
// A float's position on the number line of float32 values: consecutive floats differ by 1, -0 and +0 are both 0.
std::int64_t ordinal(float f) {
    std::int32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    return bits < 0 ? -static_cast<std::int64_t>(bits & 0x7fffffff) : static_cast<std::int64_t>(bits);
}
}  // namespace

double ulp_distance(float a, float b) {
    if (!std::isfinite(a) || !std::isfinite(b)) return std::numeric_limits<double>::quiet_NaN();
    return static_cast<double>(std::llabs(ordinal(a) - ordinal(b)));
}

Agreement agreement(const xt::xarray<float>& actual, const xt::xarray<float>& expected) {
    Agreement g;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    double dot = 0.0, norm_a = 0.0, norm_b = 0.0, largest = 0.0;
    std::vector<float> ulps;  // exact below 2^24 ULPs, where a median is read; floats halve a full-size stage's 64 MB
    ulps.reserve(expected.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
        const float a = actual.data()[i], b = expected.data()[i];
        if (!std::isfinite(a) || !std::isfinite(b)) {
            ++g.non_finite;
            continue;
        }
        g.max_abs = std::max(g.max_abs, std::fabs(static_cast<double>(a) - b));
        largest = std::max(largest, std::fabs(static_cast<double>(b)));
        dot += static_cast<double>(a) * b;
        norm_a += static_cast<double>(a) * a;
        norm_b += static_cast<double>(b) * b;
        ulps.push_back(static_cast<float>(ulp_distance(a, b)));
    }
    if (g.non_finite) return Agreement{nan, nan, nan, nan, nan, g.non_finite};
    g.max_rel = largest > 0 ? g.max_abs / largest : (g.max_abs > 0 ? nan : 0.0);
    g.cosine = norm_a > 0 && norm_b > 0 ? dot / std::sqrt(norm_a * norm_b) : (norm_a == norm_b ? 1.0 : 0.0);
    if (!ulps.empty()) {
        std::nth_element(ulps.begin(), ulps.begin() + ulps.size() / 2, ulps.end());
        g.ulp_median = ulps[ulps.size() / 2];
        g.ulp_max = *std::max_element(ulps.begin(), ulps.end());
    }
    return g;
}

namespace {
std::string index_string(std::size_t flat, const xt::xarray<float>& t) {
    std::vector<std::size_t> index(t.dimension());
    for (std::size_t d = t.dimension(); d-- > 0;) {
        index[d] = flat % t.shape(d);
        flat /= t.shape(d);
    }
    return shape_string(index);
}
}  // namespace

std::string describe(const Comparison& c, const xt::xarray<float>& expected) {
    char buf[256];
    if (!c.same_shape) return "shapes differ; expected " + shape_string(shape_of(expected));
    if (c.failures == 0) {
        std::snprintf(buf, sizeof buf, "ok, max |a-b| = %.3g over %zu values", c.max_abs_error, c.count);
        return buf;
    }
    std::snprintf(buf, sizeof buf, "%zu of %zu values differ; first at %s: got %.9g, expected %.9g; max |a-b| = %.3g",
                  c.failures, c.count, index_string(c.first_failure, expected).c_str(), c.first_actual,
                  c.first_expected, c.max_abs_error);
    return buf;
}

}  // namespace qwenvl
