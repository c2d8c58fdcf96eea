#include "io/safetensors_writer.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/errors.hpp"

namespace qwenvl {

namespace {
// `tensors` as one safetensors file of dtype `dtype`, each value stored as `bytes` bytes by `store`.
template <class Store>
void write_safetensors(const std::string& path, const std::map<std::string, xt::xarray<float>>& tensors,
                       const std::map<std::string, std::string>& metadata, const char* dtype, std::size_t bytes,
                       Store store) {
    nlohmann::json header = nlohmann::json::object();
    std::uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
        header[name] = {{"dtype", dtype},
                        {"shape", std::vector<std::size_t>(t.shape().begin(), t.shape().end())},
                        {"data_offsets", {offset, offset + bytes * t.size()}}};
        offset += bytes * t.size();
    }
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    write_atomically(path, [&](std::ofstream& out) {
        const std::uint64_t n = text.size();
        for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xFF));
        out << text;
        for (const auto& [name, t] : tensors) {
            const xt::xarray<float> row_major = t;  // the values in row-major order, whatever the layout
            store(out, row_major);
        }
    });
}
}  // namespace

void write_safetensors_f32(const std::string& path, const std::map<std::string, xt::xarray<float>>& tensors,
                           const std::map<std::string, std::string>& metadata) {
    write_safetensors(path, tensors, metadata, "F32", 4, [](std::ofstream& out, const xt::xarray<float>& t) {
        out.write(reinterpret_cast<const char*>(t.data()), static_cast<std::streamsize>(4 * t.size()));
    });
}

std::uint16_t float_to_bf16(float value) {
    std::uint32_t bits;
    std::memcpy(&bits, &value, 4);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);  // a quiet NaN
    // to nearest, ties to even: add half of the dropped part's unit, less one unless the kept part is odd
    bits += 0x7FFFu + ((bits >> 16) & 1u);
    return static_cast<std::uint16_t>(bits >> 16);
}

void write_safetensors_bf16(const std::string& path, const std::map<std::string, xt::xarray<float>>& tensors,
                            const std::map<std::string, std::string>& metadata) {
    write_safetensors(path, tensors, metadata, "BF16", 2, [](std::ofstream& out, const xt::xarray<float>& t) {
        std::vector<char> raw(2 * t.size());
        for (std::size_t i = 0; i < t.size(); ++i) {
            const std::uint16_t b = float_to_bf16(t.data()[i]);
            raw[2 * i] = static_cast<char>(b & 0xFF);
            raw[2 * i + 1] = static_cast<char>(b >> 8);
        }
        out.write(raw.data(), static_cast<std::streamsize>(raw.size()));
    });
}

}  // namespace qwenvl
