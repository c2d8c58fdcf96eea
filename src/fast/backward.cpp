#include "fast/backward.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "fast/gemm.hpp"
#include "fast/layernorm.hpp"
#include "fast/threads.hpp"
#include "stages/05_projections.hpp"

namespace qwenvl::fast {

namespace {
// The sums of the `rows` rows of a (rows, cols) block, added to out (cols,): a bias's gradient, summed in double.
void add_column_sums(const float* m, std::size_t rows, std::size_t cols, float* out) {
    std::vector<double> sums(cols, 0.0);
    for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t c = 0; c < cols; ++c) sums[c] += m[r * cols + c];
    for (std::size_t c = 0; c < cols; ++c) out[c] += static_cast<float>(sums[c]);
}

// All of a contiguous (rows, cols) buffer as a block.
Block rows_of(const float* data, std::size_t rows, std::size_t cols) { return Block{data, rows, cols, cols}; }

// The forward pass's value of `name`, checked to have `shape`.
const xt::xarray<float>& recorded(const Trace& forward, const char* name, const std::vector<std::size_t>& shape) {
    const xt::xarray<float>& value = forward.get(name);
    check_shape("fast::adapter_backward", name, value, shape);
    return value;
}
}  // namespace

void layer_norm_backward(const float* x, std::size_t rows, std::size_t E, Values gamma, const float* dy, float eps,
                         float* dx, float* dgamma, float* dbeta) {
    check_shape("fast::layer_norm_backward", "gamma", std::vector<std::size_t>{gamma.size}, {E});
    const std::size_t grain = std::max<std::size_t>((std::size_t(1) << 16) / std::max<std::size_t>(E, 1), 1);
    const std::size_t parts = parallel_parts(rows, grain);
    // each part's sums of dL/dgamma and dL/dbeta over its rows, added up at the end
    std::vector<std::vector<double>> d_gamma(parts, std::vector<double>(E, 0.0)), d_beta = d_gamma;
    parallel_for_parts(rows, grain, [&](std::size_t part, std::size_t begin, std::size_t end) {
        std::vector<double> x_hat(E);
        double* dg = d_gamma[part].data();
        double* db = d_beta[part].data();
        for (std::size_t r = begin; r < end; ++r) {
            const float* xr = x + r * E;
            const float* dyr = dy + r * E;
            double mean = 0.0;
            for (std::size_t c = 0; c < E; ++c) mean += xr[c];
            mean /= static_cast<double>(E);
            double var = 0.0;
            for (std::size_t c = 0; c < E; ++c) var += (xr[c] - mean) * (xr[c] - mean);
            var /= static_cast<double>(E);
            const double rstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
            double mean_g = 0.0, mean_g_x_hat = 0.0;  // the means over the row of g = dy gamma and of g x_hat
            for (std::size_t c = 0; c < E; ++c) {
                x_hat[c] = (xr[c] - mean) * rstd;
                const double g = static_cast<double>(dyr[c]) * gamma.data[c];
                mean_g += g;
                mean_g_x_hat += g * x_hat[c];
                dg[c] += dyr[c] * x_hat[c];
                db[c] += dyr[c];
            }
            mean_g /= static_cast<double>(E);
            mean_g_x_hat /= static_cast<double>(E);
            float* dxr = dx + r * E;
            for (std::size_t c = 0; c < E; ++c)
                dxr[c] = static_cast<float>((static_cast<double>(dyr[c]) * gamma.data[c] - mean_g - x_hat[c] * mean_g_x_hat) * rstd);
        }
    });
    for (std::size_t c = 0; c < E; ++c) {
        double g = 0.0, b = 0.0;
        for (std::size_t part = 0; part < parts; ++part) g += d_gamma[part][c], b += d_beta[part][c];
        dgamma[c] += static_cast<float>(g);
        dbeta[c] += static_cast<float>(b);
    }
}

