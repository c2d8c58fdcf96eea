// qwenvl-bench: the adapter's speed and memory at Qwen-VL's real dimensions, with random weights.
//
//   qwenvl-bench [--images N] [--grid G] [--repeats R] [--json]
//       one size: N images of G x G patches (L = G*G) of Kv = 1664, E = 4096, H = 32, Q = 256 (16 x 16).
//       Reports the median time of adapter_forward + tower_tail_forward per batch and per image, the effective
//       GFLOP/s, OpenBLAS's sgemm throughput measured in the same process on a (1024 x 4096) x (4096 x 4096)
//       product between the timed runs, and the process's peak resident memory. The query side (sin-cos table, ln_q, q projection,
//       and the key table resized to G x G) does not depend on the image's content: it is prepared once per
//       set of weights and timed separately.
//   qwenvl-bench --stages [--grid G] [--repeats R] [--json]
//       where the time goes, for one image: each stage of adapter_forward and the tower's tail timed on its own
//       (median of R runs), with the GFLOP/s of the matrix products. The stages are called in adapter_forward's
//       order and their output is checked against adapter_forward's.
//   qwenvl-bench --write-checkpoint DIR
//       writes DIR/adapter-f32.safetensors (full size, F32, random) and DIR/features.npy (1, 1024, 1664), to
//       measure `qwenvl-adapter run` itself (docs/performance.md).
//
// Threads: OpenBLAS's, set with OPENBLAS_NUM_THREADS. Run a Release build (cmake --preset release).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include <xtensor/xview.hpp>

#include "adapter.hpp"
#include "attention.hpp"
#include "compare.hpp"
#include "features.hpp"
#include "layernorm.hpp"
#include "linear.hpp"
#include "npy.hpp"
#include "safetensors.hpp"

using namespace qwenvl;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kE = 4096, kKv = 1664, kH = 32, kGridQ = 16;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double peak_rss_mib() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss / 1024.0;  // Linux reports kilobytes
}

template <class T>
void fill_normal(T& t, float scale, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, scale);
    for (auto& v : t) v = normal(rng);
}

AdapterWeights random_weights(std::mt19937& rng) {
    AdapterWeights w;
    const float e = 1.0f / std::sqrt(float(kE)), kv = 1.0f / std::sqrt(float(kKv));
    w.query = Matrix::from_shape({kGridQ * kGridQ, kE});
    fill_normal(w.query, 0.02f, rng);
    w.kv_proj = Matrix::from_shape({kE, kKv});
    fill_normal(w.kv_proj, kv, rng);
    for (Matrix* m : {&w.in_proj.w_q, &w.in_proj.w_k, &w.in_proj.w_v, &w.out_proj_weight}) {
        *m = Matrix::from_shape({kE, kE});
        fill_normal(*m, e, rng);
    }
    for (Vector* v : {&w.in_proj.b_q, &w.in_proj.b_k, &w.in_proj.b_v, &w.out_proj_bias, &w.ln_q_bias, &w.ln_kv_bias}) {
        *v = Vector::from_shape({kE});
        fill_normal(*v, 0.02f, rng);
    }
    for (Vector* v : {&w.ln_q_weight, &w.ln_kv_weight}) *v = xt::ones<float>({kE});
    return w;
}

TowerTail random_tail(std::mt19937& rng) {
    TowerTail t;
    t.ln_post_weight = xt::ones<float>({kE});
    t.ln_post_bias = xt::zeros<float>({kE});
    t.proj = Matrix::from_shape({kE, kE});
    fill_normal(t.proj, 1.0f / std::sqrt(float(kE)), rng);
    return t;
}

// Floating-point operations of one forward pass (multiply-adds count 2), without the query side.
double forward_flop(std::size_t N, std::size_t L) {
    const double Q = kGridQ * kGridQ, E = kE, Kv = kKv, n = N, l = L;
    return 2.0 * (n * l * Kv * E          // kv_proj
                  + 2.0 * n * l * E * E   // k and v projections
                  + 2.0 * n * Q * l * E   // scores and the weighted sum, all heads
                  + 2.0 * n * Q * E * E); // out_proj and proj
}

