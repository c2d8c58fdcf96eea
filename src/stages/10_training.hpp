// stages/10_training.hpp: stage 10, training the adapter (docs/training.md).
//
// Paper (Qwen-VL, section 2.1 and 3): the adapter's queries are trainable and the adapter is randomly initialised
// and learned in every training stage. The optimiser is the paper's (its appendix's table of training
// hyperparameters): AdamW with beta1 = 0.9, beta2 = 0.98, eps = 1e-6 and weight decay 0.05, the gradients' norm
// clipped at 1.0, and a linear warm-up, then a cosine decay of the learning rate down to a minimum learning rate
// (stage 1: peak 2e-4, minimum 1e-6). One step of training:
//   y = tower_tail_forward(adapter_forward(x))               stages 07 and 08, with their trace
//   L = mean((y - target)^2),  dL/dy = 2 (y - target) / count  mse_loss
//   gradients = adapter_backward(tower_tail_backward(dL/dy))  stages 07 and 08
//   g <- g * min(1, max_norm / (||g|| + 1e-6))                 clip_grad_norm, ||g|| over every parameter
//   p <- AdamW(p, g, learning_rate(step))                      as torch.optim.AdamW
#pragma once

#include <random>
#include <string>
#include <utility>
#include <vector>

#include <xtensor/xarray.hpp>

#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"

