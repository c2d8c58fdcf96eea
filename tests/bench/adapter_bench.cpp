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
//       where the time goes, for one image: each function of the fast path that fast::adapter_forward and
//       fast::tower_tail_forward call, called on its own in their order and timed (median of R runs), with the
//       GFLOP/s of the matrix products; the softmax is also timed alone. The result is checked bit for bit
//       against fast::adapter_forward + fast::tower_tail_forward.
//   qwenvl-bench --agree [--grid G]
//   qwenvl-bench --backward [--images N] [--grid G] [--repeats R]   the fast backward pass alone (tail and adapter,
//       from one traced fast forward pass and a random dL/dy): the median time, its GFLOP/s against the same
//       process's sgemm, and the forward pass's time for comparison
//   qwenvl-bench --agree-backward [--grid G]   the readable and fast backward passes on one image, from the same
//       forward trace and a random dL/dy: every parameter's gradient and dL/dx, within float32 rounding
//       the two paths on the same random full-size input (one image): the readable stages (src/stages/) and
//       the fast path (src/fast/), each timed once, and the largest difference between them at every traced
//       stage. Exit code 1 when the output differs by more than the stated tolerance (a ctest in Release builds).
//   qwenvl-bench --readable-trace DIR [--grid G]
//       the readable path alone on the same full-size input (one image), every traced stage written as
//       DIR/<stage>.npy: the mutation runner's --fullsize compares a mutated build's trace with the unmutated one's
//       (tests/mutations/run.py, docs/course/break-it-and-see.md).
//   qwenvl-bench --gains [--grid G] [--repeats R]
//       each fast function against the readable function it replaces, on the same full-size input: the measured
//       gains that docs/fast-path.md lists.
//   qwenvl-bench --page-faults FILE
//       what first touching memory costs on this machine, per 4 KiB page, three times each (the first touch of
//       huge pages can differ from the next ones): fresh anonymous memory (what a new tensor is), the same with
//       madvise(MADV_HUGEPAGE), the pages of FILE (say the checkpoint, read once first so that it is in the page
//       cache) mapped and read one page at a time, the same mapping entered at once with MADV_POPULATE_READ, the
//       file mapped as `run` maps it (MappedFile: at a 2 MiB boundary, MADV_HUGEPAGE), each with how much of it the
//       kernel mapped 2 MiB at a time, and FILE read() into fresh memory (what a loader that copies does).
//       docs/performance.md explains the finding.
//   qwenvl-bench --sgemm-order
//       how OpenBLAS's sgemm orders a product's sums on this machine, on one thread: the share of outputs that
//       differ from one fused multiply-add chain per output, and the share that change when a product's columns are
//       computed as narrower calls. Why a 16-bit weight is widened in panels as wide as the float32 product's call
//       (fast/gemm.cpp, docs/performance.md#bf16-weights-in-one-run).
//   qwenvl-bench --write-checkpoint DIR
//       makes DIR if needed and writes DIR/adapter-f32.safetensors (full size, F32, random), the same weights as
//       Qwen-VL ships them in DIR/qwen-vl-bf16.safetensors (BF16, with attn_pool.pos_embed), DIR/features.npy (1, 1024, 1664) and
//       DIR/features-4.npy (4, 1024, 1664), to measure `qwenvl-adapter run` itself (tests/bench/whole_run.py,
//       docs/performance.md); and MiniCPM-V 2.6's, DIR/minicpmv-f32.safetensors and DIR/features-minicpmv.npy
//       (2, 1024, 1152: slices of 32 x 32 and 24 x 40 patches), for tests/bench/trace_cost.py.
//
// Threads: OpenBLAS's, set with OPENBLAS_NUM_THREADS. Run a Release build (cmake --preset release).
#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <map>
#include <optional>
#include <thread>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <xtensor-blas/xblas.hpp>
#include <xtensor/xsort.hpp>
#include <xtensor/xview.hpp>

#include "core/compare.hpp"
#include "fast/adapter.hpp"
#include "fast/attention.hpp"
#include "fast/backward.hpp"
#include "fast/threads.hpp"
#include "fast/gemm.hpp"
#include "fast/layernorm.hpp"
#include "fast/sincos.hpp"
#include "io/safetensors.hpp"
#include "io/npy.hpp"
#include "stages/11_minicpmv.hpp"
#include "safetensors_writer.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/02_sincos.hpp"
#include "stages/07_adapter.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/05_projections.hpp"
#include "stages/06_attention.hpp"
#include "stages/08_tower_tail.hpp"
#include "stages/10_training.hpp"

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

// Qwen-VL's sizes by default; MiniCPM-V 2.6's for --minicpmv.
AdapterWeights random_weights(std::mt19937& rng, std::size_t E = kE, std::size_t Kv = kKv, std::size_t Q = kGridQ * kGridQ) {
    AdapterWeights w;
    const float e = 1.0f / std::sqrt(float(E)), kv = 1.0f / std::sqrt(float(Kv));
    w.query = Matrix::from_shape({Q, E});
    fill_normal(w.query, 0.02f, rng);
    w.kv_proj = Matrix::from_shape({E, Kv});
    fill_normal(w.kv_proj, kv, rng);
    for (Matrix* m : {&w.in_proj.w_q, &w.in_proj.w_k, &w.in_proj.w_v, &w.out_proj_weight}) {
        *m = Matrix::from_shape({E, E});
        fill_normal(*m, e, rng);
    }
    for (Vector* v : {&w.in_proj.b_q, &w.in_proj.b_k, &w.in_proj.b_v, &w.out_proj_bias, &w.ln_q_bias, &w.ln_kv_bias}) {
        *v = Vector::from_shape({E});
        fill_normal(*v, 0.02f, rng);
    }
    for (Vector* v : {&w.ln_q_weight, &w.ln_kv_weight}) *v = xt::ones<float>({E});
    return w;
}

