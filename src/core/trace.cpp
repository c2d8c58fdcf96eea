#include "core/trace.hpp"

#include "core/memory.hpp"

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
    // an xt::xarray<float> is row-major by its type: its memory is the item's values in order
    record_item(name, n, count, std::vector<std::size_t>(value.shape().begin(), value.shape().end()), value.data());
}

float* Trace::item_slot(const std::string& name, std::size_t n, std::size_t count, const std::vector<std::size_t>& shape) {
    if (n >= count) throw std::out_of_range("Trace: item " + std::to_string(n) + " of " + std::to_string(count));
    std::size_t size = 1;
    for (std::size_t d : shape) size *= d;
    if (n == 0) {
        std::vector<std::size_t> stacked{count};
        stacked.insert(stacked.end(), shape.begin(), shape.end());
        record(name, xt::xarray<float>::from_shape(stacked));
        // a full-size trace holds about 200 MB an image, first touched as it is recorded
        ask_for_huge_pages(find(steps_, name)->data(), count * size * sizeof(float));
    }
    xt::xarray<float>* found = find(steps_, name);
    if (!found) throw std::out_of_range("Trace: item " + std::to_string(n) + " of '" + name + "' before item 0");
    xt::xarray<float>& stack = *found;
    if (stack.dimension() != shape.size() + 1 || stack.shape(0) != count || stack.size() != count * size)
        throw std::out_of_range("Trace: item " + std::to_string(n) + " of '" + name + "' has another shape");
    return stack.data() + n * size;
}

void Trace::record_item(const std::string& name, std::size_t n, std::size_t count, const std::vector<std::size_t>& shape,
                        const float* data) {
    std::size_t size = 1;
    for (std::size_t d : shape) size *= d;
    float* slot = item_slot(name, n, count, shape);
    std::copy(data, data + size, slot);
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
