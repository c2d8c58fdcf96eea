// cli/common.hpp: what several subcommands share: the checked inputs of `run` and `demo`, the two paths, and
// the one-line description of every traced stage.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "cli/args.hpp"
#include "core/shapes.hpp"
#include "core/trace.hpp"
#include "fast/adapter.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/07_adapter.hpp"
#include "io/safetensors.hpp"
#include "stages/08_tower_tail.hpp"

namespace qwenvl::cli {

// The data folder the programs read by default (set by CMake); --data overrides it where offered.
extern const std::string kDataDir;

// Reads (L, Kv) or (N, L, Kv) features; `unbatched` tells which it was. The checks are as_feature_batch's
// (rank, a square patch count, finite values) plus the width the weights expect, all reported with the file.
// square = false drops the square check (run and compare: batch_grids checks the grids against L).
Tensor3 read_features(const std::string& path, std::size_t kv_dim, bool* unbatched = nullptr, bool square = true);

// "3x5" or "2x3,3x3,1x2": one grid (h, w) per image, or one for every image. UsageError naming the flag.
std::vector<Grid> parse_grids(const std::string& command, const std::string& flag, const std::string& text);

// The grids of a batch x (N, L, Kv) from --grids: none = the square grid of L (Qwen-VL; an error suggesting --grids
// when L is not a square); one = the same for every image; else
// one per image. Qwen-VL: one grid for the batch, of exactly L cells; MiniCPM-V: at most L cells each (the rest
// padding). InputError naming `input` or UsageError otherwise.
std::vector<Grid> batch_grids(const std::string& command, const std::string& input, std::vector<Grid> grids,
                              const Tensor3& x, Model model);

// The attention's head count: `given` (--heads, checked before any file is read) when not 0; else the count a
// checkpoint written by `train` records in its metadata (a trained adapter of width 32 has no heads by Qwen-VL's
// rule E / 128); else 0, which load_adapter turns into that rule.
std::size_t heads_for(std::size_t given, const WeightFiles& files);

// A (Q, L) mask from .npy: float32 added to the scores, or bool where true = masked. InputError naming the file.
Matrix read_mask(const std::string& path, std::size_t Q, std::size_t L);

// The adapter, then the tower's tail, on the readable stages (src/stages/) or the fast path (src/fast/),
// recording every intermediate in `trace`. `grids`: Qwen-VL's key grid (its first; empty = square), or MiniCPM-V's
// one per image.
Tensor3 traced_forward(bool readable, const AdapterWeights& weights, const AdapterConfig& config,
                       const TowerTail& tail, const Tensor3& x, const Matrix* mask, Trace& trace,
                       const std::vector<Grid>& grids = {});
// The fast path's half of it, on the fast path's own views of the weights: `compare` passes the checkpoint's
// tensors mapped in place (map_adapter), as `run` reads them, with no copy of the weights.
Tensor3 traced_fast_forward(const fast::Weights& weights, const AdapterConfig& config, const fast::TailWeights& tail,
                            const Tensor3& x, const Matrix* mask, Trace& trace, const std::vector<Grid>& grids = {});

// glibc's malloc maps a block of 128 KiB or more afresh and unmaps it on free, and gives the top of its heap back to the
// system: a program that allocates and frees the same large tensors again and again (train's steps; compare's
// stages, read, copied and compared one after another) pays the first touch of every page each time, about 2.5 us a
// page on these VMs (docs/performance.md#page-faults). This raises the mmap threshold to 256 MiB and the trim
// threshold to 1 GiB (mallopt), so that freed blocks, in_proj's weight and gradient (192 MiB) included, stay in the
// heap and are reused.
// With `huge_heap` > 0, the heap is also grown by that much at once and asked for as transparent huge pages (where
// the kernel gives them on madvise), so that the tensors carved from it are first touched 2 MiB at a time. Keep it
// below the trim threshold (1 GiB): a larger free top of the heap is given back to the system, hints and all.
void keep_freed_memory(std::size_t huge_heap = 0);

// "06  softmax over the keys, per head": the stage (docs/stages/) and what a traced name holds.
std::string describe_stage(const std::string& name);

// Prints one line per traced stage (name, what it is, shape, and its comparison with `expected(name)` at
// |a - b| <= atol + rtol |b|) and returns how many stages are outside that tolerance. `demo` and `golden`.
std::size_t print_stage_comparisons(const Trace& trace,
                                    const std::function<xt::xarray<float>(const std::string&)>& expected, double atol,
                                    double rtol);

}  // namespace qwenvl::cli