TowerTail random_tail(std::mt19937& rng, std::size_t E = kE) {
    TowerTail t;
    t.ln_post_weight = xt::ones<float>({E});
    t.ln_post_bias = xt::zeros<float>({E});
    t.proj = Matrix::from_shape({E, E});
    fill_normal(t.proj, 1.0f / std::sqrt(float(E)), rng);
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
        product();  // warm-up
    }
    Matrix product() const {
        Matrix c({a.shape(0), b.shape(0)});
        fast::gemm_block(fast::whole(a), fast::whole(b), true, c.data(), c.shape(1));
        return c;
    }
    // The product with OpenBLAS's own threads (outside the fast path's OwnThreads scope). Then 250 ms of rest, so
    // that OpenBLAS's threads, which spin for about 0.1 s after a call, are asleep when the forward pass starts. The
    // scope now stops them itself (fast/threads.hpp); the rest was kept because without it the medians did not
    // move (N = 1, eight alternating runs each: 96.4% of sgemm with it, 95.9% without, 2026-11-29).
    void run() {
        const auto start = Clock::now();
        const Matrix c = product();
        seconds.push_back(seconds_since(start));
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    double gflops() const { return 2.0 * 1024 * kE * kE / median(seconds) / 1e9; }
};

// --stages: one image through the fast path, each function that fast::adapter_forward and fast::tower_tail_forward
// call timed on its own, in their order.
int stage_times(const AdapterWeights& w, const TowerTail& tail, const AdapterConfig& c, const fast::QuerySide& side,
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
                                 {"attention, 32 heads", 4 * q * l * e, {}},
                                 {"out_proj", 2 * q * e * e, {}},
                                 {"ln_post", 0, {}},
                                 {"proj", 2 * q * e * e, {}}};
    std::vector<double> softmax_ms;  // inside "attention": the softmax alone, H rows of (Q, L)
    Tensor3 y;
    for (int r = 0; r < repeats + 1; ++r) {  // the first run warms up and is not counted
        std::optional<fast::OwnThreads> own;  // the key side and the attention as fast::adapter_forward runs them
        own.emplace();
        std::vector<double> lap(stages.size(), 0.0);
        auto start = Clock::now();
        auto stop = [&](std::size_t stage) {
            lap[stage] += seconds_since(start) * 1e3;
            start = Clock::now();
        };
        Matrix X = fast::kv_projection(fast::Block{x.data(), L, kKv, kKv}, w.kv_proj);
        stop(0);
        fast::layer_norm_in_place(X, w.ln_kv_weight, w.ln_kv_bias, c.eps);
        stop(1);
        const Matrix v = fast::linear(X, w.in_proj.w_v, w.in_proj.b_v);
        stop(2);
        fast::add_in_place(X, side.pos_k);
        stop(3);
        const Matrix k = fast::linear(X, w.in_proj.w_k, w.in_proj.b_k);
        stop(4);
        const AttentionOutput a = fast::multi_head_attention(side.q, fast::whole(k), fast::whole(v), H, nullptr, false);
        stop(5);
        own.reset();  // out_proj and the tail on OpenBLAS's threads, as fast::adapter_forward runs them
        Tensor3 out = fast::linear(Tensor3(xt::reshape_view(a.attended, {std::size_t(1), Q, E})), w.out_proj_weight,
                                         w.out_proj_bias);
        stop(6);
        fast::layer_norm_in_place(out, tail.ln_post_weight, tail.ln_post_bias, c.eps);  // as the tail does: in place
        stop(7);
        y = fast::matmul(out, tail.proj);
        stop(8);
        const Matrix scores = xt::view(x, 0, xt::range(0, Q), xt::range(0, L));  // a (Q, L) of the right size
        start = Clock::now();
        for (std::size_t h = 0; h < H; ++h) fast::softmax_rows(scores, nullptr);
        const double softmax = seconds_since(start) * 1e3;
        if (r > 0) {
            for (std::size_t s = 0; s < stages.size(); ++s) stages[s].ms.push_back(lap[s]);
            softmax_ms.push_back(softmax);
        }
        gemm.run();
    }
    const Tensor3 one = xt::view(x, xt::range(0, 1));
    const Tensor3 reference = fast::tower_tail_forward(tail, fast::adapter_forward(w, c, side, one), c.eps);
    const Comparison same = compare(reference, y, 0.0, 0.0);

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
        std::printf("], \"softmax_ms\": %.3f, \"total_ms\": %.3f, \"products_ms\": %.3f, \"gemm_gflops\": %.2f, "
                    "\"same_output\": %s}\n",
                    median(softmax_ms), total, products, gemm.gflops(), same.ok() ? "true" : "false");
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
    std::printf("  %-24s %8.1f ms  (matrix products and attention %.1f ms, %.1f%%; the rest %.1f ms)\n", "total",
                total, products, 100 * products / total, total - products);
    std::printf("  of the attention, the softmax alone (32 heads): %.1f ms\n", median(softmax_ms));
    std::printf("  sgemm on (1024 x 4096) x (4096 x 4096)^T between the runs: %.1f GFLOP/s\n", gemm.gflops());
    std::printf("  output equal to fast::adapter_forward + fast::tower_tail_forward: %s\n",
                same.ok() ? "yes, bit for bit" : "NO");
    return same.ok() ? 0 : 1;
}

// --agree: both paths on one full-size image, the largest difference at every traced stage.
// The tolerance on the output: the readable path sums each product's K terms one after another in float, sgemm in
// blocks; at K = 4096 the two roundings differ by a few float ulps of the sums' magnitude.
constexpr double kAgreeAtol = 1e-4, kAgreeRtol = 1e-3;

