// tests/support/safetensors_writer.hpp: the tests' and the benchmark's name for the library's safetensors writer
// (src/io/safetensors_writer.hpp).
#pragma once

#include "io/safetensors_writer.hpp"

namespace qwenvl_test {
using qwenvl::write_safetensors_f32;
}  // namespace qwenvl_test
