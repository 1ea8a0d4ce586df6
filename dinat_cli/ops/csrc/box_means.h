// TLC's local channel means from an integral image, in one pass over the map, and the
// global channel sums of the channel modulation.
#pragma once

#include "parallel.h"
#include "simd.h"
#include <vector>

namespace dinat {

struct BoxMeans {
    const void *x;  // (B, H, W, C) memory with unit channel stride
    float *out;     // (B, H - box_h + 1, W - box_w + 1, C), contiguous
    const int64_t *x_strides;  // batch, row, column (elements)
    int64_t batch, channels, height, width, box_h, box_w;
};

// Per-channel sums of rows [begin, end) of one image, added to `sums` in double.
template <typename T>
void channel_sums(const T *image, const int64_t *x_strides, int64_t begin, int64_t end, int64_t width,
                  int64_t channels, double *sums) {
    const int64_t c_vec = channels / 16 * 16;
    std::vector<f64x16> vector_sums(c_vec / 16, f64x16{});
    for (int64_t row = begin; row < end; row++)
        for (int64_t col = 0; col < width; col++) {
            const T *pixel = image + row * x_strides[1] + col * x_strides[2];
            for (int64_t c = 0; c < c_vec; c += 16) vector_sums[c / 16] += Wide<f32x16>::widen(load(pixel + c));
            for (int64_t c = c_vec; c < channels; c++) sums[c] += load1(pixel + c);
        }
    alignas(64) double lanes[16];
    for (int64_t c = 0; c < c_vec; c += 16) {
        store(lanes, vector_sums[c / 16]);
        for (int64_t lane = 0; lane < 16; lane++) sums[c + lane] += lanes[lane];
    }
}

// Box means for channels [c, c + lanes of V) of one image. The integral image is built
// as torch's CPU cumsum over W then H builds it (running sums in double, stored in
// float), combined as I[k:, k:] + I[:-k, :-k] - I[:-k, k:] - I[k:, :-k] in that order and
// divided by the area: the result equals the PyTorch expression's bit for bit, whose
// rounding the checkpoints were evaluated with. Only integral rows a box starts on are
// kept (a ring of box_h + 1 rows at most).
template <typename V, typename T>
void box_means_channels(const BoxMeans &m, const T *image, float *out, int64_t c, V *rows,
                        typename Wide<V>::type *column_sums) {
    typedef Wide<V> W;
    typedef typename W::type D;
    const int64_t out_h = m.height - m.box_h + 1, out_w = m.width - m.box_w + 1, span = m.width + 1;
    const int64_t ring = out_h < m.box_h + 1 ? out_h : m.box_h + 1;
    const float area = float(m.box_h * m.box_w);
    V *current = rows + ring * span;
    for (int64_t x = 0; x < span; x++) column_sums[x] = D{};
    for (int64_t x = 0; x < span; x++) rows[x] = V{};  // integral row 0: zeros
    for (int64_t t = 1; t <= m.height; t++) {
        const T *row = image + (t - 1) * m.x_strides[1];
        D running{};
        current[0] = V{};
        for (int64_t x = 1; x < span; x++) {
            running += W::widen(load_as<V>(row + (x - 1) * m.x_strides[2] + c));
            column_sums[x] += W::widen(W::narrow(running));
            current[x] = W::narrow(column_sums[x]);
        }
        if (t < out_h)
            for (int64_t x = 0; x < span; x++) rows[(t % ring) * span + x] = current[x];
        if (t >= m.box_h) {
            const int64_t o = t - m.box_h;
            const V *top = rows + (o % ring) * span;
            float *out_row = out + o * out_w * m.channels;
            for (int64_t x = 0; x < out_w; x++) {
                const V sum = current[x + m.box_w] + top[x] - top[x + m.box_w] - current[x];
                store(out_row + x * m.channels + c, sum / area);
            }
        }
    }
}

template <typename T>
void box_means_range(const BoxMeans &m, int64_t begin, int64_t end) {
    // Work items: (image, group of 16 channels); the last group overlaps the one before.
    const int64_t groups = m.channels < 16 ? m.channels : (m.channels + 15) / 16;
    const int64_t out_h = m.height - m.box_h + 1, span = m.width + 1;
    const int64_t ring = out_h < m.box_h + 1 ? out_h : m.box_h + 1;
    const bool scalar = m.channels < 16;
    std::vector<f32x16> vectors(scalar ? 0 : (ring + 1) * span);
    std::vector<f64x16> vector_sums(scalar ? 0 : span);
    std::vector<float> scalars(scalar ? (ring + 1) * span : 0);
    std::vector<double> scalar_sums(scalar ? span : 0);
    for (int64_t item = begin; item < end; item++) {
        const int64_t b = item / groups, group = item % groups;
        const T *image = static_cast<const T *>(m.x) + b * m.x_strides[0];
        float *out = m.out + b * out_h * (m.width - m.box_w + 1) * m.channels;
        if (scalar) {
            box_means_channels<float>(m, image, out, group, scalars.data(), scalar_sums.data());
        } else {
            const int64_t c = group * 16 + 16 <= m.channels ? group * 16 : m.channels - 16;
            box_means_channels<f32x16>(m, image, out, c, vectors.data(), vector_sums.data());
        }
    }
}

}  // namespace dinat
