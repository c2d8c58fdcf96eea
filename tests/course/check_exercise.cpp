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
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
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
#include "stages/10_training.hpp"
#include "stages/11_minicpmv.hpp"

#ifndef QWENVL_DATA_DIR
#error "QWENVL_DATA_DIR must name the data folder"
#endif
#ifndef QWENVL_SOURCE_DIR
#error "QWENVL_SOURCE_DIR must name the repository"
#endif

using namespace qwenvl;

namespace {

const std::string kData = QWENVL_DATA_DIR;
const std::string kSource = QWENVL_SOURCE_DIR;
// Where an answers exercise (port-N, 10-query-count) reads from, when not its file in src/exercises/ and
// build/query-count/ (--answers FILE, --runs DIR: the course's own tests).
std::string answers_override, runs_override;
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
    // a mask (every value 0 or 1) the other way round
    bool inverted = true;
    for (std::size_t i = 0; i < got.size() && inverted; ++i)
        inverted = (want.flat(i) == 0.0f || want.flat(i) == 1.0f) && got.flat(i) == 1.0f - want.flat(i);
    if (inverted) return "your mask is PyTorch's inverted: true must mark what is masked (the padding), false what is kept";
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
        char buf[240];
        // sqrt((n - 1) / n) for rows of n values: a variance divided by n - 1 where PyTorch divides by n
        const std::size_t n = want.dimension() ? want.shape(want.dimension() - 1) : 0;
        if (n > 1 && std::fabs(ratio - std::sqrt(double(n - 1) / double(n))) <= 1e-4)
            std::snprintf(buf, sizeof buf, "every value is %.6g times PyTorch's, sqrt(%zu/%zu) for rows of %zu values: "
                          "the variance divided by n - 1 (unbiased) where LayerNorm divides by n", ratio, n - 1, n, n);
        else
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
    // most rows that differ are PyTorch's rows one place later or earlier (the ends of a block aside): off by one
    if (want.dimension() == 2 && want.shape(0) > 2) {
        for (int shift : {1, -1}) {
            std::size_t differing = 0, matching = 0;
            for (std::size_t r = 0; r < want.shape(0); ++r) {
                bool same = true;
                for (std::size_t c = 0; c < want.shape(1) && same; ++c) same = got(r, c) == want(r, c);
                if (same) continue;
                ++differing;
                const long from = static_cast<long>(r) + shift;
                bool shifted = from >= 0 && from < static_cast<long>(want.shape(0));
                for (std::size_t c = 0; c < want.shape(1) && shifted; ++c) shifted = got(r, c) == want(from, c);
                matching += shifted;
            }
            if (differing >= 2 && matching * 5 >= differing * 4)
                return shift == 1 ? "each row that differs holds PyTorch's next row: your rows are one place early"
                                  : "each row that differs holds PyTorch's previous row: your rows are one place late";
        }
    }
    // a square matrix the other way round: got = want^T (a weight's gradient as (in, out), x W where x W^T is meant)
    if (want.dimension() == 2 && want.shape(0) == want.shape(1) && want.shape(0) > 1) {
        double err = 0.0, scale = 0.0;
        for (std::size_t i = 0; i < want.shape(0); ++i)
            for (std::size_t j = 0; j < want.shape(1); ++j) {
                err = std::max(err, std::fabs(double(got(i, j)) - want(j, i)));
                scale = std::max(scale, std::fabs(double(want(i, j))));
            }
        if (err <= 1e-5 * std::max(1.0, scale))
            return "your matrix is PyTorch's transposed: (in, out) where (out, in) is meant, or the other way round";
    }
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
    // `looks_like`: the exercise's own diagnosis, when the general one (diagnose) finds nothing.
    bool check(const std::string& where, const xt::xarray<float>& got, const xt::xarray<float>& want, double atol,
               double rtol, bool silent = false,
               const std::function<std::string()>& looks_like = nullptr) {
        const Comparison c = compare(got, want, atol, rtol);
        ++checks_;
        if (c.ok()) return true;
        std::string diagnosis = diagnose(got, want);
        if (diagnosis.empty() && looks_like && c.same_shape) diagnosis = looks_like();
        fail(where + ": " + (c.same_shape ? describe(c, want)
                                          : "shape " + shape_string(shape_of(got)) + ", expected " +
                                                shape_string(shape_of(want))),
             diagnosis, silent);
        return false;
    }
    // A check that is not a comparison (an expected error, an exception).
    // Past the first few, a failure is counted, not printed; but the first two with a diagnosis not yet printed are
    // printed wherever they come (a diagnosis may show only on a later fixture, such as the unbiased variance on one whose
    // LayerNorm weight is 1 and bias 0).
    void fail(const std::string& what, const std::string& diagnosis = "", bool silent = false) {
        ++failures_;
        if (silent) return;
        if (printed_ >= shown_) {
            if (diagnosis.empty() || extra_diagnosed_ >= kExtraDiagnosed ||
                std::find(diagnoses_.begin(), diagnoses_.end(), diagnosis) != diagnoses_.end())
                return;
            ++extra_diagnosed_;
        }
        if (!diagnosis.empty()) diagnoses_.push_back(diagnosis);
        ++printed_;
        std::printf("  FAIL  %s\n", what.c_str());
        if (!diagnosis.empty()) std::printf("        looks like: %s\n", diagnosis.c_str());
    }
    void pass(const std::string& what) {
        std::printf("  ok    %s\n", what.c_str());
    }
    // One number against PyTorch's: |got - want| <= atol + rtol |want|.
    // `at_zero`: what a 0 looks like here (default: the starter's placeholder).
    bool number(const std::string& where, double got, double want, double atol, double rtol,
                const std::string& at_zero = "you returned 0: is the starter's placeholder still there?") {
        ++checks_;
        if (std::fabs(got - want) <= atol + rtol * std::fabs(want)) return true;
        char buf[96];
        std::snprintf(buf, sizeof buf, ": got %.9g, expected %.9g", got, want);
        fail(where + buf, got == 0.0 ? at_zero : "");
        return false;
    }
    // A check that passed without a comparison (an answer found right).
    void counted() { ++checks_; }
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
        if (failures_ > printed_)
            std::printf("  ... and %zu more failure%s (--all shows them)\n", failures_ - printed_,
                        failures_ - printed_ == 1 ? "" : "s");
        for (const auto& h : hints_) std::printf("  hint: %s\n", h.c_str());
    }

private:
    static constexpr std::size_t kShown = 4;  // failures printed, unless --all; the rest are counted
    static constexpr std::size_t kExtraDiagnosed = 2;  // printed past kShown because they carry a diagnosis
    std::size_t extra_diagnosed_ = 0;
    std::vector<std::string> diagnoses_;  // those printed: a later failure with one of them adds nothing
    std::vector<std::string> hints_;
    std::size_t shown_, printed_ = 0;
    std::size_t failures_ = 0, checks_ = 0;
};

// Every fixture of a folder of data/, loaded.
std::vector<Fixture> load_fixtures(const std::string& folder) {
    std::vector<Fixture> all;
    for (const auto& path : qwenvl_test::fixture_paths(kData + "/" + folder)) all.push_back(load_fixture(path));
    return all;
}

