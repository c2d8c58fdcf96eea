#include "fast/train.hpp"

#include "fast/adapter.hpp"
#include "fast/backward.hpp"
#include "fast/threads.hpp"

namespace qwenvl::fast {

namespace {
// The forward pass, traced, and the tower's tail: out (N, Q, E) and y (N, Q, E).
struct Forward {
    Trace trace;
    Tensor3 out, y;
};
Forward forward(const AdapterWeights& w, const TowerTail& tail, const AdapterConfig& c, const Tensor3& x,
                const Matrix* mask) {
    // Every call names fast:: and passes fast's own views: unqualified, argument-dependent lookup would find the
    // readable function of the same name, whose parameter types match AdapterWeights and TowerTail exactly.
    Forward f;
    const Weights weights(w);  // views of the tensors, made anew each step: the update replaces them
    const TailWeights tail_weights(tail);
    const QuerySide side = fast::prepare_query_side(weights, c, x.shape(1), &f.trace);
    f.out = fast::adapter_forward(weights, c, side, x, mask, &f.trace);
    f.y = fast::tower_tail_forward(tail_weights, Tensor3(f.out), c.eps);  // normalises a copy in place: out is kept
    return f;
}

StepResult backward_and_update(AdapterWeights& w, TowerTail& tail, const AdapterConfig& c, const Tensor3& x,
                               const Forward& f, double loss, const Tensor3& d_y, AdamW& optimizer) {
    const TailGradients tail_grads = fast::tower_tail_backward(TailWeights(tail), f.out, d_y, c.eps);
    const AdapterGradients adapter_grads = fast::adapter_backward(Weights(w), c, x, f.trace, tail_grads.d_out);
    return apply_gradients(w, tail, adapter_grads, tail_grads, loss, optimizer);
}
}  // namespace

StepResult train_step(AdapterWeights& w, TowerTail& tail, const AdapterConfig& c, const Tensor3& x,
                      const Tensor3& target, AdamW& optimizer, const Matrix* mask) {
    const OwnThreads own;  // one scope for the whole step: the functions' own scopes nest in it
    const Forward f = forward(w, tail, c, x, mask);
    const MseLoss loss = mse_loss(f.y, target);
    return backward_and_update(w, tail, c, x, f, loss.loss, loss.d_y, optimizer);
}

StepResult readout_train_step(AdapterWeights& w, TowerTail& tail, const AdapterConfig& c, const Tensor3& x,
                              const Matrix& readout, const Tensor3& target, AdamW& optimizer) {
    const OwnThreads own;  // one scope for the whole step: the functions' own scopes nest in it
    const Forward f = forward(w, tail, c, x, nullptr);
    const MseLoss loss = mse_loss(grid_readout(readout, f.y), target);
    return backward_and_update(w, tail, c, x, f, loss.loss, grid_readout_backward(readout, loss.d_y), optimizer);
}

}  // namespace qwenvl::fast
