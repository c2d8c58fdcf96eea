#include "trace.hpp"

#include <stdexcept>

namespace qwenvl {

void Trace::record(const std::string& name, xt::xarray<float> value) {
    for (auto& step : steps_)
        if (step.first == name) {
            step.second = std::move(value);
            return;
        }
    steps_.emplace_back(name, std::move(value));
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
