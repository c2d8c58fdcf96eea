// qwenvl-adapter compare: another implementation's intermediates against this project's, stage by stage, naming the
// first stage where they part and what usually causes a difference there (docs/compare.md).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include <nlohmann/json.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xreducer.hpp>
#include <xtensor/xstrided_view.hpp>
#include <xtensor/xview.hpp>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/compare.hpp"
#include "fast/adapter.hpp"
#include "fast/backward.hpp"
#include "fast/threads.hpp"
#include "io/checkpoint.hpp"
#include "io/errors.hpp"
#include "io/npy.hpp"
#include "stages/10_training.hpp"

namespace qwenvl::cli {

namespace {
const char* kCompareHelp =
    "usage: qwenvl-adapter compare --weights FILE [--weights MORE ...] --input X.npy --theirs DIR\n"
    "                              [--names MAP.json] [--grids HxW[,HxW...]] [--heads H] [--prefix P]\n"
    "                              [--mask M.npy] [--atol A] [--rtol R | --max-rel R] [--readable] [--gradients]\n"
    "\n"
    "Runs this project's forward pass on the weights and features with every intermediate recorded, reads\n"
    "another implementation's intermediates from DIR (one .npy per stage), and prints for each stage in order:\n"
    "the largest |theirs - ours|, that relative to the largest |ours|, the cosine similarity, and the median and\n"
    "largest distance in float32 ULPs. The first stage beyond |theirs - ours| <= atol + rtol |ours| is marked, with\n"
    "the usual causes of a difference there. Exit status 0: every stage found matches; 1: a stage differs.\n"
    "\n"
    "  --theirs DIR   the other implementation's intermediates: DIR/<stage>.npy under this project's names\n"
    "                 (pos_q, pos_k, ln_q, query_in, q, kv_proj, ln_kv, key_in, k, v, scores, attn_weights,\n"
    "                 attended, out, ln_post, proj; MiniCPM-V: key_padding_mask), or as --names maps them;\n"
    "                 a stage without a file is skipped\n"
    "  --names MAP    JSON {\"stages\": {\"ln_kv\": \"their_name.npy\", \"key_in\": {\"file\": \"k_in.npy\",\n"
    "                 \"layout\": \"LNE\"}}}: layout LNE is nn.MultiheadAttention's (L, N, E) order, permuted to\n"
    "                 (N, L, E); a file may also drop or add a batch axis of one\n"
    "  --atol A, --rtol R   the tolerance (default 1e-4 and 1e-3: float32 ports of the real checkpoint stay\n"
    "                 inside it, a bf16-rounded table does not; docs/precision.md)\n"
    "  --max-rel R    instead: a stage matches when max|theirs - ours| <= R max|ours| (the rel column), the rule\n"
    "                 for a 16-bit port, whose error is relative to a stage's scale, not to each value (values near\n"
    "                 zero defeat --rtol). Measured: a clean bf16 port stays within 0.08; --max-rel 0.1 passes it and\n"
    "                 still finds 13 of the 14 shipped mistakes (docs/precision.md#comparing-a-16-bit-port)\n"
    "  In a batch, a stage that differs is also shown image by image. MiniCPM-V's padding keys (rows past an\n"
    "  image's h*w patches, and the attention's columns there) are left out: a port may leave them anything.\n"
    "  Head-averaged attn_weights (N, Q, L), nn.MultiheadAttention's default, are compared with our heads' mean.\n"
    "  --gradients    also compares a port's backward: DIR/gradients/proj.npy is the gradient G its backward\n"
    "                 started from (the loss L = sum(proj * G)); DIR/gradients/<stage>.npy its dL/d each\n"
    "                 intermediate, x.npy dL/dx, DIR/gradients/parameters/<name>.npy dL/d each parameter by its\n"
    "                 checkpoint name without the model's prefix ('transformer.visual.' or 'resampler.')\n"
    "                 (tests/reference/dump_pytorch.py --gradients writes them all). Listed from the output back, as\n"
    "                 the backward computes them; the first one beyond tolerance is named with its usual causes.\n"
    "                 Rule: max|theirs - ours| <= 1e-3 max|ours| per gradient (--max-rel R to change it;\n"
    "                 --atol/--rtol apply the elementwise rule to both tables). MiniCPM-V's padding keys pass no\n"
    "                 gradient back: their gradients must be 0, and are compared (but for attn_weights').\n"
    "                 Forward files in DIR are compared first, as without --gradients; they may be left out\n"
    "  the other options as for run: --grids for non-square or MiniCPM-V's grids, --readable for the readable\n"
    "  stages instead of the fast path (the same trace on both; the fast path at full size takes seconds)\n";

struct TheirFile {
    std::string file;    // relative to --theirs
    std::string layout;  // "" or "LNE"
};

// The name map: our stage -> their file and layout. Every stage defaults to DIR/<stage>.npy.
std::map<std::string, TheirFile> read_name_map(const std::string& path) {
    std::map<std::string, TheirFile> map;
    if (path.empty()) return map;
    std::ifstream in = open_input(path);
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw InputError(path, std::string("not valid JSON (") + e.what() + ")");
    }
    if (!j.is_object() || !j.contains("stages") || !j["stages"].is_object())
        throw InputError(path, "expected {\"stages\": {\"<our stage>\": \"<file>.npy\" or {\"file\": ..., \"layout\": ...}}}");
    for (const auto& [stage, value] : j["stages"].items()) {
        TheirFile f;
        if (value.is_string()) {
            f.file = value.get<std::string>();
        } else if (value.is_object() && value.contains("file") && value["file"].is_string()) {
            f.file = value["file"].get<std::string>();
            f.layout = value.value("layout", "");
            if (f.layout != "" && f.layout != "LNE" && f.layout != "NLE")
                throw InputError(path, "stage '" + stage + "': unknown layout '" + f.layout + "' (LNE or NLE)");
        } else {
            throw InputError(path, "stage '" + stage + "': expected a file name or {\"file\": ..., \"layout\": ...}");
        }
        if (describe_stage(stage).empty()) throw InputError(path, "'" + stage + "' is not one of this project's stages");
        map[stage] = f;
    }
    return map;
}

// Their tensor in our layout: LNE permuted to NLE; then a batch axis of one dropped or added, or the same values
// reshaped when only the shape's split differs. `note` says what was done; empty shape on failure.
xt::xarray<float> to_our_layout(xt::xarray<float> theirs, const std::string& layout, const std::vector<std::size_t>& ours,
                                bool query_side, std::string& note) {
    if (layout == "LNE") {
        if (theirs.dimension() != 3) return {};
        theirs = xt::xarray<float>(xt::transpose(theirs, {1, 0, 2}));
        note = "(L, N, E) permuted";
    }
    const std::vector<std::size_t> shape = shape_of(theirs);
    if (shape == ours) return theirs;
    std::size_t count = 1;
    for (std::size_t d : ours) count *= d;
    if (theirs.size() == count) {
        // a batch axis of one dropped or added is no change of layout; any other reshape may hide one
        std::vector<std::size_t> without_ones = shape, ours_without_ones = ours;
        if (!without_ones.empty() && without_ones[0] == 1) without_ones.erase(without_ones.begin());
        if (!ours_without_ones.empty() && ours_without_ones[0] == 1) ours_without_ones.erase(ours_without_ones.begin());
        note += std::string(note.empty() ? "" : ", ") +
                (without_ones == ours_without_ones ? "a batch axis of one " + std::string(shape.size() < ours.size() ? "added" : "dropped")
                                                   : "reshaped from " + shape_string(shape));
        return xt::xarray<float>(xt::reshape_view(theirs, ours));
    }
    // (N, Q, E) of the same query rows repeated per image (nn.MultiheadAttention's query): their first image. Only
    // the query side is the same for every image; another stage's images differ.
    if (query_side && theirs.dimension() == ours.size() + 1 && std::vector<std::size_t>(shape.begin() + 1, shape.end()) == ours) {
        note += std::string(note.empty() ? "" : ", ") + "their first of " + std::to_string(shape[0]);
        return xt::xarray<float>(xt::view(theirs, 0));
    }
    return {};
}

const char* kLayerNormEps = "LayerNorm eps (1e-6 here; nn.LayerNorm's default is 1e-5) or eps outside the square root";
const char* kLayerNormUnbiased = "the unbiased variance (divided by E - 1) instead of the biased one";

// What usually makes a port differ at each stage (issues of llama.cpp, vLLM, OpenVINO and others; docs/compare.md).
const std::map<std::string, std::vector<std::string>>& usual_causes() {
    static const std::map<std::string, std::vector<std::string>> causes = {
        {"pos_q",
         {"the sines and cosines swapped or interleaved (MAE's table: all sines, then all cosines)",
          "the w/h order of the two halves: with numpy's meshgrid 'xy' the FIRST half encodes the column w",
          "a stored table rounded to bf16 (errors up to 2^-9 = 1.95e-3) or computed in float64",
          "MiniCPM-V 2.5/2.6 has no query table: a port that adds one differs from q on"}},
        {"pos_k",
         {"the resize convention: bicubic with align_corners=False, A = -0.75, the half-pixel offset, no antialias",
          "h and w exchanged for a non-square grid (F.interpolate's size is (h, w))",
          "MiniCPM-V: the table sliced [:h, :w] by rows and columns, not its first h*w rows, and not resized",
          "the table of the wrong image in a batch of mixed sizes"}},
        {"key_padding_mask",
         {"the mask inverted: PyTorch's key_padding_mask is TRUE where a key is padding and ignored",
          "the lengths: image n has h*w patches, the rest of its rows are padding"}},
        {"ln_q", {kLayerNormEps, kLayerNormUnbiased, "ln_q's weight and bias exchanged, or ln_kv's used"}},
        {"query_in", {"the query table added to the queries or not (Qwen-VL adds the un-resized 16 x 16 table)",
                      "the resized key table added instead of the query table"}},
        {"q", {"in_proj split in the wrong order (rows [0, E) are W_q, [E, 2E) W_k, [2E, 3E) W_v)",
               "the weight used untransposed (nn.Linear computes x W^T + b) or the bias left out",
               "MiniCPM-V: a position table added to the queries"}},
        {"kv_proj", {"kv_proj's weight untransposed (it is (E, Kv), applied as x W^T)",
                     "kv_proj applied when Kv == E (it is nn.Identity there)", "the features of another image or layer"}},
        {"ln_kv", {kLayerNormEps, kLayerNormUnbiased, "ln_kv's parameters exchanged with ln_q's"}},
        {"key_in", {"the key table missing, or added after the key projection instead of before it"}},
        {"k", {"in_proj's rows [E, 2E) not the ones used", "the weight untransposed or the bias left out"}},
        {"v", {"the position table added to the values too (only the keys get it)", "in_proj's rows [2E, 3E)"}},
        {"scores",
         {"q scaled by 1/sqrt(Dh) or not (PyTorch scales q before the product; Dh = E / H, not E)",
          "the heads split wrongly: head h is channels [h Dh, (h+1) Dh) of q and k",
          "a mask already added (this stage is before the mask)"}},
        {"attn_weights",
         {"the mask: inverted, added after the softmax, or for the wrong image",
          "the softmax over the queries instead of the keys", "bf16 scores before the softmax"}},
        {"attended", {"the heads concatenated in another order, or weights @ v transposed"}},
        {"out", {"out_proj's weight untransposed or its bias left out"}},
        {"ln_post", {kLayerNormEps, kLayerNormUnbiased, "ln_post's weight and bias exchanged"}},
        {"proj", {"proj used as an nn.Linear weight (x proj^T) instead of x @ proj: it is a bare parameter"}},
    };
    return causes;
}

// A ULP count in at most 8 characters: "12", "1.07e+09".
std::string ulps(double count) {
    char buf[32];
    std::snprintf(buf, sizeof buf, count < 1e6 ? "%.0f" : "%.2e", count);
    return buf;
}

// A table row's measures: max|a-b|, rel, cosine and the ULP distances (`-` where ULPs mean nothing: a 0/1 mask).
std::string measures(const Agreement& g, bool with_ulps = true) {
    char line[160];
    if (g.non_finite)
        std::snprintf(line, sizeof line, "%zu NaN or infinite values", g.non_finite);
    else
        std::snprintf(line, sizeof line, "%10.3g %10.3g %12.8f %16s", g.max_abs, g.max_rel, g.cosine,
                      with_ulps ? (ulps(g.ulp_median) + "/" + ulps(g.ulp_max)).c_str() : "-");
    return line;
}

double parse_tolerance(const Args& args, const std::string& flag, double fallback) {
    if (!args.has(flag)) return fallback;
    const std::string text = args.get(flag);
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || !(value >= 0) || !std::isfinite(value))
        throw UsageError("compare: " + flag + " takes a non-negative number, got '" + text + "'");
    return value;
}
std::string number(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2g", value);
    return text;
}

