// Gradient tests: every backward function of src/stages/ against PyTorch autograd's gradients in the fixtures
// (tests/reference/make_fixtures.py, `reference_backward`). The loss is L = sum(y * G), G a seeded upstream
// gradient the fixture holds as gradients["proj"]. Each backward is fed PyTorch's own gradient of its output, so a
// failure points at one function; the last tests run the whole backward from G, and check every backward function
// (layer_norm, linear, matmul, softmax_rows, multi_head_attention, kv_projection, tower_tail) and the whole backward
// on every parameter and x of every fixture against finite differences of its own forward function.
#include <cmath>

#include <xtensor/xrandom.hpp>
#include <xtensor/xview.hpp>

#include "fast/adapter.hpp"
#include "fast/backward.hpp"
#include "golden.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/05_projections.hpp"
#include "stages/06_attention.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"

using namespace qwenvl;
using qwenvl_test::check_gradient;
using qwenvl_test::fixtures;

namespace {
// PyTorch's gradient of a stage's output (dL/d stage), whole or item n of its batch.
const xt::xarray<float>& grad(const Fixture& f, const std::string& stage) { return f.gradients.get(stage); }
Matrix grad_item(const Fixture& f, const std::string& stage, std::size_t n) { return xt::view(grad(f, stage), n); }
Matrix value_item(const Fixture& f, const std::string& stage, std::size_t n) { return xt::view(f.expect(stage), n); }
const xt::xarray<float>& param_grad(const Fixture& f, const std::string& name) { return f.param_gradients.get(name); }
}  // namespace

TEST_CASE("gradients: every fixture holds autograd's gradients of every stage and trainable parameter", "[gradients]") {
    for (const Fixture& f : fixtures()) {
        INFO(f.name);
        for (const char* stage : {"proj", "ln_post", "out", "attended", "attn_weights", "scores", "q", "k", "v", "key_in",
                                  "query_in", "ln_q", "ln_kv", "kv_proj", "x"})
            CHECK_NOTHROW(grad(f, stage));
        CHECK(f.param_gradients.names().size() == (f.weights.kv_proj.size() ? 13u : 12u));  // pos_embed: frozen
    }
}

TEST_CASE("gradients: tower_tail_backward equals autograd through ln_post and @ proj", "[gradients][tail]") {
    for (const Fixture& f : fixtures()) {
        Trace traced;
        const TailGradients g = tower_tail_backward(f.tail, f.expect("out"), grad(f, "proj"), f.config.eps, &traced);
        check_gradient(f, "ln_post", traced.get("ln_post"), grad(f, "ln_post"));
        check_gradient(f, "out", g.d_out, grad(f, "out"));
        check_gradient(f, "ln_post.weight", g.ln_post_weight, param_grad(f, "ln_post.weight"));
        check_gradient(f, "ln_post.bias", g.ln_post_bias, param_grad(f, "ln_post.bias"));
        check_gradient(f, "proj", g.proj, param_grad(f, "proj"));
    }
}

TEST_CASE("gradients: linear_backward equals autograd for out_proj and the k, v and q rows of in_proj", "[gradients][linear]") {
    for (const Fixture& f : fixtures()) {
        const std::size_t N = f.x.shape(0), E = f.config.embed_dim;
        Matrix d_out_proj = xt::zeros<float>({E, E});
        Vector d_out_bias = xt::zeros<float>({E});
        for (std::size_t n = 0; n < N; ++n) {
            const LinearGradients out =
                linear_backward(value_item(f, "attended", n), f.weights.out_proj_weight, grad_item(f, "out", n));
            check_gradient(f, "attended", out.dx, grad_item(f, "attended", n));
            d_out_proj += out.dweight;
            d_out_bias += out.dbias;
            const LinearGradients k = linear_backward(value_item(f, "key_in", n), f.weights.in_proj.w_k, grad_item(f, "k", n));
            check_gradient(f, "key_in", k.dx, grad_item(f, "key_in", n));
            const LinearGradients v = linear_backward(value_item(f, "ln_kv", n), f.weights.in_proj.w_v, grad_item(f, "v", n));
            // X reaches both the keys (through key_in) and the values: its gradient is the sum
            check_gradient(f, "ln_kv", Matrix(k.dx + v.dx), grad_item(f, "ln_kv", n));
        }
        check_gradient(f, "out_proj.weight", d_out_proj, param_grad(f, "attn_pool.attn.out_proj.weight"));
        check_gradient(f, "out_proj.bias", d_out_bias, param_grad(f, "attn_pool.attn.out_proj.bias"));
        const LinearGradients q = linear_backward(f.expect("query_in"), f.weights.in_proj.w_q, grad(f, "q"));
        check_gradient(f, "query_in", q.dx, grad(f, "query_in"));
        // in_proj's q rows get their gradient from the query side alone
        const Matrix packed = param_grad(f, "attn_pool.attn.in_proj_weight");
        check_gradient(f, "in_proj_weight's q rows", q.dweight, Matrix(xt::view(packed, xt::range(0, E), xt::all())));
    }
}

