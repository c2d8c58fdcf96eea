// Exercise 07-adapter: write adapter_forward, the adapter composed from stages 01 to 06 (docs/course/README.md,
// lesson 6).
//   check:     cmake --build --preset release --target check-07-adapter
//   read:      docs/course/lesson-6-adapter.md; notebooks/06_adapter_step_by_step.ipynb
//   solution:  src/stages/07_adapter.cpp, the project's own stage (read it once you pass)
//
// x (N, L, Kv) -> out (N, Q, E); mask (Q, L) or nullptr: the adapter, composed from stages 01 to 06 in the
// paper's order (lesson 6 gives it). Record each intermediate in `trace` under its name, once for the whole batch
// with record(trace, name, value), per image with record_item(trace, name, n, N, value):
//   once:       "pos_q" (Q, E), "pos_k" (L, E), "ln_q" (Q, E), "query_in" (Q, E), "q" (Q, E)
//   per image:  "kv_proj", "ln_kv", "key_in", "k", "v" (L, E); "scores", "attn_weights" (H, Q, L), "attended",
//               "out" (Q, E)
// query_position_table (stage 07's header) gives the query table. The weights' fields are in stage 07's header
// (w.in_proj.w_q, w.ln_kv_weight, ...). The checker names the first of these that differs from PyTorch's.
#include <xtensor/xview.hpp>

#include "stages/01_feature_input.hpp"
#include "stages/03_resize.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/06_attention.hpp"
#include "stages/07_adapter.hpp"

namespace qwenvl {

Tensor3 adapter_forward(const AdapterWeights& w, const AdapterConfig& c, const Tensor3& x, const Matrix* mask,
                        Trace* trace) {
    // TODO: replace this placeholder with the adapter.
    (void)w;
    (void)mask;
    (void)trace;
    return xt::zeros<float>({x.shape(0), c.n_queries, c.embed_dim});
}

}  // namespace qwenvl