int paths_agree(const AdapterWeights& w, const TowerTail& tail, const AdapterConfig& c, const Tensor3& x) {
    Trace readable, fast;
    auto start = Clock::now();
    const Tensor3 y_readable = tower_tail_forward(tail, adapter_forward(w, c, x, nullptr, &readable), c.eps, &readable);
    const double readable_s = seconds_since(start);
    start = Clock::now();
    const fast::QuerySide side = fast::prepare_query_side(w, c, x.shape(1), &fast);
    const Tensor3 y_fast = fast::tower_tail_forward(tail, fast::adapter_forward(w, c, side, x, nullptr, &fast), c.eps, &fast);
    const double fast_s = seconds_since(start);
    std::printf("one image of %zu x %zu features (Kv = %zu), E = %zu, H = %zu, Q = %zu; random weights\n",
                x.shape(1), x.shape(2), c.kv_dim, c.embed_dim, c.num_heads, c.n_queries);
    std::printf("  readable path (src/stages/): %.1f s; fast path (src/fast/): %.2f s, traced (%.0fx)\n", readable_s,
                fast_s, readable_s / fast_s);
    std::printf("  %-13s %-18s %-14s %s\n", "stage", "shape", "max |fast - readable|", "max |readable|");
    for (const auto& name : readable.names()) {
        const Comparison d = compare(fast.get(name), readable.get(name), 0.0, 0.0);
        std::printf("  %-13s %-18s %-21.3g %.3g\n", name.c_str(), shape_string(shape_of(readable.get(name))).c_str(),
                    d.max_abs_error, double(xt::amax(xt::abs(readable.get(name)))()));
    }
    const Comparison out = compare(y_fast, y_readable, kAgreeAtol, kAgreeRtol);
    std::printf("%s: the two paths' outputs %s within |a-b| <= %g + %g*|b| (%s)\n", out.ok() ? "OK" : "FAIL",
                out.ok() ? "agree" : "differ", kAgreeAtol, kAgreeRtol, describe(out, y_readable).c_str());
    return out.ok() ? 0 : 1;
}

// --agree-backward: stages/' backward (tower_tail_backward, adapter_backward) and fast/backward.hpp's on one image,
// from the same (readable) forward trace and the same random dL/dy: every gradient within float32 rounding. The
// bound is relative to each gradient's largest value: the readable path sums each product's terms one after another
// in float (up to 4096 of them), sgemm in blocks, and the gradients of the weights sum over all 1024 keys.
constexpr double kBackwardRelative = 1e-4;

int backward_agree(const AdapterWeights& w, const TowerTail& tail, const AdapterConfig& c, const Tensor3& x,
                   std::mt19937& rng) {
    Trace forward;
    const Tensor3 out = adapter_forward(w, c, x, nullptr, &forward);
    Tensor3 d_y = Tensor3::from_shape(out.shape());
    fill_normal(d_y, 1.0f, rng);
    auto start = Clock::now();
    const TailGradients readable_tail = tower_tail_backward(tail, out, d_y, c.eps);
    const AdapterGradients readable = adapter_backward(w, c, x, forward, readable_tail.d_out);
    const double readable_s = seconds_since(start);
    start = Clock::now();
    const TailGradients fast_tail = fast::tower_tail_backward(tail, out, d_y, c.eps);
    const AdapterGradients fast = fast::adapter_backward(w, c, x, forward, fast_tail.d_out);
    const double fast_s = seconds_since(start);
    std::printf("one image of %zu x %zu features (Kv = %zu), E = %zu, H = %zu, Q = %zu; random weights and dL/dy\n",
                x.shape(1), x.shape(2), c.kv_dim, c.embed_dim, c.num_heads, c.n_queries);
    std::printf("  backward from the same forward trace: readable %.1f s, fast %.2f s (%.0fx)\n", readable_s, fast_s,
                readable_s / fast_s);
    NamedTensors want = named_gradients(readable, readable_tail), got = named_gradients(fast, fast_tail);
    want.push_back({"x", readable.x});
    got.push_back({"x", fast.x});
    std::printf("  %-32s %-14s %-12s %s\n", "gradient", "shape", "max |b|", "max |fast - readable| / max |b|");
    bool ok = got.size() == want.size();
    for (std::size_t i = 0; ok && i < want.size(); ++i) {
        const double largest = xt::amax(xt::abs(want[i].second))();
        const double diff = xt::amax(xt::abs(got[i].second - want[i].second))();
        const double relative = largest > 0 ? diff / largest : diff;
        const bool agree = got[i].first == want[i].first && relative <= kBackwardRelative;
        ok = ok && agree;
        std::printf("  %-32s %-14s %-12.3g %.3g%s\n", want[i].first.c_str(),
                    shape_string(shape_of(want[i].second)).c_str(), largest, relative, agree ? "" : "  <- beyond");
    }
    std::printf("%s: the two backward passes %s within %g of each gradient's largest value\n", ok ? "OK" : "FAIL",
                ok ? "agree" : "differ", kBackwardRelative);
    return ok ? 0 : 1;
}

