// The fast path against the readable path on inputs nobody listed: seeded random sizes, key grids of every shape
// (square, non-square, non-square with L == Q, one cell), no mask, float masks and boolean ones, N from 1 to 5, Kv
// equal to E (the identity) or not, a stored or a computed query table, and MiniCPM-V batches with padding. Every
// intermediate the two paths record, and the output, must agree to float32 rounding (the two paths sum in other
// orders); and on the same cases, every gradient of the two backward passes. Each case prints its seed on failure;
// QWENVL_SEED=S runs the cases from seed S instead of 1.
#include <cstdlib>
#include <limits>
#include <random>
#include <string>

#include <catch2/catch.hpp>
#include <xtensor/xview.hpp>

#include "core/compare.hpp"
#include "fast/adapter.hpp"
#include "fast/backward.hpp"
#include "stages/06_attention.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"
#include "stages/10_training.hpp"
#include "stages/11_minicpmv.hpp"

using namespace qwenvl;

namespace {

unsigned first_seed() {
    const char* text = std::getenv("QWENVL_SEED");
    return text ? static_cast<unsigned>(std::strtoul(text, nullptr, 10)) : 1u;
}

// Every parameter random (biases and LayerNorms included, which upstream's initialisation leaves 0 and 1).
void randomise(AdapterWeights& w, TowerTail& tail, const AdapterConfig& c, std::mt19937& rng) {
    init_upstream(w, tail, c, rng());
    std::normal_distribution<float> normal(0.0f, 1.0f);
    NamedTensors params = trainable_parameters(w, tail);
    for (auto& [name, t] : params) {
        const float scale = name.find("ln_") != std::string::npos ? 0.5f : 1.0f / std::sqrt(static_cast<float>(c.embed_dim));
        for (float& v : t) v = (name.find(".weight") != std::string::npos && name.find("ln_") != std::string::npos ? 1.0f : 0.0f) +
                               scale * normal(rng);
    }
    set_trainable_parameters(params, w, tail);
}

Tensor3 random_features(std::size_t N, std::size_t L, std::size_t Kv, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    Tensor3 x({N, L, Kv});
    for (float& v : x) v = normal(rng);
    return x;
}

// Every name both traces hold, and the outputs, within float32 rounding of the readable path's values.
void check_agree(const Trace& readable, const Trace& fast, const Tensor3& y_readable, const Tensor3& y_fast) {
    CHECK(fast.names() == readable.names());
    for (const auto& name : readable.names()) {
        const Comparison c = compare(fast.get(name), readable.get(name), 2e-5, 2e-4);
        INFO(name << ": " << describe(c, readable.get(name)));
        CHECK(c.ok());
    }
    const Comparison c = compare(y_fast, y_readable, 2e-5, 2e-4);
    INFO("output: " << describe(c, y_readable));
    CHECK(c.ok());
}

// One random Qwen-VL case of seed `seed`, its key grid of shape `shape` (0 square, 1 non-square, 2 non-square with
// L == Q, 3 one cell), as the differential tests draw it: every size, the weights (a stored or computed query
// table, kv_proj or the identity), the features and a mask (none, float, boolean).
struct QwenCase {
    AdapterConfig c;
    Grid keys;
    std::size_t N = 0, L = 0, mask_kind = 0;
    AdapterWeights w;
    TowerTail tail;
    Tensor3 x;
    Matrix mask;
    const Matrix* m() const { return mask_kind ? &mask : nullptr; }
    std::string describe() const {
        return "E " + std::to_string(c.embed_dim) + ", H " + std::to_string(c.num_heads) + ", Kv " + std::to_string(c.kv_dim) +
               ", Q " + std::to_string(c.n_queries) + ", keys " + std::to_string(keys.h) + "x" + std::to_string(keys.w) +
               ", N " + std::to_string(N) + ", mask " + (mask_kind == 0 ? "none" : mask_kind == 1 ? "float" : "boolean");
    }
};
QwenCase qwen_case(unsigned seed, std::size_t shape) {
    std::mt19937 rng(seed);
    auto pick = [&](std::size_t lo, std::size_t hi) { return std::uniform_int_distribution<std::size_t>(lo, hi)(rng); };
    QwenCase k;
    AdapterConfig& c = k.c;
    const std::size_t heads[] = {1, 2, 3, 4};
    c.num_heads = heads[pick(0, 3)];
    c.embed_dim = 4 * c.num_heads * pick(1, 3);  // divisible by 4 and by H
    c.kv_dim = pick(0, 1) ? c.embed_dim : pick(1, 12);
    c.grid_q = pick(1, 4);
    c.n_queries = c.grid_q * c.grid_q;
    Grid& keys = k.keys;
    if (shape == 0) keys = {pick(1, 6), 0}, keys.w = keys.h;
    if (shape == 1) do keys = {pick(1, 6), pick(1, 6)}; while (keys.h == keys.w);
    if (shape == 2) {  // L == Q on a grid that is not the queries' square
        c.grid_q = 2 * pick(1, 2);
        c.n_queries = c.grid_q * c.grid_q;
        keys = {c.n_queries / 2, 2};
    }
    if (shape == 3) keys = {1, 1};
    k.N = pick(1, 5);
    k.L = keys.cells();
    randomise(k.w, k.tail, c, rng);
    if (c.kv_dim == c.embed_dim) k.w.kv_proj = Matrix();  // nn.Identity
    if (pick(0, 1)) k.w.pos_embed = Matrix(); else k.w.pos_embed = xt::view(random_features(1, c.n_queries, c.embed_dim, rng), 0);
    k.x = random_features(k.N, k.L, c.kv_dim, rng);
    k.mask_kind = pick(0, 2);
    if (k.mask_kind == 1) {  // float: anything finite added to the scores
        k.mask = xt::view(random_features(1, c.n_queries, k.L, rng), 0);
    } else if (k.mask_kind == 2) {  // boolean: -inf where masked, every query keeping one key
        xt::xtensor<bool, 2> masked = xt::zeros<bool>({c.n_queries, k.L});
        for (std::size_t r = 0; r < c.n_queries; ++r) {
            const std::size_t kept = pick(0, k.L - 1);
            for (std::size_t l = 0; l < k.L; ++l) masked(r, l) = l != kept && pick(0, 2) == 0;
        }
        k.mask = additive_mask(masked);
    }
    return k;
}

// One random MiniCPM-V batch: images of mixed grids padded to L (padding beyond the largest too), the padding's
// features 100 times larger than the rest (they must not matter), and the table's max_grid.
struct MiniCpmvCase {
    AdapterConfig c;
    std::vector<Grid> grids;
    Grid max_grid;
    std::size_t N = 0, L = 0;
    AdapterWeights w;
    TowerTail tail;
    Tensor3 x;
    std::string describe() const {
        return "E " + std::to_string(c.embed_dim) + ", H " + std::to_string(c.num_heads) + ", Kv " + std::to_string(c.kv_dim) +
               ", Q " + std::to_string(c.n_queries) + ", N " + std::to_string(N) + ", L " + std::to_string(L);
    }
};
MiniCpmvCase minicpmv_case(unsigned seed) {
    std::mt19937 rng(seed);
    auto pick = [&](std::size_t lo, std::size_t hi) { return std::uniform_int_distribution<std::size_t>(lo, hi)(rng); };
    MiniCpmvCase k;
    AdapterConfig& c = k.c;
    c.model = Model::minicpm_v;
    c.num_heads = pick(1, 3);
    c.embed_dim = 4 * c.num_heads * pick(1, 2);
    c.kv_dim = pick(0, 1) ? c.embed_dim : pick(1, 10);
    c.n_queries = pick(1, 7);  // no grid: MiniCPM-V 2.5 has 96 queries
    k.N = pick(1, 5);
    for (std::size_t n = 0; n < k.N; ++n) {
        k.grids.push_back({pick(1, 5), pick(1, 5)});
        k.L = std::max(k.L, k.grids.back().cells());
    }
    k.L += pick(0, 3);  // padding beyond the largest image too
    k.max_grid = {pick(1, 6), pick(1, 6)};  // the table upstream slices from, grown when an image exceeds it
    AdapterConfig square = c;  // init_upstream draws the same shapes
    square.model = Model::qwen_vl;
    randomise(k.w, k.tail, square, rng);
    k.w.pos_embed = Matrix();
    if (c.kv_dim == c.embed_dim) k.w.kv_proj = Matrix();
    k.x = random_features(k.N, k.L, c.kv_dim, rng);
    for (std::size_t n = 0; n < k.N; ++n)  // the padding holds anything
        for (std::size_t l = k.grids[n].cells(); l < k.L; ++l)
            for (std::size_t j = 0; j < c.kv_dim; ++j) k.x(n, l, j) = 100.0f * k.x(n, l, j);
    return k;
}

// Gradients within float32 rounding of the readable path's: elementwise, with a share of the tensor's largest value
// (a gradient's entries near 0 carry the rounding of its largest terms).
void check_gradients_agree(const Trace& readable, const Trace& fast, const NamedTensors& readable_params,
                           const NamedTensors& fast_params) {
    CHECK(fast.names() == readable.names());
    auto agree = [](const std::string& what, const xt::xarray<float>& got, const xt::xarray<float>& want) {
        const double largest = want.size() ? static_cast<double>(xt::amax(xt::abs(want))()) : 0.0;
        const Comparison c = compare(got, want, 2e-5 + 1e-5 * largest, 2e-4);
        INFO("dL/d " << what << ": " << describe(c, want));
        CHECK(c.ok());
    };
    for (const auto& name : readable.names()) agree(name, fast.get(name), readable.get(name));
    REQUIRE(fast_params.size() == readable_params.size());
    for (std::size_t i = 0; i < readable_params.size(); ++i) {
        CHECK(fast_params[i].first == readable_params[i].first);
        agree(readable_params[i].first, fast_params[i].second, readable_params[i].second);
    }
}

}  // namespace