// OpenBLAS's sgemm throughput on the adapter's dominant shape, (1024 x 4096) x (4096 x 4096)^T. The benchmark
// runs it between its timed forward passes, so that both see the machine in the same state (on a shared machine
// the throughput moves by 10% or more from one minute to the next), and reports the median.
struct GemmProbe {
    Matrix a, b;
    std::vector<double> seconds;
    explicit GemmProbe(std::mt19937& rng) : a(Matrix::from_shape({1024, kE})), b(Matrix::from_shape({kE, kE})) {
        fill_normal(a, 1.0f, rng);
        fill_normal(b, 1.0f, rng);
        linear(a, b);  // warm-up
    }
    void run() {
        const auto start = Clock::now();
        const Matrix c = linear(a, b);
        seconds.push_back(seconds_since(start));
    }
    double gflops() const { return 2.0 * 1024 * kE * kE / median(seconds) / 1e9; }
};

// --stages: one image through adapter_forward's steps, each timed separately. The attention is split into its
// three per-head steps (summed over the heads), as multi_head_attention runs them.
int stage_times(const AdapterWeights& w, const TowerTail& tail, const AdapterConfig& c, const QuerySide& side,
                const Tensor3& x, int repeats, GemmProbe& gemm, bool json) {
    const std::size_t L = x.shape(1), E = kE, Q = kGridQ * kGridQ, H = kH;
    const double l = L, e = E, q = Q;
    struct Stage {
        const char* name;
        double flop;  // 0: not a matrix product
        std::vector<double> ms;
    };
    std::vector<Stage> stages = {{"kv_proj: x W_kv^T", 2 * l * kKv * e, {}},
                                 {"ln_kv (in place)", 0, {}},
                                 {"v = X W_v^T + b_v", 2 * l * e * e, {}},
                                 {"key_in = X + P_k", 0, {}},
                                 {"k = key_in W_k^T + b_k", 2 * l * e * e, {}},
                                 {"scores, 32 heads", 2 * q * l * e, {}},
                                 {"softmax, 32 heads", 0, {}},
                                 {"weights x v, 32 heads", 2 * q * l * e, {}},
                                 {"out_proj", 2 * q * e * e, {}},
                                 {"ln_post", 0, {}},
                                 {"proj", 2 * q * e * e, {}}};
    Matrix y;
    for (int r = 0; r < repeats + 1; ++r) {  // the first run warms up and is not counted
        std::vector<double> lap(stages.size(), 0.0);
        auto start = Clock::now();
        auto stop = [&](std::size_t stage) {
            lap[stage] += seconds_since(start) * 1e3;
            start = Clock::now();
        };
        Matrix X = kv_projection(Block{x.data(), L, kKv, kKv}, w.kv_proj);
        stop(0);
        layer_norm_in_place(X, w.ln_kv_weight, w.ln_kv_bias, c.eps);
        stop(1);
        const Matrix v = linear(X, w.in_proj.w_v, w.in_proj.b_v);
        stop(2);
        for (std::size_t i = 0; i < L * E; ++i) X.data()[i] += side.pos_k.data()[i];
        stop(3);
        const Matrix k = linear(X, w.in_proj.w_k, w.in_proj.b_k);
        stop(4);
        const Matrix q_scaled = side.q / std::sqrt(static_cast<float>(E / H));
        Matrix attended({Q, E});
        for (std::size_t h = 0; h < H; ++h) {
            const Matrix scores = attention_scores(head_block(q_scaled, h, H), head_block(k, h, H));
            stop(5);
            const Matrix weights = softmax_rows(scores, nullptr);
            stop(6);
            attend_values(weights, head_block(v, h, H), attended, h, H);
            stop(7);
        }
        const Matrix out = linear(attended, w.out_proj_weight, w.out_proj_bias);
        stop(8);
        const Matrix normed = layer_norm(out, tail.ln_post_weight, tail.ln_post_bias, c.eps);
        stop(9);
        y = matmul(normed, tail.proj);
        stop(10);
        if (r > 0)
            for (std::size_t s = 0; s < stages.size(); ++s) stages[s].ms.push_back(lap[s]);
        gemm.run();
    }
    const Tensor3 one = xt::view(x, xt::range(0, 1));
    const Tensor3 reference = tower_tail_forward(tail, adapter_forward(w, c, one, nullptr, nullptr, &side), c.eps);
    const Comparison same = compare(reference, xt::xarray<float>(xt::reshape_view(y, {std::size_t(1), Q, E})), 0.0, 0.0);

    double total = 0, products = 0;
    for (const Stage& s : stages) {
        total += median(s.ms);
        if (s.flop > 0) products += median(s.ms);
    }
    const std::size_t G = grid_side(L, "qwenvl-bench");
    if (json) {  // one line, for the notebooks
        std::printf("{\"grid\": %zu, \"repeats\": %d, \"stages\": [", G, repeats);
        for (std::size_t s = 0; s < stages.size(); ++s)
            std::printf("%s{\"name\": \"%s\", \"ms\": %.3f, \"gflop\": %.4f}", s ? ", " : "", stages[s].name,
                        median(stages[s].ms), stages[s].flop / 1e9);
        std::printf("], \"total_ms\": %.3f, \"products_ms\": %.3f, \"gemm_gflops\": %.2f, \"same_output\": %s}\n",
                    total, products, gemm.gflops(), same.ok() ? "true" : "false");
        return same.ok() ? 0 : 1;
    }
    std::printf("one image, %zux%zu keys, median of %d runs per stage:\n", G, G, repeats);
    for (const Stage& s : stages) {
        const double ms = median(s.ms);
        if (s.flop > 0)
            std::printf("  %-24s %8.1f ms  %5.1f%%  %6.1f GFLOP/s\n", s.name, ms, 100 * ms / total, s.flop / ms / 1e6);
        else
            std::printf("  %-24s %8.1f ms  %5.1f%%\n", s.name, ms, 100 * ms / total);
    }
    std::printf("  %-24s %8.1f ms  (matrix products %.1f ms, %.1f%%; the rest %.1f ms)\n", "total", total, products,
                100 * products / total, total - products);
    std::printf("  sgemm on (1024 x 4096) x (4096 x 4096)^T between the runs: %.1f GFLOP/s\n", gemm.gflops());
    std::printf("  output equal to adapter_forward + tower_tail_forward: %s\n",
                same.ok() ? "yes, bit for bit" : "NO");
    return same.ok() ? 0 : 1;
}