// The rule a stage must meet: elementwise |theirs - ours| <= atol + rtol |ours|, or with max_rel > 0 the normwise
// max|theirs - ours| <= max_rel max|ours|.
struct Tolerance {
    double atol = 1e-4, rtol = 1e-3, max_rel = 0.0;
};
bool within(const xt::xarray<float>& theirs, const xt::xarray<float>& ours, const Tolerance& t) {
    if (theirs.shape() != ours.shape()) return false;
    if (t.max_rel > 0) {
        const Agreement g = agreement(theirs, ours);
        return g.non_finite == 0 && g.max_rel <= t.max_rel;
    }
    return compare(theirs, ours, t.atol, t.rtol).ok();
}

// Image by image, for a batched tensor that differs: a port may get one image's grid, table or mask wrong and the
// rest right. `indent`: the width of the table's first column.
void print_by_image(const xt::xarray<float>& theirs, const xt::xarray<float>& mine, const Tolerance& tol, int indent) {
    std::string images;
    for (std::size_t n = 0; n < theirs.shape(0); ++n) {
        const xt::xarray<float> a = xt::view(theirs, n), b = xt::view(mine, n);
        char item[64];
        std::snprintf(item, sizeof item, "%s%zu %s %.3g", n ? " | " : "", n, within(a, b, tol) ? "ok" : "DIFFERS",
                      agreement(a, b).max_abs);
        images += item;
    }
    std::printf("  %-*s by image (max|a-b|): %s\n", indent, "", images.c_str());
}

