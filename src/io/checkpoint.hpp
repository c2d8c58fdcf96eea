// io/checkpoint.hpp: the adapter's weights from a Qwen-VL checkpoint, by the checkpoint's own tensor names.
//
// Under the prefix P (default "transformer.visual."):
//   P attn_pool.query (Q, E)               P attn_pool.pos_embed (Q, E)   optional: computed when absent
//   P attn_pool.kv_proj.weight (E, Kv)     optional: absent when Kv == E (nn.Identity)
//   P attn_pool.attn.in_proj_weight (3E, E), in_proj_bias (3E,), out_proj.weight (E, E), out_proj.bias (E,)
//   P attn_pool.ln_q.weight|bias (E,)      P attn_pool.ln_kv.weight|bias (E,)
//   P ln_post.weight|bias (E,)             P proj (E, E)                  optional: the tower's tail
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "fast/adapter.hpp"
#include "io/safetensors.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"

namespace qwenvl {

inline const char* kDefaultPrefix = "transformer.visual.";

// Which model a checkpoint holds and where its tensors are, from the names alone:
//   Qwen-VL:    P attn_pool.query ...        tail: P ln_post.*, P proj       (P = the prefix, transformer.visual.)
//   MiniCPM-V:  resampler.query ...          tail: resampler.ln_post.*, resampler.proj, and no resampler.pos_embed
//               (or P query ... when --prefix P names the resampler itself)
// Qwen-VL is tried first; when neither query is found the layout is Qwen-VL's, and reading reports the missing
// tensor. A resampler with a stored pos_embed is MiniCPM-V 2.0's (not supported): InputError naming the file.
struct CheckpointLayout {
    Model model = Model::qwen_vl;
    std::string adapter;  // the adapter's names start with this
    std::string tail;     // ln_post's and proj's
};
CheckpointLayout checkpoint_layout(const WeightFiles& files, const std::string& prefix);

struct LoadedAdapter {
    CheckpointLayout layout;  // where the tensors were found, and so which model
    AdapterWeights weights;
    AdapterConfig config;
    bool has_tail = false;  // ln_post and proj were found
    TowerTail tail;
};

// What load_adapter reads from the files: every tensor; or only the headers' shapes (each tensor allocated with
// its shape but not filled, so that none of its memory is touched or read: `info`'s way, which then takes
// milliseconds instead of reading the whole checkpoint) and the stored pos_embed; or the shapes alone (map_adapter's
// checks).
enum class Contents { all, shapes, shapes_only };

// Reads and checks the adapter's tensors (under checkpoint_layout's names) (and the tail's, when present and `want_tail`). num_heads = 0
// applies Qwen-VL's rule H = E / 128. Throws InputError naming the file and the problem: a missing tensor,
// a shape that does not fit the others, H not dividing E, E not divisible by 4.
LoadedAdapter load_adapter(const WeightFiles& files, const std::string& prefix, std::size_t num_heads, bool want_tail,
                           Contents contents = Contents::all);

// The adapter's weights for the fast path, taken from the mapped checkpoint (`run`'s way). F32 tensors are
// read in place: nothing is copied, and no fresh memory is touched for them (the packed in_proj_weight's three
// parts are three contiguous row blocks of it). The weights only the products read (kv_proj, W_q, W_k, W_v, out_proj,
// proj) are read in place in F16 and BF16 too, as packed blocks that fast::gemm_block widens a panel at a time; so
// are the query and pos_embed, which fast::copy_of widens into the copies the query side makes. The other F16 and
// BF16 tensors (biases, LayerNorms: small), and F32 ones whose data is not 4-byte aligned, are converted once into
// memory this struct owns. Checked exactly as load_adapter checks them.
struct MappedAdapter {
    fast::Weights weights;
    fast::TailWeights tail;
    AdapterConfig config;
    bool has_tail = false;
    WeightFiles files;                               // holds the mappings the views point into
    std::vector<std::unique_ptr<float[]>> converted;  // the tensors that could not be read in place
    std::size_t bytes_in_place = 0, bytes_converted = 0;
};

MappedAdapter map_adapter(const WeightFiles& files, const std::string& prefix, std::size_t num_heads, bool want_tail);
// The same, on what load_adapter(..., Contents::shapes_only) gave for these files. `run` checks the shapes before it
// sets up its heap (keep_freed_memory): the check allocates every tensor's size and touches none, but carved from
// a heap marked for huge pages, the bookkeeping malloc writes at each block's ends had first-touched 2 MiB pages
// that nothing then used (docs/performance.md#fresh-memory).
MappedAdapter map_adapter(const WeightFiles& files, const LoadedAdapter& checked);

// Lets go of one of `m`'s weights that the forward pass no longer needs, and empties `block`: memory this struct
// converted it into is freed; a tensor read in place has its whole pages dropped from the process's resident set
// (madvise(MADV_DONTNEED): they stay in the page cache, and reading them again would map them again). `run`
// releases the query and W_q once fast::prepare_query_side has used them: at full size W_q alone is 64 MiB of
// the peak. (Not pos_embed: an empty pos_embed means "compute the sin-cos table".)
void release(MappedAdapter& m, fast::Block& block);

}  // namespace qwenvl
