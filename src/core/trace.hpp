// core/trace.hpp: the named intermediates of a forward pass.
//
// A forward pass given a Trace records every step under a stable name, so the golden tests, the command line
// (--trace), the notebooks and a debugger session all see the same steps. Both paths (src/stages/ and src/fast/)
// record the same names in the same order, the order the readable adapter computes them:
//   pos_q (Q, E)  pos_k (L, E)  ln_q (Q, E)  query_in (Q, E)  q (Q, E)
//   kv_proj (N, L, E)  ln_kv (N, L, E)  key_in (N, L, E)  k (N, L, E)  v (N, L, E)
//   scores (N, H, Q, L)  attn_weights (N, H, Q, L)  attended (N, Q, E)  out (N, Q, E)
//   ln_post (N, Q, E)  proj (N, Q, E)
// MiniCPM-V's resampler (stages/11_minicpmv) records ln_q, q, then pos_k (N, L, E) and key_padding_mask (N, L), then
// the names from kv_proj on. docs/shapes.md lists them with the stage each belongs to.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <xtensor/xarray.hpp>
#include <xtensor/xtensor.hpp>

namespace qwenvl {

class Trace {
public:
    // Stores a copy of `value` under `name` (replacing an earlier value of that name).
    void record(const std::string& name, xt::xarray<float> value);
    // Stores `value` as item n of `count` items of its shape under `name`, that is, as [n] of a (count, ...)
    // tensor: what a batched step would have recorded, filled one image at a time. Item 0 starts a new tensor.
    void record_item(const std::string& name, std::size_t n, std::size_t count, const xt::xarray<float>& value);
    // Where item n of `count` items of `shape` goes under `name` (made at n = 0, as record_item makes it): a producer
    // writes the item there itself, with no buffer of its own and no copy (the fast attention's per-head scores and
    // weights, 64 MB per full-size image).
    float* item_slot(const std::string& name, std::size_t n, std::size_t count, const std::vector<std::size_t>& shape);
    // The same from `shape` row-major floats at `data` (a container's own memory): one copy, no conversion.
    void record_item(const std::string& name, std::size_t n, std::size_t count, const std::vector<std::size_t>& shape,
                     const float* data);
    // Throws std::out_of_range naming the stage when it was not recorded.
    const xt::xarray<float>& get(const std::string& name) const;
    // The recorded names, in the order they were first recorded.
    std::vector<std::string> names() const;

private:
    std::vector<std::pair<std::string, xt::xarray<float>>> steps_;
};

// The forward passes take a Trace* that is nullptr when nothing is recorded; these do nothing then, so that
// each intermediate is recorded on one line. Templates, so that a tensor is converted to the trace's xarray (a
// copy) only when it is recorded: a conversion on every call cost the fast path a copy of each (L, E) tensor.
template <class Tensor>
void record(Trace* trace, const std::string& name, const Tensor& value) {
    if (trace) trace->record(name, value);
}
template <class Tensor>
void record_item(Trace* trace, const std::string& name, std::size_t n, std::size_t count, const Tensor& value) {
    if (trace) trace->record_item(name, n, count, value);
}
// A container's item is copied straight from its memory (the conversion to an xarray first cost the fast path's
// full-size trace a copy of each (L, E) tensor and each (H, Q, L) one, in fresh pages).
template <std::size_t D>
void record_item(Trace* trace, const std::string& name, std::size_t n, std::size_t count, const xt::xtensor<float, D>& value) {
    if (trace) trace->record_item(name, n, count, std::vector<std::size_t>(value.shape().begin(), value.shape().end()), value.data());
}

}  // namespace qwenvl
