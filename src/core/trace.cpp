#include "core/trace.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace qwenvl {

namespace {
// A full-size trace holds about 200 MB per image, first touched as it is recorded: transparent huge pages (where the
// kernel gives them on madvise) take that in 2 MiB faults instead of 4 KiB ones. Only the whole 2 MiB pages inside
// the block are asked for.
void ask_for_huge_pages(float* data, std::size_t floats) {
    constexpr std::uintptr_t huge = std::uintptr_t(2) << 20;
    const auto begin = (reinterpret_cast<std::uintptr_t>(data) + huge - 1) / huge * huge;
    const auto end = (reinterpret_cast<std::uintptr_t>(data + floats)) / huge * huge;
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

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
    const xt::xarray<float> row_major = value;  // a no-op for the usual row-major xarray
    record_item(name, n, count, std::vector<std::size_t>(row_major.shape().begin(), row_major.shape().end()),
                row_major.data());
}

float* Trace::item_slot(const std::string& name, std::size_t n, std::size_t count, const std::vector<std::size_t>& shape) {
    if (n >= count) throw std::out_of_range("Trace: item " + std::to_string(n) + " of " + std::to_string(count));
    std::size_t size = 1;
    for (std::size_t d : shape) size *= d;
    if (n == 0) {
        std::vector<std::size_t> stacked{count};
        stacked.insert(stacked.end(), shape.begin(), shape.end());
        record(name, xt::xarray<float>::from_shape(stacked));
        ask_for_huge_pages(find(steps_, name)->data(), count * size);
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