TEST_CASE("differential: Qwen-VL's fast path equals the readable path on random sizes, key grids, masks and batches",
          "[differential][fast]") {
    const unsigned base = first_seed();
    std::size_t shapes[4] = {0, 0, 0, 0};  // square, non-square, non-square with L == Q, one cell
    std::size_t masks[3] = {0, 0, 0};      // none, float, boolean
    for (unsigned i = 0; i < 60; ++i) {
        const unsigned seed = base + i;
        const QwenCase k = qwen_case(seed, i % 4);
        ++shapes[i % 4];
        ++masks[k.mask_kind];
        INFO("seed " << seed << ": " << k.describe());
        const AdapterConfig& c = k.c;
        Trace readable, fast_trace;
        const Tensor3 y_readable = tower_tail_forward(k.tail, adapter_forward(k.w, c, k.x, k.keys, k.m(), &readable), c.eps, &readable);
        const fast::Weights fw(k.w);
        const fast::QuerySide side = fast::prepare_query_side(fw, c, k.L, &fast_trace, k.keys);
        const Tensor3 y_fast = fast::tower_tail_forward(fast::TailWeights(k.tail),
                                                        fast::adapter_forward(fw, c, side, k.x, k.m(), &fast_trace), c.eps, &fast_trace);
        check_agree(readable, fast_trace, y_readable, y_fast);
        // and without a trace, the same output bit for bit as with one
        const Tensor3 y_untraced = fast::tower_tail_forward(fast::TailWeights(k.tail), fast::adapter_forward(fw, c, side, k.x, k.m()), c.eps);
        CHECK(y_untraced == y_fast);
        // and with the query side and the features spent by the call (run's way), the same bits again
        fast::QuerySide spent = side;
        Tensor3 x = k.x;
        const Tensor3 y_spent = fast::tower_tail_forward(
            fast::TailWeights(k.tail), fast::adapter_forward(fw, c, std::move(spent), std::move(x), k.m()), c.eps);
        CHECK(y_spent == y_fast);
    }
    for (std::size_t s : shapes) CHECK(s >= 10);
    for (std::size_t k : masks) CHECK(k >= 10);
}

