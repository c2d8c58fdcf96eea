// qwenvl-adapter: the command line.
//
//   qwenvl-adapter [demo]   the adapter on the shipped demo weights and features, against PyTorch's output
//   qwenvl-adapter run      the adapter on checkpoint tensors (safetensors) and features (.npy)
//   qwenvl-adapter info     what a checkpoint holds: tensors, config, parameter count, pos_embed
//   qwenvl-adapter fuse     splice image features into token embeddings between <img> and </img>
//   qwenvl-adapter golden   every stage of a JSON fixture against the values PyTorch wrote
//   qwenvl-adapter table    the sin-cos position table, or its bicubic resize to a key grid
//
// Exit codes: 0 success, 1 bad input or a failed comparison (one line on stderr naming the file), 2 usage.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <xtensor/xview.hpp>

#include "adapter.hpp"
#include "attention.hpp"
#include "checkpoint.hpp"
#include "compare.hpp"
#include "features.hpp"
#include "fixture.hpp"
#include "fusion.hpp"
#include "npy.hpp"
#include "resize.hpp"
#include "sincos.hpp"

namespace {

using namespace qwenvl;

const std::string kData = QWENVL_DATA_DIR;

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------------------
// Arguments: "--name value" options (some repeatable) and "--flag" switches.

struct Args {
    std::map<std::string, std::vector<std::string>> values;
    std::map<std::string, bool> flags;
    bool help = false;

    bool has(const std::string& name) const { return values.count(name) != 0; }
    std::string get(const std::string& name, const std::string& fallback = "") const {
        return has(name) ? values.at(name).back() : fallback;
    }
    std::string required(const std::string& command, const std::string& name) const {
        if (!has(name)) throw UsageError(command + ": " + name + " is required (see " + command + " --help)");
        return get(name);
    }
};

Args parse_args(const std::string& command, const std::vector<std::string>& argv,
                const std::vector<std::string>& options, const std::vector<std::string>& switches) {
    Args args;
    for (const auto& s : switches) args.flags[s] = false;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& a = argv[i];
        if (a == "--help" || a == "-h") {
            args.help = true;
        } else if (std::find(switches.begin(), switches.end(), a) != switches.end()) {
            args.flags[a] = true;
        } else if (std::find(options.begin(), options.end(), a) != options.end()) {
            if (i + 1 >= argv.size()) throw UsageError(command + ": " + a + " needs a value");
            args.values[a].push_back(argv[++i]);
        } else {
            throw UsageError(command + ": unknown argument '" + a + "' (see " + command + " --help)");
        }
    }
    return args;
}

