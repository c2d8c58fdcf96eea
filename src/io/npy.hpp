// io/npy.hpp: numpy's .npy files, the format ViT features, masks and outputs are exchanged in.
//
// Writing is format version 1.0, straight from the values' memory. Reading validates the header itself before
// anything else: xtensor's reader trusts the header's shape (it allocates what the shape asks before it knows
// the file holds that much) and its errors do not name the file, and a malformed input here must give one
// clear line and no undefined behaviour. Supported: little-endian float32 ('<f4'), float64 ('<f8'), bool ('|b1'),
// C order and Fortran order (which np.save writes for a transposed view, a.T; the values are put in row-major
// order on reading), format versions 1, 2 and 3, any rank (0-d and zero-size arrays included). Refused, in one line
// naming the dtype: any other dtype (integers, float16, complex, strings, objects), big-endian ones ('>f4') and
// structured ones (named fields). data/readers/corpus.json lists numpy-written files of each kind.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <xtensor/xarray.hpp>

#include "io/errors.hpp"

namespace qwenvl {

struct NpyArray {
    std::string descr;                 // "<f4", "<f8" or "|b1"
    std::vector<std::size_t> shape;
    const std::uint8_t* data = nullptr;  // points into the parsed buffer
    std::size_t count = 0;             // number of elements
    bool fortran_order = false;        // the data in column-major order (the first index varies fastest)
};

// Parses a whole .npy file held in memory; throws std::runtime_error describing the problem.
NpyArray parse_npy(const std::uint8_t* bytes, std::size_t size);

// The values as float32 in row-major order: '<f4' copied, '<f8' rounded to float32, '|b1' as 0 and 1; a Fortran-order
// array's values transposed into row-major order.
xt::xarray<float> npy_values(const NpyArray& array);

// Reads a .npy file as float32 (float32 or float64 on disk); throws InputError naming the file.
xt::xarray<float> read_npy_float(const std::string& path);

// Reads a .npy file and tells whether it was boolean (for attention masks).
xt::xarray<float> read_npy(const std::string& path, bool* is_bool);

// Writes float32 .npy atomically: to a temporary file beside `path`, then renamed over it, so a failure
// leaves no partial output. Throws InputError naming the file.
void write_npy(const std::string& path, const xt::xarray<float>& values);
// The same for `shape` row-major floats at `data`, written straight from that memory (no copy of the values:
// `run` writes its (N, Q, E) output this way).
void write_npy(const std::string& path, const std::vector<std::size_t>& shape, const float* data, Sync sync = Sync::to_disk);


}  // namespace qwenvl