TEST_CASE("differential: MiniCPM-V's fast path equals the readable path on random padded batches of mixed grids",
          "[differential][fast][models]") {
    const unsigned base = first_seed();
    for (unsigned i = 0; i < 40; ++i) {
        const unsigned seed = base + 1000 + i;
        const MiniCpmvCase k = minicpmv_case(seed);
        INFO("seed " << seed << ": " << k.describe());
        const AdapterConfig& c = k.c;
        Trace readable, fast_trace;
        const Tensor3 y_readable =
            tower_tail_forward(k.tail, minicpmv_forward(k.w, c, k.x, k.grids, k.max_grid, &readable), c.eps, &readable);
        const fast::Weights fw(k.w);
        const Tensor3 y_fast = fast::tower_tail_forward(fast::TailWeights(k.tail), fast::minicpmv_forward(fw, c, k.x, k.grids, &fast_trace),
                                                        c.eps, &fast_trace);
        check_agree(readable, fast_trace, y_readable, y_fast);
        const Tensor3 y_untraced = fast::tower_tail_forward(fast::TailWeights(k.tail), fast::minicpmv_forward(fw, c, k.x, k.grids), c.eps);
        const Comparison untraced = compare(y_untraced, y_readable, 2e-5, 2e-4);
        INFO("untraced: " << describe(untraced, y_readable));
        CHECK(untraced.ok());
    }
}

