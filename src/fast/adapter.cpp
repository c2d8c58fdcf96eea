#include "fast/adapter.hpp"

#include <algorithm>
#include <limits>

#include <xtensor/xview.hpp>

#include "fast/attention.hpp"
#include "fast/gemm.hpp"
#include "fast/layernorm.hpp"
#include "fast/resize.hpp"
#include "fast/sincos.hpp"
#include "fast/threads.hpp"
#include "stages/01_feature_input.hpp"

namespace qwenvl::fast {

Weights::Weights(const AdapterWeights& w)
    : query(w.query), pos_embed(w.pos_embed), kv_proj(w.kv_proj), w_q(w.in_proj.w_q), w_k(w.in_proj.w_k),
      w_v(w.in_proj.w_v), b_q(w.in_proj.b_q), b_k(w.in_proj.b_k), b_v(w.in_proj.b_v), out_proj_weight(w.out_proj_weight),
      out_proj_bias(w.out_proj_bias), ln_q_weight(w.ln_q_weight), ln_q_bias(w.ln_q_bias), ln_kv_weight(w.ln_kv_weight),
      ln_kv_bias(w.ln_kv_bias) {}

TailWeights::TailWeights(const TowerTail& tail)
    : ln_post_weight(tail.ln_post_weight), ln_post_bias(tail.ln_post_bias), proj(tail.proj) {}

QuerySide prepare_query_side(const Weights& w, const AdapterConfig& c, std::size_t n_keys, Trace* trace, Grid keys) {
    const char* fn = "fast::prepare_query_side";
    const OwnThreads own;  // OpenBLAS single-threaded, the work split over our threads (fast/threads.hpp)
    check_shape(fn, "query", dims(w.query), {c.n_queries, c.embed_dim});
    if (!w.pos_embed.empty()) check_shape(fn, "pos_embed", dims(w.pos_embed), {c.n_queries, c.embed_dim});
    QuerySide side;
    keys = key_grid(n_keys, keys, "fast::prepare_query_side: the patch count L");
    Matrix query_in = copy_of(w.query);  // (Q, E), LN_q(query) once normalised in place
    layer_norm_in_place(query_in, w.ln_q_weight, w.ln_q_bias, c.eps);
    {
        // P_q (Q, E): the stored table as query_position_table takes it, read where it lies when it is float32, else
        // widened, or stage 02's (fast/sincos); what is made here is freed at the end of this scope, before q is made
        // (its memory then serves q).
        const Matrix made = w.pos_embed.empty()       ? fast::sincos_2d(c.embed_dim, Grid{c.grid_q, c.grid_q})
                            : w.pos_embed.is_packed() ? copy_of(w.pos_embed)
                                                      : Matrix();
        const Block pos_q = made.size() ? whole(made) : w.pos_embed;
        side.pos_k = fast::key_position_table(pos_q, keys);  // (L, E), fast/resize (stage 03's arithmetic)
        // recorded in the readable path's order
        if (trace) record(trace, "pos_q", copy_of(pos_q));
        record(trace, "pos_k", side.pos_k);
        record(trace, "ln_q", query_in);
        add_in_place(query_in, pos_q);  // the un-resized table on the query side
    }
    record(trace, "query_in", query_in);
    side.q = linear(query_in, w.w_q, w.b_q);  // (Q, E)
    record(trace, "q", side.q);
    return side;
}

namespace {
// out[i] = x[i] + table[i] for i < n, split over the fast path's threads; `out` may be either operand.
void add_into(const float* x, const float* table, float* out, std::size_t n) {
    parallel_for(n, std::size_t(1) << 18, [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) out[i] = x[i] + table[i];
    });
}
}  // namespace

void add_in_place(Matrix& x, const Block& table) {
    check_shape("fast::add_in_place", "table", dims(table), shape_of(x));
    require(!table.is_packed() && table.stride == table.cols, "fast::add_in_place",
            "the table's rows must be contiguous floats");
    add_into(x.data(), table.data, x.data(), x.size());
}