const std::vector<Fixture>& fixtures() {
    static const std::vector<Fixture> loaded = load_fixtures("fixtures");
    return loaded;
}

// data/fixtures/models/: Qwen-VL on non-square key grids and MiniCPM-V's padded batches (no gradients).
const std::vector<Fixture>& model_fixtures() {
    static const std::vector<Fixture> loaded = load_fixtures("fixtures/models");
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

// Every intermediate PyTorch wrote, in the order they are computed, against `trace`: the first one beyond
// tolerance is named, and the later ones (which follow from it) are not compared.
void check_trace(Report& report, const std::string& where, const Trace& trace, const Fixture& f, bool silent = false) {
    const auto recorded = trace.names();
    for (const std::string& stage : f.expected.names()) {
        if (std::find(recorded.begin(), recorded.end(), stage) == recorded.end()) {
            const xt::xarray<float>& want = f.expect(stage);
            const bool per_image = want.dimension() >= 3 && stage != "pos_k" && stage != "ln_q" && stage != "q";
            report.fail(where + ": the trace holds no \"" + stage + "\" (" +
                            (per_image ? "record_item(trace, \"" + stage + "\", n, N, ...), once per image"
                                       : "record(trace, \"" + stage + "\", ...)") + ")",
                        "", silent);
            return;
        }
        if (!report.check(where + ", first stage beyond tolerance: " + stage, trace.get(stage), f.expect(stage), f.atol,
                          f.rtol, silent))
            return;
    }
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
            check_trace(report, where, trace, f, silent);
        });
    }
    if (report.failures() == before) report.pass("the whole forward pass (adapter, ln_post, proj) on every fixture");
}

// The same on data/fixtures/models/ of one model: Qwen-VL on its non-square key grids, or MiniCPM-V's padded
// batches (the model's own forward pass, then the tower's tail).
void check_model_forward(Report& report, Model model) {
    std::size_t before = report.failures();
    for (const Fixture& f : model_fixtures()) {
        if (f.config.model != model) continue;
        const std::string where = "whole forward, fixture models/" + f.name;
        report.guarded(where, [&] {
            Trace trace;
            const Tensor3 out = model == Model::minicpm_v
                                    ? minicpmv_forward(f.weights, f.config, f.x, f.grids, f.max_grid, &trace)
                                    : adapter_forward(f.weights, f.config, f.x, f.grids.at(0), nullptr, &trace);
            tower_tail_forward(f.tail, out, f.config.eps, &trace);
            check_trace(report, where, trace, f);
        });
    }
    if (report.failures() == before)
        report.pass(std::string("the whole forward pass of ") + model_name(model) + " on its fixtures in models/");
}

// The whole readable backward pass from autograd's upstream gradient: every gradient PyTorch wrote. With
// `first_only`, only the first fixture's failure is printed (the others are counted): a headline.
void check_whole_backward(Report& report, bool first_only = false) {
    std::size_t before = report.failures();
    for (const Fixture& f : fixtures()) {
        const std::string where = "whole backward, fixture " + f.name;
        const bool silent = first_only && report.failures() > before;
        report.guarded(where, [&] {
            Trace forward, gradients;
            const Tensor3 out = adapter_forward(f.weights, f.config, f.x, f.has_mask ? &f.mask : nullptr, &forward);
            const TailGradients tail = tower_tail_backward(f.tail, out, f.gradients.get("proj"), f.config.eps, &gradients);
            adapter_backward(f.weights, f.config, f.x, forward, tail.d_out, &gradients);
            const auto recorded = gradients.names();
            for (const char* stage : {"ln_post", "out", "attended", "attn_weights", "scores", "q", "k", "v",
                                             "key_in", "query_in", "ln_q", "ln_kv", "kv_proj", "x"}) {
                if (std::find(recorded.begin(), recorded.end(), stage) == recorded.end()) {
                    report.fail(where + ": the gradients' trace holds no \"" + stage + "\" (record or record_item(gradients, \"" +
                                stage + "\", ...))", "", silent);
                    return;
                }
                if (!report.check(where + ", first gradient beyond tolerance: dL/d " + stage, gradients.get(stage),
                                  f.gradients.get(stage), kGradAtol, kGradRtol, silent))
                    return;
            }
        });
    }
    if (report.failures() == before) report.pass("the whole backward pass on every fixture, against autograd");
}

// What a first AdamW update (from m = v = 0, where the corrected moments are g and g^2) gives under the classic
// mistakes; names the one `got` equals, or "".
std::string adamw_first_update_looks_like(const xt::xarray<float>& p0, const xt::xarray<float>& g, double lr,
                                          const AdamWConfig& c, const xt::xarray<float>& got) {
    using Rule = std::function<double(double, double)>;  // (p0, g) -> p after the update
    const double wd = c.weight_decay, eps = c.eps;
    const std::vector<std::pair<std::string, Rule>> mistakes = {
        {"Adam's L2: wd * p added to the gradient (through m and v), where AdamW decays the parameter itself, p (1 - lr wd)",
         [&](double p, double grad) { const double h = grad + wd * p; return p - lr * h / (std::fabs(h) + eps); }},
        {"no weight decay at all", [&](double p, double grad) { return p - lr * grad / (std::fabs(grad) + eps); }},
        {"no bias corrections: m / (1 - beta1^t) and v / (1 - beta2^t) are missing",
         [&](double p, double grad) {
             return p * (1 - lr * wd) - lr * (1 - c.beta1) * grad / (std::sqrt(1 - c.beta2) * std::fabs(grad) + eps);
         }},
        {"eps inside the square root: sqrt(v + eps) where it is sqrt(v) + eps",
         [&](double p, double grad) { return p * (1 - lr * wd) - lr * grad / std::sqrt(grad * grad + eps); }},
    };
    for (const auto& [what, rule] : mistakes) {
        bool same = true;
        for (std::size_t i = 0; i < got.size() && same; ++i)
            same = std::fabs(got.flat(i) - rule(p0.flat(i), g.flat(i))) <= 1e-6 + 1e-5 * std::fabs(got.flat(i));
        if (same) return what;
    }
    return "";
}

// ---- answers exercises: the port-debugging lab and the query-count mini-project ----

// The answers in a file of "key: value" pairs; '#' starts a comment. Port lab lines read
// "mystery-N  stage: S  bug: B"; the query-count file "qN: answer".
std::map<std::string, std::string> read_answers(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(path + ": cannot be read");
    std::map<std::string, std::string> answers;
    std::string line;
    while (std::getline(in, line)) {
        line = line.substr(0, line.find('#'));
        std::istringstream words(line);
        std::string first;
        if (!(words >> first)) continue;
        if (first.rfind("mystery-", 0) == 0) {
            std::string key, value;
            while (words >> key >> value) answers[first + " " + key] = value;
        } else if (first.back() == ':') {
            std::string value, rest;
            words >> value;
            while (words >> rest) value += rest;  // "4, 16, 36" as "4,16,36"
            answers[first.substr(0, first.size() - 1)] = value;
        }
    }
    return answers;
}

// FNV-1a, 64 bits, of "qwenvl-port-lab:" and the parts joined by ':' (make_fixtures.py's lab_hash).
std::string lab_hash(const std::vector<std::string>& parts) {
    std::string text = "qwenvl-port-lab:";
    for (std::size_t i = 0; i < parts.size(); ++i) text += (i ? ":" : "") + parts[i];
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char byte : text) h = (h ^ byte) * 0x100000001b3ULL;
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
}

