#include "stages/10_training.hpp"

#include <algorithm>
#include <cmath>
#include <random>

#include <xtensor/xbuilder.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xview.hpp>

#include "stages/03_resize.hpp"
#include "stages/05_projections.hpp"

namespace qwenvl {

namespace {
const xt::xarray<float>& find(const NamedTensors& named, const std::string& name) {
    for (const auto& [n, t] : named)
        if (n == name) return t;
    throw std::invalid_argument("set_trainable_parameters: no tensor named " + name);
}
}  // namespace

namespace {
// The parameters, or their gradients (AdapterGradients and TailGradients name their fields as AdapterWeights and
// TowerTail do), by checkpoint name in the fixtures' order; in_proj given packed.
template <class Adapter, class Tail>
NamedTensors by_checkpoint_name(const Adapter& a, const Matrix& in_proj_weight, const Vector& in_proj_bias, const Tail& t) {
    NamedTensors named = {{"attn_pool.query", a.query},
                          {"attn_pool.attn.in_proj_weight", in_proj_weight},
                          {"attn_pool.attn.in_proj_bias", in_proj_bias},
                          {"attn_pool.attn.out_proj.weight", a.out_proj_weight},
                          {"attn_pool.attn.out_proj.bias", a.out_proj_bias},
                          {"attn_pool.ln_q.weight", a.ln_q_weight},
                          {"attn_pool.ln_q.bias", a.ln_q_bias},
                          {"attn_pool.ln_kv.weight", a.ln_kv_weight},
                          {"attn_pool.ln_kv.bias", a.ln_kv_bias},
                          {"ln_post.weight", t.ln_post_weight},
                          {"ln_post.bias", t.ln_post_bias},
                          {"proj", t.proj}};
    if (a.kv_proj.size()) named.push_back({"attn_pool.kv_proj.weight", a.kv_proj});
    return named;
}
}  // namespace

NamedTensors trainable_parameters(const AdapterWeights& w, const TowerTail& tail) {
    const PackedInProjection in_proj = pack_in_proj(w.in_proj);
    return by_checkpoint_name(w, in_proj.weight, in_proj.bias, tail);
}

void set_trainable_parameters(const NamedTensors& p, AdapterWeights& w, TowerTail& tail) {
    w.query = find(p, "attn_pool.query");
    w.in_proj = split_in_proj(Matrix(find(p, "attn_pool.attn.in_proj_weight")), Vector(find(p, "attn_pool.attn.in_proj_bias")));
    w.out_proj_weight = find(p, "attn_pool.attn.out_proj.weight");
    w.out_proj_bias = find(p, "attn_pool.attn.out_proj.bias");
    w.ln_q_weight = find(p, "attn_pool.ln_q.weight");
    w.ln_q_bias = find(p, "attn_pool.ln_q.bias");
    w.ln_kv_weight = find(p, "attn_pool.ln_kv.weight");
    w.ln_kv_bias = find(p, "attn_pool.ln_kv.bias");
    tail.ln_post_weight = find(p, "ln_post.weight");
    tail.ln_post_bias = find(p, "ln_post.bias");
    tail.proj = find(p, "proj");
    if (w.kv_proj.size()) w.kv_proj = find(p, "attn_pool.kv_proj.weight");
}

NamedTensors named_gradients(const AdapterGradients& g, const TailGradients& t) {
    return by_checkpoint_name(g, g.in_proj_weight, g.in_proj_bias, t);
}

void init_upstream(AdapterWeights& w, TowerTail& tail, const AdapterConfig& c, unsigned seed) {
    std::mt19937 rng(seed);
    const std::size_t E = c.embed_dim, Kv = c.kv_dim, Q = c.n_queries;
    auto normal = [&](std::vector<std::size_t> shape, double std) {
        xt::xarray<float> t = xt::xarray<float>::from_shape(shape);
        std::normal_distribution<double> draw(0.0, std);
        for (auto& value : t) value = static_cast<float>(std::clamp(draw(rng), -2.0, 2.0));  // trunc_normal_'s +-2
        return t;
    };
    w.query = normal({Q, E}, 0.02);
    w.pos_embed = Matrix();  // computed: the sin-cos table
    w.kv_proj = Kv != E ? Matrix(normal({E, Kv}, 0.02)) : Matrix();
    const double bound = std::sqrt(6.0 / static_cast<double>(E + 3 * E));  // xavier_uniform_ on (3E, E)
    std::uniform_real_distribution<double> uniform(-bound, bound);
    Matrix in_proj = Matrix::from_shape({3 * E, E});
    for (auto& value : in_proj) value = static_cast<float>(uniform(rng));
    w.in_proj = split_in_proj(in_proj, xt::zeros<float>({3 * E}));
    w.out_proj_weight = normal({E, E}, 0.02);
    w.out_proj_bias = xt::zeros<float>({E});
    w.ln_q_weight = w.ln_kv_weight = tail.ln_post_weight = xt::ones<float>({E});
    w.ln_q_bias = w.ln_kv_bias = tail.ln_post_bias = xt::zeros<float>({E});
    tail.proj = normal({E, E}, 1.0 / std::sqrt(static_cast<double>(E)));
}

MseLoss mse_loss(const Tensor3& y, const Tensor3& target) {
    check_shape("mse_loss", "target", target, shape_of(y));
    const double n = static_cast<double>(y.size());
    MseLoss result{0.0, Tensor3(y.shape())};
    for (std::size_t i = 0; i < y.size(); ++i) {
        const double diff = static_cast<double>(y.flat(i)) - target.flat(i);
        result.loss += diff * diff / n;
        result.d_y.flat(i) = static_cast<float>(2.0 * diff / n);
    }
    return result;
}

double clip_grad_norm(NamedTensors& gradients, double max_norm) {
    double squares = 0.0;
    for (const auto& [name, g] : gradients)
        for (float value : g) squares += static_cast<double>(value) * value;
    const double norm = std::sqrt(squares);
    const double scale = max_norm / (norm + 1e-6);
    if (scale < 1.0)
        for (auto& [name, g] : gradients) g *= static_cast<float>(scale);
    return norm;
}

double learning_rate(std::size_t step, const AdamWConfig& c) {
    const double pi = std::acos(-1.0);
    if (step < c.warmup_steps) return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
    const double progress = static_cast<double>(step - c.warmup_steps) / static_cast<double>(c.total_steps - c.warmup_steps);
    return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + std::cos(pi * progress));
}

