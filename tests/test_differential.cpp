// The fast path against the readable path on inputs nobody listed: seeded random sizes, key grids of every shape
// (square, non-square, non-square with L == Q, one cell), no mask, float masks and boolean ones, N from 1 to 5, Kv
// equal to E (the identity) or not, a stored or a computed query table, and MiniCPM-V batches with padding. Every
// intermediate the two paths record, and the output, must agree to float32 rounding (the two paths sum in other
// orders). Each case prints its seed on failure; QWENVL_SEED=S runs the cases from seed S instead of 1.
#include <cstdlib>
#include <limits>
#include <random>
#include <string>

#include <catch2/catch.hpp>
#include <xtensor/xview.hpp>

#include "core/compare.hpp"
#include "fast/adapter.hpp"
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

}  // namespace

TEST_CASE("differential: Qwen-VL's fast path equals the readable path on random sizes, key grids, masks and batches",
          "[differential][fast]") {
    const unsigned base = first_seed();
    std::size_t shapes[4] = {0, 0, 0, 0};  // square, non-square, non-square with L == Q, one cell
    std::size_t masks[3] = {0, 0, 0};      // none, float, boolean
    for (unsigned i = 0; i < 60; ++i) {
        const unsigned seed = base + i;
        std::mt19937 rng(seed);
        auto pick = [&](std::size_t lo, std::size_t hi) { return std::uniform_int_distribution<std::size_t>(lo, hi)(rng); };
        AdapterConfig c;
        const std::size_t heads[] = {1, 2, 3, 4};
        c.num_heads = heads[pick(0, 3)];
        c.embed_dim = 4 * c.num_heads * pick(1, 3);  // divisible by 4 and by H
        c.kv_dim = pick(0, 1) ? c.embed_dim : pick(1, 12);
        c.grid_q = pick(1, 4);
        c.n_queries = c.grid_q * c.grid_q;
        Grid keys;
        const std::size_t shape = i % 4;
        if (shape == 0) keys = {pick(1, 6), 0}, keys.w = keys.h;
        if (shape == 1) do keys = {pick(1, 6), pick(1, 6)}; while (keys.h == keys.w);
        if (shape == 2) {  // L == Q on a grid that is not the queries' square
            c.grid_q = 2 * pick(1, 2);
            c.n_queries = c.grid_q * c.grid_q;
            keys = {c.n_queries / 2, 2};
        }
        if (shape == 3) keys = {1, 1};
        ++shapes[shape];
        const std::size_t N = pick(1, 5), L = keys.cells();
        INFO("seed " << seed << ": E " << c.embed_dim << ", H " << c.num_heads << ", Kv " << c.kv_dim << ", Q "
                     << c.n_queries << ", keys " << keys.h << "x" << keys.w << ", N " << N);
        AdapterWeights w;
        TowerTail tail;
        randomise(w, tail, c, rng);
        if (c.kv_dim == c.embed_dim) w.kv_proj = Matrix();  // nn.Identity
        if (pick(0, 1)) w.pos_embed = Matrix(); else w.pos_embed = xt::view(random_features(1, c.n_queries, c.embed_dim, rng), 0);
        const Tensor3 x = random_features(N, L, c.kv_dim, rng);
        const std::size_t mask_kind = pick(0, 2);
        ++masks[mask_kind];
        Matrix mask;
        if (mask_kind == 1) {  // float: anything finite added to the scores
            mask = xt::view(random_features(1, c.n_queries, L, rng), 0);
        } else if (mask_kind == 2) {  // boolean: -inf where masked, every query keeping one key
            xt::xtensor<bool, 2> masked = xt::zeros<bool>({c.n_queries, L});
            for (std::size_t r = 0; r < c.n_queries; ++r) {
                const std::size_t kept = pick(0, L - 1);
                for (std::size_t l = 0; l < L; ++l) masked(r, l) = l != kept && pick(0, 2) == 0;
            }
            mask = additive_mask(masked);
        }
        const Matrix* m = mask_kind ? &mask : nullptr;
        INFO("mask " << (mask_kind == 0 ? "none" : mask_kind == 1 ? "float" : "boolean"));

        Trace readable, fast_trace;
        const Tensor3 y_readable = tower_tail_forward(tail, adapter_forward(w, c, x, keys, m, &readable), c.eps, &readable);
        const fast::Weights fw(w);
        const fast::QuerySide side = fast::prepare_query_side(fw, c, L, &fast_trace, keys);
        const Tensor3 y_fast = fast::tower_tail_forward(fast::TailWeights(tail),
                                                        fast::adapter_forward(fw, c, side, x, m, &fast_trace), c.eps, &fast_trace);
        check_agree(readable, fast_trace, y_readable, y_fast);
        // and without a trace, the same output bit for bit as with one
        const Tensor3 y_untraced = fast::tower_tail_forward(fast::TailWeights(tail), fast::adapter_forward(fw, c, side, x, m), c.eps);
        CHECK(y_untraced == y_fast);
    }
    for (std::size_t s : shapes) CHECK(s >= 10);
    for (std::size_t k : masks) CHECK(k >= 10);
}