TEST_CASE("gradients: softmax_rows_backward equals autograd's (masked places get none)", "[gradients][attention]") {
    for (const Fixture& f : fixtures()) {
        const xt::xarray<float>& weights = f.expect("attn_weights");  // (N, H, Q, L)
        for (std::size_t n = 0; n < weights.shape(0); ++n)
            for (std::size_t h = 0; h < weights.shape(1); ++h) {
                const Matrix w = xt::view(weights, n, h);
                const Matrix d = softmax_rows_backward(w, Matrix(xt::view(grad(f, "attn_weights"), n, h)));
                check_gradient(f, "scores", d, Matrix(xt::view(grad(f, "scores"), n, h)));
                if (f.config.num_heads && f.has_mask)
                    for (std::size_t i = 0; i < d.size(); ++i)
                        if (std::isinf(f.mask.flat(i))) CHECK(d.flat(i) == 0.0f);
            }
    }
}

TEST_CASE("gradients: multi_head_attention_backward equals autograd (dq summed over the images, dk, dv, weights, scores)",
          "[gradients][attention]") {
    for (const Fixture& f : fixtures()) {
        const std::size_t N = f.x.shape(0);
        const Matrix q = f.expect("q");
        Matrix dq = xt::zeros<float>(q.shape());
        for (std::size_t n = 0; n < N; ++n) {
            const xt::xarray<float> weights_n = xt::view(f.expect("attn_weights"), n);
            const AttentionGradients g = multi_head_attention_backward(
                q, value_item(f, "k", n), value_item(f, "v", n), Tensor3(weights_n), grad_item(f, "attended", n),
                f.config.num_heads);
            check_gradient(f, "k", g.dk, grad_item(f, "k", n));
            check_gradient(f, "v", g.dv, grad_item(f, "v", n));
            check_gradient(f, "attn_weights", g.d_weights, xt::view(grad(f, "attn_weights"), n));
            check_gradient(f, "scores", g.d_scores, xt::view(grad(f, "scores"), n));
            dq += g.dq;
        }
        check_gradient(f, "q", dq, grad(f, "q"));
    }
}

