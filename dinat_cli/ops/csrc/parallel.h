// Splitting a kernel's work over threads.
#pragma once

#include <omp.h>
#include <cstdint>

namespace dinat {

// fn(begin, end) over [0, count) split into contiguous parts, one per thread. OpenMP,
// because torch's own libgomp is already loaded and this library binds to it: the
// threads are torch's, not a second pool competing with torch's spinning workers.
template <typename Fn>
void parallel_for(int64_t count, int threads, const Fn &fn) {
    const int workers = int(threads < 1 ? 1 : (threads > count ? count : threads));
#pragma omp parallel num_threads(workers)
    {
        const int64_t w = omp_get_thread_num(), n = omp_get_num_threads();
        fn(count * w / n, count * (w + 1) / n);
    }
}

}  // namespace dinat
