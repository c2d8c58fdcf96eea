// libFuzzer target: the safetensors reader on arbitrary bytes. Each input is parsed as a header, then given to
// WeightFiles as a file (an in-memory file, memfd) and every F32, F16 and BF16 tensor it lists is read through
// the mapping, in place and converted, as `run` reads them.
// Build and run: bash .ci/fuzz [SECONDS]   (docs/testing.md)
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>
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
    const int fd = memfd_create("fuzz.safetensors", 0);
    if (fd < 0) return 0;
    if (size == 0 || write(fd, data, size) == static_cast<ssize_t>(size)) {
        try {
            qwenvl::WeightFiles files;
            files.add("/proc/self/fd/" + std::to_string(fd));
            for (const auto& t : files.entries()) {
                if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16") continue;
                const std::size_t count = (t.end - t.begin) / qwenvl::dtype_size(t.dtype);
                std::vector<float> out(count);
                files.read_into(t.name, 0, count, out.data());
                if (const float* p = files.float32_in_place(t.name, 0, count))
                    for (std::size_t i = 0; i < count; ++i) out[i] += p[i];
            }
        } catch (const std::exception&) {
        }
    }
    close(fd);
    return 0;
}
