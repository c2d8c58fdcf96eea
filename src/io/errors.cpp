#include "io/errors.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iterator>

namespace qwenvl {

InputError cannot_open(const std::string& file) {
    return InputError(file, std::string("cannot open (") + std::strerror(errno) + ")");
}

std::ifstream open_input(const std::string& path, std::ios::openmode mode) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw InputError(path, "is a folder, not a file");
    std::ifstream in(path, mode);
    if (!in) throw cannot_open(path);
    return in;
}

nlohmann::json read_json(const std::string& path) {
    std::ifstream in = open_input(path);
    try {
        return nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception&) {
        throw InputError(path, "not valid JSON");
    }
}

std::vector<std::uint8_t> read_file(const std::string& path) {
    std::ifstream in = open_input(path, std::ios::binary);
    std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw InputError(path, "cannot read");
    return bytes;
}

}  // namespace qwenvl
