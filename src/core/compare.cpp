#include "core/compare.hpp"

#include <cmath>
#include <cstdio>

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