int write_checkpoint(const std::string& dir) {
    std::mt19937 rng(42);
    const AdapterWeights w = random_weights(rng);
    const TowerTail t = random_tail(rng);
    const std::string p = "transformer.visual.";
    Matrix in_proj = xt::concatenate(xt::xtuple(w.in_proj.w_q, w.in_proj.w_k, w.in_proj.w_v), 0);
    Vector in_bias = xt::concatenate(xt::xtuple(w.in_proj.b_q, w.in_proj.b_k, w.in_proj.b_v), 0);
    write_safetensors_f32(dir + "/adapter-f32.safetensors",
                          {{p + "attn_pool.query", w.query}, {p + "attn_pool.kv_proj.weight", w.kv_proj},
                           {p + "attn_pool.attn.in_proj_weight", in_proj}, {p + "attn_pool.attn.in_proj_bias", in_bias},
                           {p + "attn_pool.attn.out_proj.weight", w.out_proj_weight},
                           {p + "attn_pool.attn.out_proj.bias", w.out_proj_bias},
                           {p + "attn_pool.ln_q.weight", w.ln_q_weight}, {p + "attn_pool.ln_q.bias", w.ln_q_bias},
                           {p + "attn_pool.ln_kv.weight", w.ln_kv_weight}, {p + "attn_pool.ln_kv.bias", w.ln_kv_bias},
                           {p + "ln_post.weight", t.ln_post_weight}, {p + "ln_post.bias", t.ln_post_bias},
                           {p + "proj", t.proj}});
    Tensor3 x = Tensor3::from_shape({1, 1024, kKv});
    fill_normal(x, 1.0f, rng);
    write_npy(dir + "/features.npy", x);
    std::printf("wrote %s/adapter-f32.safetensors and %s/features.npy\n", dir.c_str(), dir.c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t N = 1, G = 32;
    int repeats = 5;
    bool json = false, stages = false;
    const char* usage = "usage: qwenvl-bench [--images N] [--grid G] [--repeats R] [--json] | --stages [--grid G] "
                        "[--repeats R] [--json] | --write-checkpoint DIR\n";
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string a = argv[i];
            if (a == "--images" && i + 1 < argc) N = std::stoul(argv[++i]);
            else if (a == "--grid" && i + 1 < argc) G = std::stoul(argv[++i]);
            else if (a == "--repeats" && i + 1 < argc) repeats = std::stoi(argv[++i]);
            else if (a == "--json") json = true;
            else if (a == "--stages") stages = true;
            else if (a == "--write-checkpoint" && i + 1 < argc) return write_checkpoint(argv[++i]);
            else {
                std::fputs(usage, stderr);
                return 2;
            }
        }
    } catch (const std::exception& e) {  // a number that does not parse, or a checkpoint that cannot be written
        std::fprintf(stderr, "qwenvl-bench: %s\n%s", e.what(), usage);
        return 2;
    }
    if (N == 0 || G == 0 || repeats < 1) {
        std::fprintf(stderr, "qwenvl-bench: --images, --grid and --repeats must be at least 1\n%s", usage);
        return 2;
    }
    std::mt19937 rng(7);
    const AdapterWeights w = random_weights(rng);
    const TowerTail tail = random_tail(rng);
    const AdapterConfig c = derive_config(w, kH);
    Tensor3 x = Tensor3::from_shape({N, G * G, kKv});
    fill_normal(x, 1.0f, rng);

    GemmProbe gemm(rng);
    gemm.run();
    if (stages) {
        const QuerySide side = prepare_query_side(w, c, nullptr, G * G);
        return stage_times(w, tail, c, side, x, repeats, gemm, json);
    }

    auto start = Clock::now();
    const QuerySide side = prepare_query_side(w, c, nullptr, G * G);
    const double query_side_s = seconds_since(start);

    std::vector<double> times;
    for (int r = 0; r < repeats + 1; ++r) {  // the first run warms up and is not counted
        start = Clock::now();
        const Tensor3 out = adapter_forward(w, c, x, nullptr, nullptr, &side);
        const Tensor3 y = tower_tail_forward(tail, out, c.eps);
        if (r > 0) times.push_back(seconds_since(start));
        gemm.run();
    }
    const double t = median(times);
    const double gflops = forward_flop(N, G * G) / t / 1e9;
    if (json) {
        std::printf("{\"images\": %zu, \"grid\": %zu, \"median_s\": %.6f, \"per_image_s\": %.6f, \"gflops\": %.2f, "
                    "\"gemm_gflops\": %.2f, \"query_side_s\": %.6f, \"peak_rss_mib\": %.1f, \"repeats\": %d}\n",
                    N, G, t, t / N, gflops, gemm.gflops(), query_side_s, peak_rss_mib(), repeats);
    } else {
        std::printf("N=%zu images, %zux%zu keys: median %.3f s per batch, %.3f s per image, %.1f GFLOP/s "
                    "(sgemm in this process: %.1f GFLOP/s, %.0f%%); query side once per weights: %.3f s; "
                    "peak RSS %.0f MiB\n",
                    N, G, G, t, t / N, gflops, gemm.gflops(), 100.0 * gflops / gemm.gflops(), query_side_s,
                    peak_rss_mib());
    }
    return 0;
}
