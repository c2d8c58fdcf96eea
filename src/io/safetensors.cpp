#include "io/safetensors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/memory.hpp"
#include "core/shapes.hpp"

namespace qwenvl {

namespace {
// The reference implementation refuses headers over 100 MB; so do we (and so no huge allocation).
constexpr std::uint64_t kMaxHeader = 100u * 1024u * 1024u;

std::uint64_t read_u64_le(const std::uint8_t* p) {
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}
}  // namespace

std::size_t dtype_bits(const std::string& dtype) {
    // As huggingface/safetensors lists them (safetensors/src/tensor.rs, `enum Dtype` and `Dtype::bitsize`).
    static const std::map<std::string, std::size_t> bits = {
        {"BOOL", 8},    {"F4", 4},      {"F6_E2M3", 6}, {"F6_E3M2", 6},     {"U8", 8},           {"I8", 8},
        {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8},  {"I16", 16},
        {"U16", 16},    {"F16", 16},    {"BF16", 16},   {"I32", 32},        {"U32", 32},         {"F32", 32},
        {"C64", 64},    {"F64", 64},    {"I64", 64},    {"U64", 64}};
    const auto it = bits.find(dtype);
    return it == bits.end() ? 0 : it->second;
}

std::size_t dtype_size(const std::string& dtype) {
    const std::size_t bits = dtype_bits(dtype);
    return bits % 8 == 0 ? bits / 8 : 0;
}

SafetensorsHeader parse_safetensors_header(const std::uint8_t* bytes, std::size_t available, std::uint64_t file_size) {
    if (file_size < 8 || available < 8)
        throw std::runtime_error("file too short for a safetensors header (" + std::to_string(file_size) + " bytes)");
    const std::uint64_t n = read_u64_le(bytes);
    if (available >= 6 && std::memcmp(bytes, "\x93NUMPY", 6) == 0)
        throw std::runtime_error("not a safetensors file: this is a .npy file (numpy's format)");
    if (n > kMaxHeader || n > file_size - 8)
        throw std::runtime_error("not a safetensors file: its first 8 bytes give a header length of " + std::to_string(n) +
                                 " bytes, " + (n > kMaxHeader ? std::string("over the 100 MB limit")
                                                              : "past the end of the file (" + std::to_string(file_size) + " bytes)"));
    if (available < 8 + n) throw std::runtime_error("header truncated");
    const std::uint64_t data_start = 8 + n, data_size = file_size - data_start;

    nlohmann::json header;
    try {
        header = nlohmann::json::parse(bytes + 8, bytes + 8 + n);
    } catch (const nlohmann::json::exception&) {
        throw std::runtime_error("header is not valid JSON");
    }
    if (!header.is_object()) throw std::runtime_error("header is not a JSON object");

    SafetensorsHeader result;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    for (const auto& [name, info] : header.items()) {
        if (name == "__metadata__") {
            if (!info.is_object()) throw std::runtime_error("__metadata__ is not an object");
            for (const auto& [key, value] : info.items())
                if (value.is_string()) result.metadata[key] = value.get<std::string>();
            continue;
        }
        const std::string where = "tensor '" + name + "'";
        if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
            throw std::runtime_error(where + " lacks dtype, shape or data_offsets");
        if (!info["dtype"].is_string()) throw std::runtime_error(where + ": dtype is not a string");
        TensorEntry e;
        e.name = name;
        e.dtype = info["dtype"].get<std::string>();
        const std::size_t bits = dtype_bits(e.dtype);
        if (bits == 0) throw std::runtime_error(where + ": unknown dtype '" + e.dtype + "'");
        if (!info["shape"].is_array()) throw std::runtime_error(where + ": shape is not a list");
        std::uint64_t count = 1;
        for (const auto& d : info["shape"]) {
            if (!d.is_number_unsigned()) throw std::runtime_error(where + ": shape holds something other than a size");
            const std::uint64_t size = d.get<std::uint64_t>();
            if (size != 0 && count > std::numeric_limits<std::uint64_t>::max() / size / bits)
                throw std::runtime_error(where + ": shape " + info["shape"].dump() + " is too large");
            count *= size;
            e.shape.push_back(static_cast<std::size_t>(size));
        }
        if (count * bits % 8 != 0)  // F4 and F6 elements are packed: the reference refuses a partial byte
            throw std::runtime_error(where + ": shape " + shape_string(e.shape) + " of " + e.dtype + " is " +
                                     std::to_string(count * bits) + " bits, not a whole number of bytes");
        const auto& offsets = info["data_offsets"];
        if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
            !offsets[1].is_number_unsigned())
            throw std::runtime_error(where + ": data_offsets is not [begin, end]");
        const std::uint64_t begin = offsets[0].get<std::uint64_t>(), end = offsets[1].get<std::uint64_t>();
        if (begin > end || end > data_size)
            throw std::runtime_error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                          "] lie outside the " + std::to_string(data_size) + " bytes of data");
        if (end - begin != count * bits / 8)
            throw std::runtime_error(where + ": shape " + shape_string(e.shape) + " of " + e.dtype + " needs " +
                          std::to_string(count * bits / 8) + " bytes but data_offsets give " + std::to_string(end - begin));
        e.begin = data_start + begin;
        e.end = data_start + end;
        if (end > begin) ranges.emplace_back(begin, end);
        result.tensors.push_back(std::move(e));
    }
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i)
        if (ranges[i].first < ranges[i - 1].second)
            throw std::runtime_error("data_offsets of two tensors overlap at byte " + std::to_string(ranges[i].first));
    return result;
}