// --backward: the fast backward pass's time at full size. Its multiply-adds per image: out_proj 2 Q E^2, the
// attention 4 H Q L Dh, k and v 4 L E^2, kv_proj 2 L E Kv, q 2 Q E^2, the tail 2 Q E^2.
int backward_time(const AdapterWeights& w, const TowerTail& tail, const AdapterConfig& c, const Tensor3& x, int repeats,
                  std::mt19937& rng) {
    const std::size_t N = x.shape(0), L = x.shape(1), Q = c.n_queries, E = c.embed_dim, Kv = c.kv_dim;
    // as `train` sets them (src/cli/train.cpp): a step's buffers stay in the heap from one step to the next instead
    // of being mapped, and their pages faulted in, afresh each time
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    GemmProbe gemm(rng);
    gemm.run();
    std::vector<double> forward_s, backward_s;
    Tensor3 d_y = Tensor3::from_shape({N, Q, E});
    fill_normal(d_y, 1.0f, rng);
    for (int r = 0; r < repeats; ++r) {
        Trace trace;
        auto start = Clock::now();
        const fast::QuerySide side = fast::prepare_query_side(w, c, L, &trace);
        const Tensor3 out = fast::adapter_forward(w, c, side, x, nullptr, &trace);
        forward_s.push_back(seconds_since(start));
        start = Clock::now();
        const TailGradients t = fast::tower_tail_backward(tail, out, d_y, c.eps);
        const AdapterGradients g = fast::adapter_backward(w, c, x, trace, t.d_out);
        backward_s.push_back(seconds_since(start));
    }
    const double macs = double(N) * (2.0 * Q * E * E + 4.0 * Q * L * E + 4.0 * L * E * E + 2.0 * L * E * Kv + 2.0 * Q * E * E) +
                        2.0 * Q * E * E * N;
    const double b = median(backward_s), gflops = 2.0 * macs / b / 1e9;
    std::printf("fast backward pass (tail and adapter), %zu image(s) of %zu keys, full size: %.3f s (median of %d), "
                "%.1f GFLOP/s = %.0f%% of sgemm (%.1f GFLOP/s); the traced forward pass: %.3f s\n",
                N, L, b, repeats, gflops, 100.0 * gflops / gemm.gflops(), gemm.gflops(), median(forward_s));
    return 0;
}

// --gains: each fast function against the readable function it replaces, on the same full-size input (one image,
// 32 x 32 keys): the median time of each (R runs; one run of the slowest readable ones) and their ratio.
int gains(const AdapterWeights& w, const TowerTail& tail, const AdapterConfig& c, const Tensor3& x, int repeats) {
    const std::size_t L = x.shape(1), Q = c.n_queries;
    const fast::QuerySide side = fast::prepare_query_side(w, c, L);
    const Matrix x0 = xt::view(x, 0);
    const Matrix X = fast::linear(fast::kv_projection(fast::whole(x0), w.kv_proj), w.in_proj.w_v, w.in_proj.b_v);
    const Matrix k = fast::linear(X, w.in_proj.w_k, w.in_proj.b_k);
    const Tensor3 out = fast::adapter_forward(w, c, side, Tensor3(xt::view(x, xt::range(0, 1))));
    Matrix scores = fast::linear(Matrix(xt::view(side.q, xt::all(), xt::range(0, 128))),
                                 Matrix(xt::view(k, xt::all(), xt::range(0, 128))), Vector(xt::zeros<float>({L})));
    Matrix scratch = X;  // what the in-place functions overwrite
    auto time = [](int runs, auto&& f) {
        std::vector<double> s;
        for (int r = 0; r < runs; ++r) {
            const auto start = Clock::now();
            f();
            s.push_back(seconds_since(start));
        }
        return median(s);
    };
    struct Row {
        const char* readable;
        const char* fast;
        double readable_s, fast_s;
    };
    const int slow = 1;  // the readable products take seconds each
    std::vector<Row> rows = {
        {"linear (k: 1024 x 4096 x 4096)", "fast::linear (sgemm, addmm)",
         time(slow, [&] { linear(X, w.in_proj.w_k, w.in_proj.b_k); }),
         time(repeats, [&] { fast::linear(X, w.in_proj.w_k, w.in_proj.b_k); })},
        {"kv_projection (1024 x 1664 x 4096)", "fast::kv_projection (sgemm, in place)",
         time(slow, [&] { kv_projection(x0, w.kv_proj); }),
         time(repeats, [&] { fast::kv_projection(fast::whole(x0), w.kv_proj); })},
        {"matmul (proj: 256 x 4096 x 4096)", "fast::matmul (sgemm)",
         time(slow, [&] { matmul(Matrix(xt::view(out, 0)), tail.proj); }),
         time(repeats, [&] { fast::matmul(out, tail.proj); })},
        {"multi_head_attention (32 heads)", "fast::multi_head_attention (heads in place)",
         time(slow, [&] { multi_head_attention(side.q, k, X, c.num_heads, nullptr); }),
         time(repeats, [&] { fast::multi_head_attention(side.q, fast::whole(k), fast::whole(X), c.num_heads, nullptr, false); })},
        {"softmax_rows (256 x 1024, std::exp)", "fast::softmax_rows (exp_nonpositive)",
         time(repeats, [&] { softmax_rows(scores, nullptr); }),
         time(repeats, [&] { fast::softmax_rows(scores, nullptr); })},
        {"layer_norm (ln_kv: 1024 x 4096)", "fast::layer_norm_in_place (lane sums)",
         time(repeats, [&] { layer_norm(X, w.ln_kv_weight, w.ln_kv_bias, c.eps); }),
         time(repeats, [&] { fast::layer_norm_in_place(scratch, w.ln_kv_weight, w.ln_kv_bias, c.eps); })},
        {"sincos_2d (P_q: 16 x 16, E = 4096)", "fast::sincos_2d (each distinct row and column once)",
         time(repeats, [&] { sincos_2d(c.embed_dim, c.grid_q); }),
         time(repeats, [&] { fast::sincos_2d(c.embed_dim, Grid{c.grid_q, c.grid_q}); })},
        {"X + P_k (1024 x 4096)", "fast::add_in_place",
         time(repeats, [&] { Matrix key_in = X + side.pos_k; }),
         time(repeats, [&] { fast::add_in_place(scratch, side.pos_k); })},
        {"adapter_forward + tower_tail_forward", "fast:: (query side prepared)",
         time(slow, [&] { tower_tail_forward(tail, adapter_forward(w, c, Tensor3(xt::view(x, xt::range(0, 1)))), c.eps); }),
         time(repeats, [&] { fast::tower_tail_forward(tail, fast::adapter_forward(w, c, side, Tensor3(xt::view(x, xt::range(0, 1)))), c.eps); })},
    };
    std::printf("one image, %zu keys, E = %zu, Q = %zu; readable products timed once, the rest median of %d\n", L,
                c.embed_dim, Q, repeats);
    std::printf("| readable (src/stages/) | fast (src/fast/) | readable ms | fast ms | gain |\n|---|---|---|---|---|\n");
    for (const Row& r : rows)
        std::printf("| `%s` | `%s` | %.1f | %.1f | %.1fx |\n", r.readable, r.fast, r.readable_s * 1e3, r.fast_s * 1e3,
                    r.readable_s / r.fast_s);
    std::printf("(the in-place rows overwrite one scratch copy of X again and again: the same work, no fresh tensor)\n");
    return 0;
}

