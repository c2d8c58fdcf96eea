// Golden tests: every stage of every fixture against the values PyTorch wrote (tests/reference/make_fixtures.py),
// on both paths: the readable stages (src/stages/) and the fast path (src/fast/). Each stage is fed PyTorch's own
// value of the stage before it, so a failure points at one function, and each test calls the function that the
// path's forward pass calls. The last tests run both whole forward passes and check every recorded intermediate.
#include <xtensor/xview.hpp>

#include "fast/adapter.hpp"
#include "fast/attention.hpp"
#include "fast/gemm.hpp"
#include "fast/layernorm.hpp"
#include "fast/resize.hpp"
#include "fast/sincos.hpp"
#include "golden.hpp"
#include "stages/02_sincos.hpp"
#include "stages/03_resize.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/05_projections.hpp"
#include "stages/06_attention.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"

using namespace qwenvl;
using qwenvl_test::check_stage;
using qwenvl_test::fixtures;

namespace {
// Item n of PyTorch's (N, ...) value of a stage, as a matrix.
Matrix item(const Fixture& f, const std::string& stage, std::size_t n) { return xt::view(f.expect(stage), n); }

// Fills a (N, ...) tensor of a stage from one (...) result per image, for comparison with PyTorch's.
template <class PerImage>
xt::xarray<float> per_image(const Fixture& f, PerImage compute) {
    Trace stacked;
    const std::size_t N = f.x.shape(0);
    for (std::size_t n = 0; n < N; ++n) stacked.record_item("s", n, N, compute(n));
    return stacked.get("s");
}
}  // namespace

// --- 02 and 03: the position tables (the fast path's own, fast/sincos and fast/resize, compute the same sums in
// the same order) ---

TEST_CASE("golden: sincos_2d equals numpy's table (pos_q), on both paths", "[golden][sincos]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const Matrix readable = sincos_2d(f.config.embed_dim, f.config.grid_q);
            check_stage(f, "pos_q", readable);
            const Matrix fast = fast::sincos_2d(f.config.embed_dim, Grid{f.config.grid_q, f.config.grid_q});
            check_stage(f, "pos_q", fast);
            CHECK(bool(fast == readable));
        }
    }
}

TEST_CASE("golden: key_position_table equals F.interpolate bicubic (pos_k)", "[golden][resize]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const Matrix readable = key_position_table(Matrix(f.expect("pos_q")), f.x.shape(1));
            check_stage(f, "pos_k", readable);
            const std::size_t side = grid_side(f.x.shape(1), "L");
            const Matrix fast = fast::key_position_table(Matrix(f.expect("pos_q")), Grid{side, side});
            check_stage(f, "pos_k", fast);
            CHECK(bool(fast == readable));  // the same sums in the same order
        }
    }
}

// --- 04 and 05: LayerNorm and the projections, readable ---

TEST_CASE("golden, readable: layer_norm equals nn.LayerNorm (ln_kv, ln_q)", "[golden][readable][layernorm]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const auto& w = f.weights;
            check_stage(f, "ln_kv", per_image(f, [&](std::size_t n) {
                            return layer_norm(item(f, "kv_proj", n), w.ln_kv_weight, w.ln_kv_bias, f.config.eps);
                        }));
            check_stage(f, "ln_q", layer_norm(w.query, w.ln_q_weight, w.ln_q_bias, f.config.eps));
        }
    }
}

TEST_CASE("golden, readable: kv_projection equals kv_proj (Linear without bias, or Identity)", "[golden][readable][linear]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            check_stage(f, "kv_proj", per_image(f, [&](std::size_t n) {
                            return kv_projection(Matrix(xt::view(f.x, n)), f.weights.kv_proj);
                        }));
        }
    }
}

TEST_CASE("golden, readable: linear equals in_proj's rows and out_proj (q, k, v, out)", "[golden][readable][linear]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const auto& w = f.weights;
            const auto& p = w.in_proj;
            check_stage(f, "q", linear(Matrix(f.expect("query_in")), p.w_q, p.b_q));
            check_stage(f, "k", per_image(f, [&](std::size_t n) { return linear(item(f, "key_in", n), p.w_k, p.b_k); }));
            check_stage(f, "v", per_image(f, [&](std::size_t n) { return linear(item(f, "ln_kv", n), p.w_v, p.b_v); }));
            check_stage(f, "out", per_image(f, [&](std::size_t n) {
                            return linear(item(f, "attended", n), w.out_proj_weight, w.out_proj_bias);
                        }));
        }
    }
}