TailGradients tower_tail_backward(const TailWeights& tail, const Tensor3& out, const Tensor3& d_y, float eps,
                                  Trace* gradients) {
    const char* fn = "fast::tower_tail_backward";
    const std::size_t N = out.shape(0), Q = out.shape(1), E = out.shape(2), R = N * Q;
    check_shape(fn, "proj", dims(tail.proj), {E, E});
    check_shape(fn, "d_y", d_y, {N, Q, E});
    const OwnThreads own;
    TailGradients grads{Tensor3({N, Q, E}), xt::zeros<float>({E}), xt::zeros<float>({E}), Matrix({E, E})};
    Tensor3 ln_post = out;  // the forward's ln_post, again
    layer_norm_in_place(ln_post, tail.ln_post_weight, tail.ln_post_bias, eps);
    // y = ln_post @ proj: dL/d ln_post = dL/dy proj^T, dL/d proj = ln_post^T dL/dy over every row of the batch
    Tensor3 d_ln_post({N, Q, E});
    gemm_block(rows_of(d_y.data(), R, E), tail.proj, /*transpose_b=*/true, d_ln_post.data(), E);
    gemm_block(rows_of(ln_post.data(), R, E), rows_of(d_y.data(), R, E), false, grads.proj.data(), E, false,
               /*transpose_a=*/true);
    layer_norm_backward(out.data(), R, E, tail.ln_post_weight, d_ln_post.data(), eps, grads.d_out.data(),
                        grads.ln_post_weight.data(), grads.ln_post_bias.data());
    record(gradients, "ln_post", d_ln_post);
    record(gradients, "out", grads.d_out);
    return grads;
}