TEST_CASE("gradients: layer_norm_backward and kv_projection_backward equal autograd (ln_kv, kv_proj, ln_q, query)",
          "[gradients][layernorm]") {
    for (const Fixture& f : fixtures()) {
        const std::size_t N = f.x.shape(0), E = f.config.embed_dim;
        Vector d_gamma = xt::zeros<float>({E}), d_beta = xt::zeros<float>({E});
        Matrix d_kv_proj = xt::zeros<float>({E, f.config.kv_dim});
        for (std::size_t n = 0; n < N; ++n) {
            const LayerNormGradients ln =
                layer_norm_backward(value_item(f, "kv_proj", n), f.weights.ln_kv_weight, grad_item(f, "ln_kv", n), f.config.eps);
            check_gradient(f, "kv_proj", ln.dx, grad_item(f, "kv_proj", n));
            d_gamma += ln.dgamma;
            d_beta += ln.dbeta;
            const Matrix x_n = xt::view(f.x, n);
            const KvProjectionGradients kv = kv_projection_backward(x_n, f.weights.kv_proj, grad_item(f, "kv_proj", n));
            check_gradient(f, "x", kv.dx, grad_item(f, "x", n));
            if (f.weights.kv_proj.size()) d_kv_proj += kv.dw_kv;
        }
        check_gradient(f, "ln_kv.weight", d_gamma, param_grad(f, "attn_pool.ln_kv.weight"));
        check_gradient(f, "ln_kv.bias", d_beta, param_grad(f, "attn_pool.ln_kv.bias"));
        if (f.weights.kv_proj.size()) check_gradient(f, "kv_proj.weight", d_kv_proj, param_grad(f, "attn_pool.kv_proj.weight"));
        // The query side: P_q is frozen, so dL/d LN_q(query) is dL/d query_in.
        check_gradient(f, "ln_q", grad(f, "query_in"), grad(f, "ln_q"));
        const LayerNormGradients ln_q = layer_norm_backward(f.weights.query, f.weights.ln_q_weight, grad(f, "ln_q"), f.config.eps);
        check_gradient(f, "query", ln_q.dx, param_grad(f, "attn_pool.query"));
        check_gradient(f, "ln_q.weight", ln_q.dgamma, param_grad(f, "attn_pool.ln_q.weight"));
        check_gradient(f, "ln_q.bias", ln_q.dbeta, param_grad(f, "attn_pool.ln_q.bias"));
    }
}

TEST_CASE("gradients: the whole backward from dL/dy equals autograd for every parameter, x and every intermediate, "
          "on both paths",
          "[gradients][adapter][fast]") {
    // readable: stages' forward and backward; fast: fast/'s forward (its trace) and fast/backward.hpp
    const bool fast_path = GENERATE(false, true);
    INFO((fast_path ? "fast path" : "readable path"));
    for (const Fixture& f : fixtures()) {
        Trace forward, backward;
        const Matrix* mask = f.has_mask ? &f.mask : nullptr;
        Tensor3 out;
        TailGradients tail;
        AdapterGradients g;
        if (fast_path) {
            const fast::QuerySide side = fast::prepare_query_side(f.weights, f.config, f.x.shape(1), &forward);
            out = fast::adapter_forward(f.weights, f.config, side, f.x, mask, &forward);
            tail = fast::tower_tail_backward(f.tail, out, grad(f, "proj"), f.config.eps, &backward);
            g = fast::adapter_backward(f.weights, f.config, f.x, forward, tail.d_out, &backward);
        } else {
            out = adapter_forward(f.weights, f.config, f.x, mask, &forward);
            tail = tower_tail_backward(f.tail, out, grad(f, "proj"), f.config.eps, &backward);
            g = adapter_backward(f.weights, f.config, f.x, forward, tail.d_out, &backward);
        }
        for (const std::string& stage : backward.names()) check_gradient(f, stage, backward.get(stage), grad(f, stage));
        check_gradient(f, "proj (the parameter)", tail.proj, param_grad(f, "proj"));
        check_gradient(f, "ln_post.weight", tail.ln_post_weight, param_grad(f, "ln_post.weight"));
        check_gradient(f, "ln_post.bias", tail.ln_post_bias, param_grad(f, "ln_post.bias"));
        check_gradient(f, "query", g.query, param_grad(f, "attn_pool.query"));
        check_gradient(f, "in_proj_weight", g.in_proj_weight, param_grad(f, "attn_pool.attn.in_proj_weight"));
        check_gradient(f, "in_proj_bias", g.in_proj_bias, param_grad(f, "attn_pool.attn.in_proj_bias"));
        check_gradient(f, "out_proj.weight", g.out_proj_weight, param_grad(f, "attn_pool.attn.out_proj.weight"));
        check_gradient(f, "out_proj.bias", g.out_proj_bias, param_grad(f, "attn_pool.attn.out_proj.bias"));
        check_gradient(f, "ln_q.weight", g.ln_q_weight, param_grad(f, "attn_pool.ln_q.weight"));
        check_gradient(f, "ln_q.bias", g.ln_q_bias, param_grad(f, "attn_pool.ln_q.bias"));
        check_gradient(f, "ln_kv.weight", g.ln_kv_weight, param_grad(f, "attn_pool.ln_kv.weight"));
        check_gradient(f, "ln_kv.bias", g.ln_kv_bias, param_grad(f, "attn_pool.ln_kv.bias"));
        if (f.weights.kv_proj.size()) check_gradient(f, "kv_proj.weight", g.kv_proj, param_grad(f, "attn_pool.kv_proj.weight"));
        check_gradient(f, "x", g.x, grad(f, "x"));
        CHECK(backward.names().size() == 14);  // every traced stage but the position tables and proj (given), and x
    }
}