const std::vector<std::string> kStageOrder = {"pos_q", "pos_k", "ln_q", "query_in", "q", "kv_proj", "ln_kv",
                                               "key_in", "k", "v", "scores", "attn_weights", "attended", "out",
                                               "ln_post", "proj"};

void check_port_mystery(Report& r, std::size_t number) {
    const nlohmann::json lab = read_json(kData + "/course/port-lab/lab.json");
    const auto& mystery = lab.at("mysteries").at(number - 1);
    const std::string name = mystery.at("name"), file = answers_override.empty() ? kSource + "/src/exercises/port_lab.txt"
                                                                                  : answers_override;
    const std::string compare = "qwenvl-adapter compare " + lab.at("arguments").get<std::string>() + " --theirs " +
                                mystery.at("dump").get<std::string>();
    const auto answers = read_answers(file);
    const auto find = [&](const std::string& key) {
        const auto it = answers.find(name + " " + key + ":");
        return it == answers.end() ? std::string("?") : it->second;
    };
    const std::string stage = find("stage"), bug = find("bug");
    std::printf("  the port's dump: %s (run from the repository: build/release/%s)\n",
                mystery.at("dump").get<std::string>().c_str(), compare.c_str());
    const auto list_bugs = [&] {
        std::printf("  the bugs to choose from (code: the stage it changes first; what it is):\n");
        for (const auto& b : lab.at("bugs"))
            std::printf("    %-22s %-13s %s\n", b.at("code").get<std::string>().c_str(),
                        b.at("first_stage").get<std::string>().c_str(), b.at("what").get<std::string>().c_str());
    };
    if (stage == "?") {
        r.fail(name + ": no answer yet in " + file + " (stage: " + stage + ", bug: " + bug + ")");
        list_bugs();
        return;
    }
    if (std::find(kStageOrder.begin(), kStageOrder.end(), stage) == kStageOrder.end()) {
        std::string names;
        for (const auto& s : kStageOrder) names += (names.empty() ? "" : ", ") + s;
        r.fail(name + ": '" + stage + "' is not one of compare's stage names: " + names);
        return;
    }
    if (lab_hash({name, stage}) != mystery.at("stage_hash").get<std::string>()) {
        r.fail(name + ": '" + stage + "' is not the first stage where this port parts from PyTorch",
               "a stage differs when any stage before it does: find the EARLIEST one beyond tolerance. compare "
               "marks it '<- the first stage beyond tolerance'; a stage it does not list was not dumped");
        return;
    }
    if (bug == "?") {  // the stage may be checked on its own
        r.fail(name + ": the stage is right (" + stage + "); now the bug: no answer yet");
        list_bugs();
        return;
    }
    const nlohmann::json* chosen = nullptr;
    for (const auto& b : lab.at("bugs"))
        if (b.at("code") == bug) chosen = &b;
    if (!chosen) {
        r.fail(name + ": the stage is right (" + stage + "), but '" + bug + "' is not one of the bugs' codes");
        list_bugs();
        return;
    }
    if (lab_hash({name, stage, bug}) != mystery.at("answer_hash").get<std::string>()) {
        const std::string its_stage = chosen->at("first_stage");
        if (its_stage != stage)
            r.fail(name + ": the stage is right (" + stage + "), but " + bug + " would change " + its_stage +
                   " first, and this port's " + its_stage +
                   (std::find(kStageOrder.begin(), kStageOrder.end(), its_stage) <
                            std::find(kStageOrder.begin(), kStageOrder.end(), stage)
                        ? " agrees with PyTorch's"
                        : " is not where it first differs"));
        else
            r.fail(name + ": the stage is right (" + stage + "), but the bug is not " + bug + ": if it were, " +
                   chosen->at("if_it_were").get<std::string>() + ". Load the dump's .npy files (numpy.load) and test "
                   "that, and the other bugs of " + stage + ", on them");
        return;
    }
    r.counted();
    r.pass(name + ": first parts at " + stage + "; the bug: " + chosen->at("what").get<std::string>());
}

// The query-count runs (lesson 8): each folder's loss.csv, its "final loss" the mean of its last 100 losses.
struct QueryCountRun {
    std::string folder;
    std::size_t rows = 0;
    double final_loss = 0.0;
};

QueryCountRun read_run(const std::string& folder) {
    QueryCountRun run{folder};
    std::ifstream in(folder + "/loss.csv");
    if (!in) throw std::runtime_error(folder + "/loss.csv is missing: run lesson 8's training into " + folder);
    std::string line;
    std::getline(in, line);  // step,loss,lr,grad_norm,seconds
    std::vector<double> losses;
    while (std::getline(in, line)) {
        const std::size_t comma = line.find(',');
        if (comma == std::string::npos) continue;
        losses.push_back(std::stod(line.substr(comma + 1)));
    }
    run.rows = losses.size();
    if (run.rows < 100) throw std::runtime_error(folder + "/loss.csv has " + std::to_string(run.rows) +
                                                 " rows: the run is not finished (lesson 8's runs take 1000 steps)");
    for (std::size_t i = run.rows - 100; i < run.rows; ++i) run.final_loss += losses[i] / 100.0;
    return run;
}

void check_query_count(Report& r) {
    const std::string runs = runs_override.empty() ? kSource + "/build/query-count" : runs_override;
    const std::string file = answers_override.empty() ? kSource + "/src/exercises/10_query_count.txt" : answers_override;
    const std::vector<int> counts = {4, 16, 36, 64, 100};
    std::vector<QueryCountRun> with;
    QueryCountRun without;
    try {
        for (int q : counts) with.push_back(read_run(runs + "/q" + std::to_string(q)));
        without = read_run(runs + "/q64-no-positions");
    } catch (const std::exception& e) {
        r.fail(std::string("the runs: ") + e.what());
        return;
    }
    for (const auto& run : with)
        if (run.rows != 1000) r.fail("the runs: " + run.folder + "/loss.csv has " + std::to_string(run.rows) +
                                     " rows, lesson 8's runs 1000: run it again with lesson 8's command (--force)");
    if (without.rows != 1000) r.fail("the runs: " + without.folder + " has " + std::to_string(without.rows) + " rows, not 1000");
    if (r.failures()) return;
    std::vector<std::size_t> order(counts.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return with[a].final_loss < with[b].final_loss; });
    std::string ranking;
    for (std::size_t i : order) ranking += (ranking.empty() ? "" : ",") + std::to_string(counts[i]);
    std::size_t below = 0;
    for (const auto& run : with) below += run.final_loss < without.final_loss;
    const std::map<std::string, std::string> truth = {
        {"q1", std::to_string(counts[order[0]])},
        {"q2", ranking},
        {"q3", without.final_loss > with[3].final_loss ? "yes" : "no"},
        {"q4", std::to_string(below)},
        {"q5", with[4].final_loss < with[3].final_loss ? "yes" : "no"}};
    const std::map<std::string, std::string> how = {
        {"q1", "compare the five runs' final losses (the mean of the last 100 values of loss.csv's loss column)"},
        {"q2", "sort the five runs with positions by their final loss, lowest first, and write their query counts"},
        {"q3", "compare q64-no-positions's final loss with q64's"},
        {"q4", "count the runs with positions whose final loss is below q64-no-positions's"},
        {"q5", "compare q100's final loss with q64's"}};
    const auto answers = read_answers(file);
    for (const auto& [question, right] : truth) {
        const auto it = answers.find(question);
        std::string given = it == answers.end() ? "?" : it->second;
        std::transform(given.begin(), given.end(), given.begin(), [](unsigned char c) { return std::tolower(c); });
        if (given == "?")
            r.fail(question + ": no answer yet in " + file);
        else if (given != right)
            r.fail(question + ": '" + given + "' is not what your runs show: " + how.at(question));
        else {
            r.counted();
            r.pass(question + ": " + given);
        }
    }
}

