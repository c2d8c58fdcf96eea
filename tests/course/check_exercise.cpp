// tests/course/check_exercise.cpp: the course's checker (docs/course/README.md).
//
//   exercise-NN-name NN-name      a student's build: their src/exercises/NN_name.cpp in place of the stage's functions
//   qwenvl-exercise NN-name       the project's own stages (the solution): every check passes
//   qwenvl-exercise --list        the exercises, their files and what each checks
//
// For the exercise named, the checker first calls the student's functions on the inputs of every golden fixture
// (PyTorch's value of the stage before, as the golden tests do) and compares with PyTorch's value of the stage;
// then it runs the whole readable forward pass (and, for a backward exercise, the whole backward pass), which calls
// the student's functions where the adapter uses them, and names the first intermediate beyond tolerance. A failure
// prints the stage, the fixture, the first index outside the tolerance with the expected and the got values, and
// hints: what the error looks like (a constant factor, swapped halves, only zeros) and the stage's classic mistakes.
// Exit status 0 when everything matches, 1 when something does not, 2 for a usage error.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <xtensor/xview.hpp>

#include "core/compare.hpp"
#include "fixture_files.hpp"
#include "io/errors.hpp"
#include "io/fixture.hpp"
#include "io/npy.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/02_sincos.hpp"
#include "stages/03_resize.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/05_projections.hpp"
#include "stages/06_attention.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"
#include "stages/09_fusion.hpp"

#ifndef QWENVL_DATA_DIR
#error "QWENVL_DATA_DIR must name the data folder"
#endif

using namespace qwenvl;

namespace {

const std::string kData = QWENVL_DATA_DIR;
// Gradients: float32 arithmetic against autograd's float64 values rounded to float32 (tests/test_gradients.cpp).
constexpr double kGradAtol = 1e-5, kGradRtol = 1e-4;

// What the error looks like, when it has a shape worth naming.
std::string diagnose(const xt::xarray<float>& got, const xt::xarray<float>& want) {
    if (got.shape() != want.shape()) return "";
    bool all_zero = true, any_nan = false;
    for (float v : got) {
        all_zero = all_zero && v == 0.0f;
        any_nan = any_nan || std::isnan(v);
    }
    if (all_zero) return "every value you returned is 0: is the starter's placeholder still there?";
    if (any_nan) return "your result holds NaN: a division by zero, sqrt of a negative, or exp overflowing (inf/inf)?";
    // got = c * want for one constant c (over the entries large enough to tell)
    double ratio = 0.0;
    bool constant = true, seen = false;
    for (std::size_t i = 0; i < got.size() && constant; ++i) {
        if (std::fabs(want.flat(i)) < 1e-3) continue;
        const double r = static_cast<double>(got.flat(i)) / want.flat(i);
        if (!seen) ratio = r, seen = true;
        else constant = std::fabs(r - ratio) <= 1e-3 * std::fabs(ratio);
    }
    if (seen && constant && std::fabs(ratio - 1.0) > 1e-4) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "every value is %.6g times PyTorch's: a missing or extra scale factor", ratio);
        return buf;
    }
    // got's channel c is want's channel moved(c), for every row: a swap of blocks of channels
    auto moved_by = [&](const std::function<std::size_t(std::size_t)>& moved) {
        double err = 0.0;
        for (std::size_t r = 0; r < want.shape(0); ++r)
            for (std::size_t c = 0; c < want.shape(1); ++c) err = std::max(err, std::fabs(double(got(r, c)) - want(r, moved(c))));
        return err < 1e-5;
    };
    if (want.dimension() == 2 && want.shape(1) % 4 == 0) {
        const std::size_t E = want.shape(1), half = E / 2, quarter = E / 4;
        // the two halves swapped: the 2-D table's w and h
        if (moved_by([&](std::size_t c) { return (c + half) % E; }))
            return "your two halves of the channels are PyTorch's two halves swapped: w and h exchanged (the meshgrid "
                   "pitfall: channels [0, E/2) encode the column w)";
        // within each half, its two quarters swapped: the 1-D table's sines and cosines
        if (moved_by([&](std::size_t c) { return c / half * half + (c % half + quarter) % half; }))
            return "within each half, its two quarters are swapped: in each 1-D table your cosines come before your "
                   "sines (all the sines first, then all the cosines)";
    }
    return "";
}