void AdamW::update(NamedTensors& params, const NamedTensors& gradients, double lr) {
    require(params.size() == gradients.size(), "AdamW::update", "as many gradients as parameters");
    if (m.empty())
        for (const auto& [name, p] : params) {
            m.push_back({name, xt::zeros<float>(p.shape())});
            v.push_back({name, xt::zeros<float>(p.shape())});
        }
    ++step;
    const double t = static_cast<double>(step);
    const double correction1 = 1.0 - std::pow(config.beta1, t), correction2 = 1.0 - std::pow(config.beta2, t);
    for (std::size_t i = 0; i < params.size(); ++i) {
        xt::xarray<float>& p = params[i].second;
        const xt::xarray<float>& g = gradients[i].second;
        require(gradients[i].first == params[i].first, "AdamW::update", "gradient " + gradients[i].first +
                                                                             " for parameter " + params[i].first);
        check_shape("AdamW::update", "a gradient", g, shape_of(p));
        xt::xarray<float>& m_i = m[i].second;
        xt::xarray<float>& v_i = v[i].second;
        for (std::size_t j = 0; j < p.size(); ++j) {
            double value = p.flat(j) * (1.0 - lr * config.weight_decay);  // decoupled weight decay, first
            const double grad = g.flat(j);
            const double first = config.beta1 * m_i.flat(j) + (1.0 - config.beta1) * grad;
            const double second = config.beta2 * v_i.flat(j) + (1.0 - config.beta2) * grad * grad;
            value -= lr / correction1 * first / (std::sqrt(second) / std::sqrt(correction2) + config.eps);
            m_i.flat(j) = static_cast<float>(first);
            v_i.flat(j) = static_cast<float>(second);
            p.flat(j) = static_cast<float>(value);
        }
    }
}

