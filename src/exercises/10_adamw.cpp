// Exercise 10-adamw: the paper's optimiser: the learning-rate schedule, gradient clipping and AdamW
// (docs/course/lesson-7-training.md).
//   check:     cmake --build --preset release --target check-10-adamw
//   read:      docs/course/lesson-7-training.md
//   solution:  src/stages/10_training.cpp, the project's own stage (read it once you pass)
//
// learning_rate(step, config): the rate of step s (from 0): a linear warm-up over config.warmup_steps steps to
//   config.lr, then a cosine from config.lr down to config.min_lr at config.total_steps (lesson 7 has the
//   equations; torch's LambdaLR with that factor gives the values the check compares with).
// clip_grad_norm(gradients, max_norm): norm = sqrt(sum of every squared entry of every gradient); scale every
//   gradient by min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_; return the norm BEFORE clipping.
// AdamW::update(params, gradients, lr): one step of torch.optim.AdamW for every parameter tensor, in order
//   (params[i] and gradients[i] have the same name and shape). `step` counts the updates done (0 before the first);
//   m and v, the moments, start empty: make them zeros of each parameter's shape on the first update. With t the
//   update's number from 1 and config's beta1, beta2, eps and weight_decay, AdamW is
//     p <- p - lr * wd * p                  the decoupled weight decay, on the parameter, before the moments
//     m <- beta1 m + (1 - beta1) g          v <- beta2 v + (1 - beta2) g^2
//     p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// The pitfalls: Adam's L2 (adding wd * p to g) is not AdamW's decay; the bias corrections use t from 1; eps is added
// after the square root; the warm-up's first rate is lr / warmup, not 0; the cosine ends at min_lr, not 0;
// clipping never scales a gradient up. Compute in double and store the parameters and moments as float.
#include <cmath>

#include "stages/10_training.hpp"

namespace qwenvl {

double learning_rate(std::size_t step, const AdamWConfig& config) {
    // TODO: replace this placeholder with the warm-up and the cosine.
    (void)step;
    (void)config;
    return 0.0;
}

double clip_grad_norm(NamedTensors& gradients, double max_norm) {
    // TODO: replace this placeholder: the norm, and the gradients scaled when it exceeds max_norm.
    (void)gradients;
    (void)max_norm;
    return 0.0;
}

void AdamW::update(NamedTensors& params, const NamedTensors& gradients, double lr) {
    // TODO: replace this placeholder with one AdamW update of every parameter.
    (void)params;
    (void)gradients;
    (void)lr;
}

}  // namespace qwenvl
