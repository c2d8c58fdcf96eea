// fast/adapter.hpp: the adapter and the tower's tail, fast.
//
// Replaces stages/07_adapter's `adapter_forward` and stages/08_tower_tail's `tower_tail_forward`, computing the
// same equations (stages/07_adapter.hpp) with fast/'s functions and three changes of schedule:
//  - the query side (P_k and q; P_q is read or computed there, not kept) is prepared once per set of weights and
//    image size, not once per call;
//  - each image's key and value side runs in place: v is projected first, so that X can then become key_in
//    without a second (L, E) tensor, and the next image reuses the memory (N = 16, 32x32 keys: peak
//    1413 -> 710 MiB, 0.521 -> 0.477 s per image);
//  - ln_post runs in place on the adapter's output;
//  - the query side, the key and value side and the attention run on the fast path's own threads, OpenBLAS
//    single-threaded (fast/threads.hpp; the attention of one full-size image 51-63 -> 42-47 ms);
//  - a caller that runs many batches can keep the buffers from call to call (Workspace, below); one that runs once
//    can give up the key table and the features, so that the last image's key_in goes over the table (below).
// Records the same trace names as the readable path, in the same order. Measured gain of the whole forward pass
// with the tail, one full-size image: 29x (23.2 s -> 0.80 s, `qwenvl-bench --gains`, docs/fast-path.md).
#pragma once

#include "core/shapes.hpp"
#include "core/trace.hpp"
#include "fast/attention.hpp"
#include "fast/gemm.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"
#include "stages/11_minicpmv.hpp"

namespace qwenvl::fast {

// The adapter's parameters as the fast path reads them: blocks and runs of floats, wherever they live. Made
// from AdapterWeights (implicitly: views of its tensors, which must outlive it) or by io/checkpoint.hpp's
// map_adapter (in place in the mapped checkpoint, nothing copied). Shapes as in AdapterWeights; an empty
// pos_embed means the sin-cos table is computed, an empty kv_proj means nn.Identity.
struct Weights {
    Block query, pos_embed, kv_proj;
    Block w_q, w_k, w_v;
    Values b_q, b_k, b_v;
    Block out_proj_weight;
    Values out_proj_bias;
    Values ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias;
    Weights() = default;
    Weights(const AdapterWeights& w);  // NOLINT(google-explicit-constructor)
};
// The tower's tail, likewise: ln_post's weight and bias (E,) and proj (E, E).
struct TailWeights {
    Values ln_post_weight, ln_post_bias;
    Block proj;
    TailWeights() = default;
    TailWeights(const TowerTail& tail);  // NOLINT(google-explicit-constructor)
};

// What does not depend on the images' content, for images of n_keys patches: P_k (n_keys, E) and the projected
// queries q (Q, E). After it, the forward pass no longer needs W_q (`run` releases it). P_q is read where it lies
// (a stored pos_embed) or computed, and not kept.
struct QuerySide {
    Matrix pos_k;
    Matrix q;
};
// Records pos_q, pos_k, ln_q, query_in and q in `trace` when given.
// `keys`: the key grid (h, w) when it is not the square grid of n_keys cells (stages/07's adapter_forward with a Grid).
QuerySide prepare_query_side(const Weights& weights, const AdapterConfig& config, std::size_t n_keys,
                             Trace* trace = nullptr, Grid keys = {});

// x += table, both (R, E), in place: replaces stages/07's `key_in = X + P_k` (a new (L, E) tensor). A plain loop:
// xtensor's `x += table` would first build x + table in a temporary, to be safe in case the two overlapped. The
// table is a Matrix or a block of contiguous float rows (a stored pos_embed, read in place).
void add_in_place(Matrix& x, const Block& table);

// The buffers adapter_forward can keep from one call to the next: one image's three (L, E) tensors (16 MiB each
// at full size), the attention's buffers, and the attended batch (N, Q, E). Without one, each call makes them and
// frees them, and every page of them is touched fresh, call after call (at full size about 15,000 pages, at about
// 2.5 us a page on this project's machines, `qwenvl-bench --page-faults`). A caller that runs many batches, as the benchmark does, keeps one
// Workspace and passes it to every call; `run`, which calls once, passes none, and the buffers are freed before
// out_proj's weights are first read (peak memory). Sized on first use, and again when a size changes.
struct Workspace {
    Matrix X, v, k;              // (L, E): kv_proj and ln_kv, then key_in in place; the values; the keys
    AttentionBuffers attention;  // q / sqrt(Dh) and each thread's (Q, L) buffer
    Tensor3 attended;            // (N, Q, E)
};

// x (N, L, Kv) -> out (N, Q, E), with the query side prepared for L = n_keys. Records the key side, the
// attention and out in `trace` when given.
Tensor3 adapter_forward(const Weights& weights, const AdapterConfig& config, const QuerySide& side,
                        const Tensor3& x, const Matrix* mask = nullptr, Trace* trace = nullptr,
                        Workspace* workspace = nullptr);

// The same, and the same bits, for a caller that runs the adapter once and has no further use for the key table or
// the features (`run`): each is freed once it is read for the last time, so that the run touches less fresh memory.
// x goes after the last image's kv_proj, and the last image's key_in = X + P_k is written over the key table, the
// keys then over X: three (L, E) buffers instead of four. side.q is left as it was.
Tensor3 adapter_forward(const Weights& weights, const AdapterConfig& config, QuerySide&& side, Tensor3&& x,
                        const Matrix* mask = nullptr, Trace* trace = nullptr);

// MiniCPM-V 2.5/2.6's resampler: replaces stages/11_minicpmv's `minicpmv_forward` (same arguments, the default
// 70 x 70 table). Each image runs alone on its own L_n = h*w patches, rows [0, L_n) of x: no padding and no mask.
// The readable path's padded keys get weights of exactly 0 (exp(-inf)), so both sum the same terms. Each image's
// table is sin-cos of its own grid, the same values as the slice of a larger table. Measured gain at MiniCPM-V 2.6's
// size with the tail, two images of 32 x 32 and 24 x 40 patches: 23x (23.35 s -> 1.03 s, `qwenvl-bench --minicpmv`,
// docs/fast-path.md). With a trace, the readable path's names and shapes (stages/11): each image then runs on all L
// keys, its padding's table rows zero and its padding masked, as the readable path does.
Tensor3 minicpmv_forward(const Weights& weights, const AdapterConfig& config, const Tensor3& x,
                         const std::vector<Grid>& grids, Trace* trace = nullptr);

// out (N, Q, E) -> y (N, Q, E) = LN_post(out) @ proj. Records ln_post and proj. `out` is taken by value and
// normalised in place: pass a temporary, or std::move it, and no copy is made.
Tensor3 tower_tail_forward(const TailWeights& tail, Tensor3 out, float eps, Trace* trace = nullptr);

}  // namespace qwenvl::fast
