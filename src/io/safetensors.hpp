// io/safetensors.hpp: reading the checkpoint's tensors (Hugging Face safetensors, F32 / F16 / BF16).
//
// Layout of a file: 8 bytes little-endian header length n; n bytes of JSON mapping each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets from the end of the header), with an optional
// "__metadata__" entry; then the raw little-endian data. Every field is checked before any data is read:
// a malformed file gives one error naming the file and the problem, never undefined behaviour.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "io/errors.hpp"

namespace qwenvl {

struct TensorEntry {
    std::string name;
    std::string dtype;               // "F32", "F16", "BF16", ... as in the header
    std::vector<std::size_t> shape;
    std::uint64_t begin = 0, end = 0;  // byte range, absolute in the file
    std::string file;                // the file holding it
};

struct SafetensorsHeader {
    std::vector<TensorEntry> tensors;             // in header order
    std::map<std::string, std::string> metadata;  // "__metadata__", when present
};

// Parses and validates a header. `bytes` holds the first `available` bytes of a file of `file_size` bytes
// (at least 8 + header length of them). Throws std::runtime_error with the problem (no file name) when
// the length runs past the file, the JSON is malformed, a dtype is unknown, a shape is not a list of
// sizes, data offsets are outside the data or overlap, or a byte count disagrees with the shape.
SafetensorsHeader parse_safetensors_header(const std::uint8_t* bytes, std::size_t available, std::uint64_t file_size);

// Bytes per element of a dtype known to safetensors; 0 for an unknown one.
std::size_t dtype_size(const std::string& dtype);

// Exact conversions to float32.
float bf16_to_float(std::uint16_t bits);  // bf16 is the top 16 bits of a float32
float f16_to_float(std::uint16_t bits);   // IEEE half, subnormals, infinities and NaN included

// Converts `count` little-endian values of dtype F32, F16 or BF16 to float32; throws for other dtypes.
void convert_to_float(const std::string& dtype, const std::uint8_t* raw, std::size_t count, float* out);

// The tensors of one or more safetensors files (a sharded checkpoint), looked up by name.
class WeightFiles {
public:
    // Adds a .safetensors file, or a model.safetensors.index.json (its shards are found beside it).
    // Throws InputError naming the file. A tensor name found in two files is an error.
    void add(const std::string& path);
    bool has(const std::string& name) const;
    const TensorEntry& entry(const std::string& name) const;  // throws InputError when missing
    // Reads elements [first, first + count) of a tensor (row-major) into `out` as float32, straight from the
    // file: how a packed tensor such as in_proj_weight is split without a second copy in memory.
    void read_into(const std::string& name, std::size_t first, std::size_t count, float* out) const;
    std::vector<TensorEntry> entries() const;   // sorted by name
    std::vector<std::string> files() const { return files_; }

private:
    void add_safetensors(const std::string& path);
    void add_index(const std::string& path);
    std::map<std::string, TensorEntry> tensors_;
    std::vector<std::string> files_;
};

}  // namespace qwenvl
