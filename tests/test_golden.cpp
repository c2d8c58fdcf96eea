// Golden tests: every stage of every fixture against the values PyTorch wrote
// (tests/reference/make_fixtures.py). Each stage is fed PyTorch's own value of the stage before it,
// so a failure points at one function; the last test runs the whole forward pass and checks every
// recorded intermediate.
#include <xtensor/xview.hpp>

#include "adapter.hpp"
#include "attention.hpp"
#include "golden.hpp"
#include "layernorm.hpp"
#include "linear.hpp"
#include "resize.hpp"
#include "sincos.hpp"

using namespace qwenvl;
using qwenvl_test::check_stage;
using qwenvl_test::fixtures;

TEST_CASE("golden: sincos_2d equals numpy's table (pos_q)", "[golden][sincos]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) { check_stage(f, "pos_q", sincos_2d(f.config.embed_dim, f.config.grid_q)); }
    }
}

TEST_CASE("golden: key_position_table equals F.interpolate bicubic (pos_k)", "[golden][resize]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            check_stage(f, "pos_k", key_position_table(Matrix(f.expect("pos_q")), f.x.shape(1)));
        }
    }
}

TEST_CASE("golden: kv_projection equals kv_proj (Linear without bias, or Identity)", "[golden][linear]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) { check_stage(f, "kv_proj", kv_projection(f.x, f.weights.kv_proj)); }
    }
}

TEST_CASE("golden: layer_norm equals nn.LayerNorm (ln_kv, ln_q)", "[golden][layernorm]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const auto& w = f.weights;
            check_stage(f, "ln_kv", layer_norm(Tensor3(f.expect("kv_proj")), w.ln_kv_weight, w.ln_kv_bias, f.config.eps));
            check_stage(f, "ln_q", layer_norm(w.query, w.ln_q_weight, w.ln_q_bias, f.config.eps));
        }
    }
}

TEST_CASE("golden: query_projection equals in_proj's query rows (query_in, q)", "[golden][linear]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            Trace trace;
            const Matrix q = query_projection(f.weights, f.config, Matrix(f.expect("pos_q")), &trace);
            check_stage(f, "query_in", trace.get("query_in"));
            check_stage(f, "q", q);
        }
    }
}

TEST_CASE("golden: linear equals in_proj's key and value rows (k, v)", "[golden][linear]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const auto& p = f.weights.in_proj;
            check_stage(f, "k", linear(Tensor3(f.expect("key_in")), p.w_k, p.b_k));
            check_stage(f, "v", linear(Tensor3(f.expect("ln_kv")), p.w_v, p.b_v));
        }
    }
}

TEST_CASE("golden: multi_head_attention equals MultiheadAttention's inside (scores, attn_weights, attended)",
          "[golden][attention]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const Matrix q = f.expect("q");
            const Tensor3 k = f.expect("k"), v = f.expect("v");
            const std::size_t N = k.shape(0), H = f.config.num_heads, Q = q.shape(0), L = k.shape(1);
            Tensor4 scores({N, H, Q, L}), weights({N, H, Q, L});
            Tensor3 attended({N, Q, f.config.embed_dim});
            for (std::size_t n = 0; n < N; ++n) {
                const AttentionOutput a = multi_head_attention(q, xt::view(k, n), xt::view(v, n), H,
                                                               f.has_mask ? &f.mask : nullptr);
                xt::view(scores, n) = a.scores;
                xt::view(weights, n) = a.weights;
                xt::view(attended, n) = a.attended;
            }
            check_stage(f, "scores", scores);
            check_stage(f, "attn_weights", weights);
            check_stage(f, "attended", attended);
        }
    }
}

TEST_CASE("golden: out_proj equals MultiheadAttention's output (out)", "[golden][linear]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            check_stage(f, "out", linear(Tensor3(f.expect("attended")), f.weights.out_proj_weight, f.weights.out_proj_bias));
        }
    }
}

TEST_CASE("golden: tower_tail_forward equals ln_post then @ proj", "[golden][tail]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            Trace trace;
            const Tensor3 y = tower_tail_forward(f.tail, Tensor3(f.expect("out")), f.config.eps, &trace);
            check_stage(f, "ln_post", trace.get("ln_post"));
            check_stage(f, "proj", y);
        }
    }
}

TEST_CASE("golden: the whole forward pass, every recorded intermediate", "[golden][adapter]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            Trace trace;
            const Tensor3 out = adapter_forward(f.weights, f.config, f.x, f.has_mask ? &f.mask : nullptr, &trace);
            const Tensor3 y = tower_tail_forward(f.tail, out, f.config.eps, &trace);
            // The trace and the fixture name the same stages.
            std::vector<std::string> expected_names;
            for (const auto& e : f.expected) expected_names.push_back(e.first);
            std::vector<std::string> traced = trace.names();
            std::sort(traced.begin(), traced.end());
            std::sort(expected_names.begin(), expected_names.end());
            CHECK(traced == expected_names);
            for (const auto& name : trace.names()) check_stage(f, name, trace.get(name));
            check_stage(f, "proj", y);
        }
    }
}

TEST_CASE("golden: a query side prepared once per set of weights gives PyTorch's output", "[golden][adapter]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const QuerySide side = prepare_query_side(f.weights, f.config, nullptr, f.x.shape(1));
            const Matrix* mask = f.has_mask ? &f.mask : nullptr;
            check_stage(f, "out", adapter_forward(f.weights, f.config, f.x, mask, nullptr, &side));
            check_stage(f, "out", adapter_forward(f.weights, f.config, f.x, mask, nullptr, &side));  // reusable
        }
    }
}

TEST_CASE("golden: the fixtures cover the cases the oracle promises", "[golden]") {
    bool identity = false, resize_up = false, resize_down = false, batch = false, float_mask = false,
         bool_mask = false, odd = false;
    for (const auto& f : fixtures()) {
        const auto& cfg = f.meta["config"];
        const std::size_t gq = cfg["grid_q"], gk = cfg["grid_k"];
        identity |= f.weights.kv_proj.size() == 0;
        resize_up |= gk > gq;
        resize_down |= gk < gq;
        batch |= f.x.shape(0) >= 3;
        float_mask |= cfg["mask"] == "float";
        bool_mask |= cfg["mask"] == "bool";
        odd |= gq % 2 == 1 && gk % 2 == 1 && gq != gk;
    }
    CHECK(identity);
    CHECK(resize_up);
    CHECK(resize_down);
    CHECK(batch);
    CHECK(float_mask);
    CHECK(bool_mask);
    CHECK(odd);
}