// MiniCPM-V's batches: image n's keys from its h*w patches on are padding, whatever a port leaves there (a port that
// runs each image alone leaves zeros). The per-key stages' padding rows (axis 1) and the attention's padding columns
// (the last axis: (N, H, Q, L), or (N, Q, L) averaged over the heads) are set to 0, so that only real keys are
// compared. Returns whether anything was set.
bool zero_padding(const std::string& stage, const std::vector<Grid>& grids, xt::xarray<float>& t) {
    static const std::vector<std::string> per_key = {"pos_k", "kv_proj", "ln_kv", "key_in", "k", "v", "x"};
    const bool keys_are_rows = std::find(per_key.begin(), per_key.end(), stage) != per_key.end();
    const bool keys_are_columns = stage == "scores" || stage == "attn_weights";
    if ((!keys_are_rows && !keys_are_columns) || t.dimension() < 2 || t.shape(0) != grids.size()) return false;
    const std::size_t axis = keys_are_rows ? 1 : t.dimension() - 1, L = t.shape(axis);
    bool set = false;
    for (std::size_t n = 0; n < grids.size(); ++n) {
        if (grids[n].cells() >= L) continue;
        const std::size_t real = grids[n].cells();
        if (keys_are_rows) xt::view(t, n, xt::range(real, L)) = 0.0f;
        else xt::strided_view(t, {n, xt::ellipsis(), xt::range(real, L)}) = 0.0f;
        set = true;
    }
    return set;
}

// nn.MultiheadAttention returns the weights averaged over the heads unless asked not to: (N, Q, L), or (Q, L) for
// one image, against our (N, H, Q, L). When theirs has that shape, our heads' mean is what to compare it with.
bool head_averaged(const std::vector<std::size_t>& theirs, const std::vector<std::size_t>& ours) {
    if (ours.size() != 4) return false;
    const std::vector<std::size_t> averaged = {ours[0], ours[2], ours[3]};
    return theirs == averaged || (ours[0] == 1 && theirs == std::vector<std::size_t>{ours[2], ours[3]});
}

// LayerNorm over the last axis of x, in double, as a port may get it wrong: the variance's divisor E or E - 1 (the
// unbiased one), eps inside the square root or outside it.
xt::xarray<float> layer_norm_variant(const xt::xarray<float>& x, const Vector& gamma, const Vector& beta, double eps,
                                     bool unbiased, bool eps_outside) {
    const std::size_t E = x.shape().back(), rows = x.size() / E;
    xt::xarray<float> y = xt::xarray<float>::from_shape(x.shape());
    for (std::size_t r = 0; r < rows; ++r) {
        const float* in = x.data() + r * E;
        double mean = 0.0, var = 0.0;
        for (std::size_t c = 0; c < E; ++c) mean += in[c];
        mean /= static_cast<double>(E);
        for (std::size_t c = 0; c < E; ++c) var += (in[c] - mean) * (in[c] - mean);
        var /= static_cast<double>(unbiased ? E - 1 : E);
        const double scale = eps_outside ? 1.0 / (std::sqrt(var) + eps) : 1.0 / std::sqrt(var + eps);
        for (std::size_t c = 0; c < E; ++c)
            y.data()[r * E + c] = static_cast<float>((in[c] - mean) * scale * gamma(c) + beta(c));
    }
    return y;
}

// A LayerNorm stage's usual mistakes, made on our own input to the stage: what each would give.
struct TriedMistake {
    std::string what;
    std::string kind;  // "eps" or "unbiased": the usual cause it tests; "" for another
    xt::xarray<float> values;
};
// The small tensors compare reads besides the trace: the learned queries and the three LayerNorms' parameters.
struct SmallTensors {
    Matrix query;
    Vector ln_q_weight, ln_q_bias, ln_kv_weight, ln_kv_bias, ln_post_weight, ln_post_bias;
};
std::vector<TriedMistake> layer_norm_mistakes(const std::string& stage, const Trace& ours, const SmallTensors& m,
                                              double eps) {
    xt::xarray<float> input;
    const Vector *gamma = nullptr, *beta = nullptr;
    if (stage == "ln_q") input = m.query, gamma = &m.ln_q_weight, beta = &m.ln_q_bias;
    else if (stage == "ln_kv") input = ours.get("kv_proj"), gamma = &m.ln_kv_weight, beta = &m.ln_kv_bias;
    else if (stage == "ln_post") input = ours.get("out"), gamma = &m.ln_post_weight, beta = &m.ln_post_bias;
    else return {};
    return {{"eps 1e-5 (nn.LayerNorm's default) instead of " + number(eps), "eps",
             layer_norm_variant(input, *gamma, *beta, 1e-5, false, false)},
            {"eps outside the square root", "eps", layer_norm_variant(input, *gamma, *beta, eps, false, true)},
            {"the unbiased variance (divided by E - 1)", "unbiased", layer_norm_variant(input, *gamma, *beta, eps, true, false)},
            {"the weight and the bias exchanged", "", layer_norm_variant(input, *beta, *gamma, eps, false, false)}};
}

// ---------------------------------------------------------------------------------------------------------------
// --gradients: a port's backward against this project's (stages 08 and 07 backward, or the fast path's), on the loss
// L = sum(proj * G) for the G the port started from (docs/compare.md#gradients).

// The default rule for gradients: normwise. A gradient sums many terms of both signs, so its entries near zero carry
// an absolute error of the size of its largest terms, which an elementwise rtol cannot allow for.
constexpr double kGradientMaxRel = 1e-3;