struct Exercise {
    std::string name;       // the check target's name after "check-"
    std::string stage;      // the stage it replaces, as the failure names it
    std::string page;       // the stage page
    std::string writes;     // the functions the student writes
    std::vector<std::string> hints;
    std::function<void(Report&)> check;  // the stage's own checks
    bool backward = false;               // also run the whole backward pass
    std::string answers = "";            // an answers exercise: the file the student fills (no code, no fixtures)
    // The starter, relative to the repository: the name with underscores (tests/course/CMakeLists.txt's rule).
    std::string file() const {
        if (!answers.empty()) return answers;
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
                    "Round the square root to the nearest integer before the check (sqrt in floating point is not exact).",
                    "0 passes the square test (0 * 0 == 0) and must still be refused: no patches is no grid."},
                   [](Report& r) {
                       check_fixtures(r, "01 grid_side", [&](const Fixture& f, const std::string& where) {
                           const std::size_t L = f.x.shape(1), G = f.expect("pos_k").shape(0);
                           const std::size_t want = static_cast<std::size_t>(std::lround(std::sqrt(double(G))));
                           const std::size_t got = grid_side(L, "L");
                           if (got != want)
                               r.fail(where + ": grid_side(" + std::to_string(L) + "): got " + std::to_string(got) +
                                      ", expected " + std::to_string(want));
                       });
                       r.guarded("stage 01 grid_side on counts that are no square grid", [&] {
                           for (std::size_t bad : {std::size_t(0), std::size_t(2), std::size_t(1000), std::size_t(1023),
                                                   std::size_t(1025)}) {
                               bool threw = false;
                               try {
                                   grid_side(bad, "the key count L");
                               } catch (const std::invalid_argument& e) {
                                   threw = true;
                                   if (std::string(e.what()).rfind("the key count L", 0) != 0)
                                       r.fail("stage 01 grid_side(" + std::to_string(bad) + ", \"the key count L\") threw \"" +
                                              e.what() + "\": the message must start with `what`, the argument's name");
                               }
                               if (!threw)
                                   r.fail("stage 01 grid_side(" + std::to_string(bad) + ") returned instead of throwing "
                                          "std::invalid_argument: " +
                                          (bad == 0 ? std::string("0 is a perfect square (0 * 0), but 0 patches is no image")
                                                    : std::string("not a perfect square")));
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
                           const xt::xarray<float>& want = f.expect("pos_k");
                           // only the border's cells differ: where s < 0 (the first row and column when resizing up)
                           const auto border_only = [&]() -> std::string {
                               if (want.dimension() != 2 || got.shape(0) != want.shape(0) || got.shape(1) != want.shape(1)) return "";
                               for (std::size_t row = 0; row < want.shape(0); ++row) {
                                   const bool border = row / G_out == 0 || row % G_out == 0;
                                   for (std::size_t c = 0; c < want.shape(1); ++c)
                                       if (!border && std::fabs(got(row, c) - want(row, c)) > f.atol + f.rtol * std::fabs(want(row, c)))
                                           return "";
                               }
                               return "only the grid's first row and first column differ: there s < 0, where (int)s "
                                      "rounds towards 0 and floor(s) down";
                           };
                           r.check(where + ", pos_k", got, want, f.atol, f.rtol, false, border_only);
                       });
                   }});

    all.push_back({"04-layernorm", "04 LayerNorm", "docs/stages/04-layernorm.md",
                   "layer_norm",
                   {"The variance divides by E (biased, as torch.nn.LayerNorm), not E - 1 (numpy's ddof=1, "
                    "torch.var's default).",
                    "eps goes inside the square root: (x - mean) / sqrt(var + eps).",
                    "gamma multiplies, beta adds: y = x_hat * gamma + beta.",
                    "Sum in double: on rows of mean 1000 and standard deviation 0.01, a float running sum of 1024 values "
                    "loses about a tenth of a standard deviation of the mean."},
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
                       // rows of mean 1000 and standard deviation 0.01 (data/course/layernorm_wide.json): float sums lose
                       // a tenth of a standard deviation of the mean; double sums do not
                       r.guarded("stage 04 layer_norm, data/course/layernorm_wide.json", [&] {
                           const nlohmann::ordered_json j =
                               nlohmann::ordered_json::parse(read_json(kData + "/course/layernorm_wide.json").dump());
                           if (r.check("stage 04 layer_norm, rows of mean 1000 and standard deviation 0.01 "
                                       "(data/course/layernorm_wide.json)",
                                       layer_norm(tensor_from_json(j.at("x"), "x"), tensor_from_json(j.at("gamma"), "gamma"),
                                                  tensor_from_json(j.at("beta"), "beta"), j.at("eps").get<float>()),
                                       tensor_from_json(j.at("expected"), "expected"), 1e-5, 1e-4))
                               r.pass("stage 04 layer_norm on rows of mean 1000 and standard deviation 0.01 (the sums in "
                                      "double)");
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
                           // each product on its own, so that a shape error thrown by the student's function names
                           // the product that threw it (student trial: "threw matmul: ..." did not say which); in the
                           // forward pass's order, the query's first
                           const auto product = [&](const std::string& at, const std::function<Matrix()>& got,
                                                    const xt::xarray<float>& want) {
                               r.guarded(at, [&] { r.check(at, got(), want, f.atol, f.rtol); });
                           };
                           product(where + ", q (linear)", [&] { return linear(f.expect("query_in"), w.in_proj.w_q, w.in_proj.b_q); },
                                   f.expect("q"));
                           for (std::size_t n = 0; n < f.x.shape(0); ++n) {
                               const std::string image = ", image " + std::to_string(n);
                               product(where + ", kv_proj (kv_projection)" + image,
                                       [&] { return kv_projection(item(f.x, n), w.kv_proj); }, item(f.expect("kv_proj"), n));
                               product(where + ", k (linear)" + image,
                                       [&] { return linear(item(f.expect("key_in"), n), w.in_proj.w_k, w.in_proj.b_k); },
                                       item(f.expect("k"), n));
                               product(where + ", v (linear)" + image,
                                       [&] { return linear(item(f.expect("ln_kv"), n), w.in_proj.w_v, w.in_proj.b_v); },
                                       item(f.expect("v"), n));
                               product(where + ", out (linear)" + image,
                                       [&] { return linear(item(f.expect("attended"), n), w.out_proj_weight, w.out_proj_bias); },
                                       item(f.expect("out"), n));
                               product(where + ", proj (matmul)" + image,
                                       [&] { return matmul(item(f.expect("ln_post"), n), f.tail.proj); },
                                       item(f.expect("proj"), n));
                           }
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
                       // a wholly masked row (data/course/softmax_masked.json): PyTorch's softmax gives NaN there, and
                       // the project keeps it; the other rows as usual
                       const std::string file = "data/course/softmax_masked.json";
                       r.guarded("stage 06 softmax_rows, " + file, [&] {
                           const nlohmann::ordered_json j =
                               nlohmann::ordered_json::parse(read_json(kData + "/course/softmax_masked.json").dump());
                           const Matrix mask = additive_mask(xt::xtensor<bool, 2>(
                               xt::cast<bool>(Matrix(tensor_from_json(j.at("mask"), "mask")))));
                           const Matrix got = softmax_rows(tensor_from_json(j.at("scores"), "scores"), &mask);
                           const Matrix want = tensor_from_json(j.at("expected"), "expected");
                           const auto nan_rows = j.at("nan_rows").get<std::vector<std::size_t>>();
                           bool ok = true;
                           for (std::size_t row = 0; row < want.shape(0); ++row) {
                               const bool masked = std::find(nan_rows.begin(), nan_rows.end(), row) != nan_rows.end();
                               const std::string where = "stage 06 softmax_rows, " + file + ", row " + std::to_string(row);
                               if (!masked) {
                                   ok = r.check(where, xt::xarray<float>(xt::row(got, row)),
                                                xt::xarray<float>(xt::row(want, row)), 1e-6, 1e-5) && ok;
                                   continue;
                               }
                               r.counted();
                               if (!xt::all(xt::isnan(xt::row(got, row)))) {
                                   char buf[64];
                                   std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(got(row, 0)));
                                   r.fail(where + " (every key masked): got " + buf + " at its first key, expected NaN",
                                          "a wholly masked row must stay NaN, as PyTorch's softmax leaves it: do not "
                                          "replace it with 0 or with a uniform row");
                                   ok = false;
                               }
                           }
                           if (ok) r.pass("stage 06 softmax_rows on a wholly masked row: NaN, as PyTorch's");
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
                    "Pass the mask on to multi_head_attention: without it attn_weights is the first stage to differ, on "
                    "the fixtures with a mask.",
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
                           const auto names = trace.names();
                           if (std::find(names.begin(), names.end(), "ln_post") == names.end())
                               r.fail(where + ": the trace holds no \"ln_post\" (record_item(trace, \"ln_post\", n, N, ...))");
                           else
                               r.check(where + ", ln_post (the trace)", trace.get("ln_post"), f.expect("ln_post"), f.atol,
                                       f.rtol);
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
                               r.pass("stage 09 fuse_image_features on data/fusion, against the generator's splice (numpy, make_fixtures.py)");
                           bool threw = false;
                           try {
                               fuse_image_features(ids, embeddings, Tensor3(xt::view(features, xt::range(0, 1))));
                           } catch (const std::invalid_argument&) {
                               threw = true;
                           }
                           if (!threw) r.fail("stage 09 fuse_image_features with 1 image for 2 spans returned instead of throwing");
                           // the features of Q + 1 rows for spans of Q positions
                           Tensor3 longer = xt::zeros<float>({features.shape(0), features.shape(1) + 1, features.shape(2)});
                           xt::view(longer, xt::all(), xt::range(0, features.shape(1))) = features;
                           threw = false;
                           try {
                               fuse_image_features(ids, embeddings, longer);
                           } catch (const std::invalid_argument&) {
                               threw = true;
                           }
                           if (!threw)
                               r.fail("stage 09 fuse_image_features with images of Q + 1 rows for spans of Q positions "
                                      "returned instead of throwing");
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

    all.push_back({"03-resize-nonsquare", "03 bicubic resize (non-square key grids)", "docs/stages/03-resize.md",
                   "resize_bicubic (to an h x w grid), key_position_table (for a Grid)",
                   {"Grid{h, w} is (rows, columns); F.interpolate's size is (h, w). Row r of the table is i * w + j: "
                    "the WIDTH multiplies the row index. Swapping h and w still gives h * w rows, so no shape check "
                    "catches it; the values differ.",
                    "Each axis has its own source coordinates: source_coordinate(G_in, out.h, i) for the rows, "
                    "source_coordinate(G_in, out.w, j) for the columns.",
                    "A square key grid must give what the square version gives: pos_q itself when the grids are equal."},
                   [](Report& r) {
                       check_fixtures(r, "03 key_position_table (square grids) -> pos_k", [&](const Fixture& f, const std::string& where) {
                           const std::size_t G = grid_side(f.x.shape(1), "L");
                           r.check(where + ", pos_k", key_position_table(f.expect("pos_q"), Grid{G, G}), f.expect("pos_k"),
                                   f.atol, f.rtol);
                       });
                       std::size_t before = r.failures();
                       for (const Fixture& f : model_fixtures()) {
                           if (f.config.model != Model::qwen_vl) continue;
                           const Grid keys = f.grids.at(0);
                           const std::string where = "stage 03 key_position_table, fixture models/" + f.name + ", a " +
                                                     std::to_string(keys.h) + " x " + std::to_string(keys.w) + " key grid";
                           r.guarded(where, [&] {
                               r.check(where + ", pos_k", key_position_table(f.expect("pos_q"), keys), f.expect("pos_k"),
                                       f.atol, f.rtol);
                           });
                       }
                       if (r.failures() == before)
                           r.pass("stage 03 key_position_table on the non-square key grids (3 x 5 and 4 x 2), against "
                                  "F.interpolate");
                       if (r.failures() == 0) check_model_forward(r, Model::qwen_vl);
                   }});

    all.push_back({"05-projections-backward", "05 projections (backward)", "docs/stages/05-projections.md",
                   "matmul_backward, linear_backward, kv_projection_backward",
                   {"y = x W^T + b: dL/dx = dL/dy W (R, in); dL/dW = (dL/dy)^T x (out, in), the weight's own "
                    "shape; dL/db = the sum of dL/dy's rows.",
                    "y = a @ b: dL/da = dL/dy b^T, dL/db = a^T dL/dy.",
                    "kv_proj without a weight (Kv == E) is the identity: dx = dy, and no weight gradient."},
                   [](Report& r) {
                       check_fixtures(r, "05 linear_backward, kv_projection_backward, matmul_backward -> dL/d attended, "
                                         "key_in, query_in, x, ln_post and the weights",
                                      [&](const Fixture& f, const std::string& where) {
                           const auto& w = f.weights;
                           const auto& dy = f.gradients;
                           const std::size_t E = f.config.embed_dim, N = f.x.shape(0);
                           Matrix dWo = xt::zeros<float>({E, E}), dWk = dWo, dWv = dWo, dproj = dWo;
                           Vector dbo = xt::zeros<float>({E}), dbk = dbo, dbv = dbo;
                           Matrix dWkv = xt::zeros<float>(w.kv_proj.shape());
                           for (std::size_t n = 0; n < N; ++n) {
                               const std::string image = ", image " + std::to_string(n);
                               const LinearGradients o = linear_backward(item(f.expect("attended"), n), w.out_proj_weight,
                                                                         item(dy.get("out"), n));
                               r.check(where + ", out_proj: dL/d attended" + image, o.dx, item(dy.get("attended"), n),
                                       kGradAtol, kGradRtol);
                               dWo += o.dweight;
                               dbo += o.dbias;
                               const LinearGradients k = linear_backward(item(f.expect("key_in"), n), w.in_proj.w_k,
                                                                         item(dy.get("k"), n));
                               r.check(where + ", W_k: dL/d key_in" + image, k.dx, item(dy.get("key_in"), n), kGradAtol,
                                       kGradRtol);
                               dWk += k.dweight;
                               dbk += k.dbias;
                               const LinearGradients v = linear_backward(item(f.expect("ln_kv"), n), w.in_proj.w_v,
                                                                         item(dy.get("v"), n));
                               dWv += v.dweight;
                               dbv += v.dbias;
                               const KvProjectionGradients kv = kv_projection_backward(item(f.x, n), w.kv_proj,
                                                                                       item(dy.get("kv_proj"), n));
                               r.check(where + ", kv_proj: dL/d x" + image, kv.dx, item(dy.get("x"), n), kGradAtol, kGradRtol);
                               if (w.kv_proj.size()) dWkv += kv.dw_kv;
                               else if (kv.dw_kv.size())
                                   r.fail(where + ", kv_proj is the identity here (Kv == E): dw_kv must be empty, it is " +
                                          shape_string(shape_of(xt::xarray<float>(kv.dw_kv))));
                               const MatmulGradients p = matmul_backward(item(f.expect("ln_post"), n), f.tail.proj,
                                                                         item(dy.get("proj"), n));
                               r.check(where + ", proj: dL/d ln_post" + image, p.da, item(dy.get("ln_post"), n), kGradAtol,
                                       kGradRtol);
                               dproj += p.db;
                           }
                           const LinearGradients q = linear_backward(f.expect("query_in"), w.in_proj.w_q, dy.get("q"));
                           r.check(where + ", W_q: dL/d query_in", q.dx, dy.get("query_in"), kGradAtol, kGradRtol);
                           const auto& pg = f.param_gradients;
                           const xt::xarray<float>& in_w = pg.get("attn_pool.attn.in_proj_weight");
                           const xt::xarray<float>& in_b = pg.get("attn_pool.attn.in_proj_bias");
                           const auto rows = [&](std::size_t part) { return xt::range(part * E, (part + 1) * E); };
                           r.check(where + ", dL/d W_q (in_proj_weight's rows [0, E))", q.dweight,
                                   xt::xarray<float>(xt::view(in_w, rows(0))), kGradAtol, kGradRtol);
                           r.check(where + ", dL/d b_q", q.dbias, xt::xarray<float>(xt::view(in_b, rows(0))), kGradAtol, kGradRtol);
                           r.check(where + ", dL/d W_k, summed over the images", dWk, xt::xarray<float>(xt::view(in_w, rows(1))),
                                   kGradAtol, kGradRtol);
                           r.check(where + ", dL/d b_k, summed over the images", dbk, xt::xarray<float>(xt::view(in_b, rows(1))),
                                   kGradAtol, kGradRtol);
                           r.check(where + ", dL/d W_v, summed over the images", dWv, xt::xarray<float>(xt::view(in_w, rows(2))),
                                   kGradAtol, kGradRtol);
                           r.check(where + ", dL/d b_v, summed over the images", dbv, xt::xarray<float>(xt::view(in_b, rows(2))),
                                   kGradAtol, kGradRtol);
                           r.check(where + ", dL/d out_proj.weight", dWo, pg.get("attn_pool.attn.out_proj.weight"), kGradAtol,
                                   kGradRtol);
                           r.check(where + ", dL/d out_proj.bias", dbo, pg.get("attn_pool.attn.out_proj.bias"), kGradAtol,
                                   kGradRtol);
                           if (w.kv_proj.size())
                               r.check(where + ", dL/d kv_proj.weight", dWkv, pg.get("attn_pool.kv_proj.weight"), kGradAtol,
                                       kGradRtol);
                           r.check(where + ", dL/d proj", dproj, pg.get("proj"), kGradAtol, kGradRtol);
                       });
                   },
                   true});

    all.push_back({"07-adapter-backward", "07 the adapter (backward)", "docs/stages/07-adapter.md", "adapter_backward",
                   {"Go back through the forward pass in reverse: out_proj, the attention (per image), W_k and W_v, "
                    "the additions of the tables, ln_kv and kv_proj; then the query side once.",
                    "X = LN_kv(kv_proj) reaches both key_in and v: dL/dX = dL/d key_in + the v path's dx.",
                    "q serves every image, and every weight serves every image: sum their gradients over the images.",
                    "The tables are frozen: dL/d query_in passes to LN_q's output unchanged, dL/d key_in to X."},
                   [](Report& r) {
                       check_whole_backward(r, true);  // first: the first wrong gradient, from the gradients' trace
                       check_fixtures(r, "07 adapter_backward -> dL/d every parameter and x", [&](const Fixture& f,
                                                                                                  const std::string& where) {
                           Trace forward;
                           const Tensor3 out = adapter_forward(f.weights, f.config, f.x, f.has_mask ? &f.mask : nullptr,
                                                               &forward);
                           const TailGradients tail = tower_tail_backward(f.tail, out, f.gradients.get("proj"), f.config.eps);
                           const AdapterGradients g = adapter_backward(f.weights, f.config, f.x, forward, tail.d_out);
                           const auto& pg = f.param_gradients;
                           const std::size_t E = f.config.embed_dim;
                           const char* parts[] = {"W_q (in_proj_weight's rows [0, E))", "W_k (rows [E, 2E))",
                                                  "W_v (rows [2E, 3E))"};
                           const char* bias_parts[] = {"b_q", "b_k", "b_v"};
                           for (std::size_t part = 0; part < 3; ++part) {
                               const std::size_t a = part * E, b = (part + 1) * E;
                               r.check(where + ", dL/d " + parts[part],
                                       xt::xarray<float>(xt::view(g.in_proj_weight, xt::range(a, b))),
                                       xt::xarray<float>(xt::view(pg.get("attn_pool.attn.in_proj_weight"), xt::range(a, b))),
                                       kGradAtol, kGradRtol);
                               r.check(where + ", dL/d " + bias_parts[part],
                                       xt::xarray<float>(xt::view(g.in_proj_bias, xt::range(a, b))),
                                       xt::xarray<float>(xt::view(pg.get("attn_pool.attn.in_proj_bias"), xt::range(a, b))),
                                       kGradAtol, kGradRtol);
                           }
                           // every other parameter by its checkpoint name (stage 10's list; in_proj by its parts above)
                           for (const auto& [name, got] : named_gradients(g, tail))
                               if (name.rfind("attn_pool.attn.in_proj_", 0) != 0)
                                   r.check(where + ", dL/d " + name, got, pg.get(name), kGradAtol, kGradRtol);
                           if (f.weights.kv_proj.size() && !g.kv_proj.size())  // the list leaves an empty one out
                               r.check(where + ", dL/d attn_pool.kv_proj.weight", g.kv_proj,
                                       pg.get("attn_pool.kv_proj.weight"), kGradAtol, kGradRtol);
                           r.check(where + ", dL/d x", g.x, f.gradients.get("x"), kGradAtol, kGradRtol);
                       });
                   }});

    all.push_back({"10-adamw", "10 training (the optimiser)", "docs/stages/10-training.md",
                   "learning_rate, clip_grad_norm, AdamW::update",
                   {"The warm-up: lr (s + 1) / warmup for s < warmup (the first step's rate is lr / warmup, not 0). "
                    "Then min_lr + (lr - min_lr) (1 + cos(pi (s - warmup) / (total - warmup))) / 2.",
                    "clip_grad_norm: one norm over EVERY gradient together; scale by max_norm / (norm + 1e-6) only when "
                    "that is below 1; return the norm before clipping.",
                    "AdamW's decay is decoupled: p <- p (1 - lr wd), on the parameter, not wd p added to the gradient "
                    "(that is Adam with L2, and goes through m and v).",
                    "Bias corrections with t counted from 1: m / (1 - beta1^t), v / (1 - beta2^t); eps is added after "
                    "the square root of v's correction."},
                   [](Report& r) {
                       const nlohmann::ordered_json golden =
                           nlohmann::ordered_json::parse(read_json(kData + "/training/optimizer_10_steps.json").dump());
                       AdamWConfig config;
                       const auto& o = golden.at("optimizer");
                       config.lr = o.at("lr");
                       config.min_lr = o.at("min_lr");
                       config.beta1 = o.at("betas")[0];
                       config.beta2 = o.at("betas")[1];
                       config.eps = o.at("eps");
                       config.weight_decay = o.at("weight_decay");
                       config.max_grad_norm = o.at("max_grad_norm");
                       config.warmup_steps = o.at("warmup_steps");
                       config.total_steps = o.at("total_steps");
                       const auto named = [](const nlohmann::ordered_json& j) {
                           NamedTensors out;
                           for (const auto& [name, value] : j.items()) out.push_back({name, tensor_from_json(value, name)});
                           return out;
                       };
                       std::size_t before = r.failures();
                       for (const auto& step : golden.at("steps")) {
                           const std::size_t s = step.at("step");
                           if (!r.number("stage 10 learning_rate(" + std::to_string(s) + ") (warm-up " +
                                             std::to_string(config.warmup_steps) + ", total " +
                                             std::to_string(config.total_steps) + ")",
                                         learning_rate(s, config), step.at("lr"), 1e-12, 1e-9,
                                         s == 0 ? "a rate of 0 at step 0: the starter's placeholder, or a warm-up "
                                                  "factor s / warmup where it is (s + 1) / warmup (s counts from 0)"
                                                : "you returned 0: is the starter's placeholder still there?"))
                               break;
                       }
                       if (r.failures() == before) r.pass("stage 10 learning_rate at all 10 steps, against LambdaLR's");
                       before = r.failures();
                       r.guarded("stage 10 clip_grad_norm", [&] {
                           for (const auto& step : golden.at("steps")) {
                               const std::string where = "stage 10 clip_grad_norm, step " + std::to_string(step.at("step").get<int>());
                               NamedTensors grads = named(step.at("gradients"));
                               const double norm = clip_grad_norm(grads, config.max_grad_norm);
                               if (!r.number(where + ", the norm it returns", norm, step.at("grad_norm"), 0.0, 1e-5)) return;
                               const NamedTensors clipped = named(step.at("clipped"));
                               for (std::size_t i = 0; i < grads.size(); ++i)
                                   if (!r.check(where + ", the clipped gradient of " + grads[i].first, grads[i].second,
                                                clipped[i].second, 1e-7, 1e-5))
                                       return;
                           }
                       });
                       if (r.failures() == before)
                           r.pass("stage 10 clip_grad_norm at all 10 steps (clipped and not), against clip_grad_norm_");
                       before = r.failures();
                       r.guarded("stage 10 AdamW::update", [&] {
                           AdamW optimizer;
                           optimizer.config = config;
                           const NamedTensors initial = named(golden.at("initial_params"));
                           NamedTensors params = initial;
                           for (const auto& step : golden.at("steps")) {
                               // PyTorch's rate and clipped gradients, so that only the update is checked here
                               const NamedTensors clipped = named(step.at("clipped"));
                               optimizer.update(params, clipped, step.at("lr"));
                               const NamedTensors want = named(step.at("params"));
                               const bool first = step.at("step").get<int>() == 0;
                               for (std::size_t i = 0; i < params.size(); ++i)
                                   if (!r.check("stage 10 AdamW::update, update " +
                                                    std::to_string(step.at("step").get<int>() + 1) + ", " + params[i].first,
                                                params[i].second, want[i].second, 1e-6, 1e-5, false, [&] {
                                                    return first ? adamw_first_update_looks_like(
                                                                       initial[i].second, clipped[i].second,
                                                                       step.at("lr"), config, params[i].second)
                                                                 : std::string();
                                                }))
                                       return;
                           }
                       });
                       if (r.failures() == before)
                           r.pass("stage 10 AdamW::update, ten updates, every parameter, against torch.optim.AdamW");
                       if (r.failures() > 0) return;
                       // The whole: ten training steps of the adapter (train_step calls your three functions).
                       r.guarded("stage 10 train_step, ten steps (data/training/adamw_10_steps.json)", [&] {
                           const nlohmann::ordered_json j =
                               nlohmann::ordered_json::parse(read_json(kData + "/training/adamw_10_steps.json").dump());
                           AdapterWeights weights;
                           TowerTail tail;
                           const auto& cfg = j.at("config");
                           weights.kv_proj = Matrix::from_shape({cfg.at("embed_dim").get<std::size_t>(), cfg.at("kv_dim").get<std::size_t>()});
                           set_trainable_parameters(named(j.at("initial_params")), weights, tail);
                           AdapterConfig c = derive_config(weights, cfg.at("num_heads").get<std::size_t>());
                           c.eps = cfg.at("eps").get<float>();
                           const Tensor3 x = tensor_from_json(j.at("inputs").at("x"), "x");
                           const Tensor3 target = tensor_from_json(j.at("inputs").at("target"), "target");
                           AdamW optimizer;
                           optimizer.config = config;
                           for (const auto& want : j.at("steps")) {
                               const StepResult got = train_step(weights, tail, c, x, target, optimizer);
                               const std::string where = "stage 10 train_step " + std::to_string(want.at("step").get<int>());
                               if (!r.number(where + ", loss", got.loss, want.at("loss"), 0.0, 1e-5)) return;
                               if (!r.number(where + ", gradient norm", got.grad_norm, want.at("grad_norm"), 0.0, 1e-5)) return;
                           }
                           r.pass("ten training steps of the adapter with your optimiser: every loss and gradient norm as "
                                  "PyTorch's");
                       });
                   }});

    all.push_back({"11-minicpmv", "11 MiniCPM-V", "docs/stages/11-minicpmv.md", "table_grid, slice_table, key_padding",
                   {"Cell (i, j) of an image is row i * T.w + j of the big table (the TABLE's width): the first h * w "
                    "rows of the table are not the image's slice.",
                    "key_padding is true where a key is padding (from h * w on), as PyTorch's key_padding_mask: true = "
                    "ignored.",
                    "table_grid grows max_grid on each axis to the largest h and the largest w of the batch; it never "
                    "shrinks it."},
                   [](Report& r) {
                       std::size_t before = r.failures();
                       for (const Fixture& f : model_fixtures()) {
                           if (f.config.model != Model::minicpm_v) continue;
                           const std::string where = "stage 11, fixture models/" + f.name;
                           r.guarded(where, [&] {
                               const std::size_t E = f.config.embed_dim, L = f.x.shape(1);
                               const Grid T = table_grid(f.max_grid, f.grids);
                               const Matrix table = sincos_2d(E, T);
                               const xt::xarray<float>& pos_k = f.expect("pos_k");
                               const xt::xarray<float>& padding = f.expect("key_padding_mask");
                               for (std::size_t n = 0; n < f.grids.size(); ++n) {
                                   const Grid g = f.grids[n];
                                   const std::string image = ", image " + std::to_string(n) + " (" + std::to_string(g.h) +
                                                             " x " + std::to_string(g.w) + ")";
                                   const xt::xtensor<bool, 1> mask = key_padding(g, L);
                                   r.check(where + ", key_padding" + image, xt::xarray<float>(xt::cast<float>(mask)),
                                           xt::xarray<float>(xt::view(padding, n)), 0.0, 0.0);
                                   r.check(where + ", slice_table" + image + " (table grid " + std::to_string(T.h) + " x " +
                                               std::to_string(T.w) + ")",
                                           slice_table(table, T, g),
                                           xt::xarray<float>(xt::view(pos_k, n, xt::range(0, g.cells()))), f.atol, f.rtol);
                               }
                           });
                       }
                       if (r.failures() == before)
                           r.pass("stage 11 table_grid, slice_table, key_padding on MiniCPM-V's three fixtures");
                       if (r.failures() == 0) check_model_forward(r, Model::minicpm_v);
                   }});

    for (std::size_t n = 1; n <= 5; ++n)
        all.push_back({"port-" + std::to_string(n), "the port lab, mystery " + std::to_string(n),
                       "docs/course/lesson-9-porting.md", "the first stage that diverges and the bug",
                       {"Run compare on the mystery's dump: it marks the first stage beyond tolerance and lists that "
                        "stage's usual causes.",
                        "Several bugs change the same stage first. Tell them apart with the numbers: load the dump's "
                        ".npy files in numpy and test each candidate on them (the lesson shows how)."},
                       [n](Report& r) { check_port_mystery(r, n); }, false, "src/exercises/port_lab.txt"});

    all.push_back({"10-query-count", "10 training (the query-count mini-project)", "docs/course/lesson-8-query-count.md",
                   "answers from six training runs",
                   {"Each answer comes from the runs' loss.csv files: the final loss is the mean of a run's last 100 "
                    "values of the loss column (pandas or numpy.genfromtxt read them; notebook 08 plots them)."},
                   [](Report& r) { check_query_count(r); }, false, "src/exercises/10_query_count.txt"});
    return all;
}

int usage() {
    std::fprintf(stderr, "usage: qwenvl-exercise NAME [--all] [--answers FILE] [--runs DIR] | --list   (docs/course/README.md;\n"
                         "       --all: every failure; --answers, --runs: an answers exercise's file and run folder)\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return usage();
    const std::string name = argv[1];
    bool all_failures = false;
    for (int i = 2; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--all") all_failures = true;
        else if (arg == "--answers" && i + 1 < argc) answers_override = argv[++i];
        else if (arg == "--runs" && i + 1 < argc) runs_override = argv[++i];
        else return usage();
    }
    const std::vector<Exercise> all = exercises();
    if (name == "--help" || name == "-h") {
        usage();
        std::fprintf(stderr, "Exercises: qwenvl-exercise --list. The course: docs/course/README.md.\n");
        return 0;
    }
    if (name == "--list") {
        // in the course's order (docs/course/README.md's table), with the lesson that teaches each; an exercise's
        // number is its stage's, not its lesson's
        const std::vector<std::pair<int, std::vector<std::string>>> lessons = {
            {1, {"01-grid-side"}}, {2, {"02-sincos"}}, {3, {"03-resize", "03-resize-nonsquare"}},
            {4, {"04-layernorm", "05-projections"}}, {5, {"06-softmax", "06-attention"}},
            {6, {"07-adapter", "08-tower-tail", "09-fusion"}},
            {7, {"04-layernorm-backward", "05-projections-backward", "06-softmax-backward", "06-attention-backward",
                 "07-adapter-backward", "10-adamw"}},
            {8, {"10-query-count"}}, {9, {"11-minicpmv", "port-1", "port-2", "port-3", "port-4", "port-5"}}};
        std::vector<const Exercise*> listed;
        const auto print = [&](const Exercise& e, const std::string& lesson) {
            std::printf("%-24s %-9s %-41s writes %s\n", e.name.c_str(), lesson.c_str(), e.file().c_str(), e.writes.c_str());
            listed.push_back(&e);
        };
        for (const auto& [lesson, names] : lessons)
            for (const auto& n : names)
                for (const Exercise& e : all)
                    if (e.name == n) print(e, "lesson " + std::to_string(lesson));
        for (const Exercise& e : all)  // any the table does not place
            if (std::find(listed.begin(), listed.end(), &e) == listed.end()) print(e, "-");
        return 0;
    }
    const Exercise* chosen = nullptr;
    for (const Exercise& e : all)
        if (e.name == name) chosen = &e;
    if (!chosen) {
        std::fprintf(stderr, "qwenvl-exercise: no exercise named '%s' (qwenvl-exercise --list names them)\n", name.c_str());
        return 2;
    }
    const Exercise& e = *chosen;
    const bool answers = !e.answers.empty();
    try {
        if (!answers) fixtures();
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "qwenvl-exercise: %s\n", ex.what());
        return 2;
    }
    std::printf("exercise %s: %s (%s), %s (%s)\n", e.name.c_str(), e.writes.c_str(),
                answers && !answers_override.empty() ? answers_override.c_str() : e.file().c_str(),
                answers ? e.stage.c_str() : ("stage " + e.stage).c_str(), e.page.c_str());
    Report report(e.hints, all_failures);
    try {
        e.check(report);
    } catch (const std::exception& ex) {  // a data file of the course unreadable: a usage error, not a failure
        std::fprintf(stderr, "qwenvl-exercise: %s\n", ex.what());
        return 2;
    }
    if (report.failures() == 0 && !answers) {  // then the whole pass, which calls the student's functions where the adapter does
        if (e.name != "07-adapter") check_whole_forward(report);  // 07's own check is the whole forward pass
        if (e.backward) check_whole_backward(report);
    }
    if (report.failures() > 0) {
        if (!answers && e.name != "07-adapter")
            std::printf("  skip  the whole forward pass%s: it runs once the stage's own checks pass\n",
                        e.backward ? " and the whole backward pass" : "");
        report.print_hints();
        std::printf("exercise %s: FAILED (%zu failing check%s; %s%s)\n", e.name.c_str(), report.failures(),
                    report.failures() == 1 ? "" : "s",
                    answers ? "" : "stage ", e.stage.c_str());
        return 1;
    }
    std::printf("exercise %s: PASSED (%zu checks%s)\n", e.name.c_str(), report.checks(),
                answers ? "" : " against PyTorch's values");
    return 0;
}
