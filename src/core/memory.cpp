#include "core/memory.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

namespace qwenvl {

namespace {
constexpr std::uintptr_t huge = std::uintptr_t(2) << 20;  // a transparent huge page
}  // namespace

void ask_for_huge_pages(void* data, std::size_t bytes) {
    const auto begin = (reinterpret_cast<std::uintptr_t>(data) + huge - 1) / huge * huge;
    const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes) / huge * huge;
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

std::uint8_t* map_at_huge_boundary(std::size_t bytes, int prot, int flags) {
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t kept = (bytes + page - 1) / page * page;
    void* area = ::mmap(nullptr, kept + huge, prot, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (area == MAP_FAILED) return nullptr;
    auto* const first = static_cast<std::uint8_t*>(area);
    auto* const at = reinterpret_cast<std::uint8_t*>((reinterpret_cast<std::uintptr_t>(first) + huge - 1) / huge * huge);
    if (at > first) ::munmap(first, static_cast<std::size_t>(at - first));
    if (first + huge > at) ::munmap(at + kept, static_cast<std::size_t>(first + huge - at));
    return at;
}

}  // namespace qwenvl