// What usually makes a port's backward differ at each gradient (the gradient of the stage's output: dL/d name).
const std::map<std::string, std::vector<std::string>>& usual_gradient_causes() {
    static const std::string ln_backward =
        "'s backward: dL/dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = gamma dL/dy; a mean term left out, "
        "or gamma not applied to dL/dy";
    static const std::map<std::string, std::vector<std::string>> causes = {
        {"ln_post", {"y = ln_post @ proj, so dL/d ln_post = dL/dy proj^T: proj not transposed here, or used as an "
                     "nn.Linear weight",
                     "the backward not started from gradients/proj.npy: L = sum(proj * G), so dL/d proj = G"}},
        {"out", {"ln_post" + ln_backward, "rstd with another eps or the unbiased variance (the forward's own choice)"}},
        {"attended", {"out = attended W_o^T + b_o, so dL/d attended = dL/d out W_o: W_o^T here is the mistake"}},
        {"attn_weights", {"per head: dL/dP_h = dL/d attended_h v_h^T, with head h's channels [h Dh, (h+1) Dh)",
                          "the heads' channels split another way than the forward's"}},
        {"scores", {"the softmax's backward: dS = P * (dP - sum over the keys of P dP): the row sum left out, or taken "
                    "over the queries",
                    "masked keys: P is 0 there, and so is their gradient"}},
        {"k", {"dL/dk_h = dS_h^T (q_h / sqrt(Dh)): the 1/sqrt(Dh) left out, or dS untransposed"}},
        {"v", {"dL/dv_h = P_h^T dL/d attended_h: P untransposed, or the heads' channels"}},
        {"key_in", {"k = key_in W_k^T + b_k, so dL/d key_in = dL/dk W_k, W_k being in_proj's rows [E, 2E)"}},
        {"ln_kv", {"X feeds the keys (through key_in) and the values: dL/dX = dL/d key_in + dL/dv W_v, both paths "
                   "summed",
                   "W_v is in_proj's rows [2E, 3E)"}},
        {"kv_proj", {"ln_kv" + ln_backward, "rstd with another eps or the unbiased variance (the forward's own choice)"}},
        {"q", {"the queries are shared by every image: dL/dq sums every image's dS_h k_h / sqrt(Dh), not the first "
               "image's or their mean",
               "the 1/sqrt(Dh) left out of q's gradient"}},
        {"query_in", {"q = query_in W_q^T + b_q, so dL/d query_in = dL/dq W_q, W_q being in_proj's rows [0, E)"}},
        {"ln_q", {"the query table is added, so dL/d ln_q = dL/d query_in, unchanged"}},
        {"x", {"kv_proj is x W_kv^T, so dL/dx = dL/d kv_proj W_kv (the weight as stored, not transposed)",
               "Kv == E: kv_proj is the identity, and dL/dx = dL/d kv_proj"}},
        {"parameter", {"a weight's gradient is dL/dy^T times its input, summed over every image's rows: transposed, or "
                       "one image's only",
                       "a bias's gradient is dL/dy summed over the rows and the images",
                       "a LayerNorm's weight gets sum(dL/dy xhat) and its bias sum(dL/dy); proj gets ln_post^T dL/dy",
                       "Qwen-VL's pos_embed is frozen (requires_grad False upstream): it has no gradient"}},
    };
    return causes;
}

// This project's side: the readable path's weights loaded, or the fast path's mapped in place, as `run` maps them (a
// full-size F32 checkpoint loaded whole took 1.0 s of compare's 3 s, all of it copying into fresh pages), and the
// small tensors the LayerNorm tries read.
struct OurWeights {
    bool readable = false;
    LoadedAdapter loaded;  // --readable
    MappedAdapter mapped;  // the fast path
    SmallTensors small;
    const AdapterConfig& config() const { return readable ? loaded.config : mapped.config; }
    bool has_tail() const { return readable ? loaded.has_tail : mapped.has_tail; }
};
Vector copy_of(fast::Values v) {
    Vector out = Vector::from_shape({v.size});
    std::copy(v.data, v.data + v.size, out.data());
    return out;
}
OurWeights our_weights(const WeightFiles& files, const std::string& prefix, std::size_t heads, bool readable) {
    OurWeights w;
    w.readable = readable;
    if (readable) {
        w.loaded = load_adapter(files, prefix, heads, true);
        const AdapterWeights& a = w.loaded.weights;
        w.small = {a.query, a.ln_q_weight, a.ln_q_bias, a.ln_kv_weight, a.ln_kv_bias, w.loaded.tail.ln_post_weight,
                   w.loaded.tail.ln_post_bias};
        return w;
    }
    w.mapped = map_adapter(files, prefix, heads, true);
    const fast::Weights& a = w.mapped.weights;
    w.small = {fast::copy_of(a.query), copy_of(a.ln_q_weight), copy_of(a.ln_q_bias), copy_of(a.ln_kv_weight),
               copy_of(a.ln_kv_bias), copy_of(w.mapped.tail.ln_post_weight), copy_of(w.mapped.tail.ln_post_bias)};
    return w;
}
// The forward pass with every intermediate recorded, on either path.
void our_trace(const OurWeights& m, const Tensor3& x, const Matrix* mask, const std::vector<Grid>& grids, Trace& trace) {
    if (m.readable) traced_forward(true, m.loaded.weights, m.config(), m.loaded.tail, x, mask, trace, grids);
    else traced_fast_forward(m.mapped.weights, m.config(), m.mapped.tail, x, mask, trace, grids);
}

// Our gradients for their G: the forward's trace `forward` and the backward on the readable stages or the fast path.
// Fills `gradients` with dL/d each intermediate (and x) and returns dL/d each parameter by checkpoint name.
NamedTensors our_gradients(const OurWeights& m, const Tensor3& x, const Trace& forward, const Tensor3& d_y,
                           Trace& gradients) {
    const AdapterConfig& c = m.config();
    const Tensor3 out = forward.get("out");
    if (m.readable) {
        const TailGradients tail = tower_tail_backward(m.loaded.tail, out, d_y, c.eps, &gradients);
        return named_gradients(adapter_backward(m.loaded.weights, c, x, forward, tail.d_out, &gradients), tail);
    }
    const fast::OwnThreads own;
    const TailGradients tail = fast::tower_tail_backward(m.mapped.tail, out, d_y, c.eps, &gradients);
    return named_gradients(fast::adapter_backward(m.mapped.weights, c, x, forward, tail.d_out, &gradients), tail);
}

struct GradientTable {
    std::size_t found = 0, differ = 0;
    std::string first_bad;     // "scores", or "parameter proj"
    std::string skipped_from;  // their first bad gradient equals our gradient of this earlier one
    bool first_misfits = false;
    std::string in_proj_parts;  // the first bad one is in_proj's: its q, k and v blocks, each ok or not
    std::vector<std::string> unknown;  // their files in gradients/ that name no gradient of ours
};

// In_proj's gradient packs three (its weight's rows, or its bias's entries, [0, E), [E, 2E), [2E, 3E)): which of
// them differ tells which of q, k and v's backward is wrong.
std::string in_proj_parts(const xt::xarray<float>& theirs, const xt::xarray<float>& ours, const Tolerance& tol) {
    const std::size_t E = ours.shape(0) / 3;
    std::string parts;
    const char* names[3] = {"q", "k", "v"};
    for (std::size_t p = 0; p < 3; ++p) {
        const xt::xarray<float> a = xt::view(theirs, xt::range(p * E, (p + 1) * E)), b = xt::view(ours, xt::range(p * E, (p + 1) * E));
        char item[96];
        std::snprintf(item, sizeof item, "%s%s [%zu, %zu): %s %.3g", p ? " | " : "", names[p], p * E, (p + 1) * E,
                      within(a, b, tol) ? "ok" : "DIFFERS", agreement(a, b).max_abs);
        parts += item;
    }
    return parts;
}

