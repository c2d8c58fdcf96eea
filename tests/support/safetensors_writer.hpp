// tests/support/safetensors_writer.hpp: writing float32 tensors as a safetensors file, for the tests and the
// benchmark (the library only reads safetensors; tests/reference/safetensors_io.py writes them from Python).
#pragma once

#include <map>
#include <string>

#include <xtensor/xarray.hpp>

namespace qwenvl_test {

// Writes `tensors` as one safetensors file: names sorted, dtype F32. Throws qwenvl::InputError naming the file.
void write_safetensors_f32(const std::string& path, const std::map<std::string, xt::xarray<float>>& tensors);

}  // namespace qwenvl_test
