// tests/support/safetensors_writer.hpp: the tests' and the benchmark's name for the library's safetensors writer
// (src/io/safetensors_writer.hpp).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include "io/safetensors_writer.hpp"

namespace qwenvl_test {
using qwenvl::write_safetensors_f32;

// A safetensors file from its parts as given: the header's length (8 bytes, little-endian), the header, the data. No
// check and no padding, so that a test can write a malformed file, or a dtype the library's writer does not write.
inline void write_raw_safetensors(const std::string& path, const std::string& header, const std::string& data) {
    std::ofstream out(path, std::ios::binary);
    const std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xFF));
    out << header << data;
}
}  // namespace qwenvl_test