namespace qwenvl {

// Trainable parameters (or their gradients) by checkpoint name without the `transformer.visual.` prefix, in_proj
// packed (3E, E) as the checkpoint stores it; in the fixtures' order. pos_embed is frozen and not among them.
using NamedTensors = std::vector<std::pair<std::string, xt::xarray<float>>>;

NamedTensors trainable_parameters(const AdapterWeights& weights, const TowerTail& tail);
// Writes `params` back into the weights (in_proj split again); every trainable name must be present.
void set_trainable_parameters(const NamedTensors& params, AdapterWeights& weights, TowerTail& tail);
NamedTensors named_gradients(const AdapterGradients& adapter, const TailGradients& tail);

// Upstream's initialisation, drawn from a seeded std::mt19937 (not torch's generator: the distributions are
// upstream's, the values are not): the query, kv_proj and out_proj's weights normal with std 0.02 (upstream's
// trunc_normal_, truncated at +-2, which std 0.02 never reaches); in_proj_weight uniform on (-a, a), a =
// sqrt(6 / (E + 3E)) (nn.MultiheadAttention's xavier_uniform_); every bias 0; LayerNorms 1 and 0; proj
// E^-0.5 times a standard normal (the visual tower's).
void init_upstream(AdapterWeights& weights, TowerTail& tail, const AdapterConfig& config, unsigned seed);

// The mean squared error and its gradient: L = (1/n) sum (y - target)^2, dL/dy = (2/n)(y - target), n = y.size().
struct MseLoss {
    double loss = 0.0;
    Tensor3 d_y;
};
MseLoss mse_loss(const Tensor3& y, const Tensor3& target);

// Scales every gradient by min(1, max_norm / (norm + 1e-6)), norm = sqrt(sum of every squared entry), as
// torch.nn.utils.clip_grad_norm_ does; returns the norm before clipping.
double clip_grad_norm(NamedTensors& gradients, double max_norm);

struct AdamWConfig {
    double lr = 1e-2;            // the peak learning rate
    double min_lr = 0.0;         // where the cosine ends (the paper's stage 1: 1e-6, 1/200 of its peak)
    double beta1 = 0.9, beta2 = 0.98;
    double eps = 1e-6;           // the paper's (torch.optim.AdamW's default is 1e-8)
    double weight_decay = 0.05;
    double max_grad_norm = 1.0;
    std::size_t warmup_steps = 3, total_steps = 10;
};

// The learning rate of step s (from 0): lr (s + 1) / warmup during the warm-up, then the cosine
// min_lr + (lr - min_lr) (1 + cos(pi (s - warmup) / (total - warmup))) / 2, from lr down to min_lr at total_steps.
double learning_rate(std::size_t step, const AdamWConfig& config);

// torch.optim.AdamW, one parameter tensor at a time (t counts the updates from 1):
//   p <- p (1 - lr wd)                      decoupled weight decay, first
//   m <- beta1 m + (1 - beta1) g            v <- beta2 v + (1 - beta2) g^2
//   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
struct AdamW {
    AdamWConfig config;
    std::size_t step = 0;  // updates done
    NamedTensors m, v;     // the moments, zero before the first update
    void update(NamedTensors& params, const NamedTensors& gradients, double lr);
};

struct StepResult {
    double loss = 0.0, grad_norm = 0.0, lr = 0.0;
};
// The end of a step, once the gradients are known: clip them (clip_grad_norm), then one AdamW update at this step's
// rate (learning_rate), written back into the weights. `loss` is passed through to the result. train_step below, and
// the fast path's (fast/train.hpp), end with it: one optimiser for both paths.
StepResult apply_gradients(AdapterWeights& weights, TowerTail& tail, const AdapterGradients& adapter_gradients,
                           const TailGradients& tail_gradients, double loss, AdamW& optimizer);

// One step of training on the batch x (N, L, Kv) towards target (N, Q, E), as in the header's equations.
StepResult train_step(AdapterWeights& weights, TowerTail& tail, const AdapterConfig& config, const Tensor3& x,
                      const Tensor3& target, AdamW& optimizer, const Matrix* mask = nullptr);

// The positions task (docs/training.md): features x (N, L, E), every value standard normal, and as the target of
// query r the mean of the features of the patches in query r's own cell: the G_k x G_k key grid cut into the
// G_q x G_q grid of the queries, patch (i, j) in cell (i G_q / G_k, j G_q / G_k) (G_k >= G_q). Which cell a patch
// lies in is told by its position alone: without the 2-D tables no key says where it is.
struct TaskBatch {
    Tensor3 x;       // (N, G_k^2, E)
    Tensor3 target;  // (N, G_q^2, E)
};
TaskBatch positions_task(std::size_t batch, std::size_t grid_k, std::size_t grid_q, std::size_t width, std::mt19937& rng);

// Features of another width than the adapter's (Kv != E, `train --kv`): a task's target, Kv channels wide, repeated
// across E channels: channel c of the result is channel c mod Kv of `target`. (N, R, Kv) -> (N, R, E). kv_proj can
// learn the copy, so the task stays learnable; with Kv == E the target is returned as it is.
Tensor3 tile_channels(const Tensor3& target, std::size_t width);

// The query-count ablation (paper, Appendix E.2; docs/training.md#the-query-count-ablation) compares runs with
// different Q on one target of one shape. The read-out: the Q outputs of an image, seen as their G_q x G_q grid,
// resized bicubically (stage 03, as F.interpolate) to the G x G grid of the patches, z = R y, whatever Q is. The
// resize is linear in the table it resizes, so R (G^2, Q) is a matrix: its column i is the resize of the one-hot
// table e_i. (R is the identity when G_q = G: the read-out favours one query per patch.)
Matrix readout_matrix(std::size_t grid_q, std::size_t grid_out);
// z_n = R y_n for every image n: y (N, Q, E) -> z (N, G^2, E).
Tensor3 grid_readout(const Matrix& readout, const Tensor3& y);
// Its backward: dL/dy_n = R^T dL/dz_n.
Tensor3 grid_readout_backward(const Matrix& readout, const Tensor3& d_z);

// One step of training on the read-out: L = mean((R y - target)^2) over z's entries, dL/dz = 2 (z - target) / count
// (mse_loss), dL/dy = R^T dL/dz (grid_readout_backward), then the backward, clipping and AdamW as train_step.
StepResult readout_train_step(AdapterWeights& weights, TowerTail& tail, const AdapterConfig& config, const Tensor3& x,
                              const Matrix& readout, const Tensor3& target, AdamW& optimizer);

// The reconstruction task of the ablation: features x (N, G_k^2, E), each image three octaves of noise (drawn on
// grids of G_k / 4, G_k / 2 and G_k, resized bicubically to G_k, amplitudes 1, 1/sqrt(2) and 1/2), each patch then
// normalised to mean 0 and variance 1 over its E values (so that the tail's LayerNorm can give a patch back
// exactly); the target is the features themselves: through the read-out, query r must give back the patches at its
// place in the grid. An image's channel read out through R lies in the span of R's Q columns, so with Q < G_k^2 the
// error cannot fall below the part of the target outside that span (for white noise 1 - Q / G_k^2; for these
// smoother images less: 0.144 with 64 queries on 16 x 16 patches, 0.082 with 144).
TaskBatch reconstruct_task(std::size_t batch, std::size_t grid_k, std::size_t width, std::mt19937& rng);

}  // namespace qwenvl