// How much of this process's file mappings the kernel maps 2 MiB at a time (FilePmdMapped), in MiB.
double file_pmd_mapped_mib() {
    std::ifstream rollup("/proc/self/smaps_rollup");
    std::string key;
    double kib = 0;
    while (rollup >> key)
        if (key == "FilePmdMapped:" && rollup >> kib) break;
    return kib / 1024.0;
}

// --page-faults: the cost of first touching memory, per 4 KiB page.
int page_faults(const std::string& file) {
    const std::size_t page = 4096;
    const int fd = ::open(file.c_str(), O_RDONLY);
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(page)) {
        std::fprintf(stderr, "qwenvl-bench: cannot read %s (give a large file, such as the checkpoint)\n", file.c_str());
        return 2;
    }
    const std::size_t bytes = static_cast<std::size_t>(st.st_size) / page * page;
    std::vector<char> warm(1 << 20);
    while (::read(fd, warm.data(), warm.size()) > 0) {}  // into the page cache
    volatile char sink = 0;
    auto report = [&](const char* what, double seconds) {
        std::printf("  %-58s %7.3f s for %zu MiB, %6.2f us per 4 KiB page\n", what, seconds, bytes >> 20,
                    seconds * 1e6 / static_cast<double>(bytes / page));
    };
    std::printf("first touch of %zu MiB, three times each:\n", bytes >> 20);
    for (int huge = 0; huge < 2; ++huge) {
        for (int r = 0; r < 3; ++r) {
            char* p = static_cast<char*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
            if (p == MAP_FAILED) return std::perror("mmap"), 1;
            if (huge) ::madvise(p, bytes, MADV_HUGEPAGE);
            const auto start = Clock::now();
            for (std::size_t i = 0; i < bytes; i += page) p[i] = 1;
            report(huge ? "fresh memory, madvise(MADV_HUGEPAGE)" : "fresh memory (4 KiB pages)", seconds_since(start));
            ::munmap(p, bytes);
        }
    }
    for (int populate = 0; populate < 2; ++populate) {
        for (int r = 0; r < 3; ++r) {
            const auto start = Clock::now();
            char* p = static_cast<char*>(::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0));
            if (p == MAP_FAILED) return std::perror("mmap"), 1;
#ifdef MADV_POPULATE_READ
            if (populate) ::madvise(p, bytes, MADV_POPULATE_READ);
#endif
            for (std::size_t i = 0; i < bytes; i += page) sink = sink + p[i];
            report(populate ? "the file mapped, MADV_POPULATE_READ, then read" : "the file mapped, read page by page",
                   seconds_since(start));
            std::printf("    (of which %.0f MiB mapped 2 MiB at a time)\n", file_pmd_mapped_mib());
            ::munmap(p, bytes);
        }
    }
    // As `run` maps a checkpoint: at a 2 MiB boundary, MADV_HUGEPAGE (io/safetensors.hpp).
    for (int r = 0; r < 3; ++r) {
        const auto start = Clock::now();
        const MappedFile mapped(file, static_cast<std::uint64_t>(st.st_size));
        for (std::size_t i = 0; i < bytes; i += page) sink = sink + static_cast<char>(mapped.data()[i]);
        report("the file mapped as run maps it (MappedFile), read page by page", seconds_since(start));
        std::printf("    (of which %.0f MiB mapped 2 MiB at a time)\n", file_pmd_mapped_mib());
    }
    for (int r = 0; r < 3; ++r) {
        const auto start = Clock::now();
        char* p = static_cast<char*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (p == MAP_FAILED) return std::perror("mmap"), 1;
        std::size_t done = 0;
        while (done < bytes) {
            const ssize_t n = ::pread(fd, p + done, bytes - done, static_cast<off_t>(done));
            if (n <= 0) break;
            done += static_cast<std::size_t>(n);
        }
        report("the file read() into fresh memory", seconds_since(start));
        ::munmap(p, bytes);
    }
    ::close(fd);
    return 0;
}

