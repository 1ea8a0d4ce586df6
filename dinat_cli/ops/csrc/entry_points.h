// The C interface of the kernels (loaded with ctypes by native.py), for float32 and
// bfloat16 tensors. bfloat16 is summed in float32 and rounded to nearest even on store.
// Included once by each variant's compile unit, after it names its policy `Isa`.
#pragma once

#include "attention.h"
#include "box_means.h"
#include "cpu_features.h"
#include "gate.h"
#include "layer_norm.h"
#include "parallel.h"

#include <algorithm>
#include <cstdint>
#include <vector>

using namespace dinat;

// Only these are exported: the libraries are built with hidden visibility, so the
// variants' internal functions (the same names, different code) never bind to each other.
#pragma GCC visibility push(default)
extern "C" {

// Instruction sets this CPU and its OS can run, as bits (cpu_features.h). Every variant
// answers alike; the loader asks the baseline.
int cpu_features() { return detect_cpu_features(); }

// Mean of every channel of every image of a channels-last map. Each thread sums a share
// of every image's rows; the shares are added in thread order.
int channel_means(int bfloat16, const void *x, float *out, const int64_t *x_strides, int64_t batch, int64_t height,
                  int64_t width, int64_t channels, int threads) {
    const int workers = int(std::max<int64_t>(1, std::min<int64_t>(threads, height)));
    std::vector<double> partial(int64_t(workers) * batch * channels, 0.0);
    parallel_for(workers, workers, [&](int64_t begin, int64_t end) {
        for (int64_t w = begin; w < end; w++)
            for (int64_t b = 0; b < batch; b++) {
                double *sums = partial.data() + (w * batch + b) * channels;
                const int64_t first = height * w / workers, last = height * (w + 1) / workers;
                if (bfloat16)
                    channel_sums(static_cast<const uint16_t *>(x) + b * x_strides[0], x_strides, first, last, width,
                                 channels, sums);
                else
                    channel_sums(static_cast<const float *>(x) + b * x_strides[0], x_strides, first, last, width,
                                 channels, sums);
            }
    });
    for (int64_t n = 0; n < batch * channels; n++) {
        double total = 0.0;
        for (int w = 0; w < workers; w++) total += partial[w * batch * channels + n];
        out[n] = float(total / double(height * width));
    }
    return 0;
}

// Means of every box_h x box_w box of a channels-last map, per channel.
int box_means(int bfloat16, const void *x, float *out, const int64_t *x_strides, int64_t batch, int64_t channels,
              int64_t height, int64_t width, int64_t box_h, int64_t box_w, int threads) {
    const BoxMeans m{x, out, x_strides, batch, channels, height, width, box_h, box_w};
    const int64_t items = batch * (channels < 16 ? channels : (channels + 15) / 16);
    if (bfloat16)
        parallel_for(items, threads, [&m](int64_t begin, int64_t end) { box_means_range<uint16_t>(m, begin, end); });
    else
        parallel_for(items, threads, [&m](int64_t begin, int64_t end) { box_means_range<float>(m, begin, end); });
    return 0;
}

// Layer norm over the channels of every pixel of a channels-last map.
int layer_norm(int bfloat16, const void *x, void *out, const int64_t *x_strides, int64_t batch, int64_t height,
               int64_t width, int64_t channels, const float *weight, const float *bias, float eps, int threads) {
    const LayerNormProblem n{x, out, x_strides, height, width, channels, weight, bias, eps};
    if (bfloat16)
        parallel_for(batch * height, threads, [&n](int64_t begin, int64_t end) { layer_norm_rows<uint16_t>(n, begin, end); });
    else
        parallel_for(batch * height, threads, [&n](int64_t begin, int64_t end) { layer_norm_rows<float>(n, begin, end); });
    return 0;
}

// out = gelu(dwconv3x3(x[gates])) * dwconv3x3(x[values]) for output rows [0, rows), which
// read input rows [first - 1, first + rows + 1) of the rows_in given (beyond them: zeros).
// x_rows: where each input row starts, B * rows_in of them; x_step: the column stride.
int gated_dwconv_gelu(int bfloat16, const void *const *x_rows, int64_t x_step, void *out, const int64_t *out_strides,
                      int64_t batch, int64_t rows, int64_t rows_in, int64_t first, int64_t width, int64_t hidden,
                      const float *weight, const float *bias, int threads) {
    const GatedConv g{x_rows, out, out_strides, x_step, batch, rows, rows_in, first, width, hidden, weight, bias};
    if (Isa::gate(g, bfloat16 != 0, threads)) return 0;
    if (bfloat16)
        parallel_for(batch * rows, threads, [&g](int64_t begin, int64_t end) { gated_rows<uint16_t>(g, begin, end); });
    else
        parallel_for(batch * rows, threads, [&g](int64_t begin, int64_t end) { gated_rows<float>(g, begin, end); });
    return 0;
}

// The head dimensions with a compiled variant, for the caller to pad to.
int na2d_dims(int64_t *dims, int capacity) {
    const int64_t supported[] = {16, 32, 48, 64, 96, 128, 192, 256, 384};
    const int count = sizeof(supported) / sizeof(supported[0]);
    for (int i = 0; i < count && i < capacity; i++) dims[i] = supported[i];
    return count;
}

// 0 on success; 1 for a head dimension or kernel size without a compiled variant.
int na2d_forward(int bfloat16, const void *q, const void *k, const void *v, void *out, const int64_t *q_strides,
                 const int64_t *k_strides, const int64_t *v_strides, const int64_t *out_strides, int64_t batch,
                 int64_t heads, int64_t height, int64_t width, int64_t dim, int64_t kernel, const int64_t *key_rows,
                 const int64_t *key_cols, const int64_t *bias_rows, const int64_t *bias_cols,
                 const int64_t *row_order, const int64_t *col_order, const float *rpb, float scale, int threads) {
    if (kernel > kMaxKernel) return 1;
    const Problem p{q, k, v, out, q_strides, k_strides, v_strides, out_strides, batch, heads, height, width, dim,
                    kernel, key_rows, key_cols, bias_rows, bias_cols, row_order, col_order, rpb, scale};
    return bfloat16 ? dispatch<Isa, uint16_t>(p, threads) : dispatch<Isa, float>(p, threads);
}

}
#pragma GCC visibility pop