namespace {
// table = x + table, both (R, E): add_in_place's sums (x's value first, so the same bits) with the result in the table.
void add_onto_table(const Matrix& x, Matrix& table) {
    check_shape("fast::add_onto_table", "table", table, shape_of(x));
    add_into(x.data(), table.data(), table.data(), x.size());
}

// The key and value side, then the attention, one image at a time: x (N, L, Kv) -> ws.attended (N, Q, E). Each
// image's tensors are (L, E), 16 MB at full size; the three buffers serve every image, which overwrites them, so
// that their pages are touched once (once per call, or once in all with a Workspace kept by the caller).
// `spent`, when given, is the caller's for the taking (adapter_forward on rvalues): x, once its last image is projected,
// and the key table, which becomes the last image's key_in (below).
struct Spent {
    Tensor3* x = nullptr;
    Matrix* table = nullptr;
};

void attend_each_image(const Weights& w, const AdapterConfig& c, const QuerySide& side, const Tensor3& x,
                       const Matrix* mask, Trace* trace, Workspace& ws, Spent spent = {}) {
    const std::size_t N = x.shape(0), L = x.shape(1), E = c.embed_dim, Q = c.n_queries, H = c.num_heads;
    // The key and value side and the attention run on the fast path's own threads, OpenBLAS single-threaded
    // (fast/threads.hpp): the heads' small products gain (at full size, one image: attention 63 -> 47 ms). out_proj
    // and the tail's proj, 256 rows per image, are left to OpenBLAS's own threads, after the scope: split by ours
    // they ran slower (70 -> 62 ms for out_proj) while OpenBLAS's idle threads still spun beside them, and no
    // faster once the scope stopped those (docs/performance.md#the-whole-run).
    const OwnThreads own;
    ensure_shape(ws.attended, {N, Q, E});
    for (Matrix* buffer : {&ws.X, &ws.v}) ensure_shape(*buffer, {L, E});
    // The keys' own buffer, unless the only image's key_in goes over the caller's spent table (below).
    if (N > 1 || !spent.table) ensure_shape(ws.k, {L, E});
    for (std::size_t n = 0; n < N; ++n) {
        const bool last = n + 1 == N;
        Matrix& X = ws.X;
        const Block image{x.data() + n * L * c.kv_dim, L, c.kv_dim, c.kv_dim};  // x[n], read in place
        kv_projection_into(image, w.kv_proj, X);                                // (L, E)
        if (last && spent.x) *spent.x = Tensor3();  // x is not read again: its memory serves the attention's buffers
        record_item(trace, "kv_proj", n, N, X);
        layer_norm_in_place(X, w.ln_kv_weight, w.ln_kv_bias, c.eps);  // (L, E), no second tensor
        record_item(trace, "ln_kv", n, N, X);
        // The values are projected first, so that X can then become the keys' input in place.
        Matrix& v = ws.v;
        linear_into(X, w.w_v, w.b_v, v);  // (L, E): no position term on the values
        Matrix* key_in = &X;
        Matrix* k = &ws.k;
        if (last && spent.table) {
            // The last image's key_in = X + P_k is written over the spent table (the same sums, X's value first), and
            // the keys then over X, which is not read again: three (L, E) buffers in all instead of four.
            add_onto_table(X, *spent.table);
            key_in = spent.table;
            k = &X;
        } else {
            add_in_place(X, side.pos_k);  // key_in = X + P_k, in place
        }
        record_item(trace, "key_in", n, N, *key_in);
        linear_into(*key_in, w.w_k, w.b_k, *k);  // (L, E)
        record_item(trace, "k", n, N, *k);
        record_item(trace, "v", n, N, v);
        // (Q, E), written in its place in the batch
        // with a trace, each head's scores and weights (H, Q, L) are written straight into the trace's own memory
        // (made in this order: the trace lists its stages in the order they were first recorded)
        float* scores = trace ? trace->item_slot("scores", n, N, {H, Q, L}) : nullptr;
        float* weights = trace ? trace->item_slot("attn_weights", n, N, {H, Q, L}) : nullptr;
        attend_into(side.q, whole(*k), whole(v), H, mask, ws.attended.data() + n * Q * E, E, ws.attention, scores, weights);
    }
}
}  // namespace

namespace {
Tensor3 forward(const Weights& w, const AdapterConfig& c, const QuerySide& side, const Tensor3& x, const Matrix* mask,
                Trace* trace, Workspace* workspace, Spent spent) {
    const char* fn = "fast::adapter_forward";
    check_shape(fn, "x", x, {ANY, ANY, c.kv_dim});
    const std::size_t L = x.shape(1), E = c.embed_dim, Q = c.n_queries;
    check_shape(fn, "the prepared q", side.q, {Q, E});
    check_shape(fn, "the prepared pos_k", side.pos_k, {L, E});
    if (mask) check_shape(fn, "mask", *mask, {Q, L});

    Workspace own;
    Workspace& ws = workspace ? *workspace : own;
    attend_each_image(w, c, side, x, mask, trace, ws, spent);  // ws.attended (N, Q, E)
    // Without a caller's workspace, the (L, E) buffers go before out_proj's weights are first read (kept alive past
    // it, they had raised run's peak from 397 to 450 MiB).
    if (!workspace) {
        own.X = own.v = own.k = Matrix();
        own.attention = AttentionBuffers();
    }
    if (spent.table) *spent.table = Matrix();
    record(trace, "attended", ws.attended);
    Tensor3 out = linear(ws.attended, w.out_proj_weight, w.out_proj_bias);  // (N, Q, E), one sgemm for the batch
    record(trace, "out", out);
    return out;
}
}  // namespace