// Collects the checks' results and prints them.
class Report {
public:
    Report(std::vector<std::string> hints, bool all) : hints_(std::move(hints)), shown_(all ? std::numeric_limits<std::size_t>::max() : kShown) {}

    // One comparison; prints a line, and on the first failure the detail and the hints.
    // `silent`: counted, not printed (the whole forward pass's failures after the first, in 07).
    bool check(const std::string& where, const xt::xarray<float>& got, const xt::xarray<float>& want, double atol,
               double rtol, bool silent = false) {
        const Comparison c = compare(got, want, atol, rtol);
        ++checks_;
        if (c.ok()) return true;
        fail(where + ": " + (c.same_shape ? describe(c, want)
                                          : "shape " + shape_string(shape_of(got)) + ", expected " +
                                                shape_string(shape_of(want))),
             diagnose(got, want), silent);
        return false;
    }
    // A check that is not a comparison (an expected error, an exception).
    void fail(const std::string& what, const std::string& diagnosis = "", bool silent = false) {
        ++failures_;
        if (silent || printed_ >= shown_) return;
        ++printed_;
        std::printf("  FAIL  %s\n", what.c_str());
        if (!diagnosis.empty()) std::printf("        looks like: %s\n", diagnosis.c_str());
    }
    void pass(const std::string& what) {
        std::printf("  ok    %s\n", what.c_str());
    }
    // Runs `body`, turning an exception (the student's shape error, an out-of-range trace name) into a failure.
    bool guarded(const std::string& where, const std::function<void()>& body) {
        const std::size_t before = failures_;
        try {
            body();
        } catch (const std::exception& e) {
            fail(where + ": threw " + e.what());
        }
        return failures_ == before;
    }
    std::size_t failures() const { return failures_; }
    std::size_t checks() const { return checks_; }
    void print_hints() const {
        if (failures_ > printed_) std::printf("  ... and %zu more failures (--all shows them)\n", failures_ - printed_);
        for (const auto& h : hints_) std::printf("  hint: %s\n", h.c_str());
    }

private:
    static constexpr std::size_t kShown = 4;  // failures printed, unless --all; the rest are counted
    std::vector<std::string> hints_;
    std::size_t shown_, printed_ = 0;
    std::size_t failures_ = 0, checks_ = 0;
};

const std::vector<Fixture>& fixtures() {
    static const std::vector<Fixture> loaded = [] {
        std::vector<Fixture> all;
        for (const auto& path : qwenvl_test::fixture_paths(kData + "/fixtures")) all.push_back(load_fixture(path));
        return all;
    }();
    return loaded;
}

Matrix item(const xt::xarray<float>& t, std::size_t n) { return xt::view(t, n); }
Matrix item(const xt::xarray<float>& t, std::size_t n, std::size_t h) { return xt::view(t, n, h); }

// Compares the student's per-stage result with PyTorch's, on every fixture.
// `stage` reads "NN function -> what it is compared as" ("04 layer_norm -> ln_kv, ln_q, ln_post"); a failure names
// the part before the arrow, the fixture and the rest.
void check_fixtures(Report& report, const std::string& stage,
                    const std::function<void(const Fixture&, const std::string&)>& per_fixture) {
    const std::size_t before = report.failures();
    const std::string function = stage.substr(0, stage.find(" ->"));
    for (const Fixture& f : fixtures()) {
        const std::string where = "stage " + function + ", fixture " + f.name;
        report.guarded(where, [&] { per_fixture(f, where); });
    }
    if (report.failures() == before) report.pass("stage " + stage + ", on all " + std::to_string(fixtures().size()) +
                                                 " fixtures, against PyTorch's values");
}

