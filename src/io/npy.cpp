#include "io/npy.hpp"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <unistd.h>

#include <xtensor/xmanipulation.hpp>

#include "core/shapes.hpp"
#include "io/errors.hpp"
#include "io/safetensors.hpp"

namespace qwenvl {

namespace {
// The value of 'key' in the header's dict literal, as text: "'<f4'", "False", "(2, 3)", or a structured dtype's
// list of fields "[('x', '<f4'), ('y', '<i4')]". The header is a Python dict literal written by numpy; only these
// forms of value occur in it.
std::string dict_value(const std::string& header, const std::string& key) {
    std::size_t at = header.find("'" + key + "'");
    if (at == std::string::npos) throw std::runtime_error("npy header has no '" + key + "'");
    at = header.find(':', at + key.size() + 2);
    if (at == std::string::npos) throw std::runtime_error("npy header has no value for '" + key + "'");
    at = header.find_first_not_of(' ', at + 1);
    if (at == std::string::npos) throw std::runtime_error("npy header has no value for '" + key + "'");
    const char open = header[at];
    const char close = open == '\'' ? '\'' : open == '(' ? ')' : open == '[' ? ']' : ',';
    std::size_t end = header.find(close, at + 1);
    if (close == ',') {  // True / False: up to the next comma or brace
        end = header.find_first_of(",}", at);
        if (end == std::string::npos) throw std::runtime_error("npy header is not closed");
        return header.substr(at, end - at);
    }
    if (end == std::string::npos) throw std::runtime_error("npy header value of '" + key + "' is not closed");
    return header.substr(at, end - at + 1);
}
}  // namespace

namespace {
// Where a .npy file's header dict starts (`offset`) and its length, from the file's first `size` bytes: the magic,
// the version, then a 2-byte length (format 1.0) or a 4-byte one (2.0 and 3.0).
struct Preamble {
    std::size_t offset, header_len;
};
Preamble read_preamble(const std::uint8_t* bytes, std::size_t size) {
    static const std::uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    if (size < 10 || std::memcmp(bytes, magic, 6) != 0) throw std::runtime_error("not a .npy file (no \\x93NUMPY magic)");
    const std::uint8_t major = bytes[6];
    if (major == 1) return {10, static_cast<std::size_t>(bytes[8] | (bytes[9] << 8))};
    if (major != 2 && major != 3) throw std::runtime_error("unsupported .npy format version " + std::to_string(major));
    if (size < 12) throw std::runtime_error("npy header truncated");
    return {12, static_cast<std::size_t>(bytes[8]) | (static_cast<std::size_t>(bytes[9]) << 8) |
                    (static_cast<std::size_t>(bytes[10]) << 16) | (static_cast<std::size_t>(bytes[11]) << 24)};
}

// The preamble and header dict of a .npy file whose first `size` bytes are `bytes` (all of it, or the header's part)
// and whose whole size is `file_size`; `data_at` receives where the values start. a.data is left null.
NpyArray parse_header(const std::uint8_t* bytes, std::size_t size, std::size_t file_size, std::size_t* data_at) {
    const auto [offset, header_len] = read_preamble(bytes, size);
    if (header_len > size - offset) throw std::runtime_error("npy header runs past the end of the file");
    const std::string header(reinterpret_cast<const char*>(bytes + offset), header_len);

    NpyArray a;
    const std::string descr = dict_value(header, "descr");
    if (!descr.empty() && descr.front() == '[')  // a list of named fields
        throw std::runtime_error("dtype " + descr + " is structured (named fields), which is not supported (float16, "
                                 "float32 or float64; bool for a mask)");
    if (descr.size() < 2 || descr.front() != '\'')  // (an empty one made substr throw std::out_of_range, unnamed)
        throw std::runtime_error("npy header's descr is not a quoted dtype (" + descr + ")");
    a.descr = descr.substr(1, descr.size() - 2);
    std::size_t element;
    if (a.descr == "<f4") element = 4;
    else if (a.descr == "<f8") element = 8;
    else if (a.descr == "<f2") element = 2;  // float16, widened exactly (a port's dump in half precision)
    else if (a.descr == "|b1") element = 1;
    else if (a.descr.size() > 1 && a.descr[0] == '>')
        throw std::runtime_error("dtype '" + a.descr + "' is big-endian; only little-endian float16, float32, float64 "
                                 "or bool is supported (numpy: astype('<" + a.descr.substr(1) + "'))");
    else throw std::runtime_error("dtype '" + a.descr + "' is not supported (float16, float32 or float64; bool for a "
                                  "mask)");
    const std::string order = dict_value(header, "fortran_order");
    if (order != "False" && order != "True")
        throw std::runtime_error("npy header's fortran_order is '" + order + "', not True or False");
    a.fortran_order = order == "True";

    // The shape is a Python tuple of sizes: "()", "(5,)", "(2, 3)": sizes separated by commas, spaces allowed.
    const std::string shape = dict_value(header, "shape");
    const auto not_a_tuple = [&] { return std::runtime_error("npy shape " + shape + " is not a tuple of sizes"); };
    if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')') throw not_a_tuple();
    // The product of the non-zero sizes is bounded even when another size is 0 (no values at all): xtensor
    // multiplies them to compute the strides, in a signed type.
    const std::size_t max_values = static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / element;
    std::size_t product = 1;
    bool empty = false;
    std::size_t i = 1;
    const std::size_t end = shape.size() - 1;
    const auto skip_spaces = [&] {
        while (i < end && shape[i] == ' ') ++i;
    };
    skip_spaces();
    while (i < end) {
        if (shape[i] < '0' || shape[i] > '9') throw not_a_tuple();
        std::size_t d = 0;
        while (i < end && shape[i] >= '0' && shape[i] <= '9') {
            if (d > (max_values - 9) / 10) throw std::runtime_error("npy shape " + shape + " is too large");
            d = d * 10 + static_cast<std::size_t>(shape[i++] - '0');
        }
        if (d == 0) empty = true;
        else if (product > max_values / d) throw std::runtime_error("npy shape " + shape + " is too large");
        else product *= d;
        a.shape.push_back(d);
        skip_spaces();
        if (i < end) {
            if (shape[i] != ',') throw not_a_tuple();
            ++i;
            skip_spaces();
        }
    }
    a.count = empty ? 0 : product;
    const std::size_t data_size = file_size - offset - header_len;
    if (data_size != a.count * element)
        throw std::runtime_error("shape " + shape + " of " + a.descr + " needs " + std::to_string(a.count * element) +
                                 " bytes of data but the file holds " + std::to_string(data_size));
    *data_at = offset + header_len;
    return a;
}
}  // namespace

