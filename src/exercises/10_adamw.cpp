// Exercise 10-adamw: the paper's optimiser: the learning-rate schedule, gradient clipping and AdamW
// (docs/course/lesson-7-training.md).
//   check:     cmake --build --preset release --target check-10-adamw
//   read:      docs/course/lesson-7-training.md
//   solution:  src/stages/10_training.cpp, the project's own stage (read it once you pass)
//
// learning_rate(step, config): the rate of step s (from 0): a linear warm-up over config.warmup_steps steps to
//   config.lr, then a cosine down to config.min_lr at config.total_steps (steps past total_steps are not used).
// clip_grad_norm(gradients, max_norm): scale every gradient as torch.nn.utils.clip_grad_norm_ does; return the norm
//   before clipping.
// AdamW::update(params, gradients, lr): one step of torch.optim.AdamW for every parameter tensor, in order
//   (params[i] and gradients[i] have the same name and shape). `step` counts the updates done (0 before the first);
//   m and v, the moments, start empty: make them zeros of each parameter's shape on the first update.
// The equations, one update worked by hand and the classic mistakes: lesson 7. Compute in double; store the
// parameters and moments as float.
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