StepResult apply_gradients(AdapterWeights& w, TowerTail& tail, const AdapterGradients& adapter_grads,
                           const TailGradients& tail_grads, double loss, AdamW& optimizer) {
    NamedTensors gradients = named_gradients(adapter_grads, tail_grads);
    StepResult result;
    result.loss = loss;
    result.grad_norm = clip_grad_norm(gradients, optimizer.config.max_grad_norm);
    result.lr = learning_rate(optimizer.step, optimizer.config);
    NamedTensors params = trainable_parameters(w, tail);
    optimizer.update(params, gradients, result.lr);
    set_trainable_parameters(params, w, tail);
    return result;
}

namespace {
// The part of a step after the loss: the backward from dL/dy, then the clipping and AdamW's update.
StepResult update_from_loss(AdapterWeights& w, TowerTail& tail, const AdapterConfig& c, const Tensor3& x,
                            const Trace& forward, const Tensor3& out, double loss, const Tensor3& d_y, AdamW& optimizer) {
    const TailGradients tail_grads = tower_tail_backward(tail, out, d_y, c.eps);
    const AdapterGradients adapter_grads = adapter_backward(w, c, x, forward, tail_grads.d_out);
    return apply_gradients(w, tail, adapter_grads, tail_grads, loss, optimizer);
}
}  // namespace

StepResult train_step(AdapterWeights& w, TowerTail& tail, const AdapterConfig& c, const Tensor3& x,
                      const Tensor3& target, AdamW& optimizer, const Matrix* mask) {
    Trace forward;
    const Tensor3 out = adapter_forward(w, c, x, mask, &forward);
    const Tensor3 y = tower_tail_forward(tail, out, c.eps);
    const MseLoss loss = mse_loss(y, target);
    return update_from_loss(w, tail, c, x, forward, out, loss.loss, loss.d_y, optimizer);
}

Matrix readout_matrix(std::size_t grid_q, std::size_t grid_out) {
    const Matrix one_hot = xt::eye<float>(grid_q * grid_q);  // row i: the table e_i, one channel per query
    return resize_bicubic(one_hot, grid_q, grid_out);        // (G^2, Q): column i, the resize of e_i
}

Tensor3 grid_readout(const Matrix& readout, const Tensor3& y) {
    const std::size_t N = y.shape(0), Q = y.shape(1), E = y.shape(2), G2 = readout.shape(0);
    check_shape("grid_readout", "readout", readout, {G2, Q});
    Tensor3 z({N, G2, E});
    for (std::size_t n = 0; n < N; ++n) {
        const Matrix y_n = xt::view(y, n);         // (Q, E)
        xt::view(z, n) = matmul(readout, y_n);     // (G^2, E)
    }
    return z;
}

Tensor3 grid_readout_backward(const Matrix& readout, const Tensor3& d_z) {
    const std::size_t N = d_z.shape(0), G2 = readout.shape(0), Q = readout.shape(1), E = d_z.shape(2);
    check_shape("grid_readout_backward", "d_z", d_z, {N, G2, E});
    const Matrix readout_t = xt::transpose(readout);  // (Q, G^2)
    Tensor3 d_y({N, Q, E});
    for (std::size_t n = 0; n < N; ++n) {
        const Matrix d_z_n = xt::view(d_z, n);       // (G^2, E)
        xt::view(d_y, n) = matmul(readout_t, d_z_n);  // (Q, E)
    }
    return d_y;
}

StepResult readout_train_step(AdapterWeights& w, TowerTail& tail, const AdapterConfig& c, const Tensor3& x,
                              const Matrix& readout, const Tensor3& target, AdamW& optimizer) {
    Trace forward;
    const Tensor3 out = adapter_forward(w, c, x, nullptr, &forward);
    const Tensor3 y = tower_tail_forward(tail, out, c.eps);
    const Tensor3 z = grid_readout(readout, y);
    const MseLoss loss = mse_loss(z, target);
    return update_from_loss(w, tail, c, x, forward, out, loss.loss, grid_readout_backward(readout, loss.d_y), optimizer);
}