int write_checkpoint(const std::string& dir) {
    std::mt19937 rng(42);
    const AdapterWeights w = random_weights(rng);
    const TowerTail t = random_tail(rng);
    const std::string p = "transformer.visual.";
    Matrix in_proj = xt::concatenate(xt::xtuple(w.in_proj.w_q, w.in_proj.w_k, w.in_proj.w_v), 0);
    Vector in_bias = xt::concatenate(xt::xtuple(w.in_proj.b_q, w.in_proj.b_k, w.in_proj.b_v), 0);
    std::map<std::string, xt::xarray<float>> tensors = {
        {p + "attn_pool.query", w.query}, {p + "attn_pool.kv_proj.weight", w.kv_proj},
        {p + "attn_pool.attn.in_proj_weight", in_proj}, {p + "attn_pool.attn.in_proj_bias", in_bias},
        {p + "attn_pool.attn.out_proj.weight", w.out_proj_weight}, {p + "attn_pool.attn.out_proj.bias", w.out_proj_bias},
        {p + "attn_pool.ln_q.weight", w.ln_q_weight}, {p + "attn_pool.ln_q.bias", w.ln_q_bias},
        {p + "attn_pool.ln_kv.weight", w.ln_kv_weight}, {p + "attn_pool.ln_kv.bias", w.ln_kv_bias},
        {p + "ln_post.weight", t.ln_post_weight}, {p + "ln_post.bias", t.ln_post_bias}, {p + "proj", t.proj}};
    qwenvl_test::write_safetensors_f32(dir + "/adapter-f32.safetensors", tensors);
    // The same weights as Qwen-VL ships its checkpoint: BF16, with the query table stored (attn_pool.pos_embed, the
    // sin-cos table of the 16 x 16 query grid; upstream's parameter, bf16-rounded like the rest).
    tensors[p + "attn_pool.pos_embed"] = sincos_2d(kE, kGridQ);
    qwenvl::write_safetensors_bf16(dir + "/qwen-vl-bf16.safetensors", tensors);
    Tensor3 x = Tensor3::from_shape({4, 1024, kKv});
    fill_normal(x, 1.0f, rng);
    write_npy(dir + "/features-4.npy", x);
    write_npy(dir + "/features.npy", Tensor3(xt::view(x, xt::range(0, 1))));
    // MiniCPM-V 2.6's resampler at its size (E = 3584, Q = 64, Kv = 1152), and two slices of 32 x 32 and 24 x 40
    // patches padded to L = 1024 (tests/bench/trace_cost.py: --grids 32x32,24x40)
    const std::size_t mE = 3584, mKv = 1152, mQ = 64;
    const AdapterWeights m = random_weights(rng, mE, mKv, mQ);
    const TowerTail mt = random_tail(rng, mE);
    Matrix m_in = xt::concatenate(xt::xtuple(m.in_proj.w_q, m.in_proj.w_k, m.in_proj.w_v), 0);
    Vector m_bias = xt::concatenate(xt::xtuple(m.in_proj.b_q, m.in_proj.b_k, m.in_proj.b_v), 0);
    const std::string r = "resampler.";
    qwenvl_test::write_safetensors_f32(dir + "/minicpmv-f32.safetensors",
                          {{r + "query", m.query}, {r + "kv_proj.weight", m.kv_proj},
                           {r + "attn.in_proj_weight", m_in}, {r + "attn.in_proj_bias", m_bias},
                           {r + "attn.out_proj.weight", m.out_proj_weight}, {r + "attn.out_proj.bias", m.out_proj_bias},
                           {r + "ln_q.weight", m.ln_q_weight}, {r + "ln_q.bias", m.ln_q_bias},
                           {r + "ln_kv.weight", m.ln_kv_weight}, {r + "ln_kv.bias", m.ln_kv_bias},
                           {r + "ln_post.weight", mt.ln_post_weight}, {r + "ln_post.bias", mt.ln_post_bias},
                           {r + "proj", mt.proj}});
    Tensor3 mx = xt::zeros<float>({std::size_t(2), std::size_t(1024), mKv});
    fill_normal(mx, 1.0f, rng);
    xt::view(mx, 1, xt::range(960, 1024)) = 0.0f;  // the second slice's 960 patches, then padding
    write_npy(dir + "/features-minicpmv.npy", mx);
    std::printf("wrote %s/adapter-f32.safetensors, %s/qwen-vl-bf16.safetensors (the same in BF16, with pos_embed), "
                "%s/features.npy (1 image) and %s/features-4.npy (4 images); %s/minicpmv-f32.safetensors and "
                "%s/features-minicpmv.npy (grids 32x32,24x40)\n",
                dir.c_str(), dir.c_str(), dir.c_str(), dir.c_str(), dir.c_str(), dir.c_str());
    return 0;
}

}  // namespace

