// The two models on their own grids (data/fixtures/models/, written by tests/reference/make_fixtures.py from the
// torch.nn modules of tests/reference/resamplers.py): Qwen-VL's adapter on non-square key grids and MiniCPM-V
// 2.5 / 2.6's resampler on batches of images of different grids, padded with a key padding mask. Every recorded
// intermediate of the readable path against PyTorch's, the fast path's output, and the padding's independence.
#include <algorithm>
#include <random>

#include <xtensor/xview.hpp>

#include "fast/adapter.hpp"
#include "fast/backward.hpp"
#include "golden.hpp"
#include "stages/02_sincos.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"
#include "stages/10_training.hpp"
#include "stages/11_minicpmv.hpp"

using namespace qwenvl;
using qwenvl_test::check_gradient;
using qwenvl_test::check_stage;

namespace {
const std::vector<Fixture>& model_fixtures() {
    static const std::vector<Fixture> loaded = [] {
        std::vector<Fixture> all;
        for (const auto& path : qwenvl_test::fixture_paths(QWENVL_DATA_DIR "/fixtures/models")) all.push_back(load_fixture(path));
        REQUIRE(all.size() >= 5);
        return all;
    }();
    return loaded;
}

bool is_minicpmv(const Fixture& f) { return f.config.model == Model::minicpm_v; }

// The readable path on a fixture's weights and x: the model's forward pass, then the tail (stage 08).
Tensor3 readable_forward(const Fixture& f, const Tensor3& x, Trace* trace) {
    const Tensor3 out = is_minicpmv(f) ? minicpmv_forward(f.weights, f.config, x, f.grids, f.max_grid, trace)
                                       : adapter_forward(f.weights, f.config, x, f.grids.at(0), nullptr, trace);
    return tower_tail_forward(f.tail, out, f.config.eps, trace);
}
}  // namespace

TEST_CASE("models: the fixtures hold both models, non-square grids and mixed sizes", "[models]") {
    std::size_t qwen_non_square = 0, minicpmv_mixed = 0, minicpmv_grown = 0;
    for (const auto& f : model_fixtures()) {
        const Grid g = f.grids.at(0);
        if (!is_minicpmv(f) && g.h != g.w) ++qwen_non_square;
        if (is_minicpmv(f)) {
            bool mixed = false, grown = false;
            for (const Grid& other : f.grids) mixed |= other.cells() != f.x.shape(1);
            for (const Grid& other : f.grids) grown |= other.h > f.max_grid.h || other.w > f.max_grid.w;
            minicpmv_mixed += mixed;
            minicpmv_grown += grown;
        }
    }
    CHECK(qwen_non_square >= 2);
    CHECK(minicpmv_mixed >= 2);
    CHECK(minicpmv_grown >= 1);
}

TEST_CASE("models, readable: every intermediate equals PyTorch's", "[models][readable]") {
    for (const auto& f : model_fixtures()) {
        DYNAMIC_SECTION(f.name) {
            Trace trace;
            readable_forward(f, f.x, &trace);
            CHECK(trace.names() == f.expected.names());  // the same stages, in the same order
            for (const auto& name : f.expected.names()) check_stage(f, name, trace.get(name));
        }
    }
}

TEST_CASE("models, fast: every intermediate equals PyTorch's, traced or not, with the same output", "[models][fast]") {
    for (const auto& f : model_fixtures()) {
        DYNAMIC_SECTION(f.name) {
            const fast::Weights w(f.weights);
            Tensor3 out, untraced;
            Trace trace;  // the fast path records the readable path's names, in its order and its shapes
            if (is_minicpmv(f)) {
                out = fast::minicpmv_forward(w, f.config, f.x, f.grids, &trace);
                untraced = fast::minicpmv_forward(w, f.config, f.x, f.grids);
            } else {
                const fast::QuerySide side = fast::prepare_query_side(w, f.config, f.x.shape(1), &trace, f.grids.at(0));
                out = fast::adapter_forward(w, f.config, side, f.x, nullptr, &trace);
                untraced = fast::adapter_forward(w, f.config, side, f.x);
            }
            const Tensor3 y = fast::tower_tail_forward(fast::TailWeights(f.tail), out, f.config.eps, &trace);
            CHECK(trace.names() == f.expected.names());
            for (const auto& name : trace.names()) check_stage(f, name, trace.get(name));
            check_stage(f, "proj", y);
            // the trace's padded run (MiniCPM-V) sums the same terms as the untraced one: the padded weights are 0
            CHECK(xt::amax(xt::abs(out - untraced))() <= 1e-6f * std::max(1.0f, xt::amax(xt::abs(untraced))()));
        }
    }
}