TaskBatch positions_task(std::size_t batch, std::size_t grid_k, std::size_t grid_q, std::size_t width, std::mt19937& rng) {
    require(grid_k >= grid_q && grid_q > 0, "positions_task", "the key grid must be at least the query grid");
    const std::size_t L = grid_k * grid_k, Q = grid_q * grid_q;
    TaskBatch b{Tensor3({batch, L, width}), xt::zeros<float>({batch, Q, width})};
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (auto& value : b.x) value = normal(rng);
    // The cell of each patch (patches row-major over the key grid), and how many patches each cell holds.
    std::vector<std::size_t> cell(L);
    std::vector<double> count(Q, 0.0);
    for (std::size_t i = 0; i < grid_k; ++i)
        for (std::size_t j = 0; j < grid_k; ++j) {
            cell[i * grid_k + j] = (i * grid_q / grid_k) * grid_q + j * grid_q / grid_k;
            count[cell[i * grid_k + j]] += 1.0;
        }
    for (std::size_t n = 0; n < batch; ++n)
        for (std::size_t patch = 0; patch < L; ++patch)
            for (std::size_t c = 0; c < width; ++c)
                b.target(n, cell[patch], c) += static_cast<float>(b.x(n, patch, c) / count[cell[patch]]);
    return b;
}

Tensor3 tile_channels(const Tensor3& target, std::size_t width) {
    const std::size_t N = target.shape(0), R = target.shape(1), Kv = target.shape(2);
    require(Kv > 0 && width > 0, "tile_channels", "at least one channel on each side");
    if (Kv == width) return target;
    Tensor3 tiled({N, R, width});
    for (std::size_t n = 0; n < N; ++n)
        for (std::size_t r = 0; r < R; ++r)
            for (std::size_t c = 0; c < width; ++c) tiled(n, r, c) = target(n, r, c % Kv);
    return tiled;
}

TaskBatch reconstruct_task(std::size_t batch, std::size_t grid_k, std::size_t width, std::mt19937& rng) {
    require(grid_k > 0 && width > 1, "reconstruct_task", "a key grid and at least two features");
    const std::size_t L = grid_k * grid_k;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    TaskBatch b{xt::zeros<float>({batch, L, width}), Tensor3()};
    for (std::size_t n = 0; n < batch; ++n) {
        // Three octaves of noise, each drawn on a coarser grid and resized bicubically (stage 03) to the key grid:
        // G_k / 4 with amplitude 1, G_k / 2 with 1/sqrt(2), G_k with 1/2: each finer octave half the energy.
        Matrix image = xt::zeros<float>({L, width});
        const std::size_t grids[3] = {std::max<std::size_t>(grid_k / 4, 1), std::max<std::size_t>(grid_k / 2, 1), grid_k};
        const float amplitudes[3] = {1.0f, 1.0f / std::sqrt(2.0f), 0.5f};
        for (int octave = 0; octave < 3; ++octave) {
            Matrix noise = Matrix::from_shape({grids[octave] * grids[octave], width});
            for (auto& value : noise) value = normal(rng);
            image += amplitudes[octave] * resize_bicubic(noise, grids[octave], grid_k);
        }
        // Each patch normalised to mean 0 and variance 1 over its channels.
        for (std::size_t p = 0; p < L; ++p) {
            double mean = 0.0, variance = 0.0;
            for (std::size_t c = 0; c < width; ++c) mean += image(p, c) / static_cast<double>(width);
            for (std::size_t c = 0; c < width; ++c) variance += (image(p, c) - mean) * (image(p, c) - mean) / static_cast<double>(width);
            for (std::size_t c = 0; c < width; ++c) b.x(n, p, c) = static_cast<float>((image(p, c) - mean) / std::sqrt(variance));
        }
    }
    b.target = b.x;
    return b;
}

}  // namespace qwenvl
