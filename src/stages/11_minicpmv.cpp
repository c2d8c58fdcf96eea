#include "stages/11_minicpmv.hpp"

#include <algorithm>

#include <xtensor/xview.hpp>

#include "stages/02_sincos.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/06_attention.hpp"

namespace qwenvl {

Grid table_grid(Grid max_grid, const std::vector<Grid>& grids) {
    Grid table = max_grid;
    for (const Grid& g : grids) {
        table.h = std::max(table.h, g.h);
        table.w = std::max(table.w, g.w);
    }
    return table;
}

Matrix slice_table(const Matrix& table, Grid table_grid, Grid image) {
    const char* fn = "slice_table";
    check_shape(fn, "table", table, {table_grid.cells(), ANY});
    require(image.h <= table_grid.h && image.w <= table_grid.w, fn, "the image's grid does not fit in the table's");
    Matrix slice({image.cells(), table.shape(1)});
    for (std::size_t i = 0; i < image.h; ++i)
        for (std::size_t j = 0; j < image.w; ++j) xt::row(slice, i * image.w + j) = xt::row(table, i * table_grid.w + j);
    return slice;
}

xt::xtensor<bool, 1> key_padding(Grid image, std::size_t n_keys) {
    require(image.cells() <= n_keys, "key_padding", "the image has more patches than the batch's key count");
    xt::xtensor<bool, 1> padding = xt::zeros<bool>({n_keys});
    for (std::size_t l = image.cells(); l < n_keys; ++l) padding(l) = true;
    return padding;
}

Tensor3 minicpmv_forward(const AdapterWeights& w, const AdapterConfig& c, const Tensor3& x,
                         const std::vector<Grid>& grids, Grid max_grid, Trace* trace) {
    const char* fn = "minicpmv_forward";
    require(c.model == Model::minicpm_v, fn, "these are Qwen-VL's weights: adapter_forward runs them");
    check_shape(fn, "x", x, {ANY, ANY, c.kv_dim});
    const std::size_t N = x.shape(0), L = x.shape(1), Q = c.n_queries, E = c.embed_dim;
    check_shape(fn, "query", w.query, {Q, E});
    require(grids.size() == N, fn, "one grid per image: " + std::to_string(grids.size()) + " grids for " +
                                       std::to_string(N) + " images");
    for (const Grid& g : grids)
        require(g.h > 0 && g.w > 0 && g.cells() <= L, fn,
                "an image grid of " + std::to_string(g.h) + " x " + std::to_string(g.w) + " does not fit in L = " +
                    std::to_string(L) + " keys");

    // The table upstream slices every image's from: built once for the batch.
    const Grid big = table_grid(max_grid, grids);
    const Matrix table = sincos_2d(E, big);  // (big.h * big.w, E)

    // The query side: no position term.
    const Matrix ln_q = layer_norm(w.query, w.ln_q_weight, w.ln_q_bias, c.eps);  // (Q, E)
    const Matrix q = linear(ln_q, w.in_proj.w_q, w.in_proj.b_q);                // (Q, E)
    record(trace, "ln_q", ln_q);
    record(trace, "q", q);

    Tensor3 out({N, Q, E});
    for (std::size_t n = 0; n < N; ++n) {
        const std::size_t L_n = grids[n].cells();
        Matrix pos_k = xt::zeros<float>({L, E});                                 // padded with zero rows
        xt::view(pos_k, xt::range(0, L_n)) = slice_table(table, big, grids[n]);  // (L_n, E)
        const xt::xtensor<bool, 1> padding = key_padding(grids[n], L);         // (L,)
        const xt::xtensor<bool, 2> masked = xt::broadcast(padding, {Q, L});     // every query, the same keys
        const Matrix mask = additive_mask(masked);                               // (Q, L): -inf on the padding

        const Matrix x_n = xt::view(x, n);                                       // (L, Kv)
        const Matrix x_proj = kv_projection(x_n, w.kv_proj);                     // (L, E)
        const Matrix X = layer_norm(x_proj, w.ln_kv_weight, w.ln_kv_bias, c.eps);  // (L, E)
        const Matrix key_in = X + pos_k;                                         // (L, E)
        const Matrix k = linear(key_in, w.in_proj.w_k, w.in_proj.b_k);           // (L, E)
        const Matrix v = linear(X, w.in_proj.w_v, w.in_proj.b_v);                // (L, E)
        const AttentionOutput a = multi_head_attention(q, k, v, c.num_heads, &mask);
        const Matrix out_n = linear(a.attended, w.out_proj_weight, w.out_proj_bias);  // (Q, E)
        xt::view(out, n) = out_n;

        record_item(trace, "pos_k", n, N, pos_k);
        record_item(trace, "key_padding_mask", n, N, xt::xtensor<float, 1>(xt::cast<float>(padding)));
        record_item(trace, "kv_proj", n, N, x_proj);
        record_item(trace, "ln_kv", n, N, X);
        record_item(trace, "key_in", n, N, key_in);
        record_item(trace, "k", n, N, k);
        record_item(trace, "v", n, N, v);
        record_item(trace, "scores", n, N, a.scores);         // (H, Q, L), before the mask
        record_item(trace, "attn_weights", n, N, a.weights);  // (H, Q, L), 0 on the padding
        record_item(trace, "attended", n, N, a.attended);     // (Q, E)
        record_item(trace, "out", n, N, out_n);               // (Q, E)
    }
    return out;
}

}  // namespace qwenvl