TEST_CASE("models: MiniCPM-V's padding never reaches the output, whatever it holds", "[models][padding]") {
    std::mt19937 rng(7);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    for (const auto& f : model_fixtures()) {
        if (!is_minicpmv(f)) continue;
        DYNAMIC_SECTION(f.name) {
            const Tensor3 y = readable_forward(f, f.x, nullptr);
            for (const float scale : {0.0f, 1e4f}) {  // zeros, then large noise
                Tensor3 padded = f.x;
                std::size_t changed = 0;
                for (std::size_t n = 0; n < f.grids.size(); ++n)
                    for (std::size_t l = f.grids[n].cells(); l < padded.shape(1); ++l)
                        for (std::size_t c = 0; c < padded.shape(2); ++c, ++changed) padded(n, l, c) = scale * noise(rng);
                const Tensor3 y_padded = readable_forward(f, padded, nullptr);
                INFO("padding scaled by " << scale << ", " << changed << " values changed");
                const bool same = y_padded == y;  // bit for bit: a padded key's weight is exactly 0
                CHECK(same);
                check_stage(f, "proj", y_padded);
            }
        }
    }
}

TEST_CASE("models: MiniCPM-V's key table is a slice of a larger table, grown when an image exceeds it", "[models][sincos]") {
    const std::vector<Grid> grids{{2, 5}, {4, 2}};
    const Grid big = table_grid(Grid{3, 3}, grids);
    CHECK(big.h == 4);
    CHECK(big.w == 5);
    const Matrix table = sincos_2d(16, big);
    for (const Grid& g : grids) {
        const bool same = slice_table(table, big, g) == sincos_2d(16, g);
        CHECK(same);
    }
    // a slice by rows and columns, not the table's first h*w rows (a reshape mistake)
    const bool first_rows = Matrix(xt::view(table, xt::range(0, 8))) == sincos_2d(16, Grid{4, 2});
    CHECK_FALSE(first_rows);
}

TEST_CASE("models: MiniCPM-V's forward pass refuses a grid larger than the batch's keys and Qwen-VL's weights", "[models]") {
    for (const auto& f : model_fixtures()) {
        if (!is_minicpmv(f)) continue;
        std::vector<Grid> too_big = f.grids;
        too_big[0] = Grid{f.x.shape(1), 2};
        CHECK_THROWS_WITH(minicpmv_forward(f.weights, f.config, f.x, too_big), Catch::Contains("does not fit"));
        AdapterConfig qwen = f.config;
        qwen.model = Model::qwen_vl;
        CHECK_THROWS_WITH(minicpmv_forward(f.weights, qwen, f.x, f.grids), Catch::Contains("Qwen-VL's weights"));
        break;
    }
}

TEST_CASE("models: the backward equals autograd on both models' fixtures, every intermediate's gradient, x's and every "
          "parameter's, on both paths", "[models][gradients][fast]") {
    // The fixtures' gradients: autograd's of L = sum(y * G) (make_fixtures.py, resamplers.module_gradients, checked
    // there against autograd through the modules themselves). MiniCPM-V's backward is stage 07's on its own trace:
    // no query table (W_q reads ln_q), each image's padding keys weighted 0, so their gradients are 0.
    const bool fast_path = GENERATE(false, true);
    for (const auto& f : model_fixtures()) {
        DYNAMIC_SECTION(f.name << (fast_path ? ", fast path" : ", readable path")) {
            Trace forward, backward;
            Tensor3 out;
            TailGradients tail;
            AdapterGradients g;
            const Tensor3& G = f.gradients.get("proj");
            if (fast_path) {
                const fast::Weights w(f.weights);
                if (is_minicpmv(f)) {
                    out = fast::minicpmv_forward(w, f.config, f.x, f.grids, &forward);
                } else {
                    const fast::QuerySide side = fast::prepare_query_side(w, f.config, f.x.shape(1), &forward, f.grids.at(0));
                    out = fast::adapter_forward(w, f.config, side, f.x, nullptr, &forward);
                }
                tail = fast::tower_tail_backward(fast::TailWeights(f.tail), out, G, f.config.eps, &backward);
                g = fast::adapter_backward(w, f.config, f.x, forward, tail.d_out, &backward);
            } else {
                out = is_minicpmv(f) ? minicpmv_forward(f.weights, f.config, f.x, f.grids, f.max_grid, &forward)
                                     : adapter_forward(f.weights, f.config, f.x, f.grids.at(0), nullptr, &forward);
                tail = tower_tail_backward(f.tail, out, G, f.config.eps, &backward);
                g = adapter_backward(f.weights, f.config, f.x, forward, tail.d_out, &backward);
            }
            // every gradient the fixture holds but G itself, and no other
            std::vector<std::string> expected;
            for (const auto& name : f.gradients.names())
                if (name != "proj") expected.push_back(name);
            std::vector<std::string> got = backward.names();
            std::sort(expected.begin(), expected.end());
            std::sort(got.begin(), got.end());
            CHECK(got == expected);
            CHECK(backward.names().size() == (is_minicpmv(f) ? 13u : 14u));  // MiniCPM-V: no query_in
            for (const auto& name : backward.names()) check_gradient(f, name, backward.get(name), f.gradients.get(name));
            // parameters by the fixture's checkpoint names (MiniCPM-V's resampler.*, Qwen-VL's attn_pool.*)
            for (const auto& [name, value] : named_gradients(g, tail)) {
                const std::string stored = !is_minicpmv(f) ? name
                                           : "resampler." + (name.rfind("attn_pool.", 0) == 0 ? name.substr(10) : name);
                check_gradient(f, stored, value, f.param_gradients.get(stored));
            }
            CHECK(named_gradients(g, tail).size() == f.param_gradients.names().size());
        }
    }
}
