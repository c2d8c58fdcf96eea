// libFuzzer target: the .npy parser and the conversion to float32 on arbitrary bytes.
// Build and run: bash .ci/fuzz [SECONDS]   (docs/testing.md)
#include <cstdint>

#include "io/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const qwenvl::NpyArray a = qwenvl::parse_npy(data, size);
        const xt::xarray<float> values = qwenvl::npy_values(a);
        (void)values;
    } catch (const std::exception&) {
        // A clean rejection is the expected outcome for malformed input.
    }
    return 0;
}
