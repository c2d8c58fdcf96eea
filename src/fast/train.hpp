// fast/train.hpp: a training step on the fast path.
//
// Replaces stages/10_training's `train_step` and `readout_train_step` (the same step: stages/10_training.hpp), with
// the fast path's forward pass (fast/adapter.hpp, traced: the backward reads its intermediates) and backward pass
// (fast/backward.hpp). The loss, the read-out, the clipping and AdamW's update are stage 10's own functions
// (mse_loss, grid_readout, apply_gradients): one optimiser for both paths. `train` runs this step unless given
// --readable. Proven by the same ten-step goldens as the readable step (tests/test_training.cpp).
#pragma once

#include "stages/10_training.hpp"

namespace qwenvl::fast {

StepResult train_step(AdapterWeights& weights, TowerTail& tail, const AdapterConfig& config, const Tensor3& x,
                      const Tensor3& target, AdamW& optimizer, const Matrix* mask = nullptr);

StepResult readout_train_step(AdapterWeights& weights, TowerTail& tail, const AdapterConfig& config, const Tensor3& x,
                              const Matrix& readout, const Tensor3& target, AdamW& optimizer);

}  // namespace qwenvl::fast
