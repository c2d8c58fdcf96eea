#include "safetensors_writer.hpp"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "io/errors.hpp"

namespace qwenvl_test {

using qwenvl::InputError;

void write_safetensors_f32(const std::string& path, const std::map<std::string, xt::xarray<float>>& tensors) {
    nlohmann::json header = nlohmann::json::object();
    std::uint64_t offset = 0;
    for (const auto& [name, t] : tensors) {
        header[name] = {{"dtype", "F32"},
                        {"shape", std::vector<std::size_t>(t.shape().begin(), t.shape().end())},
                        {"data_offsets", {offset, offset + 4 * t.size()}}};
        offset += 4 * t.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) throw InputError(path, std::string("cannot write (") + std::strerror(errno) + ")");
    const std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xFF));
    out << text;
    for (const auto& [name, t] : tensors)
        out.write(reinterpret_cast<const char*>(t.data()), static_cast<std::streamsize>(4 * t.size()));
    if (!out) throw InputError(path, "cannot write");
}

}  // namespace qwenvl_test
