#include "core/memory.hpp"

#include <sys/mman.h>

#include <cstdint>

namespace qwenvl {

void ask_for_huge_pages(void* data, std::size_t bytes) {
    constexpr std::uintptr_t huge = std::uintptr_t(2) << 20;
    const auto begin = (reinterpret_cast<std::uintptr_t>(data) + huge - 1) / huge * huge;
    const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes) / huge * huge;
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace qwenvl
