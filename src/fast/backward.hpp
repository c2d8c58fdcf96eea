// fast/backward.hpp: the backward pass, fast.
//
// Replaces stages/07_adapter's `adapter_backward` and stages/08_tower_tail's `tower_tail_backward` (the equations
// are theirs: stages/07_adapter.hpp, docs/stages/07-adapter.md#backward-training), computed with sgemm
// (fast/gemm.hpp) and the fast path's threads, and two changes of schedule:
//  - every product that the readable path does one image at a time and sums (out_proj's, the key and value
//    projections' and kv_proj's weight gradients, dL/dx of every projection) is one sgemm over the whole batch;
//  - the attention's backward runs head by head on the fast path's threads, each head's products reading its
//    channels in place.
// The same gradients as the readable path within float32 rounding (the sums run in another order), proven by the
// same autograd goldens (tests/test_gradients.cpp), and against the readable path at full size.
#pragma once

#include "core/trace.hpp"
#include "fast/adapter.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"

namespace qwenvl::fast {

// LayerNorm's backward on `rows` rows of E values (stages/04's layer_norm_backward, the same equation): dx (rows, E)
// written; dL/dgamma and dL/dbeta summed over the rows and ADDED to dgamma, dbeta (E,).
void layer_norm_backward(const float* x, std::size_t rows, std::size_t E, Values gamma, const float* dy, float eps,
                         float* dx, float* dgamma, float* dbeta);

// Replaces stages/08's tower_tail_backward: out (N, Q, E), dL/dy (N, Q, E) -> the tail's gradients and dL/d out.
// Records dL/d ln_post and dL/d out in `gradients` when given.
TailGradients tower_tail_backward(const TailWeights& tail, const Tensor3& out, const Tensor3& d_y, float eps,
                                  Trace* gradients = nullptr);

// Replaces stages/07's adapter_backward: the same arguments (the forward pass's trace, from either path) and results.
// Records the same gradients, under the same names and in the same order, in `gradients` when given.
AdapterGradients adapter_backward(const Weights& weights, const AdapterConfig& config, const Tensor3& x,
                                  const Trace& forward, const Tensor3& d_out, Trace* gradients = nullptr);

}  // namespace qwenvl::fast