std::size_t parse_count(const std::string& command, const std::string& name, const std::string& text) {
    std::size_t used = 0;
    unsigned long value = 0;
    try {
        value = std::stoul(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || value == 0 || text[0] == '-')
        throw UsageError(command + ": " + name + " takes a positive whole number, not '" + text + "'");
    return value;
}

// ---------------------------------------------------------------------------------------------------------
// Checks on the inputs of `run`, each naming the file.

// Reads (L, Kv) or (N, L, Kv) features; `unbatched` tells which it was. The checks are as_feature_batch's
// (rank, a square patch count, finite values) plus the width the weights expect, all reported with the file.
Tensor3 read_features(const std::string& path, std::size_t kv_dim, bool* unbatched = nullptr) {
    const xt::xarray<float> raw = read_npy_float(path);
    if (unbatched) *unbatched = raw.dimension() == 2;
    Tensor3 batch;
    try {
        batch = as_feature_batch(raw);
    } catch (const std::invalid_argument& e) {
        throw InputError(path, e.what());
    }
    if (batch.shape(2) != kv_dim)
        throw InputError(path, "feature width " + std::to_string(batch.shape(2)) + " does not match the weights' Kv = " +
                                   std::to_string(kv_dim));
    return batch;
}

Matrix read_mask(const std::string& path, std::size_t Q, std::size_t L) {
    bool is_bool = false;
    const xt::xarray<float> raw = read_npy(path, &is_bool);
    if (raw.dimension() != 2 || raw.shape(0) != Q || raw.shape(1) != L)
        throw InputError(path, "mask has shape " + shape_string(shape_of(raw)) + ", expected (Q, L) = " +
                                   shape_string({Q, L}));
    if (is_bool) return additive_mask(xt::xtensor<bool, 2>(xt::cast<bool>(raw)));
    for (float v : raw)
        if (std::isnan(v)) throw InputError(path, "mask holds NaN");
    return raw;
}

// ---------------------------------------------------------------------------------------------------------
// run

const char* kRunHelp =
    "usage: qwenvl-adapter run --weights FILE.safetensors [--weights MORE.safetensors ...] --input X.npy\n"
    "                          --output Y.npy [--prefix P] [--heads H] [--adapter-only] [--mask M.npy]\n"
    "                          [--trace DIR]\n"
    "\n"
    "Runs Qwen-VL's adapter (attn_pool), then ln_post and proj when the weights have them, on ViT features.\n"
    "\n"
    "  --weights F    a .safetensors file (F32, F16 or BF16), repeatable for shards, or a\n"
    "                 model.safetensors.index.json whose shards lie beside it\n"
    "  --input X      .npy float32 or float64, (L, Kv) or (N, L, Kv); L a perfect square\n"
    "  --output Y     .npy float32, (Q, E) or (N, Q, E) like the input; written only on success\n"
    "  --prefix P     tensor name prefix (default: transformer.visual.)\n"
    "  --heads H      attention heads (default: E / 128, Qwen-VL's rule); must divide E\n"
    "  --adapter-only stop after the adapter, before ln_post and proj\n"
    "  --mask M       (Q, L) attn_mask: float32 added to the scores, or bool where true = masked\n"
    "  --trace DIR    also write every named intermediate to DIR/<name>.npy\n";

int run_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("run", argv, {"--weights", "--input", "--output", "--prefix", "--heads", "--mask", "--trace"},
                                 {"--adapter-only"});
    if (args.help) return std::printf("%s", kRunHelp), 0;
    if (!args.has("--weights")) throw UsageError("run: --weights is required (see run --help)");
    const std::string input = args.required("run", "--input");
    const std::string output = args.required("run", "--output");
    const std::size_t heads = args.has("--heads") ? parse_count("run", "--heads", args.get("--heads")) : 0;

    WeightFiles files;
    for (const auto& path : args.values.at("--weights")) files.add(path);
    LoadedAdapter model = load_adapter(files, args.get("--prefix", kDefaultPrefix), heads, !args.flags.at("--adapter-only"));
    const AdapterConfig& c = model.config;

    bool unbatched = false;
    const Tensor3 x = read_features(input, c.kv_dim, &unbatched);
    Matrix mask;
    if (args.has("--mask")) mask = read_mask(args.get("--mask"), c.n_queries, x.shape(1));

    const std::string trace_dir = args.get("--trace");
    if (!trace_dir.empty()) {
        std::error_code ec;
        std::filesystem::create_directories(trace_dir, ec);
        if (ec || !std::filesystem::is_directory(trace_dir))
            throw InputError(trace_dir, "cannot create the trace folder (" + ec.message() + ")");
    }

    Trace trace;
    Trace* t = trace_dir.empty() ? nullptr : &trace;
    // The query side does not depend on the images: computed once here, after which `run` has no more use for
    // W_q, so its 64 MB (at full size) are released before the images' tensors exist. A traced run recomputes
    // the query side inside adapter_forward, to record its steps, and keeps W_q.
    QuerySide side;
    if (!t) {
        side = prepare_query_side(model.weights, c, nullptr, x.shape(1));
        model.weights.in_proj.w_q = Matrix();
    }
    Tensor3 y = adapter_forward(model.weights, c, x, args.has("--mask") ? &mask : nullptr, t, t ? nullptr : &side);
    if (model.has_tail) y = tower_tail_forward(model.tail, y, c.eps, t);

    for (const auto& name : trace.names()) write_npy(trace_dir + "/" + name + ".npy", trace.get(name));
    xt::xarray<float> result = y;
    if (unbatched) result = xt::xarray<float>(xt::view(y, 0));
    write_npy(output, result);
    std::printf("%s: %s float32, %s (N=%zu, L=%zu, Kv=%zu, E=%zu, H=%zu, Q=%zu)%s\n", output.c_str(),
                shape_string(shape_of(result)).c_str(), model.has_tail ? "after ln_post and proj" : "after the adapter",
                x.shape(0), x.shape(1), c.kv_dim, c.embed_dim, c.num_heads, c.n_queries,
                trace_dir.empty() ? "" : ("; trace in " + trace_dir).c_str());
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// info

const char* kInfoHelp =
    "usage: qwenvl-adapter info --weights FILE [--weights MORE ...] [--prefix P] [--heads H]\n"
    "\n"
    "Lists the tensors found (name, dtype, shape), the configuration they imply (E, Kv, Q, grid, H), the\n"
    "adapter's parameter count (Qwen-VL: 75,005,952, the paper's 0.08B) and how far a stored pos_embed is\n"
    "from the sin-cos table computed here.\n";

int info_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("info", argv, {"--weights", "--prefix", "--heads"}, {});
    if (args.help) return std::printf("%s", kInfoHelp), 0;
    if (!args.has("--weights")) throw UsageError("info: --weights is required (see info --help)");
    const std::size_t heads = args.has("--heads") ? parse_count("info", "--heads", args.get("--heads")) : 0;
    const std::string prefix = args.get("--prefix", kDefaultPrefix);
    WeightFiles files;
    for (const auto& path : args.values.at("--weights")) files.add(path);

    std::printf("files:\n");
    for (const auto& f : files.files()) std::printf("  %s\n", f.c_str());
    std::printf("tensors:\n");
    for (const auto& e : files.entries())
        std::printf("  %-50s %-5s %s\n", e.name.c_str(), e.dtype.c_str(), shape_string(e.shape).c_str());

    const LoadedAdapter m = load_adapter(files, prefix, heads, true);
    const AdapterConfig& c = m.config;
    std::printf("config:\n  E (output_dim) = %zu\n  Kv (width) = %zu%s\n  Q (n_queries) = %zu, query grid %zux%zu\n"
                "  H = %zu heads of Dh = %zu%s\n  tower tail (ln_post, proj): %s\n",
                c.embed_dim, c.kv_dim, m.weights.kv_proj.size() ? "" : " (no kv_proj: identity)", c.n_queries,
                c.grid_q, c.grid_q, c.num_heads, c.embed_dim / c.num_heads, heads ? " (--heads)" : " (E / 128)",
                m.has_tail ? "present" : "absent");
    const ParameterCount p = count_parameters(c);
    std::size_t tail = m.has_tail ? m.tail.proj.size() + m.tail.ln_post_weight.size() + m.tail.ln_post_bias.size() : 0;
    std::printf("parameters:\n  adapter, trainable: %zu (%.3fB)\n  adapter, frozen pos_embed: %zu\n"
                "  adapter + ln_post + proj (trainable): %zu\n",
                p.trainable, p.trainable / 1e9, p.frozen, p.trainable + tail);
    if (m.weights.pos_embed.size()) {
        const Matrix computed = sincos_2d(c.embed_dim, c.grid_q);
        const Comparison cmp = compare(m.weights.pos_embed, computed, 0.0, 0.0);
        std::printf("pos_embed: stored; max |stored - sin-cos table| = %.3g (bf16 rounding is up to ~4e-3)\n",
                    cmp.max_abs_error);
    } else {
        std::printf("pos_embed: absent; the sin-cos table is computed\n");
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// fuse

const char* kFuseHelp =
    "usage: qwenvl-adapter fuse --ids IDS.json --embeddings EMB.npy --image-features Y.npy --output OUT.npy\n"
    "\n"
    "Replaces, in the (T, E) input embeddings, the rows strictly between each <img> (151857) and its </img>\n"
    "(151858) with one image's (Q, E) features, images in order. IDS.json is a list of T token ids (or an\n"
    "object with \"input_ids\"); Y.npy is (Q, E) or (M, Q, E); each span must hold exactly Q positions.\n";

std::vector<std::int64_t> read_ids(const std::string& path) {
    nlohmann::json j = read_json(path);
    if (j.is_object() && j.contains("input_ids")) j = j["input_ids"];
    if (!j.is_array()) throw InputError(path, "expected a list of token ids");
    std::vector<std::int64_t> ids;
    for (const auto& v : j) {
        if (!v.is_number_integer()) throw InputError(path, "a token id is not an integer");
        ids.push_back(v.get<std::int64_t>());
    }
    return ids;
}

int fuse_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("fuse", argv, {"--ids", "--embeddings", "--image-features", "--output"}, {});
    if (args.help) return std::printf("%s", kFuseHelp), 0;
    const std::string ids_path = args.required("fuse", "--ids"), emb_path = args.required("fuse", "--embeddings");
    const std::string feat_path = args.required("fuse", "--image-features"), output = args.required("fuse", "--output");

    const std::vector<std::int64_t> ids = read_ids(ids_path);
    const xt::xarray<float> emb = read_npy_float(emb_path);
    if (emb.dimension() != 2 || emb.shape(0) != ids.size())
        throw InputError(emb_path, "embeddings have shape " + shape_string(shape_of(emb)) + ", expected (T, E) with T = " +
                                       std::to_string(ids.size()) + " ids");
    xt::xarray<float> feat = read_npy_float(feat_path);
    if (feat.dimension() == 2) feat.reshape({std::size_t(1), feat.shape(0), feat.shape(1)});
    if (feat.dimension() != 3 || feat.shape(2) != emb.shape(1))
        throw InputError(feat_path, "features have shape " + shape_string(shape_of(feat)) + ", expected (Q, E) or (M, Q, E) with E = " +
                                        std::to_string(emb.shape(1)));
    Matrix fused;
    try {
        fused = fuse_image_features(ids, emb, feat);
    } catch (const std::invalid_argument& e) {
        throw InputError(ids_path, e.what());
    }
    write_npy(output, fused);
    std::printf("%s: %s float32, %zu image spans of %zu positions replaced\n", output.c_str(),
                shape_string(shape_of(fused)).c_str(), feat.shape(0), feat.shape(1));
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// table

const char* kTableHelp =
    "usage: qwenvl-adapter table --dim E --grid G [--key-grid GK] --output P.npy\n"
    "\n"
    "Writes the 2D sin-cos position table (G*G, E) that Qwen-VL adds to its queries (sincos_2d), or, with\n"
    "--key-grid, that table resized bicubically to GK x GK, (GK*GK, E), as added to the keys (key_position_table).\n"
    "E must be divisible by 4.\n";

int table_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("table", argv, {"--dim", "--grid", "--key-grid", "--output"}, {});
    if (args.help) return std::printf("%s", kTableHelp), 0;
    const std::size_t E = parse_count("table", "--dim", args.required("table", "--dim"));
    const std::size_t G = parse_count("table", "--grid", args.required("table", "--grid"));
    const std::string output = args.required("table", "--output");
    if (E % 4 != 0) throw UsageError("table: --dim " + std::to_string(E) + " is not divisible by 4");
    Matrix table = sincos_2d(E, G);
    if (args.has("--key-grid")) {
        const std::size_t GK = parse_count("table", "--key-grid", args.get("--key-grid"));
        table = key_position_table(table, GK * GK);
    }
    write_npy(output, table);
    std::printf("%s: %s float32\n", output.c_str(), shape_string(shape_of(table)).c_str());
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// demo

const char* kDemoHelp =
    "usage: qwenvl-adapter [demo] [--data DIR]\n"
    "\n"
    "Runs a small adapter with Qwen-VL's structure (E = 256, H = E / 128 = 2, Kv = 104, 4x4 queries on an 8x8\n"
    "key grid, bf16 weights with a stored pos_embed) on two images of features, both shipped in data/demo/,\n"
    "prints each stage with its shape and compares the output with PyTorch's, stored beside them.\n";

int demo_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("demo", argv, {"--data"}, {});
    if (args.help) return std::printf("%s", kDemoHelp), 0;
    const std::string dir = args.get("--data", kData) + "/demo";
    WeightFiles files;
    files.add(dir + "/adapter.safetensors");
    const LoadedAdapter m = load_adapter(files, kDefaultPrefix, 0, true);
    const AdapterConfig& c = m.config;
    const Tensor3 x = read_features(dir + "/features.npy", c.kv_dim);
    const xt::xarray<float> expected = read_npy_float(dir + "/expected.npy");

    std::printf("Qwen-VL's position-aware vision-language adapter, demo on %s\n", dir.c_str());
    std::printf("  weights: adapter.safetensors (%s, %zu tensors, names under transformer.visual.)\n",
                files.entry("transformer.visual.attn_pool.query").dtype.c_str(), files.entries().size());
    std::printf("  N=%zu images of L=%zu patches (%zux%zu), Kv=%zu -> Q=%zu queries (%zux%zu) of E=%zu, H=%zu heads\n\n",
                x.shape(0), x.shape(1), grid_side(x.shape(1), "L"), grid_side(x.shape(1), "L"), c.kv_dim,
                c.n_queries, c.grid_q, c.grid_q, c.embed_dim, c.num_heads);
    Trace trace;
    const Tensor3 out = adapter_forward(m.weights, c, x, nullptr, &trace);
    const Tensor3 y = tower_tail_forward(m.tail, out, c.eps, &trace);
    std::printf("  %-13s %s\n", "stage", "shape");
    for (const auto& name : trace.names())
        std::printf("  %-13s %s\n", name.c_str(), shape_string(shape_of(trace.get(name))).c_str());
    std::printf("\n  output y[0, 0, :4] = [%.6f, %.6f, %.6f, %.6f]\n", y(0, 0, 0), y(0, 0, 1), y(0, 0, 2), y(0, 0, 3));
    const Comparison cmp = compare(y, expected, 1e-5, 1e-5);
    std::printf("  against PyTorch (data/demo/expected.npy): %s\n", describe(cmp, expected).c_str());
    std::printf("\n%s\n", cmp.ok() ? "OK: the output equals PyTorch's within |a-b| <= 1e-5 + 1e-5*|b|"
                                   : "FAIL: the output differs from PyTorch's");
    return cmp.ok() ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------------------
// golden

const char* kGoldenHelp =
    "usage: qwenvl-adapter golden [--fixture FILE.json]\n"
    "\n"
    "Runs the adapter and the tower's tail on a golden fixture (data/fixtures/, written by PyTorch) and prints\n"
    "every stage's shape and its largest difference from PyTorch's value. Default: data/fixtures/resize_up.json.\n";

int golden_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("golden", argv, {"--fixture"}, {});
    if (args.help) return std::printf("%s", kGoldenHelp), 0;
    const Fixture f = load_fixture(args.get("--fixture", kData + "/fixtures/resize_up.json"));
    const AdapterConfig& c = f.config;
    const std::size_t N = f.x.shape(0), L = f.x.shape(1), grid_k = grid_side(L, "L");
    std::printf("fixture '%s': %s\n", f.name.c_str(), f.description.c_str());
    std::printf("  expected values: PyTorch %s, numpy %s, seed %d (tests/reference/make_fixtures.py)\n",
                f.meta["torch_version"].get<std::string>().c_str(), f.meta["numpy_version"].get<std::string>().c_str(),
                f.meta["seed"].get<int>());
    std::printf("  N=%zu, L=%zu (%zux%zu), Kv=%zu, E=%zu, H=%zu (Dh=%zu), Q=%zu (%zux%zu)%s\n\n", N, L, grid_k, grid_k,
                c.kv_dim, c.embed_dim, c.num_heads, c.embed_dim / c.num_heads, c.n_queries, c.grid_q, c.grid_q,
                f.has_mask ? ", with a mask" : "");
    Trace trace;
    const Tensor3 out = adapter_forward(f.weights, c, f.x, f.has_mask ? &f.mask : nullptr, &trace);
    tower_tail_forward(f.tail, out, c.eps, &trace);
    std::printf("  %-13s %-16s %s\n", "stage", "shape", "C++ against PyTorch");
    std::size_t bad = 0;
    for (const auto& name : trace.names()) {
        const Comparison cmp = compare(trace.get(name), f.expect(name), f.atol, f.rtol);
        bad += cmp.ok() ? 0 : 1;
        std::printf("  %-13s %-16s %s\n", name.c_str(), shape_string(shape_of(trace.get(name))).c_str(),
                    describe(cmp, f.expect(name)).c_str());
    }
    std::printf("\n%s: %zu of %zu stages within |a-b| <= %g + %g*|b| of PyTorch\n", bad ? "FAIL" : "OK",
                trace.names().size() - bad, trace.names().size(), f.atol, f.rtol);
    return bad ? 1 : 0;
}

const char* kHelp =
    "usage: qwenvl-adapter [COMMAND] [OPTIONS]\n"
    "\n"
    "A plain C++ reference of Qwen-VL's position-aware vision-language adapter (arXiv 2308.12966, sec. 2.1).\n"
    "\n"
    "commands:\n"
    "  demo     the adapter on the shipped demo data, against PyTorch (the default)\n"
    "  run      the adapter on checkpoint tensors (safetensors) and ViT features (.npy)\n"
    "  info     the tensors, config and parameter count of a checkpoint\n"
    "  fuse     splice image features into token embeddings between <img> and </img>\n"
    "  golden   every stage of a JSON fixture against PyTorch\n"
    "  table    write the sin-cos position table, or its bicubic resize to a key grid\n"
    "\n"
    "`qwenvl-adapter COMMAND --help` describes a command. Exit codes: 0 ok, 1 bad input, 2 usage.\n";

}  // namespace

int main(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.empty()) return demo_command({});
        const std::string command = args[0];
        const std::vector<std::string> rest(args.begin() + 1, args.end());
        if (command == "--help" || command == "-h" || command == "help") return std::printf("%s", kHelp), 0;
        if (command == "demo") return demo_command(rest);
        if (command == "run") return run_command(rest);
        if (command == "info") return info_command(rest);
        if (command == "fuse") return fuse_command(rest);
        if (command == "golden") return golden_command(rest);
        if (command == "table") return table_command(rest);
        throw UsageError("unknown command '" + command + "' (see --help)");
    } catch (const UsageError& e) {
        std::fprintf(stderr, "qwenvl-adapter: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "qwenvl-adapter: %s\n", e.what());
        return 1;
    }
}