// The gradient table: ours in the backward's order, then the parameters', against DIR/gradients/.
GradientTable compare_gradient_table(const std::string& folder, const Trace& ours, const NamedTensors& params,
                                     const Tolerance& tol, std::size_t N, const std::vector<Grid>* padded) {
    GradientTable t;
    std::vector<std::pair<std::string, const xt::xarray<float>*>> rows;  // (label, ours): not copies (full size: 500 MB)
    for (const auto& name : ours.names()) rows.push_back({name, &ours.get(name)});
    for (const auto& [name, value] : params) rows.push_back({"parameter " + name, &value});
    std::printf("\n  %-40s %-20s %10s %10s %12s %16s  %s\n", "gradient dL/d", "shape", "max|a-b|", "rel", "cosine",
                "ULPs median/max", "");
    std::vector<std::size_t> seen;  // rows before the current one
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const std::string& label = rows[i].first;
        const xt::xarray<float>& mine = *rows[i].second;
        const bool parameter = label.rfind("parameter ", 0) == 0;
        const std::string file = parameter ? "parameters/" + label.substr(10) + ".npy" : label + ".npy";
        const std::string path = folder + "/" + file;
        if (!std::filesystem::exists(path)) {
            std::printf("  %-40s %-20s %s\n", label.c_str(), shape_string(shape_of(mine)).c_str(), "(not in their dump)");
            seen.push_back(i);
            continue;
        }
        ++t.found;
        std::string note;
        xt::xarray<float> raw = read_npy_float(path);
        const std::vector<std::size_t> raw_shape = shape_of(raw);
        xt::xarray<float> theirs = to_our_layout(std::move(raw), "", shape_of(mine), false, note);
        // MiniCPM-V: a padding key's gradient is 0 (PyTorch's exactly: a masked key passes nothing back), and a port's
        // must be too, or it flows on into the parameters' gradients and dL/dx. Compared whole, but for dL/d
        // attn_weights, whose padding columns are dL/d attended v^T: whatever the port left in v's padding rows.
        xt::xarray<float> mine_kept;
        const bool cleared = padded && label == "attn_weights" && theirs.dimension() != 0 && zero_padding(label, *padded, theirs);
        if (cleared) {
            mine_kept = mine;
            zero_padding(label, *padded, mine_kept);
            note += std::string(note.empty() ? "" : ", ") + "padding keys left out";
        }
        const xt::xarray<float>& ours_here = cleared ? mine_kept : mine;
        bool ok = false;
        std::string line;
        if (theirs.dimension() == 0) {
            line = "shape " + shape_string(raw_shape) + " in " + file + " does not fit";
        } else {
            line = measures(agreement(theirs, ours_here));
            ok = within(theirs, ours_here, tol);
            if (!ok && padded) {  // wrong on the padding keys alone?
                xt::xarray<float> theirs_real = theirs, ours_real = ours_here;
                if (zero_padding(label, *padded, theirs_real) && zero_padding(label, *padded, ours_real) &&
                    within(theirs_real, ours_real, tol))
                    note += std::string(note.empty() ? "" : ", ") +
                            "wrong on the padding keys only: their gradient must be 0, as a masked key passes nothing back";
            }
        }
        const bool first = !ok && t.first_bad.empty();
        if (!ok) ++t.differ;
        if (first) {
            t.first_bad = label;
            t.first_misfits = theirs.dimension() == 0;
            if (!t.first_misfits) {
                if (label.find("in_proj_") != std::string::npos && ours_here.shape(0) % 3 == 0)
                    t.in_proj_parts = in_proj_parts(theirs, ours_here, tol);
                // a backward step left out passes its gradient on: theirs then equals one of ours before it
                for (std::size_t earlier : seen)
                    if (t.skipped_from.empty() && within(theirs, *rows[earlier].second, tol)) t.skipped_from = rows[earlier].first;
            }
        }
        std::printf("  %-40s %-20s %s  %s%s%s\n", label.c_str(), shape_string(shape_of(mine)).c_str(), line.c_str(),
                    ok ? "ok" : "DIFFERS", first ? "   <- the first gradient beyond tolerance" : "",
                    note.empty() ? "" : ("   [" + note + "]").c_str());
        if (!ok && !parameter && theirs.dimension() != 0 && N > 1 && theirs.dimension() >= 3 && theirs.shape(0) == N)
            print_by_image(theirs, ours_here, tol, 40);
        seen.push_back(i);
    }
    // Their files that name no gradient of ours: a misspelt or prefixed name would otherwise go unchecked, silently
    for (const std::string sub : {"", "/parameters"}) {
        std::error_code ec;
        for (const auto& entry : std::filesystem::directory_iterator(folder + sub, ec)) {
            const std::string file = entry.path().filename().string();
            if (!entry.is_regular_file() || entry.path().extension() != ".npy" || (sub.empty() && file == "proj.npy")) continue;
            const std::string name = file.substr(0, file.size() - 4);
            const std::string label = sub.empty() ? name : "parameter " + name;
            if (std::none_of(rows.begin(), rows.end(), [&](const auto& row) { return row.first == label; }))
                t.unknown.push_back((sub.empty() ? "" : "parameters/") + file);
        }
    }
    for (const auto& file : t.unknown) {
        const bool prefixed = file.find("transformer.visual.") != std::string::npos || file.find("resampler.") != std::string::npos;
        std::printf("  (their gradients/%s names no gradient here, and is not compared%s)\n", file.c_str(),
                    prefixed ? "; a parameter's file name drops the model's prefix" : "");
    }
    return t;
}

// The verdict's note on `count` files listed as not compared, which name no `what` here (said on the line: a partial
// check must not read as a whole one). Empty for none.
std::string not_compared(std::size_t count, const char* what) {
    if (count == 0) return "";
    return " (" + std::to_string(count) + " of their files " + (count == 1 ? "names" : "name") + " no " + what +
           " here and " + (count == 1 ? "was" : "were") + " not compared: listed above)";
}

// How many single-letter insertions, deletions or replacements turn a into b (a misspelt file name's distance).
std::size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = above;
        }
    }
    return row[b.size()];
}