NpyArray parse_npy(const std::uint8_t* bytes, std::size_t size) {
    std::size_t data_at = 0;
    NpyArray a = parse_header(bytes, size, size, &data_at);
    a.data = bytes + data_at;
    return a;
}

xt::xarray<float> npy_values(const NpyArray& a) {
    // A Fortran-order array of shape (d0, ..., dk) holds, in row-major order, its transpose of shape (dk, ..., d0).
    std::vector<std::size_t> stored = a.shape;
    if (a.fortran_order) std::reverse(stored.begin(), stored.end());
    xt::xarray<float> out = xt::xarray<float>::from_shape(stored);
    float* dst = out.data();
    if (a.descr == "<f4") {
        if (a.count) std::memcpy(dst, a.data, 4 * a.count);  // an empty array has no buffer: memcpy(nullptr) is UB
    } else if (a.descr == "<f8") {
        for (std::size_t i = 0; i < a.count; ++i) {
            double d;
            std::memcpy(&d, a.data + 8 * i, 8);
            dst[i] = static_cast<float>(d);
        }
    } else if (a.descr == "<f2") {
        convert_to_float("F16", a.data, a.count, dst);  // the checkpoint reader's little-endian F16, widened exactly
    } else {
        for (std::size_t i = 0; i < a.count; ++i) dst[i] = a.data[i] ? 1.0f : 0.0f;
    }
    if (!a.fortran_order || a.shape.size() < 2) return out;
    return xt::xarray<float>(xt::transpose(out));  // all axes reversed: row-major values of the array's own shape
}

