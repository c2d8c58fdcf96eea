#include "adapter.hpp"

#include <xtensor/xview.hpp>

#include "attention.hpp"
#include "features.hpp"
#include "layernorm.hpp"
#include "resize.hpp"
#include "sincos.hpp"

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

Matrix query_projection(const AdapterWeights& w, const AdapterConfig& c, const Matrix& pos_q, Trace* trace) {
    check_shape("query_projection", "query", w.query, {c.n_queries, c.embed_dim});
    check_shape("query_projection", "pos_q", pos_q, {c.n_queries, c.embed_dim});
    const Matrix ln_q = layer_norm(w.query, w.ln_q_weight, w.ln_q_bias, c.eps);              // (Q, E)
    const Matrix query_in = ln_q + pos_q;  // the un-resized table on the query side          // (Q, E)
    Matrix q = linear(query_in, w.in_proj.w_q, w.in_proj.b_q);                                // (Q, E)
    if (trace) {
        trace->record("ln_q", ln_q);
        trace->record("query_in", query_in);
        trace->record("q", q);
    }
    return q;
}

QuerySide prepare_query_side(const AdapterWeights& w, const AdapterConfig& c, Trace* trace, std::size_t n_keys) {
    QuerySide side;
    side.pos_q = query_position_table(w, c);  // (Q, E)
    if (trace) trace->record("pos_q", side.pos_q);
    side.q = query_projection(w, c, side.pos_q, trace);  // (Q, E)
    if (n_keys) {
        side.n_keys = n_keys;
        side.pos_k = key_position_table(side.pos_q, n_keys);  // (L, E)
    }
    return side;
}

Tensor3 adapter_forward(const AdapterWeights& w, const AdapterConfig& c, const Tensor3& x, const Matrix* mask,
                        Trace* trace, const QuerySide* prepared) {
    const char* fn = "adapter_forward";
    const std::size_t N = x.shape(0), L = x.shape(1), E = c.embed_dim, Q = c.n_queries, H = c.num_heads;
    check_shape(fn, "x", x, {ANY, ANY, c.kv_dim});
    grid_side(L, "adapter_forward: the patch count L");
    if (mask) check_shape(fn, "mask", *mask, {Q, L});

    // Query side, (Q, E): the same for every image, so once for the whole batch (or once per set of
    // weights, when the caller prepared it). A traced run always recomputes it, to record its steps.
    QuerySide computed;
    const QuerySide* side = prepared;
    if (!side || trace) {
        computed = prepare_query_side(w, c, trace);
        side = &computed;
    }
    check_shape(fn, "prepared q", side->q, {Q, E});

    // Key-side table: P_q resized to the key grid (prepared with the query side when it was for this L).
    Matrix resized;
    if (side->n_keys != L) resized = key_position_table(side->pos_q, L);
    const Matrix& pos_k = side->n_keys == L ? side->pos_k : resized;  // (L, E)
    if (trace) trace->record("pos_k", pos_k);

    // Key and value side, then attention, one image at a time. Each image's tensors are (L, E), 16 MB at full
    // size, and the next image reuses their memory: a whole batch at once held three (N, L, E) tensors (1.4 GB
    // at N = 16) that the kernel had to map afresh on every call. A trace still records (N, ...) tensors.
    Tensor3 attended({N, Q, E});
    for (std::size_t n = 0; n < N; ++n) {
        const Block image{x.data() + n * L * c.kv_dim, L, c.kv_dim, c.kv_dim};  // x[n], read in place
        Matrix X = kv_projection(image, w.kv_proj);                             // (L, E)
        if (trace) trace->record_item("kv_proj", n, N, X);
        layer_norm_in_place(X, w.ln_kv_weight, w.ln_kv_bias, c.eps);  // (L, E), no second tensor
        if (trace) trace->record_item("ln_kv", n, N, X);
        // The values are projected first, so that X can then become the keys' input in place.
        const Matrix v = linear(X, w.in_proj.w_v, w.in_proj.b_v);  // (L, E): no position term on the values
        // key_in = X + P_k: the resized table on the keys only. A plain loop: xtensor's `X += pos_k` would first
        // build X + P_k in a temporary (L, E) tensor, to be safe in case the two overlapped.
        for (std::size_t i = 0; i < L * E; ++i) X.data()[i] += pos_k.data()[i];
        if (trace) trace->record_item("key_in", n, N, X);
        const Matrix k = linear(X, w.in_proj.w_k, w.in_proj.b_k);  // (L, E)
        if (trace) {
            trace->record_item("k", n, N, k);
            trace->record_item("v", n, N, v);
        }
        const AttentionOutput a = multi_head_attention(side->q, k, v, H, mask, trace != nullptr);
        xt::view(attended, n) = a.attended;  // (Q, E)
        if (trace) {
            trace->record_item("scores", n, N, a.scores);         // (H, Q, L)
            trace->record_item("attn_weights", n, N, a.weights);  // (H, Q, L)
        }
    }
    Tensor3 out = linear(attended, w.out_proj_weight, w.out_proj_bias);  // (N, Q, E)
    if (trace) {
        trace->record("attended", attended);
        trace->record("out", out);
    }
    return out;
}

Tensor3 tower_tail_forward(const TowerTail& tail, const Tensor3& out, float eps, Trace* trace) {
    const std::size_t E = out.shape(2);
    check_shape("tower_tail_forward", "proj", tail.proj, {E, E});
    const Tensor3 normed = layer_norm(out, tail.ln_post_weight, tail.ln_post_bias, eps);  // (N, Q, E)
    Tensor3 y = matmul(normed, tail.proj);  // x @ W: proj is NOT an nn.Linear weight      // (N, Q, E)
    if (trace) {
        trace->record("ln_post", normed);
        trace->record("proj", y);
    }
    return y;
}

ParameterCount count_parameters(const AdapterConfig& c) {
    const std::size_t E = c.embed_dim, Q = c.n_queries, Kv = c.kv_dim;
    ParameterCount count;
    count.trainable = Q * E + (Kv != E ? E * Kv : 0) + 3 * E * E + 3 * E + E * E + E + 4 * E;
    count.frozen = c.n_queries * E;
    return count;
}

}  // namespace qwenvl
