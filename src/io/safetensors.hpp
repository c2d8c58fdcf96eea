// io/safetensors.hpp: reading the checkpoint's tensors (Hugging Face safetensors, F32 / F16 / BF16).
//
// Layout of a file: 8 bytes little-endian header length n; n bytes of JSON mapping each tensor name to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets from the end of the header), with an optional
// "__metadata__" entry; then the raw little-endian data. Every field is checked before any data is read:
// a malformed file gives one error naming the file and the problem, never undefined behaviour.
// A header may hold tensors of every dtype the format lists (dtype_bits), of any shape (zero-size and 0-d ones
// included): only the tensors read must be F32, F16 or BF16, so a checkpoint whose other tensors are integers,
// FP8 or packed FP4 loads the adapter (data/readers/safetensors/every_dtype.safetensors).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
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
// sizes, data offsets are outside the data or overlap, or a byte count disagrees with the shape (for the
// sub-byte F4 and F6 dtypes, also when the shape's bits are not whole bytes, as the reference refuses).
SafetensorsHeader parse_safetensors_header(const std::uint8_t* bytes, std::size_t available, std::uint64_t file_size);

// Bits per element of a dtype the safetensors format lists (BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3,
// F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64); 0 for another.
std::size_t dtype_bits(const std::string& dtype);
// Bytes per element of such a dtype; 0 for another, and for the sub-byte F4 and F6 ones.
std::size_t dtype_size(const std::string& dtype);

// Exact conversions to float32.
float bf16_to_float(std::uint16_t bits);  // bf16 is the top 16 bits of a float32
float f16_to_float(std::uint16_t bits);   // IEEE half, subnormals, infinities and NaN included

// Converts `count` little-endian values of dtype F32, F16 or BF16 to float32; throws for other dtypes.
void convert_to_float(const std::string& dtype, const std::uint8_t* raw, std::size_t count, float* out);

// One file mapped read-only into memory (mmap), unmapped when the last owner lets go. Its pages are the page
// cache's own: mapping the file and reading a tensor costs no copy and no fresh memory.
class MappedFile {
public:
    // Maps `path`, which must still be `expected_size` bytes long (the size its header was checked against).
    MappedFile(const std::string& path, std::uint64_t expected_size);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    const std::uint8_t* data() const { return data_; }
    std::uint64_t size() const { return size_; }

private:
    const std::uint8_t* data_ = nullptr;
    std::uint64_t size_ = 0;
};

// The tensors of one or more safetensors files (a sharded checkpoint), looked up by name. Adding a file maps it
// (MappedFile) and reads and checks its header through the mapping, then gives the header's pages back; its
// tensors are read through the same mapping, so a sharded checkpoint keeps resident only the shards whose tensors
// are read (mapped_files()). The first read from a file checks it still has the size its header was read with.
class WeightFiles {
public:
    // Adds a .safetensors file, or a model.safetensors.index.json (its shards are found beside it).
    // Throws InputError naming the file. A tensor name found in two files is an error.
    // An index is the map of its checkpoint: each tensor it lists is read from the shard it names (InputError
    // naming the index, the tensor and the shard when that shard does not hold it), and a shard's tensors it
    // does not list are ignored (every shard's header is still checked whole).
    void add(const std::string& path);
    bool has(const std::string& name) const;
    const TensorEntry& entry(const std::string& name) const;  // throws InputError when missing
    // Converts elements [first, first + count) of a tensor (row-major) into `out` as float32, from the mapped
    // file: how a packed tensor such as in_proj_weight is split without a second copy in memory.
    void read_into(const std::string& name, std::size_t first, std::size_t count, float* out) const;
    // Elements [first, first + count) of an F32 tensor, in place in the mapped file, or nullptr when the tensor
    // is not F32 or its data is not aligned to 4 bytes (then read_into it). Valid while this object, or a copy
    // of it, lives.
    const float* float32_in_place(const std::string& name, std::size_t first, std::size_t count) const;
    // Elements [first, first + count) of an F16 or BF16 tensor, in place in the mapped file (little-endian, 2 bytes
    // each), or nullptr when the tensor has another dtype or its data is not aligned to 2 bytes. Valid as above.
    const std::uint8_t* half_in_place(const std::string& name, std::size_t first, std::size_t count) const;
    std::vector<TensorEntry> entries() const;   // sorted by name
    std::vector<std::string> files() const { return files_; }
    std::vector<std::string> mapped_files() const;  // the files a tensor was read from so far, in that order
    // A "__metadata__" entry of the files (the first file that has it); InputError naming the file when none has.
    std::string metadata(const std::string& key) const;

private:
    // Adds the tensors of a .safetensors file: all of them, or only those named in `listed` (an index's shard).
    void add_safetensors(const std::string& path, const std::set<std::string>* listed = nullptr);
    void add_index(const std::string& path);
    // The bytes of elements [first, first + count) of a tensor, in its file's mapping.
    const std::uint8_t* bytes(const std::string& name, std::size_t first, std::size_t count) const;
    std::map<std::string, TensorEntry> tensors_;
    std::vector<std::string> files_;
    std::vector<std::map<std::string, std::string>> metadata_;  // each file's __metadata__, in files_' order
    std::map<std::string, std::shared_ptr<const MappedFile>> mapped_;  // each file, mapped at the size its header was read with
    mutable std::vector<std::string> mapped_order_;
};

// Drops the whole pages inside [first, first + bytes) of a mapped file from this process's resident set
// (madvise(MADV_DONTNEED)). They stay in the page cache; reading them again maps them again, with the same bytes.
// With `to_mapping_end` the range ends where its mapping does, and the partial page it ends in goes too: the
// mapping holds that page whole, and nothing else of the process lies in it.
void drop_pages(const void* first, std::size_t bytes, bool to_mapping_end = false);

}  // namespace qwenvl