namespace {
// A little-endian float32 array in row-major order, the form features and masks come in, read with its values going
// straight into the array's memory: the header first, then one read of the values. Empty when the file is not of that
// form or its size is unknown (a pipe): read_npy then reads the whole file, and checks it, as before. (Reading the
// whole file first, then copying, touched twice the fresh memory: 13 MB for a full-size image's features.)
std::optional<xt::xarray<float>> read_float32_in_place(const std::string& path) {
    std::error_code error;
    if (!std::filesystem::is_regular_file(path, error)) return std::nullopt;  // a pipe is opened once, by read_file
    std::ifstream in = open_input(path, std::ios::binary);
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    in.seekg(0);
    if (size < 12 || !in) return std::nullopt;
    std::vector<std::uint8_t> head(12);
    if (!in.read(reinterpret_cast<char*>(head.data()), 12)) return std::nullopt;
    std::size_t header_end = 0;
    try {
        const Preamble p = read_preamble(head.data(), head.size());
        header_end = p.offset + p.header_len;
    } catch (const std::runtime_error&) {
        return std::nullopt;  // read whole by read_npy, which names the problem
    }
    if (header_end > static_cast<std::size_t>(size) || header_end < 12) return std::nullopt;
    head.resize(header_end);
    if (!in.read(reinterpret_cast<char*>(head.data()) + 12, static_cast<std::streamsize>(header_end - 12))) return std::nullopt;
    std::size_t data_at = 0;
    NpyArray a;
    try {
        a = parse_header(head.data(), head.size(), static_cast<std::size_t>(size), &data_at);
    } catch (const std::runtime_error& e) {
        throw InputError(path, e.what());
    }
    if (a.descr != "<f4" || a.fortran_order) return std::nullopt;
    xt::xarray<float> values = xt::xarray<float>::from_shape(a.shape);
    const auto bytes = static_cast<std::streamsize>(4 * a.count);
    if (a.count && in.read(reinterpret_cast<char*>(values.data()), bytes).gcount() != bytes)
        throw InputError(path, "cannot read (the file changed size while being read)");
    return values;
}
}  // namespace

xt::xarray<float> read_npy(const std::string& path, bool* is_bool) {
    if (std::optional<xt::xarray<float>> values = read_float32_in_place(path)) {
        if (is_bool) *is_bool = false;
        return std::move(*values);
    }
    const std::vector<std::uint8_t> bytes = read_file(path);
    try {
        const NpyArray a = parse_npy(bytes.data(), bytes.size());
        if (is_bool) *is_bool = a.descr == "|b1";
        return npy_values(a);
    } catch (const std::runtime_error& e) {
        throw InputError(path, e.what());
    }
}

xt::xarray<float> read_npy_float(const std::string& path) {
    bool is_bool = false;
    xt::xarray<float> values = read_npy(path, &is_bool);
    if (is_bool) throw InputError(path, "holds booleans, expected float16, float32 or float64");
    return values;
}

void write_npy(const std::string& path, const xt::xarray<float>& values) {
    write_npy(path, shape_of(values), values.data());  // an xt::xarray<float> is row-major by its type
}

void write_npy(const std::string& path, const std::vector<std::size_t>& shape, const float* data, Sync sync) {
    // Format version 1.0: magic, version, a 2-byte header length, then the header dict padded with spaces to end
    // in a newline at a multiple of 64 bytes (as numpy writes it).
    std::string dims;
    std::size_t count = 1;
    for (std::size_t d : shape) {
        dims += std::to_string(d) + (shape.size() == 1 ? ",)" : ", ");
        count *= d;
    }
    if (shape.size() != 1) dims = shape.empty() ? ")" : dims.substr(0, dims.size() - 2) + ")";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + ", }";
    const std::size_t preamble = 10;  // magic (6), version (2), length (2)
    header += std::string(63 - (preamble + header.size()) % 64, ' ') + "\n";
    std::string head = "\x93NUMPY";
    head += '\x01';
    head += '\x00';
    head += static_cast<char>(header.size() & 0xFF);
    head += static_cast<char>(header.size() >> 8);
    head += header;

    write_atomically(path, [&](std::ofstream& out) {
        out.write(head.data(), static_cast<std::streamsize>(head.size()));
        if (count) out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
    }, sync);
}

}  // namespace qwenvl
