// qwenvl-adapter info: what a checkpoint holds, and the configuration and parameter count it implies.
#include <cstdio>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/compare.hpp"
#include "io/checkpoint.hpp"
#include "stages/02_sincos.hpp"

namespace qwenvl::cli {

namespace {
const char* kInfoHelp =
    "usage: qwenvl-adapter info --weights FILE [--weights MORE ...] [--prefix P] [--heads H]\n"
    "\n"
    "Lists the tensors found (name, dtype, shape), the model they hold (Qwen-VL's attn_pool, or MiniCPM-V 2.5/2.6's\n"
    "resampler, told apart by the tensors' names), the configuration they imply (E, Kv, Q, grid, H), the\n"
    "adapter's parameter count (Qwen-VL: 75,005,952, the paper's 0.08B) and how far a stored pos_embed is\n"
    "from the sin-cos table computed here.\n";

// " (0.075B)" for Qwen-VL's size, " (0.295M)" for a small model, "" below ten thousand.
std::string in_units(std::size_t count) {
    char buf[32] = "";
    if (count >= 10'000'000)
        std::snprintf(buf, sizeof buf, " (%.3fB)", count / 1e9);
    else if (count >= 10'000)
        std::snprintf(buf, sizeof buf, " (%.3gM)", count / 1e6);
    return buf;
}
}  // namespace

int info_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("info", argv, {"--weights", "--prefix", "--heads"}, {});
    if (args.help) return std::printf("%s", kInfoHelp), 0;
    if (!args.has("--weights")) throw UsageError("info: --weights is required (see info --help)");
    const std::size_t given = args.has("--heads") ? parse_count("info", "--heads", args.get("--heads")) : 0;
    const std::string prefix = args.get("--prefix", kDefaultPrefix);
    WeightFiles files;
    for (const auto& path : args.values.at("--weights")) files.add(path);
    const std::size_t heads = heads_for(given, files);

    std::printf("files:\n");
    for (const auto& f : files.files()) std::printf("  %s\n", f.c_str());
    std::printf("tensors:\n");
    for (const auto& e : files.entries())
        std::printf("  %-50s %-5s %s\n", e.name.c_str(), e.dtype.c_str(), shape_string(e.shape).c_str());

    const LoadedAdapter m = load_adapter(files, prefix, heads, true, Contents::shapes);  // headers, and pos_embed
    const AdapterConfig& c = m.config;
    const bool minicpmv = c.model == Model::minicpm_v;
    std::string version;  // MiniCPM-V's two published sizes
    if (minicpmv && c.embed_dim == 4096 && c.n_queries == 96) version = ", the sizes of MiniCPM-Llama3-V 2.5";
    if (minicpmv && c.embed_dim == 3584 && c.n_queries == 64) version = ", the sizes of MiniCPM-V 2.6";
    std::printf("model: %s (tensors under %s%s)\n", model_name(c.model), m.layout.adapter.c_str(), version.c_str());
    char queries[96];
    if (minicpmv)
        std::snprintf(queries, sizeof queries, "%zu, no position term on the queries", c.n_queries);
    else
        std::snprintf(queries, sizeof queries, "%zu, query grid %zux%zu", c.n_queries, c.grid_q, c.grid_q);
    std::printf("config:\n  E (output_dim) = %zu\n  Kv (width) = %zu%s\n  Q (n_queries) = %s\n"
                "  H = %zu heads of Dh = %zu%s\n  tower tail (ln_post, proj): %s\n",
                c.embed_dim, c.kv_dim, m.weights.kv_proj.size() ? "" : " (no kv_proj: identity)", queries,
                c.num_heads, c.embed_dim / c.num_heads, given ? " (--heads)" : heads ? " (recorded by train)" : " (E / 128)",
                m.has_tail ? "present" : "absent");
    const ParameterCount p = count_parameters(c);
    const std::size_t tail = m.has_tail ? m.tail.proj.size() + m.tail.ln_post_weight.size() + m.tail.ln_post_bias.size() : 0;
    std::printf("parameters:\n  adapter, trainable: %zu%s\n  adapter, frozen pos_embed: %zu\n"
                "  adapter + ln_post + proj (trainable): %zu%s\n",
                p.trainable, in_units(p.trainable).c_str(), p.frozen, p.trainable + tail, in_units(p.trainable + tail).c_str());
    if (minicpmv) {
        std::printf("pos_embed: none stored; MiniCPM-V builds a 70x70 sin-cos table at run time (a buffer, not a "
                    "parameter) and slices each image's grid from it\n");
    } else if (m.weights.pos_embed.size()) {
        const Matrix computed = sincos_2d(c.embed_dim, c.grid_q);
        const Comparison cmp = compare(m.weights.pos_embed, computed, 0.0, 0.0);
        std::printf("pos_embed: stored; max |stored - sin-cos table| = %.3g (bf16 rounding of values in [-1, 1] is at "
                    "most 2^-9 = 1.95e-3)\n",
                    cmp.max_abs_error);
    } else {
        std::printf("pos_embed: absent; the sin-cos table is computed\n");
    }
    return 0;
}

}  // namespace qwenvl::cli