// --- 04 and 05, fast ---

TEST_CASE("golden, fast: layer_norm_in_place equals nn.LayerNorm (ln_kv)", "[golden][fast][layernorm]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            Tensor3 x = f.expect("kv_proj");
            fast::layer_norm_in_place(x, f.weights.ln_kv_weight, f.weights.ln_kv_bias, f.config.eps);
            check_stage(f, "ln_kv", x);
            check_stage(f, "ln_kv", per_image(f, [&](std::size_t n) {  // the Matrix overload adapter_forward calls
                            Matrix X = item(f, "kv_proj", n);
                            fast::layer_norm_in_place(X, f.weights.ln_kv_weight, f.weights.ln_kv_bias, f.config.eps);
                            return X;
                        }));
        }
    }
}

TEST_CASE("golden, fast: kv_projection on an image read in place equals kv_proj", "[golden][fast][linear]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const std::size_t L = f.x.shape(1), Kv = f.x.shape(2);
            check_stage(f, "kv_proj", per_image(f, [&](std::size_t n) {
                            return fast::kv_projection(fast::Block{f.x.data() + n * L * Kv, L, Kv, Kv}, f.weights.kv_proj);
                        }));
        }
    }
}

TEST_CASE("golden, fast: linear equals in_proj's key and value rows and out_proj (k, v, out)", "[golden][fast][linear]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const auto& w = f.weights;
            const auto& p = w.in_proj;
            check_stage(f, "k", per_image(f, [&](std::size_t n) { return fast::linear(item(f, "key_in", n), p.w_k, p.b_k); }));
            check_stage(f, "v", per_image(f, [&](std::size_t n) { return fast::linear(item(f, "ln_kv", n), p.w_v, p.b_v); }));
            check_stage(f, "out", fast::linear(Tensor3(f.expect("attended")), w.out_proj_weight, w.out_proj_bias));
        }
    }
}

TEST_CASE("golden, fast: prepare_query_side equals the query side (pos_q, pos_k, ln_q, query_in, q)", "[golden][fast]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            Trace trace;
            const fast::QuerySide side = fast::prepare_query_side(f.weights, f.config, f.x.shape(1), &trace);
            for (const char* stage : {"pos_q", "pos_k", "ln_q", "query_in", "q"}) check_stage(f, stage, trace.get(stage));
            check_stage(f, "q", side.q);
            check_stage(f, "pos_k", side.pos_k);
        }
    }
}

// --- 06: attention, on both paths ---

TEST_CASE("golden: multi_head_attention equals MultiheadAttention's inside (scores, attn_weights, attended)",
          "[golden][readable][fast][attention]") {
    for (const auto& f : fixtures()) {
        const Matrix q = f.expect("q");
        const Matrix* mask = f.has_mask ? &f.mask : nullptr;
        const std::size_t H = f.config.num_heads;
        auto check_all = [&](auto attend) {
            const std::size_t N = f.x.shape(0);
            Trace got;
            for (std::size_t n = 0; n < N; ++n) {
                const AttentionOutput a = attend(item(f, "k", n), item(f, "v", n));
                got.record_item("scores", n, N, a.scores);
                got.record_item("attn_weights", n, N, a.weights);
                got.record_item("attended", n, N, a.attended);
            }
            for (const char* stage : {"scores", "attn_weights", "attended"}) check_stage(f, stage, got.get(stage));
        };
        DYNAMIC_SECTION("readable, " << f.name) {
            check_all([&](const Matrix& k, const Matrix& v) { return multi_head_attention(q, k, v, H, mask); });
        }
        DYNAMIC_SECTION("fast, " << f.name) {
            check_all([&](const Matrix& k, const Matrix& v) {
                return fast::multi_head_attention(q, fast::whole(k), fast::whole(v), H, mask, true);
            });
        }
    }
}

// --- 08: the tower's tail, on both paths ---

TEST_CASE("golden: tower_tail_forward equals ln_post then @ proj", "[golden][readable][fast][tail]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            Trace readable, fast;
            check_stage(f, "proj", tower_tail_forward(f.tail, Tensor3(f.expect("out")), f.config.eps, &readable));
            check_stage(f, "proj", fast::tower_tail_forward(f.tail, Tensor3(f.expect("out")), f.config.eps, &fast));
            check_stage(f, "ln_post", readable.get("ln_post"));
            check_stage(f, "ln_post", fast.get("ln_post"));
        }
    }
}