// MiniCPM-V 2.6's resampler at its size (E = 3584, Q = 64, H = 28, Kv = 1152) on two slices of 32 x 32 and
// 24 x 40 patches padded to L = 1024: the readable minicpmv_forward (padded, masked) against fast::minicpmv_forward
// (each image on its own patches), the tail included, and how far apart their outputs are.
int minicpmv_gain(int repeats) {
    std::mt19937 rng(11);
    const std::size_t E = 3584, Kv = 1152, Q = 64;
    const AdapterWeights w = random_weights(rng, E, Kv, Q);
    const TowerTail tail = random_tail(rng, E);
    const AdapterConfig c = derive_config(w, 0, Model::minicpm_v);
    const std::vector<Grid> grids{{32, 32}, {24, 40}};
    Tensor3 x = Tensor3::from_shape({2, 1024, Kv});
    fill_normal(x, 1.0f, rng);
    const fast::Weights fw(w);
    const fast::TailWeights ft(tail);
    auto start = Clock::now();
    const Tensor3 readable = tower_tail_forward(tail, minicpmv_forward(w, c, x, grids), c.eps);
    const double readable_s = seconds_since(start);
    std::vector<double> times;
    Tensor3 fast_y;
    for (int r = 0; r < repeats + 1; ++r) {  // the first run warms up
        start = Clock::now();
        fast_y = fast::tower_tail_forward(ft, fast::minicpmv_forward(fw, c, x, grids), c.eps);
        if (r > 0) times.push_back(seconds_since(start));
    }
    const double fast_s = median(times);
    // With the trace `run --trace` and `compare` record: each image on all 1024 keys, its padding masked.
    std::vector<double> traced_times;
    for (int r = 0; r < repeats; ++r) {
        Trace trace;
        start = Clock::now();
        fast::tower_tail_forward(ft, fast::minicpmv_forward(fw, c, x, grids, &trace), c.eps, &trace);
        traced_times.push_back(seconds_since(start));
    }
    const double traced_s = median(traced_times);
    const double largest = xt::amax(xt::abs(readable))(), diff = xt::amax(xt::abs(fast_y - readable))();
    std::printf("MiniCPM-V 2.6 size (E=%zu, Q=%zu, H=%zu, Kv=%zu), 2 images of 32x32 and 24x40 patches padded to "
                "1024:\n  readable minicpmv_forward + tail: %.2f s\n  fast::minicpmv_forward + tail: %.3f s (median of "
                "%d)\n  the same with every intermediate traced: %.3f s (%.2fx the untraced)\n"
                "  gain %.0fx; max |fast - readable| = %.3g (largest |y| %.3g); peak RSS %.0f MiB\n",
                E, Q, c.num_heads, Kv, readable_s, fast_s, repeats, traced_s, traced_s / fast_s, readable_s / fast_s, diff,
                largest, peak_rss_mib());
    return 0;
}

// --sgemm-order: how this BLAS's sgemm orders a product's sums, which decides where a weight kept in 16 bits can be
// widened (fast/gemm.cpp's gemm_block). On one thread (an OwnThreads scope), random values in [-1, 1), y = a b^T:
// (1) the share of outputs that differ from one fused multiply-add chain per output, in the order of the inner
// index; (2) the share that change when the output's columns are computed as separate calls of `width` columns each.
// Where (1) is not zero, only the BLAS itself reproduces its sums; where (2) is not zero, a panel of widened values
// must be as wide as the float32 product's call. docs/performance.md#bf16-weights-in-one-run gives the finding.
int sgemm_order() {
    const fast::OwnThreads own;
    std::mt19937 rng(26);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    const auto random = [&](std::size_t n) {
        std::vector<float> v(n);
        for (float& x : v) x = uniform(rng);
        return v;
    };
    // y (rows, cols), row stride `stride`, = a (rows, inner) b^T, b (cols, inner): one sgemm call, on this thread
    const auto product = [](std::size_t rows, std::size_t cols, std::size_t inner, const float* a, const float* b,
                            float* y, std::size_t stride) {
        using index = xt::blas_index_t;
        cxxblas::gemm<index>(cxxblas::StorageOrder::RowMajor, cxxblas::Transpose::NoTrans, cxxblas::Transpose::Trans,
                             static_cast<index>(rows), static_cast<index>(cols), static_cast<index>(inner), 1.0f, a,
                             static_cast<index>(inner), b, static_cast<index>(inner), 0.0f, y, static_cast<index>(stride));
    };
    const auto share = [](const std::vector<float>& x, const std::vector<float>& y) {
        std::size_t differ = 0;
        for (std::size_t i = 0; i < x.size(); ++i) differ += x[i] != y[i];
        return 100.0 * static_cast<double>(differ) / static_cast<double>(x.size());
    };
    std::printf("sgemm on one thread, y = a b^T, random values in [-1, 1):\n");
    std::printf("  rows x columns x inner: %% of outputs that differ from one fused multiply-add chain per output, in order\n");
    for (const auto& [rows, cols, inner] : {std::array<std::size_t, 3>{256, 16, 320}, {256, 2048, 320}, {64, 64, 64}}) {
        const std::vector<float> a = random(rows * inner), b = random(cols * inner);
        std::vector<float> y(rows * cols), chain(rows * cols);
        product(rows, cols, inner, a.data(), b.data(), y.data(), cols);
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t c = 0; c < cols; ++c) {
                float sum = 0.0f;
                for (std::size_t k = 0; k < inner; ++k) sum = std::fma(a[r * inner + k], b[c * inner + k], sum);
                chain[r * cols + c] = sum;
            }
        std::printf("    %zu x %zu x %zu: %.1f%%\n", rows, cols, inner, share(y, chain));
    }
    std::printf("  256 rows x 2048 columns, the columns as calls of `width` each: %% of outputs that change\n");
    for (const std::size_t inner : {320, 4096}) {
        const std::size_t rows = 256, cols = 2048;
        const std::vector<float> a = random(rows * inner), b = random(cols * inner);
        std::vector<float> whole(rows * cols), parts(rows * cols);
        product(rows, cols, inner, a.data(), b.data(), whole.data(), cols);
        std::printf("    inner %zu:", inner);
        for (const std::size_t width : {64, 256, 320, 512, 640, 1024}) {
            for (std::size_t c0 = 0; c0 < cols; c0 += width)
                product(rows, std::min(width, cols - c0), inner, a.data(), b.data() + c0 * inner, parts.data() + c0, cols);
            std::printf(" %zu: %.1f%%%s", width, share(whole, parts), width == 1024 ? "\n" : ",");
        }
    }
    return 0;
}