// The whole readable forward pass (adapter, then the tower's tail) on every fixture: every intermediate PyTorch
// wrote, in the order they are computed; the first one beyond tolerance is named. With `first_only`, only the first
// fixture's failure is printed (the others are counted): the headline of exercise 07, before its other checks.
void check_whole_forward(Report& report, bool first_only = false) {
    std::size_t before = report.failures();
    for (const Fixture& f : fixtures()) {
        const std::string where = "whole forward, fixture " + f.name;
        const bool silent = first_only && report.failures() > before;
        report.guarded(where, [&] {
            Trace trace;
            const Tensor3 out = adapter_forward(f.weights, f.config, f.x, f.has_mask ? &f.mask : nullptr, &trace);
            tower_tail_forward(f.tail, out, f.config.eps, &trace);
            for (const std::string& stage : f.expected.names()) {
                const auto recorded = trace.names();
                if (std::find(recorded.begin(), recorded.end(), stage) == recorded.end()) {
                    report.fail(where + ": the trace holds no \"" + stage + "\" (record(trace, \"" + stage + "\", ...))",
                                "", silent);
                    return;
                }
                if (!report.check(where + ", first stage beyond tolerance: " + stage, trace.get(stage),
                                  f.expect(stage), f.atol, f.rtol, silent))
                    return;  // the first one names the culprit; the later ones follow from it
            }
        });
    }
    if (report.failures() == before) report.pass("the whole forward pass (adapter, ln_post, proj) on every fixture");
}

// The whole readable backward pass from autograd's upstream gradient: every gradient PyTorch wrote.
void check_whole_backward(Report& report) {
    std::size_t before = report.failures();
    for (const Fixture& f : fixtures()) {
        const std::string where = "whole backward, fixture " + f.name;
        report.guarded(where, [&] {
            Trace forward, gradients;
            const Tensor3 out = adapter_forward(f.weights, f.config, f.x, f.has_mask ? &f.mask : nullptr, &forward);
            const TailGradients tail = tower_tail_backward(f.tail, out, f.gradients.get("proj"), f.config.eps, &gradients);
            adapter_backward(f.weights, f.config, f.x, forward, tail.d_out, &gradients);
            for (const char* stage : {"ln_post", "out", "attended", "attn_weights", "scores", "q", "k", "v",
                                             "key_in", "query_in", "ln_q", "ln_kv", "kv_proj", "x"}) {
                if (!report.check(where + ", first gradient beyond tolerance: dL/d " + stage, gradients.get(stage),
                                  f.gradients.get(stage), kGradAtol, kGradRtol))
                    return;
            }
        });
    }
    if (report.failures() == before) report.pass("the whole backward pass on every fixture, against autograd");
}

struct Exercise {
    std::string name;       // the check target's name after "check-"
    std::string stage;      // the stage it replaces, as the failure names it
    std::string page;       // the stage page
    std::string writes;     // the functions the student writes
    std::vector<std::string> hints;
    std::function<void(Report&)> check;  // the stage's own checks
    bool backward = false;               // also run the whole backward pass
    // The starter, relative to the repository: the name with underscores (tests/course/CMakeLists.txt's rule).
    std::string file() const {
        std::string f = name;
        std::replace(f.begin(), f.end(), '-', '_');
        return "src/exercises/" + f + ".cpp";
    }
};