Tensor3 adapter_forward(const Weights& w, const AdapterConfig& c, const QuerySide& side, const Tensor3& x,
                        const Matrix* mask, Trace* trace, Workspace* workspace) {
    return forward(w, c, side, x, mask, trace, workspace, {});
}

Tensor3 adapter_forward(const Weights& w, const AdapterConfig& c, QuerySide&& side, Tensor3&& x, const Matrix* mask,
                        Trace* trace) {
    // x stays whole until forward's checks have read its shape; then the spent pieces are freed where noted.
    return forward(w, c, side, x, mask, trace, nullptr, Spent{&x, &side.pos_k});
}

Tensor3 minicpmv_forward(const Weights& w, const AdapterConfig& c, const Tensor3& x, const std::vector<Grid>& grids,
                         Trace* trace) {
    const char* fn = "fast::minicpmv_forward";
    const OwnThreads own;
    require(c.model == Model::minicpm_v, fn, "these are Qwen-VL's weights");
    check_shape(fn, "x", x, {ANY, ANY, c.kv_dim});
    const std::size_t N = x.shape(0), L = x.shape(1), Kv = c.kv_dim, Q = c.n_queries, E = c.embed_dim;
    require(grids.size() == N, fn, "one grid per image");
    // The query side, once: q = LN_q(query) W_q^T + b_q, no position term.
    QuerySide side;
    Matrix ln_q = copy_of(w.query);
    layer_norm_in_place(ln_q, w.ln_q_weight, w.ln_q_bias, c.eps);
    record(trace, "ln_q", ln_q);
    side.q = linear(ln_q, w.w_q, w.b_q);  // (Q, E)
    record(trace, "q", side.q);
    Tensor3 out({N, Q, E});
    for (std::size_t n = 0; n < N; ++n) {
        const std::size_t L_n = grids[n].cells();
        require(L_n > 0 && L_n <= L, fn, "an image grid does not fit in the batch's L keys");
        Matrix table = fast::sincos_2d(E, grids[n]);  // (L_n, E): equal to upstream's slice of its larger table
        if (!trace) {
            Tensor3 image({1, L_n, Kv});  // the image's own patches, without the padding
            std::copy(x.data() + n * L * Kv, x.data() + n * L * Kv + L_n * Kv, image.data());
            // The table and the copy are spent by the call (adapter.hpp): freed when last read.
            const Tensor3 out_n = adapter_forward(w, c, QuerySide{std::move(table), side.q}, std::move(image));
            xt::view(out, n) = xt::view(out_n, 0);
            continue;
        }
        // With a trace, the readable path's layout: all L keys, the padding's table rows zero and masked (-inf).
        // Their weights are exactly 0, so the output is the same sums; the padding rows cost the extra keys' time.
        side.pos_k = xt::zeros<float>({L, E});
        std::copy(table.data(), table.data() + table.size(), side.pos_k.data());
        Matrix mask = xt::zeros<float>({Q, L});
        xt::xtensor<float, 1> padding = xt::zeros<float>({L});
        for (std::size_t l = L_n; l < L; ++l) {
            padding(l) = 1.0f;
            xt::view(mask, xt::all(), l) = -std::numeric_limits<float>::infinity();
        }
        Tensor3 image({1, L, Kv});
        std::copy(x.data() + n * L * Kv, x.data() + (n + 1) * L * Kv, image.data());
        Trace one;
        const Tensor3 out_n = adapter_forward(w, c, side, image, &mask, &one);
        xt::view(out, n) = xt::view(out_n, 0);
        record_item(trace, "pos_k", n, N, side.pos_k);
        record_item(trace, "key_padding_mask", n, N, padding);
        for (const char* name : {"kv_proj", "ln_kv", "key_in", "k", "v", "scores", "attn_weights", "attended", "out"})
            record_item(trace, name, n, N, xt::xarray<float>(xt::view(one.get(name), 0)));
    }
    return out;
}

Tensor3 tower_tail_forward(const TailWeights& tail, Tensor3 out, float eps, Trace* trace) {
    const std::size_t E = out.shape(2);
    check_shape("fast::tower_tail_forward", "proj", dims(tail.proj), {E, E});
    layer_norm_in_place(out, tail.ln_post_weight, tail.ln_post_bias, eps);  // (N, Q, E), now LN_post(out)
    record(trace, "ln_post", out);
    Tensor3 y = matmul(out, tail.proj);  // x @ W: proj is NOT an nn.Linear weight      // (N, Q, E)
    record(trace, "proj", y);
    return y;
}

}  // namespace qwenvl::fast