// --- Finite differences: each backward against its own forward function, independently of PyTorch. ---
// float32 central differences with step h: the difference of two nearby float sums carries a rounding error of
// about 1e-7 |L| / h, and the step an error of order h^2. With h = 1e-2 and losses of order 10 both are near 1e-4;
// the bound below, 2e-3 + 2e-2 |analytic|, leaves a margin over that.

namespace {
template <class Loss>
double central_difference(Loss loss, float& value, float h = 1e-2f) {
    const float saved = value;
    value = saved + h;
    const double up = loss();
    value = saved - h;
    const double down = loss();
    value = saved;
    return (up - down) / (2.0 * h);
}

void check_difference(const std::string& what, double analytic, double numeric) {
    INFO(what << ": backward " << analytic << ", finite difference " << numeric);
    CHECK(std::abs(analytic - numeric) <= 2e-3 + 2e-2 * std::abs(analytic));
}

double weighted_sum(const xt::xarray<float>& y, const xt::xarray<float>& g) {
    double total = 0.0;
    for (std::size_t i = 0; i < y.size(); ++i) total += static_cast<double>(y.flat(i)) * g.flat(i);
    return total;
}
}  // namespace

TEST_CASE("finite differences: layer_norm, linear, matmul and softmax backward agree with their forward functions",
          "[gradients][finite-differences]") {
    xt::random::seed(3);
    Matrix x = xt::random::randn<float>({3, 6});
    Vector gamma = xt::random::randn<float>({6}), beta = xt::random::randn<float>({6});
    const Matrix dy = xt::random::randn<float>({3, 6});
    const LayerNormGradients ln = layer_norm_backward(x, gamma, dy, 1e-6f);
    auto ln_loss = [&] { return weighted_sum(layer_norm(x, gamma, beta, 1e-6f), dy); };
    for (std::size_t i = 0; i < x.size(); ++i) check_difference("layer_norm dx", ln.dx.flat(i), central_difference(ln_loss, x.flat(i)));
    for (std::size_t c = 0; c < 6; ++c) {
        check_difference("layer_norm dgamma", ln.dgamma(c), central_difference(ln_loss, gamma(c)));
        check_difference("layer_norm dbeta", ln.dbeta(c), central_difference(ln_loss, beta(c)));
    }

    Matrix w = xt::random::randn<float>({4, 6});
    Vector b = xt::random::randn<float>({4});
    const Matrix dz = xt::random::randn<float>({3, 4});
    const LinearGradients lin = linear_backward(x, w, dz);
    auto lin_loss = [&] { return weighted_sum(linear(x, w, b), dz); };
    for (std::size_t i = 0; i < x.size(); ++i) check_difference("linear dx", lin.dx.flat(i), central_difference(lin_loss, x.flat(i)));
    for (std::size_t i = 0; i < w.size(); ++i) check_difference("linear dW", lin.dweight.flat(i), central_difference(lin_loss, w.flat(i)));
    for (std::size_t i = 0; i < b.size(); ++i) check_difference("linear db", lin.dbias(i), central_difference(lin_loss, b(i)));

    Matrix p = xt::random::randn<float>({6, 5});
    const Matrix dm = xt::random::randn<float>({3, 5});
    const MatmulGradients mm = matmul_backward(x, p, dm);
    auto mm_loss = [&] { return weighted_sum(matmul(x, p), dm); };
    for (std::size_t i = 0; i < x.size(); ++i) check_difference("matmul da", mm.da.flat(i), central_difference(mm_loss, x.flat(i)));
    for (std::size_t i = 0; i < p.size(); ++i) check_difference("matmul db", mm.db.flat(i), central_difference(mm_loss, p.flat(i)));

    Matrix s = xt::random::randn<float>({3, 6});
    const Matrix dp = xt::random::randn<float>({3, 6});
    const Matrix ds = softmax_rows_backward(softmax_rows(s, nullptr), dp);
    auto sm_loss = [&] { return weighted_sum(softmax_rows(s, nullptr), dp); };
    for (std::size_t i = 0; i < s.size(); ++i) check_difference("softmax ds", ds.flat(i), central_difference(sm_loss, s.flat(i)));
}

