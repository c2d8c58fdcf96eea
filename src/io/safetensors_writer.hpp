// io/safetensors_writer.hpp: writing float32 tensors as a safetensors file (the checkpoints `train` writes; the
// tests and the benchmark write theirs with it too; tests/reference/safetensors_io.py writes them from Python).
#pragma once

#include <map>
#include <string>

#include <xtensor/xarray.hpp>

namespace qwenvl {

// Writes `tensors` as one safetensors file: names sorted, dtype F32, the header padded with spaces to a multiple
// of 8 bytes (as the reference writer does) and `metadata` as its "__metadata__". Atomically: to a temporary file
// beside `path`, then renamed over it, so that an interrupted write leaves the previous file whole. Throws
// InputError naming the file.
void write_safetensors_f32(const std::string& path, const std::map<std::string, xt::xarray<float>>& tensors,
                           const std::map<std::string, std::string>& metadata = {});

}  // namespace qwenvl
