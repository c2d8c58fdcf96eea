// stages/07_adapter.hpp: stage 07, the position-aware vision-language adapter (Qwen-VL's Resampler,
// `transformer.visual.attn_pool`), composed from stages 01 to 06 (docs/stages/07-adapter.md).
//
// Paper (Qwen-VL, section 2.1): the adapter "compresses the visual feature sequence to a fixed length
// of 256"; the queries are trainable; 2D absolute positional encodings are added to the query-key
// pairs. Table 1 counts it at 0.08B parameters. In the order adapter_forward computes it:
//   P_q   = sincos_2d(E, G_q), or the stored pos_embed            (Q, E)   stage 02
//   P_k   = P_q resized to the key grid G_k x G_k                  (L, E)   stage 03
//   query = LN_q(query_param) + P_q                                (Q, E)   the un-resized table
//   q     = query W_q^T + b_q                                      (Q, E)   the same for every image
// and for each image x (L, Kv):
//   X     = LN_kv(x W_kv^T)                                        (L, E)   no W_kv when Kv == E
//   key   = X + P_k,   k = key W_k^T + b_k                         (L, E)   the resized table on the keys
//   value = X,         v = value W_v^T + b_v                       (L, E)   no position term on the values
//   out   = MHA(q, k, v) W_o^T + b_o                               (Q, E)   stage 06, then out_proj
#pragma once

#include "core/shapes.hpp"
#include "core/trace.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/05_projections.hpp"

namespace qwenvl {

// The adapter's parameters under their checkpoint names (prefix transformer.visual.attn_pool.).
struct AdapterWeights {
    Matrix query;           // (Q, E)   query
    Matrix pos_embed;       // (Q, E)   pos_embed; empty = compute the sin-cos table (sincos_2d)
    Matrix kv_proj;         // (E, Kv)  kv_proj.weight; empty = identity (Kv == E)
    InProjection in_proj;   // attn.in_proj_weight (3E, E) and attn.in_proj_bias (3E,), split in three
    Matrix out_proj_weight; // (E, E)   attn.out_proj.weight
    Vector out_proj_bias;   // (E,)     attn.out_proj.bias
    Vector ln_q_weight, ln_q_bias;    // (E,) ln_q
    Vector ln_kv_weight, ln_kv_bias;  // (E,) ln_kv
};

// Which resampler the weights are: Qwen-VL's (this stage) or MiniCPM-V 2.5 / 2.6's (stage 11, the same parameters
// under other names, no position term on the queries, a key table per image grid).
enum class Model { qwen_vl, minicpm_v };

struct AdapterConfig {
    Model model = Model::qwen_vl;
    std::size_t embed_dim = 0;  // E   (output_dim, 4096)
    std::size_t kv_dim = 0;     // Kv  (width, 1664)
    std::size_t n_queries = 0;  // Q   (n_queries, 256)
    std::size_t grid_q = 0;     // G_q (sqrt of Q, 16); 0 for MiniCPM-V, whose queries have no grid
    std::size_t num_heads = 0;  // H   (E / 128, 32)
    float eps = 1e-6f;          // the LayerNorms' eps
};

// The configuration implied by the weights' shapes: E and Q from `query`, Kv from kv_proj (E when it
// is absent). num_heads = 0 picks Qwen-VL's rule H = E / 128 (MiniCPM-V's too). Checks every weight's shape, that
// H divides E, that E is divisible by 4 and, for Qwen-VL, that Q is a square (MiniCPM-V 2.5 has Q = 96) and, for
// MiniCPM-V, that there is no stored pos_embed; throws ShapeError / std::invalid_argument otherwise.
AdapterConfig derive_config(const AdapterWeights& weights, std::size_t num_heads = 0, Model model = Model::qwen_vl);

// "Qwen-VL" or "MiniCPM-V 2.5/2.6", for messages.
const char* model_name(Model model);

// The query-side table P_q (Q, E): the stored pos_embed when the weights have one (as load_state_dict
// would use it), else the sin-cos table computed for the G_q x G_q grid.
Matrix query_position_table(const AdapterWeights& weights, const AdapterConfig& config);

// The adapter on a batch: x (N, L, Kv) -> out (N, Q, E). L must be a perfect square. mask: (Q, L) additive
// attention mask or nullptr. Records every intermediate in `trace` when given (core/trace.hpp's names).
Tensor3 adapter_forward(const AdapterWeights& weights, const AdapterConfig& config, const Tensor3& x,
                        const Matrix* mask = nullptr, Trace* trace = nullptr);

// The same for images of `keys.h` rows and `keys.w` columns of patches (L = h*w, row-major), for non-square
// images: P_k is P_q resized to (h, w) (key_position_table). The function above is this one on the square grid.
Tensor3 adapter_forward(const AdapterWeights& weights, const AdapterConfig& config, const Tensor3& x, Grid keys,
                        const Matrix* mask = nullptr, Trace* trace = nullptr);

// Backward (training): the gradients of a loss L with respect to every trainable parameter of the adapter and
// to its input x, given x, the forward pass's intermediates (`forward`, the trace adapter_forward recorded) and
// dL/d out (N, Q, E). pos_embed is frozen, as upstream's requires_grad_(False): the position tables pass the
// gradient on (d key_in reaches X; d query_in reaches LN_q) and get none. In reverse order of the forward:
//   out = attended W_o^T + b_o          linear_backward, summed over the images
//   attended = MHA(q, k, v)             multi_head_attention_backward per image; q is shared: dq summed
//   k = key_in W_k^T + b_k, v = X W_v^T + b_v, q = query_in W_q^T + b_q       linear_backward
//   key_in = X + P_k:  dX = d key_in + (from v)        query_in = LN_q(query) + P_q:  d LN_q = d query_in
//   X = LN_kv(x W_kv^T), LN_q(query)    layer_norm_backward, kv_projection_backward
// Records dL/d each intermediate under its trace name (and "x") in `gradients` when given.
// MiniCPM-V's resampler (stage 11) has the same backward from its own trace (minicpmv_forward's): its queries have
// no table, so W_q's input is ln_q and there is no query_in; its padding keys, weighted 0, get zero gradients.
struct AdapterGradients {
    Matrix query;                  // (Q, E)
    Matrix kv_proj;                // (E, Kv); empty for the identity
    Matrix in_proj_weight;         // (3E, E), packed as the checkpoint stores it (pack_in_proj)
    Vector in_proj_bias;           // (3E,)
    Matrix out_proj_weight;        // (E, E)
    Vector out_proj_bias;          // (E,)
    Vector ln_q_weight, ln_q_bias;    // (E,)
    Vector ln_kv_weight, ln_kv_bias;  // (E,)
    Tensor3 x;                     // (N, L, Kv), for a vision tower trained with the adapter
};
AdapterGradients adapter_backward(const AdapterWeights& weights, const AdapterConfig& config, const Tensor3& x,
                                  const Trace& forward, const Tensor3& d_out, Trace* gradients = nullptr);

// Number of parameters of the adapter implied by its configuration: trainable ones (query Q*E, kv_proj E*Kv
// when Kv != E, in_proj 3E*E + 3E, out_proj E*E + E, ln_q and ln_kv 4E) and the frozen pos_embed (Q*E).
// Qwen-VL: 75,005,952 trainable (Table 1's 0.08B) + 1,048,576 frozen. MiniCPM-V's table is a buffer, not a
// parameter: frozen = 0.
struct ParameterCount {
    std::size_t trainable = 0;
    std::size_t frozen = 0;
};
ParameterCount count_parameters(const AdapterConfig& config);

}  // namespace qwenvl
