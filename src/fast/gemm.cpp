#include "fast/gemm.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <utility>
#include <vector>

#include <xtensor-blas/xblas.hpp>

#include "core/memory.hpp"
#include "fast/threads.hpp"

namespace qwenvl::fast {

Block::Block(const Matrix& m) : Block(m.data(), m.shape(0), m.shape(1), m.shape(1)) {}
Block whole(const Matrix& m) { return Block(m); }
Matrix copy_of(const Block& b) {
    Matrix m({b.rows, b.cols});
    for (std::size_t r = 0; r < b.rows; ++r) {
        if (b.is_packed())
            b.packed.widen(b.packed.data + r * b.stride * b.packed.bytes, b.cols, m.data() + r * b.cols);
        else
            std::copy(b.data + r * b.stride, b.data + r * b.stride + b.cols, m.data() + r * b.cols);
    }
    return m;
}
std::vector<std::size_t> dims(const Block& b) { return {b.rows, b.cols}; }

namespace {
// The buffers packed weights are widened into, kept for the whole process (unmapped at its end). A product takes one
// for all its parts (each part widens into its own slice: at full size 5 MiB for any product, 4096 columns by one
// inner block of 320) and gives it back, so that one buffer serves every product and its pages are touched once. It
// is mapped on its own, 2 MiB aligned and asked for as transparent huge pages (madvise mode), 2 MiB a fault instead
// of 4 KiB. Before, each part had a buffer of its own carved from the heap (three, 14 MiB of huge pages touched at
// full size, and malloc's bookkeeping around the 2 MiB-aligned blocks touched more beside them: a full-size BF16
// run's heap pages 36 -> 33, F32's count), each 0.6 to 1.9 ms a MiB right after another process freed memory
// (docs/performance.md#fresh-memory).
class PanelBuffer {
public:
    explicit PanelBuffer(std::size_t floats) {
        const std::lock_guard<std::mutex> lock(mutex());
        auto& free = pool();
        auto fits = std::find_if(free.begin(), free.end(), [&](const Held& h) { return h.floats >= floats; });
        if (fits == free.end()) {
            held_.floats = (floats * sizeof(float) + kHuge - 1) / kHuge * kHuge / sizeof(float);
            held_.data = map_huge(held_.floats * sizeof(float));
        } else {
            held_ = *fits;
            free.erase(fits);
        }
        data = held_.data;
    }
    ~PanelBuffer() {
        const std::lock_guard<std::mutex> lock(mutex());
        pool().push_back(held_);
    }
    PanelBuffer(const PanelBuffer&) = delete;
    PanelBuffer& operator=(const PanelBuffer&) = delete;
    float* data = nullptr;

private:
    static constexpr std::size_t kHuge = std::size_t(2) << 20;
    struct Held {
        float* data = nullptr;
        std::size_t floats = 0;
    };
    // `bytes` (a multiple of 2 MiB) of anonymous memory at a 2 MiB boundary, marked for huge pages, none touched.
    static float* map_huge(std::size_t bytes) {
        std::uint8_t* const at = map_at_huge_boundary(bytes, PROT_READ | PROT_WRITE);
        if (!at) throw std::bad_alloc();
        ask_for_huge_pages(at, bytes);
        return reinterpret_cast<float*>(at);
    }
    static std::mutex& mutex() {
        static std::mutex m;
        return m;
    }
    // The buffers not in use: kept until the process ends, then unmapped.
    struct Pool : std::vector<Held> {
        ~Pool() {
            for (const Held& h : *this) ::munmap(h.data, h.floats * sizeof(float));
        }
    };
    static Pool& pool() {
        static Pool free;
        return free;
    }
    Held held_;
};
}  // namespace

namespace {
using index = xt::blas_index_t;

// A transposed packed b is widened a row piece at a time: `inner` values (640 bytes of BF16 at full size) from each
// of b's rows, rows K values apart, which the hardware's prefetchers do not follow. So the piece kRowsAhead rows on
// is asked for while this one is widened (a hint: no effect on any value). Measured in a full-size BF16 `run`
// (temporary timers, six runs each): the widening's time summed over threads 51 -> 42 ms (medians); 2 to 16 rows
// ahead gave the same within the noise (docs/performance.md#bf16-weights-in-one-run).
constexpr std::size_t kRowsAhead = 8;
void ask_cache_for(const std::uint8_t* first, std::size_t bytes) {
    for (std::size_t i = 0; i < bytes; i += 64) __builtin_prefetch(first + i);
}

// The project's one call of sgemm, row-major: c (rows, cols) = op(a) op(b) (+ c when `add`), op transposing when
// asked, over an inner size `inner`, each operand with its row stride.
void sgemm(bool transpose_a, bool transpose_b, std::size_t rows, std::size_t cols, std::size_t inner, const float* a,
           std::size_t a_stride, const float* b, std::size_t b_stride, bool add, float* c, std::size_t c_stride) {
    cxxblas::gemm<index>(cxxblas::StorageOrder::RowMajor,
                         transpose_a ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                         transpose_b ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                         static_cast<index>(rows), static_cast<index>(cols), static_cast<index>(inner), 1.0f, a,
                         static_cast<index>(a_stride), b, static_cast<index>(b_stride), add ? 1.0f : 0.0f, c,
                         static_cast<index>(c_stride));
}

// OpenBLAS's level-3 driver sums the inner dimension in blocks of at most its GEMM_Q values (a remainder between Q
// and 2Q in two halves, rounded up to its unroll), and adds each block's partial sums into the output. The blocks
// its rule gives for inner size K, for a Q and an unroll.
std::vector<std::size_t> blocks_by_rule(std::size_t K, std::size_t Q, std::size_t unroll) {
    std::vector<std::size_t> blocks;
    for (std::size_t done = 0; done < K;) {
        std::size_t block = K - done;
        if (block >= 2 * Q)
            block = Q;
        else if (block > Q)
            block = (block / 2 + unroll - 1) / unroll * unroll;
        blocks.push_back(block);
        done += block;
    }
    return blocks;
}

// Whether cutting the inner dimension at `blocks`, one sgemm per block adding into the output, gives the same output
// bit for bit as one sgemm on a random product of 32 rows and 128 columns of inner size K, in the calling thread's
// OpenBLAS setting. (A wrong cut changes the last bit of most such sums: 83 to 94% of them for the other Qs tried,
// in a test program; 4,096 of them show it.) The blocks are taken as gemm_block takes them: a's columns in place
// (row stride K), b's copied into a contiguous panel. Checked with beta 1 only: OpenBLAS applies beta to the output
// before it sums any block, so beta 0 cuts the same way; the packed-weight test compares both, bit for bit.
// A full-size 16-bit `run` checks three inner sizes on its critical path (K 4096 inside a scope, 1664, then 4096
// outside). With std::minstd_rand's values, copies of a and b as large as them and both betas they took 6.3, 2.3
// and 5.1 ms (one run); with a xorshift's values, b's blocks copied and beta 1, 1.8, 0.7 and 1.7 ms (six runs); with
// the values below, 1.0, 0.4 and 0.9 ms (six runs; the first sgemm of a process, which sets up OpenBLAS's buffers
// whoever calls it, sometimes takes 5 ms more). Fewer columns would be cheaper but do not show OpenBLAS's cut: with
// 32, two threads and K 1664, 1024 or 8192, its one call and the right cut differed in 35 to 40% of the sums.
bool cuts_keep_the_sums(std::size_t K, const std::vector<std::size_t>& blocks) {
    constexpr std::size_t rows = 32, cols = 128;
    // Values in [-1, 1): value i is a hash of i and K (Wellons' "lowbias32" mixer) whose top 23 bits are a float's
    // mantissa in [2, 4). Each value is made on its own, so the compiler fills the arrays many at a time: a check's
    // values took 0.2, 0.07 and 0.12 ms in a full-size run instead of 1.0, 0.4 and 1.0 with a xorshift's chain, which
    // had been two thirds of the three checks' time (temporary timers, six runs).
    const auto fill = [K](std::vector<float>& values, std::uint32_t first) {
        const std::uint32_t seed = static_cast<std::uint32_t>(K) * 0x9E3779B9u;
        for (std::size_t i = 0; i < values.size(); ++i) {
            std::uint32_t x = (first + static_cast<std::uint32_t>(i)) ^ seed;
            x ^= x >> 16;
            x *= 0x7FEB352Du;
            x ^= x >> 15;
            x *= 0x846CA68Bu;
            x ^= x >> 16;
            const std::uint32_t bits = 0x40000000u | (x >> 9);
            float f;
            std::memcpy(&f, &bits, sizeof f);
            values[i] = f - 3.0f;
        }
    };
    const std::size_t most = *std::max_element(blocks.begin(), blocks.end());
    std::vector<float> a(rows * K), b(cols * K), start(rows * cols), panel(cols * most);
    fill(a, 0);
    fill(b, static_cast<std::uint32_t>(a.size()));
    fill(start, static_cast<std::uint32_t>(a.size() + b.size()));
    std::vector<float> whole = start, cut = start;
    sgemm(false, true, rows, cols, K, a.data(), K, b.data(), K, true, whole.data(), cols);
    std::size_t k0 = 0;
    for (const std::size_t block : blocks) {
        for (std::size_t r = 0; r < cols; ++r) std::copy_n(b.data() + r * K + k0, block, panel.data() + r * block);
        sgemm(false, true, rows, cols, block, a.data() + k0, K, panel.data(), block, true, cut.data(), cols);
        k0 += block;
    }
    return whole == cut;
}

// The blocks sgemm sums an inner dimension of K in, where the BLAS can be seen to cut it (found by
// cuts_keep_the_sums among the blockings of likely Qs and unrolls; OpenBLAS 0.3.21's Haswell kernels here: Q 320),
// else {K}: found once per K and per BLAS thread count, and kept.
const std::vector<std::size_t>& inner_blocks(std::size_t K) {
    static std::mutex lock;
    static std::map<std::pair<std::size_t, std::size_t>, std::vector<std::size_t>> found;
    const std::lock_guard<std::mutex> guard(lock);
    const auto key = std::make_pair(K, blas_thread_count());
    if (auto it = found.find(key); it != found.end()) return it->second;
    std::vector<std::vector<std::size_t>> tried;
    for (const std::size_t Q : {320, 384, 256, 448, 512, 640, 768, 192, 128, 1024})
        for (const std::size_t unroll : {8, 16, 4, 32, 2, 1, 64}) {
            std::vector<std::size_t> candidate = blocks_by_rule(K, Q, unroll);
            if (candidate.size() < 2 || std::find(tried.begin(), tried.end(), candidate) != tried.end()) continue;
            if (cuts_keep_the_sums(K, candidate)) return found.emplace(key, std::move(candidate)).first->second;
            tried.push_back(std::move(candidate));
        }
    return found.emplace(key, std::vector<std::size_t>{K}).first->second;
}
}  // namespace

void gemm_block(const Block& a, const Block& b, bool transpose_b, float* out, std::size_t out_stride,
                bool accumulate, bool transpose_a) {
    const std::size_t M = transpose_b ? b.rows : b.cols, K = transpose_b ? b.cols : b.rows;
    const std::size_t rows = transpose_a ? a.cols : a.rows, inner = transpose_a ? a.rows : a.cols;
    require(inner == K, "gemm_block", "inner sizes differ: " + std::to_string(inner) + " and " + std::to_string(K));
    if (rows == 0 || M == 0) return;
    if (K == 0) {  // an empty sum: BLAS may leave `out` untouched
        if (accumulate) return;
        for (std::size_t r = 0; r < rows; ++r) std::fill(out + r * out_stride, out + r * out_stride + M, 0.0f);
        return;
    }
    // Inside an OwnThreads scope (fast/threads.hpp), a large product is split into blocks of output columns, one
    // per thread, each a single-threaded sgemm on its own rows of b^T (columns of b). OpenBLAS's sums depend on a
    // product's width, so the last bits depend on the thread count (docs/fast-path.md#threads); the same on every
    // call. Blocks are multiples of 64 columns, and a product of fewer than 2^24 multiply-adds stays whole (a
    // thread's start costs about as much as 2^20).
    require(!a.is_packed(), "gemm_block", "the left operand is not a weight: it must be float32");
    // Output columns [c0, c1) from the float32 columns `part` of b (b^T's rows, with transpose_b), over the inner
    // indices [k0, k0 + inner) (all K for a float32 b), adding into `out` when `add`.
    auto part_product = [&](std::size_t c0, std::size_t c1, const Block& part, std::size_t k0, std::size_t inner,
                            bool add) {
        const float* a_part = transpose_a ? a.data + k0 * a.stride : a.data + k0;
        sgemm(transpose_a, transpose_b, rows, c1 - c0, inner, a_part, a.stride, part.data, part.stride, add, out + c0,
              out_stride);
    };
    // A packed b is widened one inner block at a time (found on this thread, before the split), each block's
    // product added into `out`: OpenBLAS's own blocks, so the same sums in the same order as one sgemm on b widened
    // whole, in a panel of at most Q rows (5 MiB at full size, in cache) instead of all K (32 to 64 MiB of
    // fresh memory, written out and read back). Measured in docs/performance.md#bf16-weights-in-one-run.
    const std::vector<std::size_t> no_cut{K};
    const std::vector<std::size_t>& inner_cuts = b.is_packed() ? inner_blocks(K) : no_cut;
    const std::size_t most_inner = *std::max_element(inner_cuts.begin(), inner_cuts.end());
    // One buffer for the whole product: the part of columns [c0, c1) widens into its slice from c0 * most_inner.
    std::optional<PanelBuffer> panels;
    if (b.is_packed()) panels.emplace(M * most_inner);
    auto columns = [&](std::size_t begin, std::size_t end) {
        const std::size_t c0 = begin * 64, c1 = std::min(end * 64, M);
        if (c0 >= c1) return;
        if (!b.is_packed())
            return part_product(c0, c1, transpose_b ? Block{b.data + c0 * b.stride, c1 - c0, b.cols, b.stride}
                                                    : Block{b.data + c0, b.rows, c1 - c0, b.stride},
                                0, K, accumulate);
        // The same column range as for a float32 b: OpenBLAS's sums depend on the width of the product.
        const std::size_t width = c1 - c0;
        float* const panel = panels->data + c0 * most_inner;  // (width, inner) or (inner, width), row-major
        std::size_t k0 = 0;
        for (const std::size_t inner : inner_cuts) {
            if (transpose_b) {  // b^T's rows c0..c1 are b's rows: their values k0..k0+inner
                for (std::size_t r = c0; r < c1; ++r) {
                    if (r + kRowsAhead < c1)
                        ask_cache_for(b.packed.data + ((r + kRowsAhead) * b.stride + k0) * b.packed.bytes, inner * b.packed.bytes);
                    b.packed.widen(b.packed.data + (r * b.stride + k0) * b.packed.bytes, inner, panel + (r - c0) * inner);
                }
                part_product(c0, c1, Block{panel, width, inner, inner}, k0, inner, accumulate || k0 > 0);
            } else {  // b's rows k0..k0+inner: `width` values of each, from column c0
                for (std::size_t k = k0; k < k0 + inner; ++k)
                    b.packed.widen(b.packed.data + (k * b.stride + c0) * b.packed.bytes, width, panel + (k - k0) * width);
                part_product(c0, c1, Block{panel, inner, width, width}, k0, inner, accumulate || k0 > 0);
            }
            k0 += inner;
        }
    };
    const std::size_t blocks = (M + 63) / 64;
    if (static_cast<double>(rows) * static_cast<double>(M) * static_cast<double>(K) < double(1 << 24)) return columns(0, blocks);
    parallel_for(blocks, 1, columns);
}

namespace {
// Checks that `weight` is a contiguous (out, in) block and `bias` has `out` values.
void check_linear(const Block& weight, Values bias, std::size_t in) {
    check_shape("fast::linear", "weight", dims(weight), {ANY, in});
    require(weight.stride == weight.cols, "fast::linear", "the weight is not a contiguous block");
    check_shape("fast::linear", "bias", std::vector<std::size_t>{bias.size}, {weight.rows});
}

// y (rows, M) = x W^T + b for `rows` contiguous rows of x: each row of y starts as b, sgemm adds x W^T onto it.
void linear_rows(const float* x, std::size_t rows, const Block& weight, Values bias, float* y) {
    const std::size_t K = weight.cols, M = weight.rows;
    for (std::size_t r = 0; r < rows; ++r) std::copy(bias.data, bias.data + M, y + r * M);
    gemm_block(Block{x, rows, K, K}, weight, true, y, M, /*accumulate=*/true);
}
}  // namespace

Matrix linear(const Matrix& x, const Block& weight, Values bias) {
    check_linear(weight, bias, x.shape(1));
    Matrix y({x.shape(0), weight.rows});
    linear_rows(x.data(), x.shape(0), weight, bias, y.data());
    return y;
}

void linear_into(const Matrix& x, const Block& weight, Values bias, Matrix& y) {
    check_linear(weight, bias, x.shape(1));
    check_shape("fast::linear_into", "y", y, {x.shape(0), weight.rows});
    linear_rows(x.data(), x.shape(0), weight, bias, y.data());
}

Tensor3 linear(const Tensor3& x, const Block& weight, Values bias) {
    check_linear(weight, bias, x.shape(2));
    Tensor3 y({x.shape(0), x.shape(1), weight.rows});
    linear_rows(x.data(), x.shape(0) * x.shape(1), weight, bias, y.data());
    return y;
}

Tensor3 matmul(const Tensor3& x, const Block& weight) {
    check_shape("fast::matmul", "weight", dims(weight), {x.shape(2), ANY});
    const std::size_t rows = x.shape(0) * x.shape(1), K = x.shape(2), M = weight.cols;
    Tensor3 y({x.shape(0), x.shape(1), M});
    gemm_block(Block{x.data(), rows, K, K}, weight, false, y.data(), M);
    return y;
}

Matrix kv_projection(const Block& image, const Block& w_kv) {
    Matrix y({image.rows, w_kv.empty() ? image.cols : w_kv.rows});
    kv_projection_into(image, w_kv, y);
    return y;
}

void kv_projection_into(const Block& image, const Block& w_kv, Matrix& y) {
    check_shape("fast::kv_projection", "y", y, {image.rows, w_kv.empty() ? image.cols : w_kv.rows});
    if (w_kv.empty()) {  // nn.Identity: a copy of the image's rows
        for (std::size_t r = 0; r < image.rows; ++r)
            std::copy(image.data + r * image.stride, image.data + r * image.stride + image.cols, y.data() + r * image.cols);
        return;
    }
    check_shape("fast::kv_projection", "w_kv", dims(w_kv), {ANY, image.cols});
    gemm_block(image, w_kv, true, y.data(), y.shape(1));
}

}  // namespace qwenvl::fast
