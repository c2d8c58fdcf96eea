// qwenvl-adapter run: the adapter (and the tower's tail) on checkpoint tensors and ViT features.
#include <cstdio>
#include <filesystem>

#include <xtensor/xview.hpp>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "fast/adapter.hpp"
#include "io/checkpoint.hpp"
#include "io/npy.hpp"
#include "stages/11_minicpmv.hpp"

namespace qwenvl::cli {

namespace {
const char* kRunHelp =
    "usage: qwenvl-adapter run --weights FILE.safetensors [--weights MORE.safetensors ...] --input X.npy\n"
    "                          --output Y.npy [--prefix P] [--heads H] [--adapter-only] [--mask M.npy]\n"
    "                          [--trace DIR] [--readable] [--grids HxW[,HxW...]]\n"
    "\n"
    "Runs Qwen-VL's adapter (attn_pool), then ln_post and proj when the weights have them, on ViT features;\n"
    "or MiniCPM-V 2.5/2.6's resampler when the checkpoint holds resampler.* (see `info`, docs/models.md).\n"
    "\n"
    "  --weights F    a .safetensors file (F32, F16 or BF16), repeatable for shards, or a\n"
    "                 model.safetensors.index.json whose shards lie beside it\n"
    "  --input X      .npy float16/32/64, (L, Kv) or (N, L, Kv); L a perfect square unless --grids\n"
    "  --output Y     .npy float32, (Q, E) or (N, Q, E) like the input; written only on success\n"
    "  --prefix P     tensor name prefix (default: transformer.visual.)\n"
    "  --heads H      attention heads (default: the count a checkpoint of train records, else E / 128,\n"
    "                 Qwen-VL's rule); must divide E\n"
    "  --adapter-only stop after the adapter, before ln_post and proj\n"
    "  --mask M       (Q, L) attn_mask: float32 added to the scores, or bool where true = masked\n"
    "  --trace DIR    also write every named intermediate to DIR/<name>.npy\n"
    "  --grids G      the key grid of h rows and w columns of patches, HxW: one for every image (Qwen-VL:\n"
    "                 a non-square image, h*w = L) or one per image (MiniCPM-V: h*w <= L, the rest of\n"
    "                 each image's rows padding); default: the square grid of L\n"
    "  --readable     run the readable stages (src/stages/) instead of the fast path (src/fast/):\n"
    "                 the same results to float32 precision, about 20 s at Qwen-VL's full size\n";

void create_trace_folder(const std::string& dir) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec || !std::filesystem::is_directory(dir)) throw InputError(dir, "cannot create the trace folder (" + ec.message() + ")");
}
}  // namespace

