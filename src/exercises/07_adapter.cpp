// Exercise 07-adapter: write adapter_forward, the adapter composed from stages 01 to 06 (docs/course/README.md,
// lesson 6).
//   check:     cmake --build --preset release --target check-07-adapter
//   read:      docs/course/lesson-6-adapter.md; notebooks/06_adapter_step_by_step.ipynb
//   solution:  src/stages/07_adapter.cpp, the project's own stage (read it once you pass)
//
// x (N, L, Kv) -> out (N, Q, E); mask (Q, L) or nullptr. In this order, recording each value in `trace` under the
// name on the right (record(trace, name, value); for the per-image ones record_item(trace, name, n, N, value)):
//   P_q   = query_position_table(w, c)                   (Q, E)   "pos_q"   stage 02
//   P_k   = key_position_table(P_q, L)                   (L, E)   "pos_k"   stage 03
//   ln_q  = layer_norm(w.query, ln_q's weight and bias)  (Q, E)   "ln_q"
//   query_in = ln_q + P_q                                (Q, E)   "query_in"
//   q     = linear(query_in, W_q, b_q)                   (Q, E)   "q"       once for the whole batch
// then for each image n, with x_n = x[n] (L, Kv):
//   kv_proj(x_n, W_kv)                                   (L, E)   "kv_proj"
//   X     = layer_norm(that, ln_kv's weight and bias)    (L, E)   "ln_kv"
//   key_in = X + P_k                                     (L, E)   "key_in"
//   k     = linear(key_in, W_k, b_k)                     (L, E)   "k"
//   v     = linear(X, W_v, b_v)                          (L, E)   "v"       no position term on the values
//   a     = multi_head_attention(q, k, v, H, mask)                "scores", "attn_weights", "attended" (its fields)
//   out[n] = linear(a.attended, W_o, b_o)                (Q, E)   "out"
// The pitfalls: the resized table on the queries (they take P_q, their own grid's); a position term on the values;
// ln_kv before kv_proj. The weights' fields are in stage 07's header (w.in_proj.w_q, w.ln_kv_weight, ...).
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