TEST_CASE("differential: MiniCPM-V's fast path equals the readable path on random padded batches of mixed grids",
          "[differential][fast][models]") {
    const unsigned base = first_seed();
    for (unsigned i = 0; i < 40; ++i) {
        const unsigned seed = base + 1000 + i;
        std::mt19937 rng(seed);
        auto pick = [&](std::size_t lo, std::size_t hi) { return std::uniform_int_distribution<std::size_t>(lo, hi)(rng); };
        AdapterConfig c;
        c.model = Model::minicpm_v;
        c.num_heads = pick(1, 3);
        c.embed_dim = 4 * c.num_heads * pick(1, 2);
        c.kv_dim = pick(0, 1) ? c.embed_dim : pick(1, 10);
        c.n_queries = pick(1, 7);  // no grid: MiniCPM-V 2.5 has 96 queries
        const std::size_t N = pick(1, 5);
        std::vector<Grid> grids;
        std::size_t L = 0;
        for (std::size_t n = 0; n < N; ++n) {
            grids.push_back({pick(1, 5), pick(1, 5)});
            L = std::max(L, grids.back().cells());
        }
        L += pick(0, 3);  // padding beyond the largest image too
        const Grid max_grid = {pick(1, 6), pick(1, 6)};  // the table upstream slices from, grown when an image exceeds it
        INFO("seed " << seed << ": E " << c.embed_dim << ", H " << c.num_heads << ", Kv " << c.kv_dim << ", Q "
                     << c.n_queries << ", N " << N << ", L " << L);
        AdapterWeights w;
        TowerTail tail;
        AdapterConfig square = c;  // init_upstream draws the same shapes
        square.model = Model::qwen_vl;
        randomise(w, tail, square, rng);
        w.pos_embed = Matrix();
        if (c.kv_dim == c.embed_dim) w.kv_proj = Matrix();
        Tensor3 x = random_features(N, L, c.kv_dim, rng);
        for (std::size_t n = 0; n < N; ++n)  // the padding holds anything
            for (std::size_t l = grids[n].cells(); l < L; ++l)
                for (std::size_t k = 0; k < c.kv_dim; ++k) x(n, l, k) = 100.0f * x(n, l, k);

        Trace readable, fast_trace;
        const Tensor3 y_readable =
            tower_tail_forward(tail, minicpmv_forward(w, c, x, grids, max_grid, &readable), c.eps, &readable);
        const fast::Weights fw(w);
        const Tensor3 y_fast = fast::tower_tail_forward(fast::TailWeights(tail), fast::minicpmv_forward(fw, c, x, grids, &fast_trace),
                                                        c.eps, &fast_trace);
        check_agree(readable, fast_trace, y_readable, y_fast);
        const Tensor3 y_untraced = fast::tower_tail_forward(fast::TailWeights(tail), fast::minicpmv_forward(fw, c, x, grids), c.eps);
        const Comparison untraced = compare(y_untraced, y_readable, 2e-5, 2e-4);
        INFO("untraced: " << describe(untraced, y_readable));
        CHECK(untraced.ok());
    }
}