int run_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("run", argv, {"--weights", "--input", "--output", "--prefix", "--heads", "--mask", "--trace", "--grids"},
                                 {"--adapter-only", "--readable"});
    if (args.help) return std::printf("%s", kRunHelp), 0;
    if (!args.has("--weights")) throw UsageError("run: --weights is required (see run --help)");
    const std::string input = args.required("run", "--input");
    const std::string output = args.required("run", "--output");
    const std::size_t given = args.has("--heads") ? parse_count("run", "--heads", args.get("--heads")) : 0;
    WeightFiles files;
    for (const auto& path : args.values.at("--weights")) files.add(path);
    const std::size_t heads = heads_for(given, files);
    const std::string prefix = args.get("--prefix", kDefaultPrefix);
    const bool want_tail = !args.flags.at("--adapter-only");
    const bool minicpmv = checkpoint_layout(files, prefix).model == Model::minicpm_v;
    const bool readable = args.flags.at("--readable");
    // The readable path reads the weights into tensors; the fast path reads them in place from the mapped files,
    // their shapes checked before the heap is set up (io/checkpoint.hpp's map_adapter).
    // The heap (keep_freed_memory), for a full-size run of one F32 image: 0.93-1.05 -> 0.72-0.86 s, minor page faults
    // 29,000 -> 7,000, peak 331 -> 395 MiB (docs/performance.md#page-faults)
    const std::size_t heap = std::size_t(256) << 20;
    LoadedAdapter loaded;
    MappedAdapter mapped;
    if (readable) {
        keep_freed_memory(heap);
        loaded = load_adapter(files, prefix, heads, want_tail);
    } else {
        const LoadedAdapter checked = load_adapter(files, prefix, heads, want_tail, Contents::shapes_only);
        keep_freed_memory(heap);
        mapped = map_adapter(files, checked);
    }
    const AdapterConfig& c = readable ? loaded.config : mapped.config;
    const bool has_tail = readable ? loaded.has_tail : mapped.has_tail;

    std::vector<Grid> grids;
    if (args.has("--grids")) grids = parse_grids("run", "--grids", args.get("--grids"));
    bool unbatched = false;
    Tensor3 x = read_features(input, c.kv_dim, &unbatched, false);  // the grids are checked against L below
    grids = batch_grids("run", input, grids, x, c.model);
    const std::size_t N = x.shape(0), L = x.shape(1);  // x itself is freed by the fast path once read
    if (minicpmv && args.has("--mask"))
        throw UsageError("run: MiniCPM-V takes no --mask: its key padding mask comes from --grids");
    Matrix mask;
    if (args.has("--mask")) mask = read_mask(args.get("--mask"), c.n_queries, L);
    const Matrix* m = args.has("--mask") ? &mask : nullptr;
    const std::string trace_dir = args.get("--trace");
    if (!trace_dir.empty()) create_trace_folder(trace_dir);

    Trace trace;
    Trace* t = trace_dir.empty() ? nullptr : &trace;
    Tensor3 y;
    if (readable) {
        y = minicpmv ? minicpmv_forward(loaded.weights, c, x, grids, kMiniCpmvMaxGrid, t)
                     : adapter_forward(loaded.weights, c, x, grids[0], m, t);
        if (has_tail) y = tower_tail_forward(loaded.tail, y, c.eps, t);
    } else if (minicpmv) {
        y = fast::minicpmv_forward(mapped.weights, c, x, grids, t);
        if (has_tail) y = fast::tower_tail_forward(mapped.tail, std::move(y), c.eps, t);
    } else {
        // The query side does not depend on the images: computed once, for all of them.
        fast::QuerySide side = fast::prepare_query_side(mapped.weights, c, L, t, grids[0]);
        // ... after which the query and W_q are not read again (full size, one image: peak 453 -> 393 MiB with BF16
        // weights, 401 -> 333 MiB with F32).
        release(mapped, mapped.weights.query);
        release(mapped, mapped.weights.w_q);
        // The key table and the features are spent by the call, each freed once last read (fast/adapter.hpp).
        y = fast::adapter_forward(mapped.weights, c, std::move(side), std::move(x), m, t);
        if (has_tail) y = fast::tower_tail_forward(mapped.tail, std::move(y), c.eps, t);
    }

    // The trace's files unsynced: each still whole or absent if the process is killed; syncing every one to the disk
    // took 0.7 of the 1.7 s that writing 193 MB of a full-size trace added to `run` (docs/performance.md#the-trace)
    for (const auto& name : trace.names())
        write_npy(trace_dir + "/" + name + ".npy", shape_of(trace.get(name)), trace.get(name).data(), Sync::no);
    // Written straight from y's memory: (N, Q, E), or (Q, E) for an unbatched input (the same values).
    const std::vector<std::size_t> shape = unbatched ? std::vector<std::size_t>{y.shape(1), y.shape(2)} : shape_of(y);
    write_npy(output, shape, y.data());
    std::printf("%s: %s float32, %s%s (N=%zu, L=%zu, Kv=%zu, E=%zu, H=%zu, Q=%zu; %s path)%s\n", output.c_str(),
                shape_string(shape).c_str(), has_tail ? "after ln_post and proj" : "after the adapter",
                minicpmv ? " of MiniCPM-V's resampler" : "",
                N, L, c.kv_dim, c.embed_dim, c.num_heads, c.n_queries, readable ? "readable" : "fast",
                trace_dir.empty() ? "" : ("; trace in " + trace_dir).c_str());
    return 0;
}

}  // namespace qwenvl::cli
