#include "trace.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace qwenvl {

void Trace::record(const std::string& name, xt::xarray<float> value) {
    for (auto& step : steps_)
        if (step.first == name) {
            step.second = std::move(value);
            return;
        }
    steps_.emplace_back(name, std::move(value));
}

void Trace::record_item(const std::string& name, std::size_t n, std::size_t count, const xt::xarray<float>& value) {
    if (n >= count) throw std::out_of_range("Trace: item " + std::to_string(n) + " of " + std::to_string(count));
    if (n == 0) {
        std::vector<std::size_t> shape{count};
        shape.insert(shape.end(), value.shape().begin(), value.shape().end());
        record(name, xt::xarray<float>::from_shape(shape));
    }
    auto step = std::find_if(steps_.begin(), steps_.end(), [&](const auto& s) { return s.first == name; });
    if (step == steps_.end()) throw std::out_of_range("Trace: item " + std::to_string(n) + " of '" + name + "' before item 0");
    xt::xarray<float>& stack = step->second;
    if (stack.dimension() != value.dimension() + 1 || stack.shape(0) != count || stack.size() != count * value.size())
        throw std::out_of_range("Trace: item " + std::to_string(n) + " of '" + name + "' has another shape");
    std::copy(value.begin(), value.end(), stack.data() + n * value.size());
}

bool Trace::has(const std::string& name) const {
    for (const auto& step : steps_)
        if (step.first == name) return true;
    return false;
}

const xt::xarray<float>& Trace::get(const std::string& name) const {
    for (const auto& step : steps_)
        if (step.first == name) return step.second;
    throw std::out_of_range("Trace: no stage named '" + name + "' was recorded");
}

std::vector<std::string> Trace::names() const {
    std::vector<std::string> out;
    for (const auto& step : steps_) out.push_back(step.first);
    return out;
}

}  // namespace qwenvl