// The verdict on the gradients' table: 0 when every gradient found agrees, else 1 with the usual causes.
int gradient_verdict(const GradientTable& t, const Tolerance& tol) {
    if (t.first_bad.empty()) return 0;
    const bool parameter = t.first_bad.rfind("parameter ", 0) == 0;
    std::printf("DIFFERS: %zu of %zu gradients found are beyond tolerance; the first is dL/d %s\n", t.differ, t.found,
                t.first_bad.c_str());
    if (t.first_misfits) {
        std::printf("their file for dL/d %s has a shape that is not ours, with or without a batch axis of one: a\n"
                    "gradient has the shape of what it is the gradient of\n", t.first_bad.c_str());
        return 1;
    }
    if (!t.in_proj_parts.empty()) std::printf("by part: %s\n", t.in_proj_parts.c_str());
    std::printf("usual causes of a difference at dL/d %s:\n", t.first_bad.c_str());
    if (!t.skipped_from.empty())
        std::printf("  - their dL/d %s equals our dL/d %s, which comes before it: a backward step left out, or a path\n"
                    "    into it not added\n", t.first_bad.c_str(), t.skipped_from.c_str());
    if (parameter) {  // the parameter's own equation first
        static const std::map<std::string, std::string> own = {
            {"proj", "dL/d proj = ln_post^T dL/dy summed over the images; proj is (E, E): a transposed one fits the shape"},
            {"query", "dL/d query comes through ln_q's backward: dL/d ln_q, then the LayerNorm's dx"},
            {"attn.in_proj_weight", "packed as stored: rows [0, E) dL/dq^T query_in (MiniCPM-V: ln_q), [E, 2E) "
                                    "dL/dk^T key_in, [2E, 3E) dL/dv^T X, each summed over the images"},
            {"attn.in_proj_bias", "packed as stored: [0, E) from q, [E, 2E) from k (0 in exact arithmetic: the "
                                            "softmax ignores it), [2E, 3E) from v"},
            {"kv_proj.weight", "dL/d kv_proj.weight = dL/d kv_proj^T x summed over the images, (E, Kv)"}};
        std::string name = t.first_bad.substr(10);  // Qwen-VL's adapter's under attn_pool., MiniCPM-V's bare
        if (name.rfind("attn_pool.", 0) == 0) name = name.substr(10);
        const auto it = own.find(name);
        if (it != own.end()) std::printf("  - %s\n", it->second.c_str());
    }
    const auto causes = usual_gradient_causes().find(parameter ? "parameter" : t.first_bad);
    if (causes != usual_gradient_causes().end())
        for (const auto& cause : causes->second) std::printf("  - %s\n", cause.c_str());
    if (parameter)
        std::printf("(every intermediate's gradient matched: the mistake is in this parameter's own gradient)\n");
    else if (tol.max_rel > 0)
        std::printf("(every gradient before it matched within %g of its largest value: the mistake is in the backward\n"
                    " step that makes this gradient, or one before it smaller than the tolerance)\n", tol.max_rel);
    else
        std::printf("(every gradient before it matched: the mistake is in the backward step that makes this one)\n");
    return 1;
}
}  // namespace

