#include "stages/07_adapter.hpp"

#include <xtensor/xview.hpp>

#include "stages/01_feature_input.hpp"
#include "stages/02_sincos.hpp"
#include "stages/03_resize.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/06_attention.hpp"

namespace qwenvl {

AdapterConfig derive_config(const AdapterWeights& w, std::size_t num_heads, Model model) {
    const char* fn = "derive_config";
    AdapterConfig c;
    c.model = model;
    c.n_queries = w.query.shape(0);
    c.embed_dim = w.query.shape(1);
    const std::size_t E = c.embed_dim;
    require(c.n_queries > 0 && E > 0, fn, "query has shape " + shape_string(shape_of(w.query)) + ", expected (Q, E)");
    if (model == Model::qwen_vl) c.grid_q = grid_side(c.n_queries, "derive_config: the query count Q");
    require(model == Model::qwen_vl || w.pos_embed.size() == 0, fn,
            "MiniCPM-V 2.5/2.6 has no stored pos_embed (a stored one is MiniCPM-V 2.0's, not supported)");
    require(E % 4 == 0, fn, "the width E = " + std::to_string(E) + " is not divisible by 4 (the 2D sin-cos table needs it)");
    c.num_heads = num_heads ? num_heads : E / 128;
    require(c.num_heads > 0 && E % c.num_heads == 0, fn,
            "num_heads " + std::to_string(c.num_heads) + " does not divide the width E = " + std::to_string(E));
    c.kv_dim = w.kv_proj.size() == 0 ? E : w.kv_proj.shape(1);
    if (w.kv_proj.size() != 0) check_shape(fn, "kv_proj", w.kv_proj, {E, c.kv_dim});
    if (w.pos_embed.size() != 0) check_shape(fn, "pos_embed", w.pos_embed, {c.n_queries, E});
    for (const Matrix* m : {&w.in_proj.w_q, &w.in_proj.w_k, &w.in_proj.w_v, &w.out_proj_weight})
        check_shape(fn, "a projection weight", *m, {E, E});
    for (const Vector* v : {&w.in_proj.b_q, &w.in_proj.b_k, &w.in_proj.b_v, &w.out_proj_bias, &w.ln_q_weight,
                            &w.ln_q_bias, &w.ln_kv_weight, &w.ln_kv_bias})
        check_shape(fn, "a bias or LayerNorm parameter", *v, {E});
    return c;
}

const char* model_name(Model model) { return model == Model::qwen_vl ? "Qwen-VL" : "MiniCPM-V 2.5/2.6"; }

Matrix query_position_table(const AdapterWeights& w, const AdapterConfig& c) {
    return w.pos_embed.size() ? w.pos_embed : sincos_2d(c.embed_dim, c.grid_q);
}

Tensor3 adapter_forward(const AdapterWeights& w, const AdapterConfig& c, const Tensor3& x, const Matrix* mask,
                        Trace* trace) {
    return adapter_forward(w, c, x, Grid{}, mask, trace);  // Grid{}: the square grid of L cells
}

Tensor3 adapter_forward(const AdapterWeights& w, const AdapterConfig& c, const Tensor3& x, Grid keys,
                        const Matrix* mask, Trace* trace) {
    const char* fn = "adapter_forward";
    require(c.model == Model::qwen_vl, fn, "these are MiniCPM-V's weights: minicpmv_forward runs them");
    check_shape(fn, "x", x, {ANY, ANY, c.kv_dim});
    const std::size_t N = x.shape(0), L = x.shape(1), Q = c.n_queries, E = c.embed_dim;
    check_shape(fn, "query", w.query, {Q, E});
    if (w.pos_embed.size()) check_shape(fn, "pos_embed", w.pos_embed, {Q, E});
    keys = key_grid(L, keys, "adapter_forward: the patch count L");
    if (mask) check_shape(fn, "mask", *mask, {Q, L});

    // The position tables: the query grid's, and the same resized to the key grid.
    const Matrix pos_q = query_position_table(w, c);     // (Q, E)
    const Matrix pos_k = key_position_table(pos_q, keys);  // (L, E)
    record(trace, "pos_q", pos_q);
    record(trace, "pos_k", pos_k);

    // The query side does not depend on the image: computed once for the batch.
    const Matrix ln_q = layer_norm(w.query, w.ln_q_weight, w.ln_q_bias, c.eps);  // (Q, E)
    const Matrix query_in = ln_q + pos_q;                                        // (Q, E)
    const Matrix q = linear(query_in, w.in_proj.w_q, w.in_proj.b_q);             // (Q, E)
    record(trace, "ln_q", ln_q);
    record(trace, "query_in", query_in);
    record(trace, "q", q);

    Tensor3 out({N, Q, E});
    for (std::size_t n = 0; n < N; ++n) {
        const Matrix x_n = xt::view(x, n);                                       // (L, Kv)
        const Matrix x_proj = kv_projection(x_n, w.kv_proj);                     // (L, E)
        const Matrix X = layer_norm(x_proj, w.ln_kv_weight, w.ln_kv_bias, c.eps);  // (L, E)
        const Matrix key_in = X + pos_k;                                         // (L, E)
        const Matrix k = linear(key_in, w.in_proj.w_k, w.in_proj.b_k);           // (L, E)
        const Matrix v = linear(X, w.in_proj.w_v, w.in_proj.b_v);                // (L, E): no position term
        const AttentionOutput a = multi_head_attention(q, k, v, c.num_heads, mask);
        const Matrix out_n = linear(a.attended, w.out_proj_weight, w.out_proj_bias);  // (Q, E)
        xt::view(out, n) = out_n;

        record_item(trace, "kv_proj", n, N, x_proj);
        record_item(trace, "ln_kv", n, N, X);
        record_item(trace, "key_in", n, N, key_in);
        record_item(trace, "k", n, N, k);
        record_item(trace, "v", n, N, v);
        record_item(trace, "scores", n, N, a.scores);         // (H, Q, L)
        record_item(trace, "attn_weights", n, N, a.weights);  // (H, Q, L)
        record_item(trace, "attended", n, N, a.attended);     // (Q, E)
        record_item(trace, "out", n, N, out_n);               // (Q, E)
    }
    return out;
}

AdapterGradients adapter_backward(const AdapterWeights& w, const AdapterConfig& c, const Tensor3& x,
                                  const Trace& forward, const Tensor3& d_out, Trace* gradients) {
    const char* fn = "adapter_backward";
    check_shape(fn, "x", x, {ANY, ANY, c.kv_dim});
    const std::size_t N = x.shape(0), L = x.shape(1), Q = c.n_queries, E = c.embed_dim, H = c.num_heads;
    check_shape(fn, "d_out", d_out, {N, Q, E});
    // The forward pass's values each step needs, as it recorded them.
    // W_q's input: LN_q(query) + P_q; MiniCPM-V (stage 11), whose queries have no table, projects LN_q(query) itself.
    const bool query_table = c.model == Model::qwen_vl;
    const Matrix query_in = forward.get(query_table ? "query_in" : "ln_q");  // (Q, E)
    const Matrix q = forward.get("q");                  // (Q, E)
    const Tensor3 x_proj = forward.get("kv_proj");      // (N, L, E)
    const Tensor3 X = forward.get("ln_kv");             // (N, L, E)
    const Tensor3 key_in = forward.get("key_in");       // (N, L, E)
    const Tensor3 k = forward.get("k");                 // (N, L, E)
    const Tensor3 v = forward.get("v");                 // (N, L, E)
    const xt::xtensor<float, 4> weights = forward.get("attn_weights");  // (N, H, Q, L)
    const Tensor3 attended = forward.get("attended");   // (N, Q, E)

    AdapterGradients grads;
    grads.x = Tensor3({N, L, c.kv_dim});
    grads.out_proj_weight = xt::zeros<float>({E, E});
    grads.out_proj_bias = xt::zeros<float>({E});
    grads.ln_kv_weight = xt::zeros<float>({E});
    grads.ln_kv_bias = xt::zeros<float>({E});
    if (w.kv_proj.size()) grads.kv_proj = xt::zeros<float>({E, c.kv_dim});
    InProjection d_in_proj{xt::zeros<float>({E, E}), xt::zeros<float>({E, E}), xt::zeros<float>({E, E}),
                           xt::zeros<float>({E}), xt::zeros<float>({E}), xt::zeros<float>({E})};
    Matrix dq = xt::zeros<float>({Q, E});  // q serves every image: its gradient is the sum over them

    for (std::size_t n = 0; n < N; ++n) {
        const Matrix d_out_n = xt::view(d_out, n);  // (Q, E)
        const LinearGradients through_out_proj = linear_backward(xt::view(attended, n), w.out_proj_weight, d_out_n);
        grads.out_proj_weight += through_out_proj.dweight;
        grads.out_proj_bias += through_out_proj.dbias;
        const Matrix d_attended = through_out_proj.dx;  // (Q, E)

        const Matrix k_n = xt::view(k, n), v_n = xt::view(v, n);
        const AttentionGradients through_attention =
            multi_head_attention_backward(q, k_n, v_n, xt::view(weights, n), d_attended, H);
        dq += through_attention.dq;

        const LinearGradients through_k = linear_backward(xt::view(key_in, n), w.in_proj.w_k, through_attention.dk);
        const LinearGradients through_v = linear_backward(xt::view(X, n), w.in_proj.w_v, through_attention.dv);
        d_in_proj.w_k += through_k.dweight;
        d_in_proj.b_k += through_k.dbias;
        d_in_proj.w_v += through_v.dweight;
        d_in_proj.b_v += through_v.dbias;
        const Matrix d_key_in = through_k.dx;     // (L, E)
        const Matrix d_X = d_key_in + through_v.dx;  // X reaches the keys (through key_in) and the values

        const Matrix x_proj_n = xt::view(x_proj, n);
        const LayerNormGradients through_ln_kv = layer_norm_backward(x_proj_n, w.ln_kv_weight, d_X, c.eps);
        grads.ln_kv_weight += through_ln_kv.dgamma;
        grads.ln_kv_bias += through_ln_kv.dbeta;
        const KvProjectionGradients through_kv_proj = kv_projection_backward(xt::view(x, n), w.kv_proj, through_ln_kv.dx);
        if (w.kv_proj.size()) grads.kv_proj += through_kv_proj.dw_kv;
        xt::view(grads.x, n) = through_kv_proj.dx;

        record_item(gradients, "attended", n, N, d_attended);
        record_item(gradients, "attn_weights", n, N, through_attention.d_weights);
        record_item(gradients, "scores", n, N, through_attention.d_scores);
        record_item(gradients, "k", n, N, through_attention.dk);
        record_item(gradients, "v", n, N, through_attention.dv);
        record_item(gradients, "key_in", n, N, d_key_in);
        record_item(gradients, "ln_kv", n, N, d_X);
        record_item(gradients, "kv_proj", n, N, through_ln_kv.dx);
    }
    // The query side, once: q = query_in W_q^T + b_q, query_in = LN_q(query) + P_q.
    const LinearGradients through_q = linear_backward(query_in, w.in_proj.w_q, dq);
    d_in_proj.w_q = through_q.dweight;
    d_in_proj.b_q = through_q.dbias;
    const Matrix d_ln_q = through_q.dx;  // P_q is frozen: the gradient passes to LN_q(query) unchanged
    const LayerNormGradients through_ln_q = layer_norm_backward(w.query, w.ln_q_weight, d_ln_q, c.eps);
    grads.query = through_ln_q.dx;
    grads.ln_q_weight = through_ln_q.dgamma;
    grads.ln_q_bias = through_ln_q.dbeta;
    const PackedInProjection packed = pack_in_proj(d_in_proj);
    grads.in_proj_weight = packed.weight;
    grads.in_proj_bias = packed.bias;

    record(gradients, "q", dq);
    if (query_table) record(gradients, "query_in", through_q.dx);
    record(gradients, "ln_q", d_ln_q);
    record(gradients, "x", grads.x);
    return grads;
}

ParameterCount count_parameters(const AdapterConfig& c) {
    const std::size_t E = c.embed_dim, Q = c.n_queries, Kv = c.kv_dim;
    ParameterCount count;
    count.trainable = Q * E + (Kv != E ? E * Kv : 0) + 3 * E * E + 3 * E + E * E + E + 4 * E;
    count.frozen = c.model == Model::qwen_vl ? Q * E : 0;
    return count;
}

}  // namespace qwenvl
