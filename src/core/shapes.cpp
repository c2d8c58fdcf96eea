#include "core/shapes.hpp"

namespace qwenvl {

std::string shape_string(const std::vector<std::size_t>& shape) {
    std::string s = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += shape[i] == ANY ? std::string("*") : std::to_string(shape[i]);
    }
    return s + (shape.size() == 1 ? ",)" : ")");
}

void check_shape(const char* function, const char* argument,
                 const std::vector<std::size_t>& actual, const std::vector<std::size_t>& expected) {
    bool ok = actual.size() == expected.size();
    for (std::size_t i = 0; ok && i < actual.size(); ++i)
        ok = expected[i] == ANY || expected[i] == actual[i];
    if (!ok)
        throw ShapeError(std::string(function) + ": " + argument + " has shape " + shape_string(actual) +
                         ", expected " + shape_string(expected));
}

void require(bool condition, const char* function, const std::string& message) {
    if (!condition) throw std::invalid_argument(std::string(function) + ": " + message);
}

}  // namespace qwenvl
