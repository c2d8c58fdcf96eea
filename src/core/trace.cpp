#include "core/trace.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace qwenvl {

namespace {
// The value recorded under `name` in `steps` (const or not), or nullptr: the one lookup by name.
template <class Steps>
auto find(Steps& steps, const std::string& name) -> decltype(&steps.front().second) {
    for (auto& step : steps)
        if (step.first == name) return &step.second;
    return nullptr;
}
}  // namespace

void Trace::record(const std::string& name, xt::xarray<float> value) {
    if (xt::xarray<float>* old = find(steps_, name))
        *old = std::move(value);
    else
        steps_.emplace_back(name, std::move(value));
}

void Trace::record_item(const std::string& name, std::size_t n, std::size_t count, const xt::xarray<float>& value) {
    if (n >= count) throw std::out_of_range("Trace: item " + std::to_string(n) + " of " + std::to_string(count));
    if (n == 0) {
        std::vector<std::size_t> shape{count};
        shape.insert(shape.end(), value.shape().begin(), value.shape().end());
        record(name, xt::xarray<float>::from_shape(shape));
    }
    xt::xarray<float>* found = find(steps_, name);
    if (!found) throw std::out_of_range("Trace: item " + std::to_string(n) + " of '" + name + "' before item 0");
    xt::xarray<float>& stack = *found;
    if (stack.dimension() != value.dimension() + 1 || stack.shape(0) != count || stack.size() != count * value.size())
        throw std::out_of_range("Trace: item " + std::to_string(n) + " of '" + name + "' has another shape");
    std::copy(value.begin(), value.end(), stack.begin() + static_cast<std::ptrdiff_t>(n * value.size()));
}

const xt::xarray<float>& Trace::get(const std::string& name) const {
    if (const xt::xarray<float>* value = find(steps_, name)) return *value;
    throw std::out_of_range("Trace: no stage named '" + name + "' was recorded");
}

std::vector<std::string> Trace::names() const {
    std::vector<std::string> out;
    for (const auto& step : steps_) out.push_back(step.first);
    return out;
}

}  // namespace qwenvl
