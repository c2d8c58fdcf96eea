// io/safetensors_writer.hpp: writing float32 tensors as a safetensors file, in F32 or rounded to BF16 (the checkpoints `train` writes; the
// tests and the benchmark write theirs with it too; tests/reference/safetensors_io.py writes them from Python).
#pragma once

#include <cstdint>
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

// The same in BF16, the dtype Qwen-VL's checkpoint ships in: each value rounded as PyTorch's .to(torch.bfloat16)
// rounds it (to nearest, ties to even; a NaN stays a NaN). qwenvl-bench --write-checkpoint writes one at full size.
void write_safetensors_bf16(const std::string& path, const std::map<std::string, xt::xarray<float>>& tensors,
                            const std::map<std::string, std::string>& metadata = {});

// One float32 value as bfloat16's 16 bits, rounded as write_safetensors_bf16 rounds it.
std::uint16_t float_to_bf16(float value);

}  // namespace qwenvl