std::vector<Exercise> exercises() {
    std::vector<Exercise> all;

    all.push_back({"01-grid-side", "01 feature input", "docs/stages/01-feature-input.md",
                   "grid_side",
                   {"int(math.sqrt(L)) is the reference's way, and it truncates: 1000 keys would silently become a "
                    "31 x 31 grid. Compute the side, then check side * side == count and throw std::invalid_argument "
                    "naming `what` when it is not.",
                    "Round the square root to the nearest integer before the check (sqrt in floating point is not exact)."},
                   [](Report& r) {
                       check_fixtures(r, "01 grid_side", [&](const Fixture& f, const std::string& where) {
                           const std::size_t L = f.x.shape(1), G = f.expect("pos_k").shape(0);
                           const std::size_t want = static_cast<std::size_t>(std::lround(std::sqrt(double(G))));
                           const std::size_t got = grid_side(L, "L");
                           if (got != want)
                               r.fail(where + ": grid_side(" + std::to_string(L) + "): got " + std::to_string(got) +
                                      ", expected " + std::to_string(want));
                       });
                       r.guarded("stage 01 grid_side on counts that are not squares", [&] {
                           for (std::size_t bad : {std::size_t(0), std::size_t(2), std::size_t(1000), std::size_t(1023),
                                                   std::size_t(1025)}) {
                               bool threw = false;
                               try {
                                   grid_side(bad, "L");
                               } catch (const std::invalid_argument&) {
                                   threw = true;
                               }
                               if (!threw)
                                   r.fail("stage 01 grid_side(" + std::to_string(bad) +
                                          ") returned instead of throwing std::invalid_argument: not a perfect square");
                           }
                           for (std::size_t side : {std::size_t(1), std::size_t(3), std::size_t(32), std::size_t(4096)}) {
                               const std::size_t got = grid_side(side * side, "L");
                               if (got != side)
                                   r.fail("stage 01 grid_side(" + std::to_string(side * side) + "): got " +
                                          std::to_string(got) + ", expected " + std::to_string(side));
                           }
                       });
                   }});

    all.push_back({"02-sincos", "02 sin-cos tables", "docs/stages/02-sincos.md",
                   "sincos_1d, sincos_2d",
                   {"numpy.meshgrid(w, h) (indexing 'xy') puts the COLUMN index w in the half the reference calls h: "
                    "channels [0, E/2) encode w, [E/2, E) encode h. Swapping them is the classic mistake.",
                    "In each 1-D table all the sines come first, then all the cosines (not interleaved sin, cos, ...).",
                    "omega_i = 10000^(-i / (D/2)) with D the 1-D table's width (E/2), not E: the exponent divides by D/2."},
                   [](Report& r) {
                       check_fixtures(r, "02 sincos_2d -> pos_q", [&](const Fixture& f, const std::string& where) {
                           r.check(where + ", pos_q", sincos_2d(f.config.embed_dim, f.config.grid_q), f.expect("pos_q"),
                                   f.atol, f.rtol);
                       });
                       // E must split into two halves of sines and cosines: a width not divisible by 4 is refused
                       r.guarded("stage 02 sincos_2d on widths not divisible by 4", [&] {
                           for (std::size_t bad : {std::size_t(6), std::size_t(10), std::size_t(2)}) {
                               bool threw = false;
                               try {
                                   sincos_2d(bad, 2);
                               } catch (const std::invalid_argument&) {
                                   threw = true;
                               }
                               if (!threw)
                                   r.fail("stage 02 sincos_2d(" + std::to_string(bad) + ", 2) returned instead of throwing "
                                          "std::invalid_argument: E must be divisible by 4");
                           }
                       });
                   }});

    all.push_back({"03-resize", "03 bicubic resize", "docs/stages/03-resize.md",
                   "source_coordinate, resize_bicubic",
                   {"align_corners=False: s = (in / out) (j + 0.5) - 0.5, which is negative near the border; "
                    "align_corners=True's s = j (in - 1) / (out - 1) is a different convention.",
                    "The left tap is floor(s), not (int)s: they differ for negative s.",
                    "Taps outside the grid are clamped to the border (index 0 or in - 1), and the weights come from "
                    "cubic_weights(s - floor(s)) with PyTorch's A = -0.75.",
                    "Resize the rows (h) and the columns (w) of the grid: row r of the table is h * G + w."},
                   [](Report& r) {
                       check_fixtures(r, "03 resize_bicubic -> pos_k", [&](const Fixture& f, const std::string& where) {
                           const std::size_t G_in = f.config.grid_q, G_out = grid_side(f.x.shape(1), "L");
                           const Matrix pos_q = f.expect("pos_q");
                           const Matrix got = G_in == G_out ? key_position_table(pos_q, f.x.shape(1))
                                                            : resize_bicubic(pos_q, G_in, G_out);
                           r.check(where + ", pos_k", got, f.expect("pos_k"), f.atol, f.rtol);
                       });
                   }});

    all.push_back({"04-layernorm", "04 LayerNorm", "docs/stages/04-layernorm.md",
                   "layer_norm",
                   {"The variance divides by E (biased, as torch.nn.LayerNorm), not E - 1 (numpy's ddof=1, "
                    "torch.var's default).",
                    "eps goes inside the square root: (x - mean) / sqrt(var + eps).",
                    "gamma multiplies, beta adds: y = x_hat * gamma + beta."},
                   [](Report& r) {
                       check_fixtures(r, "04 layer_norm -> ln_kv, ln_q, ln_post", [&](const Fixture& f, const std::string& where) {
                           const auto& w = f.weights;
                           for (std::size_t n = 0; n < f.x.shape(0); ++n) {
                               const std::string image = ", image " + std::to_string(n);
                               r.check(where + ", ln_kv" + image,
                                       layer_norm(item(f.expect("kv_proj"), n), w.ln_kv_weight, w.ln_kv_bias, f.config.eps),
                                       item(f.expect("ln_kv"), n), f.atol, f.rtol);
                               r.check(where + ", ln_post" + image,
                                       layer_norm(item(f.expect("out"), n), f.tail.ln_post_weight, f.tail.ln_post_bias,
                                                  f.config.eps),
                                       item(f.expect("ln_post"), n), f.atol, f.rtol);
                           }
                           r.check(where + ", ln_q", layer_norm(w.query, w.ln_q_weight, w.ln_q_bias, f.config.eps),
                                   f.expect("ln_q"), f.atol, f.rtol);
                       });
                   }});

    all.push_back({"05-projections", "05 projections", "docs/stages/05-projections.md",
                   "matmul, linear, kv_projection",
                   {"An nn.Linear weight is stored (out, in): y = x W^T + b, so y_ij = sum_k x_ik W_jk.",
                    "kv_proj has no bias, and an empty weight means nn.Identity (Kv == E): return x unchanged.",
                    "The tower's proj is the exception: it is used as x @ proj, a plain matmul (stage 08)."},
                   [](Report& r) {
                       check_fixtures(r, "05 matmul, linear, kv_projection -> kv_proj, q, k, v, out, proj",
                                      [&](const Fixture& f, const std::string& where) {
                           const auto& w = f.weights;
                           for (std::size_t n = 0; n < f.x.shape(0); ++n) {
                               const std::string image = ", image " + std::to_string(n);
                               r.check(where + ", kv_proj" + image, kv_projection(item(f.x, n), w.kv_proj),
                                       item(f.expect("kv_proj"), n), f.atol, f.rtol);
                               r.check(where + ", k" + image, linear(item(f.expect("key_in"), n), w.in_proj.w_k, w.in_proj.b_k),
                                       item(f.expect("k"), n), f.atol, f.rtol);
                               r.check(where + ", v" + image, linear(item(f.expect("ln_kv"), n), w.in_proj.w_v, w.in_proj.b_v),
                                       item(f.expect("v"), n), f.atol, f.rtol);
                               r.check(where + ", out" + image,
                                       linear(item(f.expect("attended"), n), w.out_proj_weight, w.out_proj_bias),
                                       item(f.expect("out"), n), f.atol, f.rtol);
                               r.check(where + ", proj" + image, matmul(item(f.expect("ln_post"), n), f.tail.proj),
                                       item(f.expect("proj"), n), f.atol, f.rtol);
                           }
                           r.check(where + ", q", linear(f.expect("query_in"), w.in_proj.w_q, w.in_proj.b_q), f.expect("q"),
                                   f.atol, f.rtol);
                       });
                   }});

    all.push_back({"06-softmax", "06 attention (softmax)", "docs/stages/06-attention.md",
                   "softmax_rows",
                   {"Softmax over each ROW (the L keys of one query), not over a column.",
                    "Add the mask first, then subtract the row's maximum before exp: exp(s - max) never overflows.",
                    "A fully masked row (every entry -inf) becomes NaN, as in PyTorch; -inf entries get weight 0."},
                   [](Report& r) {
                       check_fixtures(r, "06 softmax_rows -> attn_weights", [&](const Fixture& f, const std::string& where) {
                           const xt::xarray<float>& scores = f.expect("scores");
                           for (std::size_t n = 0; n < scores.shape(0); ++n)
                               for (std::size_t h = 0; h < scores.shape(1); ++h)
                                   r.check(where + ", attn_weights, image " + std::to_string(n) + ", head " + std::to_string(h),
                                           softmax_rows(item(scores, n, h), f.has_mask ? &f.mask : nullptr),
                                           item(f.expect("attn_weights"), n, h), f.atol, f.rtol);
                       });
                   }});

    all.push_back({"06-attention", "06 attention (multi-head)", "docs/stages/06-attention.md",
                   "multi_head_attention",
                   {"PyTorch scales q by 1 / sqrt(Dh), Dh = E / H the width of ONE head, before the product; "
                    "not 1 / sqrt(E), and not the scores by 1 / Dh. (Scaling k instead of q gives the same scores "
                    "up to rounding: not the mistake.)",
                    "Head h owns the contiguous channels [h Dh, (h + 1) Dh) of q, k and v; its output goes back to "
                    "the same channels of `attended`.",
                    "scores are recorded before the mask and the softmax; weights after (one (Q, L) matrix per head)."},
                   [](Report& r) {
                       check_fixtures(r, "06 multi_head_attention -> scores, attn_weights, attended",
                                      [&](const Fixture& f, const std::string& where) {
                           for (std::size_t n = 0; n < f.x.shape(0); ++n) {
                               const std::string image = ", image " + std::to_string(n);
                               const AttentionOutput got =
                                   multi_head_attention(f.expect("q"), item(f.expect("k"), n), item(f.expect("v"), n),
                                                        f.config.num_heads, f.has_mask ? &f.mask : nullptr);
                               const xt::xarray<float> scores = xt::view(f.expect("scores"), n);
                               const xt::xarray<float> weights = xt::view(f.expect("attn_weights"), n);
                               if (!r.check(where + ", scores" + image, got.scores, scores, f.atol, f.rtol)) continue;
                               if (!r.check(where + ", attn_weights" + image, got.weights, weights, f.atol, f.rtol)) continue;
                               r.check(where + ", attended" + image, got.attended, item(f.expect("attended"), n), f.atol,
                                       f.rtol);
                           }
                       });
                   }});

    all.push_back({"07-adapter", "07 the adapter", "docs/stages/07-adapter.md",
                   "adapter_forward",
                   {"The queries get the table P_q for their own G_q x G_q grid; the keys get it resized to the key "
                    "grid (key_position_table); the values get no position term at all.",
                    "ln_kv comes after kv_proj, and X = ln_kv(x W_kv^T) feeds both the keys and the values.",
                    "q is the same for every image: compute it once, before the loop over the batch.",
                    "Record every intermediate under its trace name (core/trace.hpp), items of the batch with "
                    "record_item."},
                   [](Report& r) {
                       check_whole_forward(r, true);  // first: the first wrong intermediate, from the trace
                       check_fixtures(r, "07 adapter_forward -> out", [&](const Fixture& f, const std::string& where) {
                           const Tensor3 out = adapter_forward(f.weights, f.config, f.x, f.has_mask ? &f.mask : nullptr);
                           r.check(where + ", out", out, f.expect("out"), f.atol, f.rtol);
                       });
                   }});

    all.push_back({"08-tower-tail", "08 the tower's tail", "docs/stages/08-tower-tail.md",
                   "tower_tail_forward",
                   {"proj is used as x @ proj (a plain matmul), NOT as an nn.Linear weight (x proj^T).",
                    "ln_post normalises each image's (Q, E) rows with the tail's own gamma and beta (eps as given).",
                    "Record ln_post and proj in the trace as (N, Q, E) tensors (record_item)."},
                   [](Report& r) {
                       check_fixtures(r, "08 tower_tail_forward -> ln_post, proj", [&](const Fixture& f, const std::string& where) {
                           Trace trace;
                           const Tensor3 y = tower_tail_forward(f.tail, f.expect("out"), f.config.eps, &trace);
                           r.check(where + ", proj", y, f.expect("proj"), f.atol, f.rtol);
                           r.check(where + ", ln_post (the trace)", trace.get("ln_post"), f.expect("ln_post"), f.atol, f.rtol);
                       });
                   }});

    all.push_back({"09-fusion", "09 fusion", "docs/stages/09-fusion.md",
                   "fuse_image_features",
                   {"The image's Q rows go strictly BETWEEN <img> (position a) and </img> (position b): rows a + 1 "
                    "to b - 1. The two special tokens keep their own embeddings.",
                    "Images fill the spans in order: span m gets image m (image_spans gives the spans).",
                    "Throw std::invalid_argument when the number of spans is not M or a span does not hold Q rows."},
                   [](Report& r) {
                       r.guarded("stage 09 fuse_image_features, data/fusion", [&] {
                           std::vector<std::int64_t> ids;
                           for (const auto& id : read_json(kData + "/fusion/ids.json")) ids.push_back(id.get<std::int64_t>());
                           const Matrix embeddings = read_npy_float(kData + "/fusion/embeddings.npy");
                           const Tensor3 features = read_npy_float(kData + "/fusion/image_features.npy");
                           const Matrix fused = fuse_image_features(ids, embeddings, features);
                           if (r.check("stage 09 fuse_image_features, data/fusion", fused,
                                       read_npy_float(kData + "/fusion/expected.npy"), 0.0, 0.0))
                               r.pass("stage 09 fuse_image_features on data/fusion, against PyTorch's torch.cat");
                           bool threw = false;
                           try {
                               fuse_image_features(ids, embeddings, Tensor3(xt::view(features, xt::range(0, 1))));
                           } catch (const std::invalid_argument&) {
                               threw = true;
                           }
                           if (!threw) r.fail("stage 09 fuse_image_features with 1 image for 2 spans returned instead of throwing");
                       });
                   }});

    all.push_back({"04-layernorm-backward", "04 LayerNorm (backward)",
                   "docs/stages/04-layernorm.md", "layer_norm_backward",
                   {"mean and var depend on every x of the row: dL/dx_c = (g_c - mean(g) - x_hat_c mean(g x_hat)) / "
                    "sqrt(var + eps), with g = dL/dy * gamma. Dropping either mean term is the classic mistake.",
                    "dL/dgamma and dL/dbeta sum over the rows: dgamma_c = sum_r dy_rc x_hat_rc, dbeta_c = sum_r dy_rc."},
                   [](Report& r) {
                       check_fixtures(r, "04 layer_norm_backward -> dL/d kv_proj, ln_kv.weight, ln_kv.bias",
                                      [&](const Fixture& f, const std::string& where) {
                           const std::size_t E = f.config.embed_dim;
                           Vector d_gamma = xt::zeros<float>({E}), d_beta = xt::zeros<float>({E});
                           for (std::size_t n = 0; n < f.x.shape(0); ++n) {
                               const LayerNormGradients g =
                                   layer_norm_backward(item(f.expect("kv_proj"), n), f.weights.ln_kv_weight,
                                                       item(f.gradients.get("ln_kv"), n), f.config.eps);
                               r.check(where + ", dL/d kv_proj, image " + std::to_string(n), g.dx,
                                       item(f.gradients.get("kv_proj"), n), kGradAtol, kGradRtol);
                               d_gamma += g.dgamma;
                               d_beta += g.dbeta;
                           }
                           r.check(where + ", dL/d ln_kv.weight", d_gamma,
                                   f.param_gradients.get("attn_pool.ln_kv.weight"), kGradAtol, kGradRtol);
                           r.check(where + ", dL/d ln_kv.bias", d_beta, f.param_gradients.get("attn_pool.ln_kv.bias"),
                                   kGradAtol, kGradRtol);
                       });
                   },
                   true});

    all.push_back({"06-softmax-backward", "06 attention (softmax backward)",
                   "docs/stages/06-attention.md", "softmax_rows_backward",
                   {"Every weight of a row depends on every score of the row: dL/ds_j = p_j (dL/dp_j - sum_i p_i dL/dp_i). "
                    "Without the sum you have the gradient of exp, not of softmax.",
                    "The sum runs over the row (one query's L keys)."},
                   [](Report& r) {
                       check_fixtures(r, "06 softmax_rows_backward -> dL/d scores", [&](const Fixture& f, const std::string& where) {
                           const xt::xarray<float>& weights = f.expect("attn_weights");
                           for (std::size_t n = 0; n < weights.shape(0); ++n)
                               for (std::size_t h = 0; h < weights.shape(1); ++h)
                                   r.check(where + ", dL/d scores, image " + std::to_string(n) + ", head " + std::to_string(h),
                                           softmax_rows_backward(item(weights, n, h), item(f.gradients.get("attn_weights"), n, h)),
                                           item(f.gradients.get("scores"), n, h), kGradAtol, kGradRtol);
                       });
                   },
                   true});

    all.push_back({"06-attention-backward", "06 attention (backward)",
                   "docs/stages/06-attention.md", "multi_head_attention_backward",
                   {"q was scaled before the product: dL/dq_h = dL/dS_h k_h / sqrt(Dh); dL/dk_h = dL/dS_h^T (q_h / sqrt(Dh)).",
                    "dL/dv_h = A_h^T dO_h and dL/dA_h = dO_h v_h^T; the softmax's backward turns dL/dA_h into dL/dS_h.",
                    "Each head writes only its own channels [h Dh, (h + 1) Dh) of dq, dk and dv."},
                   [](Report& r) {
                       check_fixtures(r, "06 multi_head_attention_backward -> dL/d q, k, v",
                                      [&](const Fixture& f, const std::string& where) {
                           const Matrix q = f.expect("q");
                           Matrix dq = xt::zeros<float>(q.shape());
                           for (std::size_t n = 0; n < f.x.shape(0); ++n) {
                               const std::string image = ", image " + std::to_string(n);
                               const AttentionGradients g = multi_head_attention_backward(
                                   q, item(f.expect("k"), n), item(f.expect("v"), n),
                                   Tensor3(xt::view(f.expect("attn_weights"), n)), item(f.gradients.get("attended"), n),
                                   f.config.num_heads);
                               r.check(where + ", dL/d v" + image, g.dv, item(f.gradients.get("v"), n), kGradAtol, kGradRtol);
                               r.check(where + ", dL/d k" + image, g.dk, item(f.gradients.get("k"), n), kGradAtol, kGradRtol);
                               dq += g.dq;
                           }
                           r.check(where + ", dL/d q (summed over the images)", dq, f.gradients.get("q"), kGradAtol, kGradRtol);
                       });
                   },
                   true});
    return all;
}

