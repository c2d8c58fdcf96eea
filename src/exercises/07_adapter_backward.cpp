// Exercise 07-adapter-backward: the whole adapter's backward pass, assembled from the stages' backwards
// (docs/course/lesson-7-training.md).
//   check:     cmake --build --preset release --target check-07-adapter-backward
//   read:      docs/course/lesson-7-training.md (and lesson 6, the forward pass you go back through)
//   solution:  adapter_backward in src/stages/07_adapter.cpp, the project's own (read it once you pass)
//
// Given x (N, L, Kv), the forward pass's trace (`forward`: every intermediate adapter_forward recorded, under the
// names of exercise 07) and d_out = dL/d out (N, Q, E), return dL/d every trainable parameter and dL/dx.
// The forward pass, to go back through (per image n, except the query side, computed once):
//   out_n      = attended_n W_o^T + b_o                        linear
//   attended_n = MHA(q, k_n, v_n)  (weights A_n recorded)      multi_head_attention
//   k_n = key_in_n W_k^T + b_k     v_n = X_n W_v^T + b_v       linear
//   key_in_n = X_n + P_k           X_n = LN_kv(kv_n)           kv_n = x_n W_kv^T (kv_projection)
//   q = query_in W_q^T + b_q       query_in = LN_q(query) + P_q
// The backwards you may call (the project's; you wrote some of them in the earlier exercises):
//   linear_backward, kv_projection_backward (stage 05), multi_head_attention_backward (stage 06),
//   layer_norm_backward (stage 04), pack_in_proj (stage 05: W_q, W_k, W_v and their biases into (3E, E), (3E,)).
// Two values are used twice, and their gradients add: X_n reaches both key_in_n and v_n; q serves every image, and
// every weight serves every image (sum their gradients over n). The tables P_q and P_k are frozen: the gradient
// passes through the additions unchanged and they get none.
// Record dL/d each intermediate in `gradients` (when it is not nullptr) under the forward's names: per image
// (record_item(gradients, name, n, N, value)) "attended", "attn_weights", "scores", "k", "v", "key_in", "ln_kv",
// "kv_proj"; once (record(gradients, name, value)) "q", "query_in", "ln_q", "x".
// The pitfalls: forgetting one of the two paths into X_n or the sum over the images for q; the gradient of
// query_in is that of LN_q's output (P_q is a constant); the fields of AdapterGradients are in stage 07's header.
#include <xtensor/xview.hpp>

#include "core/trace.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/05_projections.hpp"
#include "stages/06_attention.hpp"
#include "stages/07_adapter.hpp"

namespace qwenvl {

AdapterGradients adapter_backward(const AdapterWeights& weights, const AdapterConfig& config, const Tensor3& x,
                                  const Trace& forward, const Tensor3& d_out, Trace* gradients) {
    // TODO: replace this placeholder with the backward pass. Every gradient is zero here.
    (void)forward;
    (void)d_out;
    (void)gradients;
    const std::size_t E = config.embed_dim;
    AdapterGradients g;
    g.query = xt::zeros<float>(weights.query.shape());
    if (weights.kv_proj.size()) g.kv_proj = xt::zeros<float>(weights.kv_proj.shape());
    g.in_proj_weight = xt::zeros<float>({3 * E, E});
    g.in_proj_bias = xt::zeros<float>({3 * E});
    g.out_proj_weight = xt::zeros<float>({E, E});
    g.out_proj_bias = xt::zeros<float>({E});
    g.ln_q_weight = g.ln_q_bias = g.ln_kv_weight = g.ln_kv_bias = xt::zeros<float>({E});
    g.x = xt::zeros<float>(x.shape());
    return g;
}

}  // namespace qwenvl