// --help: what each mode does (the comment at the top of this file says more).
constexpr const char* kHelp =
    "\nqwenvl-bench measures the adapter at Qwen-VL's real size (E 4096, Kv 1664, 32 heads, 256 queries) on random\n"
    "weights; run a Release build. Modes:\n"
    "  (default)            the fast forward's time for N images of G x G patches, its GFLOP/s against this\n"
    "                       process's sgemm, peak memory (--json: one line of JSON)\n"
    "  --stages             each fast function of one image timed on its own, checked against the whole forward\n"
    "  --agree              the readable and fast paths on one image, the largest difference at every stage\n"
    "  --agree-backward     the same for the backward: every parameter's gradient and dL/dx\n"
    "  --backward           the fast backward's time and GFLOP/s\n"
    "  --readable-trace DIR the readable path's every stage written to DIR (the mutation runner's --fullsize)\n"
    "  --gains              each fast function against the readable one it replaces (docs/fast-path.md)\n"
    "  --minicpmv           MiniCPM-V 2.6's resampler at its size, readable against fast, traced and untraced\n"
    "  --write-checkpoint DIR  makes DIR if needed and writes (replacing files of the same names) full-size\n"
    "                       files: adapter-f32.safetensors (random F32 weights,\n"
    "                       no pos_embed), qwen-vl-bf16.safetensors (the same weights rounded to BF16 with\n"
    "                       attn_pool.pos_embed, as Qwen-VL ships them), features.npy (1 image), features-4.npy,\n"
    "                       minicpmv-f32.safetensors and features-minicpmv.npy\n"
    "  --page-faults FILE   what first touching memory and FILE's pages costs here\n"
    "  --sgemm-order        how OpenBLAS's sgemm orders its sums (why BF16 weights are widened as they are)\n"
    "Threads: OPENBLAS_NUM_THREADS. docs/performance.md explains every measure.\n";

int main(int argc, char** argv) {
    std::size_t N = 1, G = 32;
    int repeats = 5;
    bool json = false, stages = false, agree = false, gain = false, agree_backward = false, backward = false;
    std::string readable_trace;  // --readable-trace DIR
    const char* usage = "usage: qwenvl-bench [--images N] [--grid G] [--repeats R] [--json] | --stages [--grid G] "
                        "[--repeats R] [--json] | --agree [--grid G] | --agree-backward [--grid G] | --backward [--images N] [--grid G] "
                        "[--repeats R] | --readable-trace DIR [--grid G] | --gains [--repeats R] | "
                        "[--repeats R] --minicpmv | "
                        "--write-checkpoint DIR | "
                        "--page-faults FILE | --sgemm-order | --help\n";
    try {
        for (int i = 1; i < argc; ++i) {
            const std::string a = argv[i];
            if (a == "--images" && i + 1 < argc) N = std::stoul(argv[++i]);
            else if (a == "--grid" && i + 1 < argc) G = std::stoul(argv[++i]);
            else if (a == "--repeats" && i + 1 < argc) repeats = std::stoi(argv[++i]);
            else if (a == "--json") json = true;
            else if (a == "--stages") stages = true;
            else if (a == "--agree") agree = true;
            else if (a == "--agree-backward") agree_backward = true;
            else if (a == "--backward") backward = true;
            else if (a == "--gains") gain = true;
            else if (a == "--minicpmv") return minicpmv_gain(repeats);
            else if (a == "--readable-trace" && i + 1 < argc) readable_trace = argv[++i];
            else if (a == "--write-checkpoint" && i + 1 < argc) {
                const std::string dir = argv[++i];
                try {  // a folder that cannot be made or written is the user's file problem: exit 1, no usage
                    std::filesystem::create_directories(dir);
                    return write_checkpoint(dir);
                } catch (const std::exception& e) {
                    std::fprintf(stderr, "qwenvl-bench: %s\n", e.what());
                    return 1;
                }
            } else if (a == "--help" || a == "-h") {
                std::fputs(usage, stdout);
                std::fputs(kHelp, stdout);
                return 0;
            }
            else if (a == "--page-faults" && i + 1 < argc) return page_faults(argv[++i]);
            else if (a == "--sgemm-order") return sgemm_order();
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

    if (gain) return gains(w, tail, c, x, repeats);
    if (agree) return paths_agree(w, tail, c, Tensor3(xt::view(x, xt::range(0, 1))));
    if (agree_backward) return backward_agree(w, tail, c, Tensor3(xt::view(x, xt::range(0, 1))), rng);
    if (backward) return backward_time(w, tail, c, x, repeats, rng);
    if (!readable_trace.empty()) {
        Trace trace;
        const Tensor3 x0 = xt::view(x, xt::range(0, 1));
        tower_tail_forward(tail, adapter_forward(w, c, x0, nullptr, &trace), c.eps, &trace);
        try {
            for (const auto& name : trace.names()) write_npy(readable_trace + "/" + name + ".npy", trace.get(name));
        } catch (const std::exception& e) {
            std::fprintf(stderr, "qwenvl-bench: %s\n", e.what());
            return 1;
        }
        std::printf("wrote %zu stages to %s\n", trace.names().size(), readable_trace.c_str());
        return 0;
    }
    GemmProbe gemm(rng);
    gemm.run();
    if (stages) {
        const fast::QuerySide side = fast::prepare_query_side(w, c, G * G);
        return stage_times(w, tail, c, side, x, repeats, gemm, json);
    }

    auto start = Clock::now();
    const fast::QuerySide side = fast::prepare_query_side(w, c, G * G);
    const double query_side_s = seconds_since(start);

    std::vector<double> times;
    fast::Workspace kept;  // as a caller that runs many batches keeps it: the buffers are touched in the warm-up only
    for (int r = 0; r < repeats + 1; ++r) {  // the first run warms up and is not counted
        start = Clock::now();
        const Tensor3 out = fast::adapter_forward(w, c, side, x, nullptr, nullptr, &kept);
        const Tensor3 y = fast::tower_tail_forward(tail, out, c.eps);
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