// --- 07: the whole forward pass, on both paths ---

namespace {
// Runs one path's whole forward pass on a fixture and checks every intermediate it records, and that it records
// exactly the fixture's stages in the order the readable path computes them.
template <class Forward>
void check_forward(const Fixture& f, Forward forward) {
    Trace trace;
    const Tensor3 y = forward(trace);
    const std::vector<std::string> order = {"pos_q", "pos_k", "ln_q", "query_in", "q", "kv_proj", "ln_kv", "key_in",
                                            "k", "v", "scores", "attn_weights", "attended", "out", "ln_post", "proj"};
    CHECK(trace.names() == order);
    CHECK(f.expected.names().size() == order.size());
    for (const auto& name : trace.names()) check_stage(f, name, trace.get(name));
    check_stage(f, "proj", y);
}
}  // namespace

TEST_CASE("golden: the whole forward pass, every recorded intermediate, on both paths", "[golden][readable][fast][adapter]") {
    for (const auto& f : fixtures()) {
        const Matrix* mask = f.has_mask ? &f.mask : nullptr;
        const AdapterConfig& c = f.config;
        DYNAMIC_SECTION("readable, " << f.name) {
            check_forward(f, [&](Trace& t) {
                return tower_tail_forward(f.tail, adapter_forward(f.weights, c, f.x, mask, &t), c.eps, &t);
            });
        }
        DYNAMIC_SECTION("fast, " << f.name) {
            check_forward(f, [&](Trace& t) {
                const fast::QuerySide side = fast::prepare_query_side(f.weights, c, f.x.shape(1), &t);
                return fast::tower_tail_forward(f.tail, fast::adapter_forward(f.weights, c, side, f.x, mask, &t), c.eps, &t);
            });
        }
        DYNAMIC_SECTION("fast, the query side and the features spent by the call (run's way), " << f.name) {
            check_forward(f, [&](Trace& t) {
                fast::QuerySide side = fast::prepare_query_side(f.weights, c, f.x.shape(1), &t);
                Tensor3 x = f.x;
                return fast::tower_tail_forward(
                    f.tail, fast::adapter_forward(f.weights, c, std::move(side), std::move(x), mask, &t), c.eps, &t);
            });
        }
        DYNAMIC_SECTION("fast, with a workspace the fixtures before it used, " << f.name) {
            static fast::Workspace kept;  // static: kept from one fixture (of other sizes) to the next
            check_forward(f, [&](Trace& t) {
                const fast::QuerySide side = fast::prepare_query_side(f.weights, c, f.x.shape(1), &t);
                return fast::tower_tail_forward(f.tail, fast::adapter_forward(f.weights, c, side, f.x, mask, &t, &kept),
                                                c.eps, &t);
            });
        }
    }
}

TEST_CASE("golden, fast: a query side prepared once per set of weights serves every call", "[golden][fast][adapter]") {
    for (const auto& f : fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const fast::QuerySide side = fast::prepare_query_side(f.weights, f.config, f.x.shape(1));
            const Matrix* mask = f.has_mask ? &f.mask : nullptr;
            check_stage(f, "out", fast::adapter_forward(f.weights, f.config, side, f.x, mask));
            const Tensor3 out = fast::adapter_forward(f.weights, f.config, side, f.x, mask);
            check_stage(f, "out", out);  // reusable
            fast::Workspace kept;  // as the benchmark keeps one: the second call finds the first one's buffers
            CHECK(bool(fast::adapter_forward(f.weights, f.config, side, f.x, mask, nullptr, &kept) == out));
            CHECK(bool(fast::adapter_forward(f.weights, f.config, side, f.x, mask, nullptr, &kept) == out));  // bit for bit
            // Spending the tables and the features (run's way) gives the same bits, frees what it says it frees, and
            // leaves q as it was.
            fast::QuerySide spent = side;
            Tensor3 x = f.x;
            CHECK(bool(fast::adapter_forward(f.weights, f.config, std::move(spent), std::move(x), mask) == out));
            CHECK(x.size() == 0);
            CHECK(spent.pos_k.size() == 0);
            CHECK(bool(spent.q == side.q));
            const fast::QuerySide other = fast::prepare_query_side(f.weights, f.config, 4 * f.x.shape(1));
            CHECK_THROWS_AS(fast::adapter_forward(f.weights, f.config, other, f.x, mask), ShapeError);
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
