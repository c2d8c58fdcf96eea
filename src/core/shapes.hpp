// core/shapes.hpp: the tensor types of this project and the shape checks every function runs at entry.
//
// Shape glossary (PyTorch order; docs/shapes.md has Qwen-VL's values):
//   N  images in a batch             L  keys per image = G_k * G_k
//   Kv visual encoder width (1664)   E  adapter width (4096)
//   H  attention heads (E / 128)     Dh channels per head = E / H
//   Q  learned queries = G_q * G_q   G_q, G_k  query and key grid sides (16 and 32)
// Weights follow nn.Linear's (out, in) convention; the one exception is `proj`, used as x @ W.
#pragma once

#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

namespace qwenvl {

using Vector = xt::xtensor<float, 1>;
using Matrix = xt::xtensor<float, 2>;
using Tensor3 = xt::xtensor<float, 3>;

// A wildcard in an expected shape: any size is accepted in that place.
constexpr std::size_t ANY = std::numeric_limits<std::size_t>::max();

// Thrown when a stage receives a tensor of the wrong shape; the message names the function,
// the argument, the shape it got and the shape it expected.
class ShapeError : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

// "(2, 3, 4)"; ANY prints as "*".
std::string shape_string(const std::vector<std::size_t>& shape);

// Throws ShapeError unless `actual` matches `expected` (same rank, equal sizes where not ANY).
void check_shape(const char* function, const char* argument,
                 const std::vector<std::size_t>& actual, const std::vector<std::size_t>& expected);

template <class Tensor>
std::vector<std::size_t> shape_of(const Tensor& t) {
    return std::vector<std::size_t>(t.shape().begin(), t.shape().end());
}

template <class Tensor>
void check_shape(const char* function, const char* argument, const Tensor& t,
                 const std::vector<std::size_t>& expected) {
    check_shape(function, argument, shape_of(t), expected);
}

// Throws std::invalid_argument naming the function when `condition` is false.
void require(bool condition, const char* function, const std::string& message);

}  // namespace qwenvl
