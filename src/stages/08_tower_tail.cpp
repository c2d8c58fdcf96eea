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

}  // namespace qwenvl
