#include "io/safetensors_writer.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/errors.hpp"

namespace qwenvl {

void write_safetensors_f32(const std::string& path, const std::map<std::string, xt::xarray<float>>& tensors,
                           const std::map<std::string, std::string>& metadata) {
    nlohmann::json header = nlohmann::json::object();
    std::uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
        header[name] = {{"dtype", "F32"},
                        {"shape", std::vector<std::size_t>(t.shape().begin(), t.shape().end())},
                        {"data_offsets", {offset, offset + 4 * t.size()}}};
        offset += 4 * t.size();
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
            out.write(reinterpret_cast<const char*>(row_major.data()), static_cast<std::streamsize>(4 * t.size()));
        }
    });
}

}  // namespace qwenvl