int usage() {
    std::fprintf(stderr, "usage: qwenvl-exercise NAME [--all] | --list   (docs/course/README.md; --all: every failure)\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || argc > 3 || (argc == 3 && std::string(argv[2]) != "--all")) return usage();
    const std::string name = argv[1];
    const bool all_failures = argc == 3;
    const std::vector<Exercise> all = exercises();
    if (name == "--list") {
        for (const Exercise& e : all)
            std::printf("%-24s %-40s writes %s\n", e.name.c_str(), e.file().c_str(), e.writes.c_str());
        return 0;
    }
    const Exercise* chosen = nullptr;
    for (const Exercise& e : all)
        if (e.name == name) chosen = &e;
    if (!chosen) {
        std::fprintf(stderr, "qwenvl-exercise: no exercise named '%s' (qwenvl-exercise --list names them)\n", name.c_str());
        return 2;
    }
    try {
        fixtures();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "qwenvl-exercise: %s\n", e.what());
        return 2;
    }
    const Exercise& e = *chosen;
    std::printf("exercise %s: %s (%s), stage %s (%s)\n", e.name.c_str(), e.writes.c_str(), e.file().c_str(),
                e.stage.c_str(), e.page.c_str());
    Report report(e.hints, all_failures);
    e.check(report);
    if (report.failures() == 0) {  // then the whole pass, which calls the student's functions where the adapter does
        if (e.name != "07-adapter") check_whole_forward(report);  // 07's own check is the whole forward pass
        if (e.backward) check_whole_backward(report);
    }
    if (report.failures() > 0) {
        report.print_hints();
        std::printf("exercise %s: FAILED (%zu failing checks; stage %s)\n", e.name.c_str(), report.failures(),
                    e.stage.c_str());
        return 1;
    }
    std::printf("exercise %s: PASSED (%zu checks against PyTorch's values)\n", e.name.c_str(), report.checks());
    return 0;
}