AdapterGradients adapter_backward(const Weights& w, const AdapterConfig& c, const Tensor3& x, const Trace& forward,
                                  const Tensor3& d_out, Trace* gradients) {
    const char* fn = "fast::adapter_backward";
    check_shape(fn, "x", x, {ANY, ANY, c.kv_dim});
    const std::size_t N = x.shape(0), L = x.shape(1), Kv = c.kv_dim, Q = c.n_queries, E = c.embed_dim,
                      H = c.num_heads, Dh = E / H;
    check_shape(fn, "d_out", d_out, {N, Q, E});
    require(w.query.stride == w.query.cols, fn, "the query is not a contiguous block");
    // The forward pass's values each step needs, as it recorded them.
    const bool query_table = c.model == Model::qwen_vl;  // MiniCPM-V's W_q reads LN_q(query): no P_q
    const xt::xarray<float>& query_in = recorded(forward, query_table ? "query_in" : "ln_q", {Q, E});
    const xt::xarray<float>& q = recorded(forward, "q", {Q, E});
    const xt::xarray<float>& x_proj = recorded(forward, "kv_proj", {N, L, E});
    const xt::xarray<float>& X = recorded(forward, "ln_kv", {N, L, E});
    const xt::xarray<float>& key_in = recorded(forward, "key_in", {N, L, E});
    const xt::xarray<float>& k = recorded(forward, "k", {N, L, E});
    const xt::xarray<float>& v = recorded(forward, "v", {N, L, E});
    const xt::xarray<float>& weights = recorded(forward, "attn_weights", {N, H, Q, L});
    const xt::xarray<float>& attended = recorded(forward, "attended", {N, Q, E});
    const OwnThreads own;

    AdapterGradients grads;
    grads.out_proj_weight = Matrix({E, E});
    grads.out_proj_bias = xt::zeros<float>({E});
    grads.ln_kv_weight = xt::zeros<float>({E});
    grads.ln_kv_bias = xt::zeros<float>({E});
    grads.ln_q_weight = xt::zeros<float>({E});
    grads.ln_q_bias = xt::zeros<float>({E});
    InProjection d_in_proj{Matrix({E, E}), Matrix({E, E}), Matrix({E, E}), xt::zeros<float>({E}),
                           xt::zeros<float>({E}), xt::zeros<float>({E})};

    // out = attended W_o^T + b_o, the whole batch at once
    const std::size_t NQ = N * Q, NL = N * L;
    Tensor3 d_attended({N, Q, E});
    gemm_block(rows_of(d_out.data(), NQ, E), w.out_proj_weight, false, d_attended.data(), E);
    gemm_block(rows_of(d_out.data(), NQ, E), rows_of(attended.data(), NQ, E), false, grads.out_proj_weight.data(), E,
               false, /*transpose_a=*/true);
    add_column_sums(d_out.data(), NQ, E, grads.out_proj_bias.data());

    // The attention: every (image, head) pair on the fast path's threads, in one split (a thread's start costs
    // about as much as a small image's heads), each pair writing its own channels of dk and dv; dq, which every
    // image's head h adds to, is summed per part and the parts added at the end.
    // S_h = (q_h / sqrt(Dh)) k_h^T, A_h = softmax(S_h + mask), O_h = A_h v_h.
    Matrix dq = xt::zeros<float>({Q, E});
    Tensor3 dk({N, L, E}), dv({N, L, E});
    xt::xtensor<float, 4> d_weights, d_scores;  // (N, H, Q, L), only for the trace
    if (gradients) {
        d_weights = xt::xtensor<float, 4>({N, H, Q, L});
        d_scores = xt::xtensor<float, 4>({N, H, Q, L});
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
    const Matrix q_scaled = q * scale;  // as the forward pass scaled it
    const std::size_t pairs = N * H, parts = parallel_parts(pairs, 1);
    std::vector<Matrix> buffers(parts, Matrix({Q, L})), dq_h(parts, Matrix({Q, Dh}));
    std::vector<Matrix> dq_parts(parts, xt::zeros<float>({Q, E}));
    parallel_for_parts(pairs, 1, [&](std::size_t part, std::size_t begin, std::size_t end) {
        float* dS = buffers[part].data();  // dL/dA_h, then dL/dS_h in place
        for (std::size_t pair = begin; pair < end; ++pair) {
            const std::size_t n = pair / H, h = pair % H;
            const float* A = weights.data() + (n * H + h) * Q * L;
            const Block d_o{d_attended.data() + n * Q * E + h * Dh, Q, Dh, E};
            const Block v_h{v.data() + n * L * E + h * Dh, L, Dh, E};
            const Block k_h{k.data() + n * L * E + h * Dh, L, Dh, E};
            const Block q_h{q_scaled.data() + h * Dh, Q, Dh, E};
            gemm_block(Block{A, Q, L, L}, d_o, false, dv.data() + n * L * E + h * Dh, E, false, true);  // A^T dO
            gemm_block(d_o, v_h, true, dS, L);                                                       // dO v^T
            if (gradients) std::copy(dS, dS + Q * L, d_weights.data() + (n * H + h) * Q * L);
            for (std::size_t r = 0; r < Q; ++r) {  // the softmax's backward, row by row
                const float* p = A + r * L;
                float* d = dS + r * L;
                double dot = 0.0;
                for (std::size_t j = 0; j < L; ++j) dot += static_cast<double>(p[j]) * d[j];
                for (std::size_t j = 0; j < L; ++j) d[j] = static_cast<float>(p[j] * (d[j] - dot));
            }
            if (gradients) std::copy(dS, dS + Q * L, d_scores.data() + (n * H + h) * Q * L);
            // q was scaled before the product: dq_h = (dS k_h) / sqrt(Dh), dk_h = dS^T (q_h / sqrt(Dh))
            float* dq_pair = dq_h[part].data();
            gemm_block(Block{dS, Q, L, L}, k_h, false, dq_pair, Dh);
            Matrix& sum = dq_parts[part];
            for (std::size_t r = 0; r < Q; ++r)
                for (std::size_t j = 0; j < Dh; ++j) sum(r, h * Dh + j) += dq_pair[r * Dh + j] * scale;
            gemm_block(Block{dS, Q, L, L}, q_h, false, dk.data() + n * L * E + h * Dh, E, false, true);
        }
    });
    for (const Matrix& sum : dq_parts) dq += sum;

    // k = key_in W_k^T + b_k and v = X W_v^T + b_v, the whole batch at once; X reaches both key_in and v.
    Tensor3 d_key_in({N, L, E}), d_X({N, L, E});
    gemm_block(rows_of(dk.data(), NL, E), w.w_k, false, d_key_in.data(), E);
    gemm_block(rows_of(dk.data(), NL, E), rows_of(key_in.data(), NL, E), false, d_in_proj.w_k.data(), E, false, true);
    add_column_sums(dk.data(), NL, E, d_in_proj.b_k.data());
    gemm_block(rows_of(dv.data(), NL, E), w.w_v, false, d_X.data(), E);
    gemm_block(rows_of(dv.data(), NL, E), rows_of(X.data(), NL, E), false, d_in_proj.w_v.data(), E, false, true);
    add_column_sums(dv.data(), NL, E, d_in_proj.b_v.data());
    for (std::size_t i = 0; i < NL * E; ++i) d_X.data()[i] += d_key_in.data()[i];  // key_in = X + P_k: P_k frozen

    // X = LN_kv(x W_kv^T)
    Tensor3 d_x_proj({N, L, E});
    layer_norm_backward(x_proj.data(), NL, E, w.ln_kv_weight, d_X.data(), c.eps, d_x_proj.data(),
                        grads.ln_kv_weight.data(), grads.ln_kv_bias.data());
    if (w.kv_proj.empty()) {  // nn.Identity: the gradient passes on
        grads.x = d_x_proj;
    } else {
        grads.x = Tensor3({N, L, Kv});
        grads.kv_proj = Matrix({E, Kv});
        gemm_block(rows_of(d_x_proj.data(), NL, E), w.kv_proj, false, grads.x.data(), Kv);
        gemm_block(rows_of(d_x_proj.data(), NL, E), rows_of(x.data(), NL, Kv), false, grads.kv_proj.data(), Kv, false,
                   true);
    }

    // The query side, once: q = query_in W_q^T + b_q, query_in = LN_q(query) + P_q (P_q frozen).
    Matrix d_query_in({Q, E});
    gemm_block(rows_of(dq.data(), Q, E), w.w_q, false, d_query_in.data(), E);
    gemm_block(rows_of(dq.data(), Q, E), rows_of(query_in.data(), Q, E), false, d_in_proj.w_q.data(), E, false, true);
    add_column_sums(dq.data(), Q, E, d_in_proj.b_q.data());
    grads.query = Matrix({Q, E});
    const Matrix widened_query = w.query.is_packed() ? copy_of(w.query) : Matrix();  // a checkpoint's 16-bit query
    const float* query = w.query.is_packed() ? widened_query.data() : w.query.data;
    layer_norm_backward(query, Q, E, w.ln_q_weight, d_query_in.data(), c.eps, grads.query.data(),
                        grads.ln_q_weight.data(), grads.ln_q_bias.data());
    const PackedInProjection packed = pack_in_proj(d_in_proj);
    grads.in_proj_weight = packed.weight;
    grads.in_proj_bias = packed.bias;

    // The readable path's names, in its order.
    record(gradients, "attended", d_attended);
    record(gradients, "attn_weights", d_weights);
    record(gradients, "scores", d_scores);
    record(gradients, "k", dk);
    record(gradients, "v", dv);
    record(gradients, "key_in", d_key_in);
    record(gradients, "ln_kv", d_X);
    record(gradients, "kv_proj", d_x_proj);
    record(gradients, "q", dq);
    if (query_table) record(gradients, "query_in", d_query_in);
    record(gradients, "ln_q", d_query_in);
    record(gradients, "x", grads.x);
    return grads;
}

}  // namespace qwenvl::fast
