// fast/layernorm.hpp: LayerNorm in place, with vectorisable sums.
//
// Replaces stages/04_layernorm's `layer_norm` (measured 2.7x faster on ln_kv at full size, `qwenvl-bench --gains`).
// Two changes: the sums run in kLanes partial sums (fast/lanes.hpp), and the result overwrites its input, so an image's (L, E) features are never
// held twice (ln_kv) and no fresh (N, Q, E) tensor is mapped for ln_post. Same equation, same golden tests.
#pragma once

#include "core/shapes.hpp"
#include "fast/gemm.hpp"

namespace qwenvl::fast {

// x (R, E) or (N, R, E), overwritten with LayerNorm over its last axis; gamma, beta (E,).
void layer_norm_in_place(Matrix& x, Values gamma, Values beta, float eps);
void layer_norm_in_place(Tensor3& x, Values gamma, Values beta, float eps);

}  // namespace qwenvl::fast
