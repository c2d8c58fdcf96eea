#include "stages/08_tower_tail.hpp"

#include <xtensor/xview.hpp>

#include "stages/04_layernorm.hpp"
#include "stages/05_projections.hpp"

namespace qwenvl {

Tensor3 tower_tail_forward(const TowerTail& tail, const Tensor3& out, float eps, Trace* trace) {
    const std::size_t N = out.shape(0), Q = out.shape(1), E = out.shape(2);
    check_shape("tower_tail_forward", "proj", tail.proj, {E, E});
    Tensor3 y({N, Q, E});
    for (std::size_t n = 0; n < N; ++n) {
        const Matrix out_n = xt::view(out, n);                                          // (Q, E)
        const Matrix ln_post = layer_norm(out_n, tail.ln_post_weight, tail.ln_post_bias, eps);  // (Q, E)
        const Matrix proj = matmul(ln_post, tail.proj);  // x @ W: proj is NOT an nn.Linear weight   (Q, E)
        xt::view(y, n) = proj;
        record_item(trace, "ln_post", n, N, ln_post);
        record_item(trace, "proj", n, N, proj);
    }
    return y;
}

TailGradients tower_tail_backward(const TowerTail& tail, const Tensor3& out, const Tensor3& d_y, float eps,
                                  Trace* gradients) {
    const std::size_t N = out.shape(0), Q = out.shape(1), E = out.shape(2);
    check_shape("tower_tail_backward", "proj", tail.proj, {E, E});
    check_shape("tower_tail_backward", "d_y", d_y, {N, Q, E});
    TailGradients grads{Tensor3({N, Q, E}), xt::zeros<float>({E}), xt::zeros<float>({E}), xt::zeros<float>({E, E})};
    for (std::size_t n = 0; n < N; ++n) {
        const Matrix out_n = xt::view(out, n);                                                 // (Q, E)
        const Matrix ln_post = layer_norm(out_n, tail.ln_post_weight, tail.ln_post_bias, eps);  // the forward's
        const Matrix d_y_n = xt::view(d_y, n);                                                 // (Q, E)
        const MatmulGradients through_proj = matmul_backward(ln_post, tail.proj, d_y_n);
        const LayerNormGradients through_ln = layer_norm_backward(out_n, tail.ln_post_weight, through_proj.da, eps);
        grads.proj += through_proj.db;
        grads.ln_post_weight += through_ln.dgamma;
        grads.ln_post_bias += through_ln.dbeta;
        xt::view(grads.d_out, n) = through_ln.dx;
        record_item(gradients, "ln_post", n, N, through_proj.da);
        record_item(gradients, "out", n, N, through_ln.dx);
    }
    return grads;
}

}  // namespace qwenvl