TEST_CASE("finite differences: multi_head_attention, kv_projection and tower_tail backward agree with their forward "
          "functions (a boolean mask, several heads)", "[gradients][finite-differences]") {
    xt::random::seed(4);
    const std::size_t Q = 3, L = 5, E = 8, H = 2;
    Matrix q = xt::random::randn<float>({Q, E}), k = xt::random::randn<float>({L, E}), v = xt::random::randn<float>({L, E});
    xt::xtensor<bool, 2> masked = xt::zeros<bool>({Q, L});
    masked(0, 1) = masked(1, 4) = masked(2, 0) = masked(2, 3) = true;
    const Matrix mask = additive_mask(masked);
    const Matrix d_attended = xt::random::randn<float>({Q, E});
    const AttentionOutput a = multi_head_attention(q, k, v, H, &mask);
    const AttentionGradients att = multi_head_attention_backward(q, k, v, a.weights, d_attended, H);
    auto att_loss = [&] { return weighted_sum(multi_head_attention(q, k, v, H, &mask).attended, d_attended); };
    for (std::size_t i = 0; i < q.size(); ++i) check_difference("attention dq", att.dq.flat(i), central_difference(att_loss, q.flat(i)));
    for (std::size_t i = 0; i < k.size(); ++i) check_difference("attention dk", att.dk.flat(i), central_difference(att_loss, k.flat(i)));
    for (std::size_t i = 0; i < v.size(); ++i) check_difference("attention dv", att.dv.flat(i), central_difference(att_loss, v.flat(i)));
    // a masked key's value gets no gradient from the query that cannot see it; key 1 is hidden from query 0 only
    CHECK(xt::amax(xt::abs(att.d_scores))() > 0.0f);
    for (std::size_t h = 0; h < H; ++h) CHECK(att.d_scores(h, 0, 1) == 0.0f);

    Matrix x = xt::random::randn<float>({L, std::size_t(6)}), w_kv = xt::random::randn<float>({E, std::size_t(6)});
    const Matrix dy = xt::random::randn<float>({L, E});
    const KvProjectionGradients kv = kv_projection_backward(x, w_kv, dy);
    auto kv_loss = [&] { return weighted_sum(kv_projection(x, w_kv), dy); };
    for (std::size_t i = 0; i < x.size(); ++i) check_difference("kv_projection dx", kv.dx.flat(i), central_difference(kv_loss, x.flat(i)));
    for (std::size_t i = 0; i < w_kv.size(); ++i)
        check_difference("kv_projection dW", kv.dw_kv.flat(i), central_difference(kv_loss, w_kv.flat(i)));
    Matrix same = xt::random::randn<float>({L, E});  // the identity (Kv == E): dy passes on unchanged
    const KvProjectionGradients identity = kv_projection_backward(same, Matrix(), dy);
    auto id_loss = [&] { return weighted_sum(kv_projection(same, Matrix()), dy); };
    for (std::size_t i = 0; i < same.size(); ++i)
        check_difference("identity dx", identity.dx.flat(i), central_difference(id_loss, same.flat(i)));
    CHECK(identity.dw_kv.size() == 0);

    TowerTail tail;
    tail.ln_post_weight = xt::random::randn<float>({E});
    tail.ln_post_bias = xt::random::randn<float>({E});
    tail.proj = xt::random::randn<float>({E, E});
    Tensor3 out = xt::random::randn<float>({std::size_t(2), Q, E});
    const Tensor3 d_y = xt::random::randn<float>({std::size_t(2), Q, E});
    const TailGradients t = tower_tail_backward(tail, out, d_y, 1e-6f);
    auto tail_loss = [&] { return weighted_sum(tower_tail_forward(tail, out, 1e-6f), d_y); };
    for (std::size_t i = 0; i < out.size(); ++i) check_difference("tail d_out", t.d_out.flat(i), central_difference(tail_loss, out.flat(i)));
    for (std::size_t i = 0; i < E; ++i) {
        check_difference("tail d ln_post.weight", t.ln_post_weight(i), central_difference(tail_loss, tail.ln_post_weight(i)));
        check_difference("tail d ln_post.bias", t.ln_post_bias(i), central_difference(tail_loss, tail.ln_post_bias(i)));
    }
    for (std::size_t i = 0; i < tail.proj.size(); ++i)
        check_difference("tail d proj", t.proj.flat(i), central_difference(tail_loss, tail.proj.flat(i)));
}

