#include "cli/common.hpp"

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "cli/args.hpp"
#include "core/compare.hpp"
#include "core/memory.hpp"
#include "fast/adapter.hpp"
#include "fast/threads.hpp"
#include "io/errors.hpp"
#include "io/fixture.hpp"
#include "io/npy.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/11_minicpmv.hpp"

namespace qwenvl::cli {

const std::string kDataDir = QWENVL_DATA_DIR;

Tensor3 read_features(const std::string& path, std::size_t kv_dim, bool* unbatched, bool square) {
    xt::xarray<float> raw = read_npy_float(path);
    if (unbatched) *unbatched = raw.dimension() == 2;
    Tensor3 batch;
    try {
        batch = as_feature_batch(std::move(raw), square);  // read once into memory that becomes the batch's
    } catch (const std::invalid_argument& e) {
        throw InputError(path, e.what());
    }
    if (batch.shape(2) != kv_dim)
        throw InputError(path, "feature width " + std::to_string(batch.shape(2)) + " does not match the weights' Kv = " +
                                   std::to_string(kv_dim));
    return batch;
}

std::vector<Grid> parse_grids(const std::string& command, const std::string& flag, const std::string& text) {
    std::vector<Grid> grids;
    std::size_t start = 0;
    while (start <= text.size()) {
        const std::size_t end = std::min(text.find(',', start), text.size());
        const std::string item = text.substr(start, end - start);
        const std::size_t x = item.find('x');
        if (x == std::string::npos || item.find('x', x + 1) != std::string::npos)
            throw UsageError(command + ": " + flag + " takes HxW[,HxW...], got '" + text + "'");
        grids.push_back(Grid{parse_count(command, flag, item.substr(0, x)), parse_count(command, flag, item.substr(x + 1))});
        start = end + 1;
    }
    return grids;
}

std::vector<Grid> batch_grids(const std::string& command, const std::string& input, std::vector<Grid> grids,
                              const Tensor3& x, Model model) {
    const std::size_t N = x.shape(0), L = x.shape(1);
    const bool minicpmv = model == Model::minicpm_v;
    if (grids.empty() && minicpmv)
        throw UsageError(command + ": MiniCPM-V's resampler needs each image's grid of patches: --grids HxW[,HxW...]");
    if (grids.empty()) {
        try {
            grids.push_back(key_grid(L, Grid{}, (command + ": the patch count L").c_str()));
        } catch (const std::invalid_argument& e) {
            throw InputError(input, std::string(e.what()) + "; for a non-square image give its grid: --grids HxW");
        }
    }
    if (grids.size() == 1) grids.resize(N, grids[0]);
    if (grids.size() != N)
        throw UsageError(command + ": --grids gives " + std::to_string(grids.size()) + " grids for " + std::to_string(N) +
                         " images");
    for (const Grid& g : grids) {
        if (!minicpmv && (g.h != grids[0].h || g.w != grids[0].w))
            throw UsageError(command + ": Qwen-VL's adapter takes one key grid for the whole batch (--grids HxW)");
        if (minicpmv ? g.cells() > L : g.cells() != L)
            throw InputError(input, "a grid of " + std::to_string(g.h) + "x" + std::to_string(g.w) + " = " +
                                        std::to_string(g.cells()) + " patches " + (minicpmv ? "exceeds" : "is not") +
                                        " the features' patch count L = " + std::to_string(L));
    }
    return grids;
}

std::size_t heads_for(std::size_t given, const WeightFiles& files) {
    if (given) return given;
    try {
        if (files.metadata("generator") == "qwenvl-adapter train")
            return parse_count("the checkpoint", "its recorded heads", files.metadata("heads"));
    } catch (const InputError&) {  // no such metadata: not a checkpoint of train
    }
    return 0;
}

Matrix read_mask(const std::string& path, std::size_t Q, std::size_t L) {
    bool is_bool = false;
    const xt::xarray<float> raw = read_npy(path, &is_bool);
    if (raw.dimension() != 2 || raw.shape(0) != Q || raw.shape(1) != L)
        throw InputError(path, "mask has shape " + shape_string(shape_of(raw)) + ", expected (Q, L) = " +
                                   shape_string({Q, L}));
    for (float v : raw)
        if (std::isnan(v)) throw InputError(path, "mask holds NaN");
    return attention_mask(raw, is_bool);
}

Tensor3 traced_forward(bool readable, const AdapterWeights& w, const AdapterConfig& c, const TowerTail& tail,
                       const Tensor3& x, const Matrix* mask, Trace& trace, const std::vector<Grid>& grids) {
    if (c.model == Model::minicpm_v && readable)
        return tower_tail_forward(tail, minicpmv_forward(w, c, x, grids, kMiniCpmvMaxGrid, &trace), c.eps, &trace);
    if (c.model == Model::qwen_vl && readable)
        return tower_tail_forward(tail, adapter_forward(w, c, x, grids.empty() ? Grid{} : grids[0], mask, &trace), c.eps, &trace);
    return traced_fast_forward(fast::Weights(w), c, fast::TailWeights(tail), x, mask, trace, grids);
}

Tensor3 traced_fast_forward(const fast::Weights& w, const AdapterConfig& c, const fast::TailWeights& tail,
                            const Tensor3& x, const Matrix* mask, Trace& trace, const std::vector<Grid>& grids) {
    const fast::OwnThreads own;  // one scope for the whole pass: the functions' own scopes nest in it
    if (c.model == Model::minicpm_v)
        return fast::tower_tail_forward(tail, fast::minicpmv_forward(w, c, x, grids, &trace), c.eps, &trace);
    const fast::QuerySide side = fast::prepare_query_side(w, c, x.shape(1), &trace, grids.empty() ? Grid{} : grids[0]);
    return fast::tower_tail_forward(tail, fast::adapter_forward(w, c, side, x, mask, &trace), c.eps, &trace);
}

void keep_freed_memory(std::size_t huge_heap) {
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    // The heap grown by `huge_heap` bytes, in blocks below the mmap threshold (so that they come from the heap), each
    // marked for transparent huge pages, then all given back to malloc (kept: the trim threshold is above them).
    // Nothing is touched here; the tensors carved from them later are first touched 2 MiB at a time, what
    // glibc.malloc.hugetlb=1 does for a whole process.
    constexpr std::size_t block_bytes = std::size_t(128) << 20;
    std::vector<void*> blocks;
    for (std::size_t grown = 0; grown < huge_heap; grown += block_bytes) {
        void* block = std::malloc(block_bytes);
        if (!block) break;
        blocks.push_back(block);
        ask_for_huge_pages(block, block_bytes);
    }
    for (void* block : blocks) std::free(block);
}

std::string describe_stage(const std::string& name) {
    static const std::map<std::string, std::string> what = {
        {"pos_q", "02  P_q: the 2D sin-cos table of the query grid"},
        {"pos_k", "03  P_k: key table (P_q resized; MiniCPM-V: sliced)"},
        {"key_padding_mask", "11  MiniCPM-V: 1 where a key is padding"},
        {"ln_q", "04  LayerNorm of the learned queries (ln_q)"},
        {"query_in", "07  ln_q + P_q: the query before its projection"},
        {"q", "05  q = query_in W_q^T + b_q"},
        {"kv_proj", "05  x W_kv^T: features to the adapter's width"},
        {"ln_kv", "04  X = LayerNorm of those (ln_kv)"},
        {"key_in", "07  X + P_k: the key before its projection"},
        {"k", "05  k = key_in W_k^T + b_k"},
        {"v", "05  v = X W_v^T + b_v: no position on the values"},
        {"scores", "06  (q_h / sqrt(Dh)) k_h^T, per head"},
        {"attn_weights", "06  softmax over the keys, per head"},
        {"attended", "06  the heads' weighted values, concatenated"},
        {"out", "05  out_proj: the adapter's output"},
        {"ln_post", "08  LayerNorm of the output (ln_post)"},
        {"proj", "08  @ proj: the image's tokens for the LLM"}};
    const auto it = what.find(name);
    return it == what.end() ? "" : it->second;
}

std::size_t print_stage_comparisons(const Trace& trace,
                                    const std::function<xt::xarray<float>(const std::string&)>& expected, double atol,
                                    double rtol) {
    std::printf("  %-13s %-52s %-16s %s\n", "name", "stage", "shape", "C++ against PyTorch");
    std::size_t bad = 0;
    for (const auto& name : trace.names()) {
        const xt::xarray<float> want = expected(name);
        const Comparison cmp = compare(trace.get(name), want, atol, rtol);
        bad += cmp.ok() ? 0 : 1;
        std::printf("  %-13s %-52s %-16s %s\n", name.c_str(), describe_stage(name).c_str(),
                    shape_string(shape_of(trace.get(name))).c_str(), describe(cmp, want).c_str());
    }
    return bad;
}

}  // namespace qwenvl::cli