int compare_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("compare", argv,
                                 {"--weights", "--input", "--theirs", "--names", "--grids", "--heads", "--prefix", "--mask",
                                  "--atol", "--rtol", "--max-rel"},
                                 {"--readable", "--gradients"});
    if (args.help) return std::printf("%s", kCompareHelp), 0;
    // every stage's tensors, read, copied and freed, kept in the heap: full size, 5.3 -> 2.7 s; and 768 MiB of it asked
    // for as huge pages (below the trim threshold, so that freeing it keeps it) (docs/performance.md#the-trace)
    keep_freed_memory(std::size_t(768) << 20);
    if (!args.has("--weights")) throw UsageError("compare: --weights is required (see compare --help)");
    const std::string input = args.required("compare", "--input");
    const std::string theirs_dir = args.required("compare", "--theirs");
    Tolerance tol;
    tol.atol = parse_tolerance(args, "--atol", 1e-4);
    tol.rtol = parse_tolerance(args, "--rtol", 1e-3);
    tol.max_rel = parse_tolerance(args, "--max-rel", 0.0);
    if (args.has("--max-rel") && (args.has("--atol") || args.has("--rtol")))
        throw UsageError("compare: --max-rel replaces --atol and --rtol: give one rule");
    if (args.has("--max-rel") && !(tol.max_rel > 0)) throw UsageError("compare: --max-rel takes a positive number");
    const std::size_t given = args.has("--heads") ? parse_count("compare", "--heads", args.get("--heads")) : 0;
    if (!std::filesystem::exists(theirs_dir)) throw InputError(theirs_dir, "no such folder (--theirs: their .npy intermediates)");
    if (!std::filesystem::is_directory(theirs_dir)) throw InputError(theirs_dir, "not a folder of .npy intermediates");
    const std::map<std::string, TheirFile> names = read_name_map(args.get("--names"));

    WeightFiles files;
    for (const auto& path : args.values.at("--weights")) files.add(path);
    const bool readable = args.flags.at("--readable");
    const OurWeights m = our_weights(files, args.get("--prefix", kDefaultPrefix), heads_for(given, files), readable);
    const AdapterConfig& c = m.config();
    std::vector<Grid> grids;
    if (args.has("--grids")) grids = parse_grids("compare", "--grids", args.get("--grids"));
    const Tensor3 x = read_features(input, c.kv_dim, nullptr, false);  // batch_grids checks the grids against L
    grids = batch_grids("compare", input, grids, x, c.model);
    const std::size_t N = x.shape(0);
    Matrix mask;
    if (args.has("--mask")) mask = read_mask(args.get("--mask"), c.n_queries, x.shape(1));
    Trace ours;
    if (!m.has_tail()) throw InputError(files.files().front(), "has no ln_post and proj: compare needs the whole resampler");
    our_trace(m, x, args.has("--mask") ? &mask : nullptr, grids, ours);

    // --gradients: our backward from their G, before anything is printed (a missing G is an error, not a table)
    const bool gradients = args.flags.at("--gradients");
    Trace our_grads;
    NamedTensors param_grads;
    Tolerance gradient_tol = tol;
    if (gradients) {
        const std::string g_path = theirs_dir + "/gradients/proj.npy";
        if (!std::filesystem::exists(g_path))
            throw InputError(theirs_dir, "has no gradients/proj.npy: --gradients needs G = dL/d proj, the gradient the "
                                         "port's backward started from (dump_pytorch.py --gradients writes it)");
        std::string note;
        xt::xarray<float> raw = read_npy_float(g_path);
        const std::vector<std::size_t> raw_shape = shape_of(raw);
        const xt::xarray<float> g = to_our_layout(std::move(raw), "", shape_of(ours.get("proj")), false, note);
        if (g.dimension() == 0)
            throw InputError(g_path, "has shape " + shape_string(raw_shape) + ", not proj's " +
                                         shape_string(shape_of(ours.get("proj"))));
        if (!xt::all(xt::isfinite(g)))
            throw InputError(g_path, "holds NaN or infinite values: G = dL/d proj, the backward's start, must be finite");
        param_grads = our_gradients(m, x, ours, Tensor3(g), our_grads);
        if (c.model == Model::minicpm_v)  // its parameters by its own checkpoint's names, without resampler.
            for (auto& [name, value] : param_grads)
                if (name.rfind("attn_pool.", 0) == 0) name = name.substr(10);
        if (!args.has("--atol") && !args.has("--rtol") && !args.has("--max-rel")) gradient_tol = Tolerance{0, 0, kGradientMaxRel};
    }
    // A stage's file in their dump: the one --names maps it to, else <stage>.npy
    const auto their_file = [&](const std::string& stage) {
        const auto it = names.find(stage);
        return it != names.end() ? it->second : TheirFile{stage + ".npy", ""};
    };
    // Their forward files, if any: a dump of gradients alone skips the forward's table
    bool any_forward = false;
    for (const auto& stage : ours.names())
        any_forward = any_forward || std::filesystem::exists(theirs_dir + "/" + their_file(stage).file);

    std::printf("compare: %s's resampler on %s (%s path) against %s\n", model_name(c.model), input.c_str(),
                readable ? "readable" : "fast", theirs_dir.c_str());
    if (tol.max_rel > 0)
        std::printf("  a stage matches when max|theirs - ours| <= %g max|ours|\n", tol.max_rel);
    else
        std::printf("  a stage matches when |theirs - ours| <= %g + %g |ours| everywhere\n", tol.atol, tol.rtol);
    if (gradients && gradient_tol.max_rel > 0)
        std::printf("  a gradient matches when max|theirs - ours| <= %g max|ours|\n", gradient_tol.max_rel);
    else if (gradients)
        std::printf("  a gradient matches when |theirs - ours| <= %g + %g |ours| everywhere\n", gradient_tol.atol,
                    gradient_tol.rtol);
    std::printf("\n");
    const std::vector<std::string> forward_stages = gradients && !any_forward ? std::vector<std::string>{} : ours.names();
    if (forward_stages.empty()) std::printf("  (no forward intermediates in their dump: the gradients alone)\n");
    else std::printf("  %-17s %-20s %10s %10s %12s %16s  %s\n", "stage", "shape", "max|a-b|", "rel", "cosine",
                "ULPs median/max", "");
    // The query side has no batch axis; Qwen-VL's key table neither (MiniCPM-V's has one, a table per image).
    auto batched = [&](const std::string& stage) {
        return !(stage == "pos_q" || stage == "ln_q" || stage == "query_in" || stage == "q" ||
                 (stage == "pos_k" && c.model == Model::qwen_vl));
    };
    std::string first_bad, first_note, skipped_from;
    xt::xarray<float> first_theirs, first_ours;  // the first differing stage as compared (padding left out)
    bool first_misfits = false;                  // its file did not fit the stage's shape
    std::vector<std::size_t> first_raw_shape;    // that file's shape
    std::size_t found = 0, differ = 0, misfit = 0;  // misfit: files of a shape that does not fit, nothing compared
    std::vector<std::string> seen;     // the stages before the current one, in order
    std::vector<std::string> missing;  // the stages without a file in their dump
    for (const auto& stage : forward_stages) {
        xt::xarray<float> mine = ours.get(stage);
        const TheirFile their = their_file(stage);
        const std::string path = theirs_dir + "/" + their.file;
        if (!std::filesystem::exists(path)) {
            if (names.count(stage))  // a stage the map names must be there: a typo would skip it silently
                throw InputError(args.get("--names"), "stage '" + stage + "' maps to '" + their.file + "', which is not in " +
                                                          theirs_dir);
            std::printf("  %-17s %-20s %s\n", stage.c_str(), shape_string(shape_of(mine)).c_str(), "(not in their dump)");
            seen.push_back(stage);
            missing.push_back(stage);
            continue;
        }
        ++found;
        std::string note;
        bool is_bool = false;
        xt::xarray<float> raw = read_npy(path, &is_bool);  // a boolean key_padding_mask as 0 and 1
        const std::vector<std::size_t> raw_shape = shape_of(raw);
        if (is_bool && stage != "key_padding_mask")
            throw InputError(path, "holds booleans; stage '" + stage + "' holds numbers");
        // An additive mask (0 to keep, -inf where padding) says the same as PyTorch's boolean one
        if (stage == "key_padding_mask" && xt::any(xt::equal(raw, -std::numeric_limits<float>::infinity())) &&
            xt::all(xt::equal(raw, 0.0f) || xt::equal(raw, -std::numeric_limits<float>::infinity()))) {
            raw = xt::cast<float>(xt::equal(raw, -std::numeric_limits<float>::infinity()));
            note = "an additive mask (-inf on the padding) read as the boolean one";
        }
        xt::xarray<float> theirs;
        if (stage == "attn_weights" && head_averaged(raw_shape, shape_of(mine))) {
            mine = xt::mean(mine, {1});
            theirs = xt::reshape_view(raw, shape_of(mine));
            note = "averaged over the heads: compared with our heads' mean";
        } else {
            theirs = to_our_layout(std::move(raw), their.layout, shape_of(mine), !batched(stage), note);
        }
        bool ok = false;
        std::string line;
        if (theirs.dimension() == 0) {
            line = "shape " + shape_string(raw_shape) + " in " + their.file + " does not fit";
        } else {
            // both sides cleared (`+`, not `||`, so that the second call is made too)
            if (c.model == Model::minicpm_v && zero_padding(stage, grids, theirs) + zero_padding(stage, grids, mine))
                note += std::string(note.empty() ? "" : ", ") + "padding keys left out";
            line = measures(agreement(theirs, mine), stage != "key_padding_mask");  // 0s and 1s: ULPs mean nothing
            ok = within(theirs, mine, tol);
        }
        const bool first = !ok && first_bad.empty();
        if (!ok) ++differ;
        if (!ok && theirs.dimension() == 0) ++misfit;
        if (first) {
            first_bad = stage;
            first_note = note;
            first_theirs = theirs;
            first_ours = mine;
            first_misfits = theirs.dimension() == 0;
            first_raw_shape = raw_shape;
            // A stage a port left out passes its input on: their values then equal one of ours before it.
            if (!first_misfits) {
                if (stage == "ln_q" && within(theirs, m.small.query, tol)) skipped_from = "query (the learned queries)";
                for (const auto& earlier : seen) {
                    xt::xarray<float> before = ours.get(earlier);
                    if (c.model == Model::minicpm_v) zero_padding(stage, grids, before);
                    if (skipped_from.empty() && within(theirs, before, tol)) skipped_from = earlier;
                }
            }
        }
        std::printf("  %-17s %-20s %s  %s%s%s\n", stage.c_str(), shape_string(shape_of(mine)).c_str(), line.c_str(),
                    ok ? "ok" : "DIFFERS", first ? "   <- the first stage beyond tolerance" : "",
                    note.empty() ? "" : ("   [" + note + "]").c_str());
        // In a batch, which images differ: a port may get one image's grid, table or mask wrong and the rest right.
        if (!ok && theirs.dimension() != 0 && N > 1 && batched(stage) && theirs.shape(0) == N)
            print_by_image(theirs, mine, tol, 17);
        seen.push_back(stage);
    }
    // Their forward files that name no stage (nor a file --names maps): a misspelt name would otherwise go unchecked
    // silently, its stage reported only as "(not in their dump)". Listed as the gradients' are, with the stage it
    // most likely meant.
    std::vector<std::string> unknown;
    if (!forward_stages.empty()) {
        std::vector<std::string> files;  // their .npy files that are no stage's file
        std::error_code ec;
        for (const auto& entry : std::filesystem::directory_iterator(theirs_dir, ec)) {
            const std::string file = entry.path().filename().string();
            if (entry.is_regular_file() && entry.path().extension() == ".npy" &&
                std::none_of(forward_stages.begin(), forward_stages.end(),
                             [&](const std::string& stage) { return their_file(stage).file == file; }))
                files.push_back(file);
        }
        std::sort(files.begin(), files.end());
        for (const auto& file : files) {
            const std::string name = file.substr(0, file.size() - 4);
            if (names.count(name)) {  // a stage's own name, while --names reads the stage from another file
                std::printf("  (their %s is not compared: --names reads '%s' from %s)\n", file.c_str(), name.c_str(),
                            their_file(name).file.c_str());
                continue;
            }
            std::string meant;
            for (const auto& stage : missing)
                if (edit_distance(name, stage) <= 2) meant = stage;
            std::printf("  (their %s names no stage here, and is not compared%s)\n", file.c_str(),
                        meant.empty() ? "" : ("; '" + meant + "' is not in their dump: misspelt?").c_str());
            unknown.push_back(file);  // counted on the verdict's line
        }
    }
    GradientTable table;
    if (gradients) {
        table = compare_gradient_table(theirs_dir + "/gradients", our_grads, param_grads, gradient_tol, N,
                                       c.model == Model::minicpm_v ? &grids : nullptr);
        if (table.found == 0)
            throw InputError(theirs_dir + "/gradients", "holds none of the gradients' files (see compare --help)");
    } else if (found == 0) {
        throw InputError(theirs_dir, "holds none of the stages' files (see compare --help for the names)");
    }
    std::printf("\n");
    if (first_bad.empty() && gradients) {
        if (!table.first_bad.empty()) return gradient_verdict(table, gradient_tol);
        if (found == 0) std::printf("MATCH: all %zu gradients found agree within tolerance", table.found);
        else std::printf("MATCH: all %zu stages and %zu gradients found agree within tolerance", found, table.found);
        std::printf("%s\n", not_compared(unknown.size() + table.unknown.size(),
                                         unknown.empty()         ? "gradient"
                                         : table.unknown.empty() ? "stage"
                                                                 : "stage or gradient")
                                .c_str());
        return 0;
    }
    if (first_bad.empty()) {
        if (found == 1) std::printf("MATCH: the one stage found agrees within tolerance");
        else std::printf("MATCH: all %zu stages found agree within tolerance", found);
        std::printf("%s\n", not_compared(unknown.size(), "stage").c_str());
        return 0;
    }
    // a file that does not fit its stage's shape is not beyond tolerance: nothing was compared there
    const std::string how = misfit == differ ? "do not fit their file's shape (nothing compared there)"
                            : misfit > 0     ? "are beyond tolerance or do not fit their file's shape (" +
                                               std::to_string(misfit) + ", nothing compared there)"
                                             : "are beyond tolerance";
    std::printf("DIFFERS: %zu of %zu stages found %s; the first is '%s' (%s)\n", differ, found, how.c_str(),
                first_bad.c_str(), describe_stage(first_bad).c_str());
    if (gradients)
        std::printf("(the forward differs, so the gradients are not judged: they follow from it; %zu of %zu differ)\n",
                    table.differ, table.found);
    if (first_misfits) {  // nothing was compared: no cause of a numerical difference applies
        // A batch of another size: the same shape but for the image count (a dump made on other features)
        const std::vector<std::size_t> ours_shape = shape_of(ours.get(first_bad));
        if (batched(first_bad) && first_raw_shape.size() == ours_shape.size() && first_raw_shape[0] != N &&
            std::equal(first_raw_shape.begin() + 1, first_raw_shape.end(), ours_shape.begin() + 1)) {
            std::printf("their file for '%s' holds %zu image%s and --input %zu: make their dump and this comparison "
                        "from the same features\n", first_bad.c_str(), first_raw_shape[0],
                        first_raw_shape[0] == 1 ? "" : "s", N);
            return 1;
        }
        std::printf("their file for '%s' has a shape that is not this stage's %s, with or without a batch axis of one:\n"
                    "dump the stage itself, or map the right file with --names (a (L, N, E) file: \"layout\": \"LNE\")\n",
                    first_bad.c_str(), shape_string(shape_of(ours.get(first_bad))).c_str());
        return 1;
    }
    std::printf("usual causes of a difference at '%s':\n", first_bad.c_str());
    if (!skipped_from.empty())
        std::printf("  - the stage looks skipped: their '%s' equals our '%s', which comes before it\n", first_bad.c_str(),
                    skipped_from.c_str());
    if (first_note.find("reshaped") != std::string::npos && first_ours.dimension() == 3)
        std::printf("  - the layout: their file had another shape and was only reshaped; if it is nn.MultiheadAttention's\n"
                    "    (L, N, E) order, give the stage \"layout\": \"LNE\" in --names\n");
    if (first_note.find("averaged over the heads") != std::string::npos)
        std::printf("  - the weights are head-averaged, so a head's own error is diluted: dump per-head weights\n"
                    "    (need_weights=True, average_attn_weights=False), or compare 'scores' to find the head\n");
    // LayerNorm: the usual mistakes tried on our own input to the stage. One that gives their values is the answer;
    // one whose effect is far smaller than the difference cannot be it.
    auto tried = layer_norm_mistakes(first_bad, ours, m.small, c.eps);
    if (c.model == Model::minicpm_v)  // compared as the stage was: without the padding keys
        for (auto& t : tried) zero_padding(first_bad, grids, t.values);
    const double observed = agreement(first_theirs, first_ours).max_rel;
    for (const auto& t : tried)
        if (within(first_theirs, t.values, tol)) std::printf("  - their values are this LayerNorm with %s\n", t.what.c_str());
    const auto causes = usual_causes().find(first_bad);
    if (causes != usual_causes().end()) {
        for (const auto& cause : causes->second) {
            // the largest change the cause's mistakes make here, when every one of them was tried
            double effect = -1.0;
            for (const auto& t : tried)
                if (!t.kind.empty() && cause.find(t.kind) != std::string::npos)
                    effect = std::max(effect, agreement(t.values, first_ours).max_rel);
            std::string size_note;
            if (effect >= 0 && observed > 10 * effect)
                size_note = " [here at most " + number(effect) + " relative, against their " + number(observed) + ": not this]";
            std::printf("  - %s%s\n", cause.c_str(), size_note.c_str());
        }
    }
    if (tol.max_rel > 0)
        std::printf("(every stage before it matched within --max-rel %g; a mistake smaller than that passes its own stage\n"
                    " and shows at a later one, so it may have started before this stage)\n", tol.max_rel);
    else
        std::printf("(every stage before it matched: the mistake is in this stage's own computation or its parameters)\n");
    return 1;
}

}  // namespace qwenvl::cli