TEST_CASE("finite differences: the whole backward agrees with the forward pass on every parameter and x, every fixture",
          "[gradients][finite-differences]") {
    for (const Fixture& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            AdapterWeights w = f.weights;
            TowerTail tail = f.tail;
            Tensor3 x = f.x;
            const Matrix* mask = f.has_mask ? &f.mask : nullptr;
            const xt::xarray<float>& upstream = grad(f, "proj");
            Trace forward;
            const Tensor3 out = adapter_forward(w, f.config, x, mask, &forward);
            const TailGradients g_tail = tower_tail_backward(tail, out, upstream, f.config.eps);
            const AdapterGradients g = adapter_backward(w, f.config, x, forward, g_tail.d_out);
            auto loss = [&] {
                return weighted_sum(tower_tail_forward(tail, adapter_forward(w, f.config, x, mask), f.config.eps), upstream);
            };
            // A few entries of every trainable parameter, and of x: the first, one in the middle and the last. The
            // step is 1% of the tensor's root mean square (small_variance's features are 1e-3 in size: a fixed step
            // of 1e-2 would leave the region where the loss is near linear).
            auto probe = [&](const std::string& what, auto& values, const auto& analytic) {
                double squares = 0.0;
                for (float value : values) squares += static_cast<double>(value) * value;
                const float rms = static_cast<float>(std::sqrt(squares / static_cast<double>(values.size())));
                const float h = rms > 0.0f ? 1e-2f * rms : 1e-2f;
                for (std::size_t i : {std::size_t(0), values.size() / 2, values.size() - 1})
                    check_difference(what + "[" + std::to_string(i) + "]", analytic.flat(i),
                                     central_difference(loss, values.flat(i), h));
            };
            const std::size_t E = f.config.embed_dim;
            auto rows = [&](std::size_t part) { return Matrix(xt::view(g.in_proj_weight, xt::range(part * E, (part + 1) * E), xt::all())); };
            auto bias = [&](std::size_t part) { return Vector(xt::view(g.in_proj_bias, xt::range(part * E, (part + 1) * E))); };
            probe("query", w.query, g.query);
            probe("ln_q.weight", w.ln_q_weight, g.ln_q_weight);
            probe("ln_q.bias", w.ln_q_bias, g.ln_q_bias);
            if (w.kv_proj.size()) probe("kv_proj.weight", w.kv_proj, g.kv_proj);
            probe("ln_kv.weight", w.ln_kv_weight, g.ln_kv_weight);
            probe("ln_kv.bias", w.ln_kv_bias, g.ln_kv_bias);
            probe("in_proj w_q", w.in_proj.w_q, rows(0));
            probe("in_proj w_k", w.in_proj.w_k, rows(1));
            probe("in_proj w_v", w.in_proj.w_v, rows(2));
            probe("in_proj b_q", w.in_proj.b_q, bias(0));
            probe("in_proj b_k", w.in_proj.b_k, bias(1));  // 0: the softmax ignores a constant added to a row
            probe("in_proj b_v", w.in_proj.b_v, bias(2));
            probe("out_proj.weight", w.out_proj_weight, g.out_proj_weight);
            probe("out_proj.bias", w.out_proj_bias, g.out_proj_bias);
            probe("ln_post.weight", tail.ln_post_weight, g_tail.ln_post_weight);
            probe("ln_post.bias", tail.ln_post_bias, g_tail.ln_post_bias);
            probe("proj", tail.proj, g_tail.proj);
            probe("x", x, g.x);
        }
    }
}
