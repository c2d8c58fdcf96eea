#include "fast/threads.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

// OpenBLAS's thread controls, when the BLAS is OpenBLAS (weak: another BLAS leaves them null, and nothing splits).
extern "C" {
void openblas_set_num_threads(int) __attribute__((weak));
int openblas_get_num_threads() __attribute__((weak));
int blas_thread_shutdown_() __attribute__((weak));  // OpenBLAS's pool: joined; made again by its next threaded call
}

namespace qwenvl::fast {

namespace {
std::mutex scope_lock;
int scopes = 0;                       // open OwnThreads scopes, guarded by scope_lock
int blas_threads = 1;                 // OpenBLAS's thread count when the outermost scope opened
std::atomic<std::size_t> own_count{1};  // thread_count() inside a scope
thread_local bool inside_part = false;
}  // namespace

OwnThreads::OwnThreads() {
    std::lock_guard<std::mutex> guard(scope_lock);
    if (scopes++ > 0) return;
    blas_threads = openblas_get_num_threads ? std::max(openblas_get_num_threads(), 1) : 1;
    if (blas_threads > 1 && openblas_set_num_threads) openblas_set_num_threads(1);
    // OpenBLAS's idle threads spin for about 0.1 s after their last call, and after the library starts: beside
    // ours they take a core. Its next threaded call (out_proj, after the scope) starts them again (0.1 ms).
    // Measured: the query side's product in a fresh `run` process 87-111 -> 63-69 ms (docs/performance.md).
    if (blas_threads > 1 && blas_thread_shutdown_) blas_thread_shutdown_();
    own_count = static_cast<std::size_t>(blas_threads);
}

OwnThreads::~OwnThreads() {
    std::lock_guard<std::mutex> guard(scope_lock);
    if (--scopes > 0) return;
    own_count = 1;
    if (blas_threads > 1 && openblas_set_num_threads) openblas_set_num_threads(blas_threads);
}

std::size_t thread_count() { return inside_part ? 1 : own_count.load(); }

std::size_t blas_thread_count() {
    return openblas_get_num_threads ? static_cast<std::size_t>(std::max(openblas_get_num_threads(), 1)) : 1;
}

std::size_t parallel_parts(std::size_t n, std::size_t grain) {
    return std::min(thread_count(), std::max<std::size_t>(n / std::max<std::size_t>(grain, 1), 1));
}

void parallel_for(std::size_t n, std::size_t grain, const std::function<void(std::size_t, std::size_t)>& part) {
    parallel_for_parts(n, grain, [&](std::size_t, std::size_t begin, std::size_t end) { part(begin, end); });
}

void parallel_for_parts(std::size_t n, std::size_t grain,
                        const std::function<void(std::size_t, std::size_t, std::size_t)>& part) {
    const std::size_t parts = parallel_parts(n, grain);
    if (parts <= 1) return part(0, 0, n);
    std::vector<std::exception_ptr> failed(parts);
    auto run = [&](std::size_t i) {
        inside_part = true;
        try {
            part(i, n * i / parts, n * (i + 1) / parts);
        } catch (...) {
            failed[i] = std::current_exception();  // rethrown on the calling thread, below
        }
        inside_part = false;
    };
    std::vector<std::thread> others;
    for (std::size_t i = 1; i < parts; ++i) others.emplace_back(run, i);
    run(0);
    for (std::thread& t : others) t.join();
    for (const std::exception_ptr& e : failed)
        if (e) std::rethrow_exception(e);
}

}  // namespace qwenvl::fast
