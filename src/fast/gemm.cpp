#include "fast/gemm.hpp"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

#include <xtensor-blas/xblas.hpp>

#include "core/memory.hpp"
#include "fast/threads.hpp"

namespace qwenvl::fast {

Block::Block(const Matrix& m) : Block(m.data(), m.shape(0), m.shape(1), m.shape(1)) {}
Block whole(const Matrix& m) { return Block(m); }
std::vector<std::size_t> dims(const Block& b) { return {b.rows, b.cols}; }

namespace {
// The buffers packed weights are widened into, kept for the whole process (freed at its end): a product's part takes
// one and gives it back, so that their pages are touched once (at full size two of 32 MiB, one per thread, for every product),
// and they are asked for as transparent huge pages (madvise mode), 2 MiB a fault instead of 4 KiB.
class PanelBuffer {
public:
    explicit PanelBuffer(std::size_t floats) {
        const std::lock_guard<std::mutex> lock(mutex());
        auto& free = pool();
        auto fits = std::find_if(free.begin(), free.end(), [&](const Held& h) { return h.floats >= floats; });
        if (fits == free.end()) {
            held_.floats = (floats * sizeof(float) + kHuge - 1) / kHuge * kHuge / sizeof(float);
            held_.data = static_cast<float*>(std::aligned_alloc(kHuge, held_.floats * sizeof(float)));
            if (!held_.data) throw std::bad_alloc();
            ask_for_huge_pages(held_.data, held_.floats * sizeof(float));
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
    static std::mutex& mutex() {
        static std::mutex m;
        return m;
    }
    // The buffers not in use: kept until the process ends, then freed.
    struct Pool : std::vector<Held> {
        ~Pool() {
            for (const Held& h : *this) std::free(h.data);
        }
    };
    static Pool& pool() {
        static Pool free;
        return free;
    }
    Held held_;
};
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
    // per thread, each a single-threaded sgemm on its own rows of b^T (columns of b): every output value is the
    // same sum as one single-threaded sgemm of the whole (OpenBLAS's own threads sum in another order). Blocks are
    // multiples of 64 columns, and a product of fewer than 2^24 multiply-adds stays whole (a thread's start costs
    // about as much as 2^20).
    require(!a.is_packed(), "gemm_block", "the left operand is not a weight: it must be float32");
    // Output columns [c0, c1) from the float32 columns `part` of b (b^T's rows, with transpose_b).
    auto sgemm = [&](std::size_t c0, std::size_t c1, const Block& part) {
        using index = xt::blas_index_t;
        cxxblas::gemm<index>(cxxblas::StorageOrder::RowMajor,
                             transpose_a ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                             transpose_b ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                             static_cast<index>(rows), static_cast<index>(c1 - c0), static_cast<index>(K), 1.0f, a.data,
                             static_cast<index>(a.stride), part.data, static_cast<index>(part.stride),
                             accumulate ? 1.0f : 0.0f, out + c0, static_cast<index>(out_stride));
    };
    auto columns = [&](std::size_t begin, std::size_t end) {
        const std::size_t c0 = begin * 64, c1 = std::min(end * 64, M);
        if (c0 >= c1) return;
        if (!b.is_packed())
            return sgemm(c0, c1, transpose_b ? Block{b.data + c0 * b.stride, c1 - c0, b.cols, b.stride}
                                             : Block{b.data + c0, b.rows, c1 - c0, b.stride});
        // A packed b, widened into a buffer for this part's columns, then the same sgemm as for a float32 b (the same
        // column range: OpenBLAS's sums depend on the width of the product, and narrower panels changed last bits).
        const std::size_t width = c1 - c0;
        const PanelBuffer panel(width * K);
        if (transpose_b) {  // b^T's rows c0..c1 are b's rows: K values each
            for (std::size_t r = c0; r < c1; ++r)
                b.packed.widen(b.packed.data + r * b.stride * b.packed.bytes, K, panel.data + (r - c0) * K);
            sgemm(c0, c1, Block{panel.data, width, K, K});
        } else {  // b's columns c0..c1: `width` values of each of its K rows
            for (std::size_t k = 0; k < K; ++k)
                b.packed.widen(b.packed.data + (k * b.stride + c0) * b.packed.bytes, width, panel.data + k * width);
            sgemm(c0, c1, Block{panel.data, K, width, width});
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