float bf16_to_float(std::uint16_t bits) {
    const std::uint32_t word = static_cast<std::uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &word, sizeof f);
    return f;
}

float f16_to_float(std::uint16_t bits) {
    const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    std::uint32_t exponent = (bits >> 10) & 0x1Fu;
    std::uint32_t mantissa = bits & 0x3FFu;
    std::uint32_t word;
    if (exponent == 0x1F) {
        word = sign | 0x7F800000u | (mantissa << 13);  // infinity or NaN
    } else if (exponent != 0) {
        word = sign | ((exponent + 112) << 23) | (mantissa << 13);  // normal: rebias 15 -> 127
    } else if (mantissa == 0) {
        word = sign;  // signed zero
    } else {
        // Subnormal half: shift the mantissa up until its leading 1 is the implicit bit.
        exponent = 113;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --exponent;
        }
        word = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
    }
    float f;
    std::memcpy(&f, &word, sizeof f);
    return f;
}

void convert_to_float(const std::string& dtype, const std::uint8_t* raw, std::size_t count, float* out) {
    if (dtype == "F32") {
        // x86-64 is little-endian, as the file. A zero-size tensor's `out` may be null: memcpy(nullptr) is UB.
        if (count) std::memcpy(out, raw, count * sizeof(float));
    } else if (dtype == "BF16" || dtype == "F16") {
        const bool brain = dtype == "BF16";
        for (std::size_t i = 0; i < count; ++i) {
            const std::uint16_t bits = static_cast<std::uint16_t>(raw[2 * i] | (raw[2 * i + 1] << 8));
            out[i] = brain ? bf16_to_float(bits) : f16_to_float(bits);
        }
    } else {
        throw std::runtime_error("dtype " + dtype + " is not read (only F32, F16 and BF16)");
    }
}

namespace {
// The error for a file that is no longer the regular file of `was` bytes whose header was read.
InputError changed(const std::string& path, const struct stat& st, std::uint64_t was) {
    return InputError(path, "changed since its header was read (now " + std::to_string(st.st_size) + " bytes, was " +
                                std::to_string(was) + ")");
}
bool same_size(const struct stat& st, std::uint64_t size) {
    return S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) == size;
}
}  // namespace

