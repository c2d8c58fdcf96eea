// libFuzzer target: the safetensors header parser and the dtype conversions on arbitrary bytes.
// Build and run: bash .ci/fuzz [SECONDS]   (docs/testing.md)
#include <cstdint>
#include <vector>

#include "io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const qwenvl::SafetensorsHeader header = qwenvl::parse_safetensors_header(data, size, size);
        for (const auto& t : header.tensors) {
            if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16") continue;
            const std::size_t count = (t.end - t.begin) / qwenvl::dtype_size(t.dtype);
            std::vector<float> out(count);
            qwenvl::convert_to_float(t.dtype, data + t.begin, count, out.data());
        }
    } catch (const std::exception&) {
        // A clean rejection is the expected outcome for malformed input.
    }
    return 0;
}