TEST_CASE("differential: the fast backward equals the readable backward on random sizes, grids, masks and batches of "
          "both models", "[differential][fast][gradients]") {
    // The same random cases as the forward's tests above, and a random G = dL/dy: every gradient of the intermediates,
    // x's and every parameter's, the readable stages' (07, 08, on their own trace) against the fast path's (fast/
    // backward.hpp, on the fast forward's trace).
    // The backward passes from the two forward passes' outputs and traces, and the same G: then every gradient.
    auto both_backward = [](const auto& k, const AdapterConfig& c, const fast::Weights& fw, const Tensor3& out_r,
                            const Trace& readable_forward, const Tensor3& out_f, const Trace& fast_forward, unsigned seed) {
        std::mt19937 rng(seed);
        const Tensor3 G = random_features(k.N, c.n_queries, c.embed_dim, rng);  // dL/dy
        Trace readable_grads, fast_grads;
        const TailGradients tr = tower_tail_backward(k.tail, out_r, G, c.eps, &readable_grads);
        const NamedTensors readable = named_gradients(adapter_backward(k.w, c, k.x, readable_forward, tr.d_out, &readable_grads), tr);
        const TailGradients tf = fast::tower_tail_backward(fast::TailWeights(k.tail), out_f, G, c.eps, &fast_grads);
        const NamedTensors fast = named_gradients(fast::adapter_backward(fw, c, k.x, fast_forward, tf.d_out, &fast_grads), tf);
        check_gradients_agree(readable_grads, fast_grads, readable, fast);
    };
    const unsigned base = first_seed();
    for (unsigned i = 0; i < 50; ++i) {
        const unsigned seed = base + 2000 + i;
        Trace readable_forward, fast_forward;
        if (i % 5 == 4) {  // one case in five MiniCPM-V's
            const MiniCpmvCase k = minicpmv_case(seed);
            INFO("MiniCPM-V, seed " << seed << ": " << k.describe());
            const fast::Weights fw(k.w);
            const Tensor3 out_r = minicpmv_forward(k.w, k.c, k.x, k.grids, k.max_grid, &readable_forward);
            const Tensor3 out_f = fast::minicpmv_forward(fw, k.c, k.x, k.grids, &fast_forward);
            both_backward(k, k.c, fw, out_r, readable_forward, out_f, fast_forward, seed);
        } else {
            const QwenCase k = qwen_case(seed, i % 4);
            INFO("Qwen-VL, seed " << seed << ": " << k.describe());
            const fast::Weights fw(k.w);
            const Tensor3 out_r = adapter_forward(k.w, k.c, k.x, k.keys, k.m(), &readable_forward);
            const fast::QuerySide side = fast::prepare_query_side(fw, k.c, k.L, &fast_forward, k.keys);
            const Tensor3 out_f = fast::adapter_forward(fw, k.c, side, k.x, k.m(), &fast_forward);
            both_backward(k, k.c, fw, out_r, readable_forward, out_f, fast_forward, seed);
        }
    }
}
