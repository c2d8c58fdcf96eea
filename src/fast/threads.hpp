// fast/threads.hpp: the fast path's own threads.
//
// OpenBLAS splits each product over its own threads, and between two calls those threads keep spinning (about
// 0.1 s) in case more work comes. For the attention's 64 small products of one image (256 x 128 by 128 x 1024,
// and back) the splitting costs more than it gains (61-69 GFLOP/s against 150 for the large products), and threads
// of ours cannot help while OpenBLAS's spin beside them (measured: 67-117 ms for the attention against 63-70).
// So inside an `OwnThreads` scope OpenBLAS runs single-threaded and the fast path splits the work itself, over as
// many threads as OpenBLAS had: each large product by blocks of output columns (gemm_block), the attention by
// heads, LayerNorm and the table's add by rows. Measured gains in docs/performance.md#two-threads-of-our-own.
// Replaces nothing in stages/: it is how fast/ schedules the same arithmetic.
#pragma once

#include <cstddef>
#include <functional>

namespace qwenvl::fast {

// While one exists (on any thread; scopes nest), OpenBLAS computes on the calling thread only and
// thread_count() is the number of threads OpenBLAS was set to use; on destruction of the outermost scope,
// OpenBLAS gets its threads back. The outermost scope also stops OpenBLAS's idle worker threads
// (blas_thread_shutdown_), which would otherwise spin beside ours for about 0.1 s after their last call and after
// the library starts; OpenBLAS's next threaded call starts them again. Nothing else may call OpenBLAS from another
// thread while a scope opens.
class OwnThreads {
public:
    OwnThreads();
    ~OwnThreads();
    OwnThreads(const OwnThreads&) = delete;
    OwnThreads& operator=(const OwnThreads&) = delete;
};

// The threads to split work over: 1 outside an OwnThreads scope, inside a part that parallel_for runs, or when
// OpenBLAS has one thread (OPENBLAS_NUM_THREADS=1) or is not OpenBLAS.
std::size_t thread_count();

// The threads OpenBLAS computes one product on, now: 1 inside an OwnThreads scope, or when the BLAS is not
// OpenBLAS; outside a scope, OpenBLAS's own thread count.
std::size_t blas_thread_count();

// Runs part(begin, end) on thread_count() consecutive slices of [0, n), each at least `grain` long (fewer slices
// when n is small), one of them on the calling thread, and returns when all are done. Inside a part,
// thread_count() is 1: nothing splits twice.
void parallel_for(std::size_t n, std::size_t grain, const std::function<void(std::size_t begin, std::size_t end)>& part);

// The same, telling each part which one it is: part(i, begin, end) for i in [0, parallel_parts(n, grain)), slice i
// being [n*i/parts, n*(i+1)/parts). A part can then use buffers of its own, made before the call.
std::size_t parallel_parts(std::size_t n, std::size_t grain);
void parallel_for_parts(std::size_t n, std::size_t grain,
                        const std::function<void(std::size_t i, std::size_t begin, std::size_t end)>& part);

}  // namespace qwenvl::fast
