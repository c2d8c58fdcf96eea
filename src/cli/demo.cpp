// qwenvl-adapter demo: the adapter on the shipped demo data, every stage against PyTorch's value.
#include <cstdio>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "io/checkpoint.hpp"
#include "io/npy.hpp"
#include "stages/01_feature_input.hpp"

namespace qwenvl::cli {

namespace {
const char* kDemoHelp =
    "usage: qwenvl-adapter [demo] [--data DIR] [--readable]\n"
    "\n"
    "Runs a small adapter with Qwen-VL's structure (E = 256, H = E / 128 = 2, Kv = 104, 4x4 queries on an 8x8\n"
    "key grid, bf16 weights with a stored pos_embed) on two images of features, all shipped in data/demo/, and\n"
    "prints every stage: what it is (its number is its page in docs/stages/), its shape, and its largest\n"
    "difference from the value PyTorch wrote (data/demo/trace/). --readable runs the readable stages\n"
    "(src/stages/) instead of the fast path (src/fast/).\n";

constexpr double kTolerance = 1e-5;  // |a - b| <= 1e-5 + 1e-5 |b| at every stage
}  // namespace

int demo_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("demo", argv, {"--data"}, {"--readable"});
    if (args.help) return std::printf("%s", kDemoHelp), 0;
    const bool readable = args.flags.at("--readable");
    const std::string dir = args.get("--data", kDataDir) + "/demo";
    WeightFiles files;
    files.add(dir + "/adapter.safetensors");
    const LoadedAdapter m = load_adapter(files, kDefaultPrefix, 0, true);
    const AdapterConfig& c = m.config;
    const Tensor3 x = read_features(dir + "/features.npy", c.kv_dim);
    const std::size_t grid_k = grid_side(x.shape(1), "L");

    std::printf("Qwen-VL's position-aware vision-language adapter, demo on %s (%s path)\n", dir.c_str(),
                readable ? "readable" : "fast");
    std::printf("  weights: adapter.safetensors (%s, %zu tensors, names under transformer.visual.)\n",
                files.entry("transformer.visual.attn_pool.query").dtype.c_str(), files.entries().size());
    std::printf("  N=%zu images of L=%zu patches (%zux%zu), Kv=%zu -> Q=%zu queries (%zux%zu) of E=%zu, H=%zu heads\n",
                x.shape(0), x.shape(1), grid_k, grid_k, c.kv_dim, c.n_queries, c.grid_q, c.grid_q, c.embed_dim,
                c.num_heads);
    std::printf("  (docs/shapes.md explains the letters; docs/stages/NN-*.md each stage)\n\n");

    Trace trace;
    const Tensor3 y = traced_forward(readable, m.weights, c, m.tail, x, nullptr, trace);
    const std::size_t bad = print_stage_comparisons(
        trace, [&](const std::string& name) { return read_npy_float(dir + "/trace/" + name + ".npy"); }, kTolerance,
        kTolerance);
    std::printf("\n  output y[0, 0, :4] = [%.6f, %.6f, %.6f, %.6f]\n", y(0, 0, 0), y(0, 0, 1), y(0, 0, 2), y(0, 0, 3));
    std::printf("\n%s: %zu of %zu stages equal PyTorch's within |a-b| <= 1e-5 + 1e-5*|b|\n", bad ? "FAIL" : "OK",
                trace.names().size() - bad, trace.names().size());
    return bad ? 1 : 0;
}

}  // namespace qwenvl::cli