MappedFile::MappedFile(const std::string& path, std::uint64_t expected_size) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw InputError(path, std::string("cannot open the file to map it: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !same_size(st, expected_size)) {
        ::close(fd);
        throw changed(path, st, expected_size);
    }
    // Mapped at a 2 MiB boundary (file offset 0 on a huge page's start) and advised MADV_HUGEPAGE, so that where the
    // page cache holds the file in 2 MiB folios, each is mapped by one page-table entry instead of 512. On these VMs
    // entering a 4 KiB page of the page cache into a process costs 1.3-2.8 us (350 MiB of weights: 0.12-0.25 s);
    // 2 MiB at a time the same 350 MiB took 0.008 s. The kernel (ext4 since Linux 6.16) reads a file that is not yet cached into
    // 2 MiB folios when it is faulted through such a mapping, so the first run leaves the cache that way for the
    // next (docs/performance.md#the-page-cache-in-2-mib-folios). Elsewhere the advice changes nothing.
    std::uint8_t* const at = map_at_huge_boundary(expected_size, PROT_NONE, MAP_NORESERVE);  // the place, reserved
    void* p = MAP_FAILED;
    int error = errno;
    if (at) {
        p = ::mmap(at, expected_size, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
        error = errno;
        if (p == MAP_FAILED)
            ::munmap(at, expected_size);
        else
            ::madvise(p, expected_size, MADV_HUGEPAGE);  // advice: where refused, the mapping works as before
    }
    ::close(fd);  // the mapping keeps the file open
    if (p == MAP_FAILED) throw InputError(path, std::string("cannot map the file: ") + std::strerror(error));
    data_ = static_cast<const std::uint8_t*>(p);
    size_ = expected_size;
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
}

void WeightFiles::add(const std::string& path) {
    const std::string suffix = ".json";
    if (path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0)
        add_index(path);
    else
        add_safetensors(path);
}

void WeightFiles::add_safetensors(const std::string& path, const std::set<std::string>* listed) {
    // The tensors are read in place through a mapping, which only a file on disk has. A pipe, a device or a socket is
    // refused before it is opened: opening a named pipe would wait for a writer, and `--weights <(zcat ...)` would get
    // as far as "cannot read the file size".
    std::error_code ec;
    const std::filesystem::file_status status = std::filesystem::status(path, ec);
    if (!ec && std::filesystem::exists(status) && !std::filesystem::is_regular_file(status) &&
        !std::filesystem::is_directory(status))
        throw InputError(path, "not a regular file (a pipe, a device or a socket): weights are mapped in place, so "
                               "they must be a file on disk");
    std::ifstream in = open_input(path, std::ios::binary);
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    if (size < 0) throw InputError(path, "cannot read the file size");
    in.close();
    // The 8-byte length and the header it gives (when within the limit and the file) are read through the mapping
    // the tensors will be read through (MappedFile, kept below), not with read(): when the file is not yet in the
    // page cache, read() has the kernel read ahead of it into small folios, and the tensors' first faults, made
    // through another open file, then read on in small folios too (a full-size BF16 checkpoint: its first 8 MiB,
    // 4 KiB to 128 KiB folios; a throwaway mapping instead left one 2 MiB range of the F32 checkpoint in 4 KiB
    // folios). Faulted in through that one mapping, the file is cached in 2 MiB folios from its start
    // (docs/performance.md#the-page-cache-in-2-mib-folios). A file that cannot be mapped is now refused here, when
    // it is added, rather than at its first tensor read.
    std::vector<std::uint8_t> head;
    std::shared_ptr<const MappedFile> file;
    if (size >= 8) {
        file = std::make_shared<const MappedFile>(path, static_cast<std::uint64_t>(size));
        const std::uint64_t n = read_u64_le(file->data());
        const bool fits = n <= kMaxHeader && n <= static_cast<std::uint64_t>(size) - 8;
        head.assign(file->data(), file->data() + 8 + (fits ? n : 0));
        // The header's pages leave this process (they stay cached): a shard whose tensors are never read holds
        // none. The whole first 2 MiB, so that a 2 MiB mapping is dropped whole, not split; for a shorter file, all
        // of it, its last page whole.
        const std::uint64_t span = std::min<std::uint64_t>(file->size(), std::uint64_t(2) << 20);
        drop_pages(file->data(), span, /*to_mapping_end=*/span == file->size());
    }
    SafetensorsHeader header;
    try {
        header = parse_safetensors_header(head.data(), head.size(), static_cast<std::uint64_t>(size));
    } catch (const std::runtime_error& e) {
        throw InputError(path, e.what());
    }
    for (auto& e : header.tensors) {
        if (listed && !listed->count(e.name)) continue;  // an index's shard: what the index does not list is ignored
        if (tensors_.count(e.name))
            throw InputError(path, "tensor '" + e.name + "' is also in " + tensors_[e.name].file);
        e.file = path;
        tensors_[e.name] = e;
    }
    files_.push_back(path);
    mapped_[path] = std::move(file);  // a file that parsed is at least 8 bytes long: mapped above
    metadata_.push_back(header.metadata);
}

void WeightFiles::add_index(const std::string& path) {
    nlohmann::json index = read_json(path);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
        throw InputError(path, "no \"weight_map\" object (expected a model.safetensors.index.json)");
    std::vector<std::string> shards;                      // in the order the index first names them
    std::map<std::string, std::set<std::string>> listed;  // shard -> the tensors the index reads from it
    for (const auto& [name, file] : index["weight_map"].items()) {
        if (!file.is_string()) throw InputError(path, "weight_map['" + name + "'] is not a file name");
        const std::string shard = file.get<std::string>();
        if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
        listed[shard].insert(name);
    }
    const std::filesystem::path folder = std::filesystem::path(path).parent_path();
    for (const auto& shard : shards) add_safetensors((folder / shard).string(), &listed[shard]);
    for (const auto& [name, file] : index["weight_map"].items()) {
        const auto it = tensors_.find(name);
        if (it == tensors_.end() || it->second.file != (folder / file.get<std::string>()).string())
            throw InputError(path, "tensor '" + name + "' is listed in " + file.get<std::string>() +
                                       ", which does not hold it");
    }
}

bool WeightFiles::has(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorEntry& WeightFiles::entry(const std::string& name) const {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) {
        std::string where = files_.empty() ? std::string("weights") : files_.front();
        if (files_.size() > 1) where += " (and " + std::to_string(files_.size() - 1) + " more)";
        throw InputError(where, "missing tensor '" + name + "'");
    }
    return it->second;
}

const std::uint8_t* WeightFiles::bytes(const std::string& name, std::size_t first, std::size_t count) const {
    const TensorEntry& e = entry(name);
    const std::size_t element = dtype_size(e.dtype);
    if (first + count < first || (first + count) * element > e.end - e.begin)
        throw InputError(e.file, "elements [" + std::to_string(first) + ", " + std::to_string(first + count) +
                                     ") lie outside tensor '" + name + "'");
    const MappedFile& file = *mapped_.at(e.file);  // mapped when it was added
    if (std::find(mapped_order_.begin(), mapped_order_.end(), e.file) == mapped_order_.end()) {
        // The first tensor read from this file: it must still be as long as its header and mapping say, else
        // reading past its new end would fault (SIGBUS) instead of naming the problem.
        struct stat st {};
        if (::stat(e.file.c_str(), &st) != 0 || !same_size(st, file.size())) throw changed(e.file, st, file.size());
        mapped_order_.push_back(e.file);
    }
    return file.data() + e.begin + first * element;
}

void WeightFiles::read_into(const std::string& name, std::size_t first, std::size_t count, float* out) const {
    const TensorEntry& e = entry(name);
    if (e.dtype != "F32" && e.dtype != "F16" && e.dtype != "BF16")
        throw InputError(e.file, "tensor '" + name + "' has dtype " + e.dtype + " (only F32, F16 and BF16 are read)");
    const std::uint8_t* raw = bytes(name, first, count);
    convert_to_float(e.dtype, raw, count, out);
    // The values now live in `out`: the file's pages need not stay in this process's resident set.
    // A BF16 checkpoint's full-size run: peak 625 -> 450 MiB.
    drop_pages(raw, count * dtype_size(e.dtype));
}

void drop_pages(const void* first, std::size_t bytes, bool to_mapping_end) {
    const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const std::uintptr_t begin = (reinterpret_cast<std::uintptr_t>(first) + page - 1) / page * page;
    const std::uintptr_t last = reinterpret_cast<std::uintptr_t>(first) + bytes;
    const std::uintptr_t end = (to_mapping_end ? last + page - 1 : last) / page * page;
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

const float* WeightFiles::float32_in_place(const std::string& name, std::size_t first, std::size_t count) const {
    if (entry(name).dtype != "F32") return nullptr;
    const std::uint8_t* p = bytes(name, first, count);
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(float) != 0) return nullptr;
    return reinterpret_cast<const float*>(p);
}

const std::uint8_t* WeightFiles::half_in_place(const std::string& name, std::size_t first, std::size_t count) const {
    const std::string& dtype = entry(name).dtype;
    if (dtype != "F16" && dtype != "BF16") return nullptr;
    const std::uint8_t* p = bytes(name, first, count);
    if (reinterpret_cast<std::uintptr_t>(p) % alignof(std::uint16_t) != 0) return nullptr;
    return p;
}

std::vector<std::string> WeightFiles::mapped_files() const { return mapped_order_; }

std::string WeightFiles::metadata(const std::string& key) const {
    for (const auto& entries : metadata_) {
        const auto it = entries.find(key);
        if (it != entries.end()) return it->second;
    }
    throw InputError(files_.empty() ? std::string("weights") : files_.front(), "no \"" + key + "\" in its __metadata__");
}

std::vector<TensorEntry> WeightFiles::entries() const {
    std::vector<TensorEntry> out;
    for (const auto& [name, e] : tensors_) out.push_back(e);
    return out;
}

}  // namespace qwenvl
