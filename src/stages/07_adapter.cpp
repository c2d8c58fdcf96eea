#include "stages/07_adapter.hpp"

#include <xtensor/xview.hpp>

#include "stages/01_feature_input.hpp"
#include "stages/02_sincos.hpp"
#include "stages/03_resize.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/06_attention.hpp"

namespace qwenvl {

AdapterConfig derive_config(const AdapterWeights& w, std::size_t num_heads) {
    const char* fn = "derive_config";
    AdapterConfig c;
    c.n_queries = w.query.shape(0);
    c.embed_dim = w.query.shape(1);
    const std::size_t E = c.embed_dim;
    require(c.n_queries > 0 && E > 0, fn, "query has shape " + shape_string(shape_of(w.query)) + ", expected (Q, E)");
    c.grid_q = grid_side(c.n_queries, "derive_config: the query count Q");
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

Matrix query_position_table(const AdapterWeights& w, const AdapterConfig& c) {
    return w.pos_embed.size() ? w.pos_embed : sincos_2d(c.embed_dim, c.grid_q);
}

Tensor3 adapter_forward(const AdapterWeights& w, const AdapterConfig& c, const Tensor3& x, const Matrix* mask,
                        Trace* trace) {
    const char* fn = "adapter_forward";
    check_shape(fn, "x", x, {ANY, ANY, c.kv_dim});
    const std::size_t N = x.shape(0), L = x.shape(1), Q = c.n_queries, E = c.embed_dim;
    grid_side(L, "adapter_forward: the patch count L");
    if (mask) check_shape(fn, "mask", *mask, {Q, L});

    // The position tables: the query grid's, and the same resized to the key grid.
    const Matrix pos_q = query_position_table(w, c);   // (Q, E)
    const Matrix pos_k = key_position_table(pos_q, L);  // (L, E)
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

ParameterCount count_parameters(const AdapterConfig& c) {
    const std::size_t E = c.embed_dim, Q = c.n_queries, Kv = c.kv_dim;
    ParameterCount count;
    count.trainable = Q * E + (Kv != E ? E * Kv : 0) + 3 * E * E + 3 * E + E * E + E + 4 * E;
    count.frozen = Q * E;
    return count;
}

}  // namespace qwenvl
