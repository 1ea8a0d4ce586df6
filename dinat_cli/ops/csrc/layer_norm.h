// Layer norm over the channels of each pixel of a channels-last map.
#pragma once

#include "parallel.h"
#include "simd.h"

namespace dinat {

struct LayerNormProblem {
    const void *x;  // (B, H, W, C) with unit channel stride
    void *out;      // (B, H, W, C), contiguous
    const int64_t *x_strides;  // batch, row, column (elements)
    int64_t height, width, channels;
    const float *weight, *bias;  // (C); bias null: Restormer's bias-free norm, which scales without centring
    float eps;
};

// Per pixel: the mean, then the variance of the centred values (two passes over channels
// in L1, as exact as float32 allows), then the affine map. Sixteen pixels at a time, their
// sums reduced together by one transposing tree: per pixel, the chain of reductions,
// square root and division is the time (2x) otherwise.
template <typename T>
inline void layer_norm_pixels(const LayerNormProblem &n, const T *x, T *out, int64_t count) {
    const int64_t step = n.x_strides[2], c_vec = n.channels / 16 * 16;
    alignas(64) float mean[16], inverse[16];
    if (count == 16 && c_vec == n.channels) {
        // A pixel's sum lands in lane kSumLane[p % 8], plus one for the second eight.
        auto lane = [](int p) { return p < 8 ? kSumLane[p] : kSumLane[p - 8] + 1; };
        f32x16 partial[16];
        for (int p = 0; p < 16; p++) {
            partial[p] = f32x16{};
            for (int64_t c = 0; c < n.channels; c += 16) partial[p] += load(x + p * step + c);
        }
        alignas(64) float sums[16];
        store(sums, pair_sums(partial8(partial), partial8(partial + 8)) / float(n.channels));
        for (int p = 0; p < 16; p++) {
            mean[p] = sums[lane(p)];
            partial[p] = f32x16{};
            for (int64_t c = 0; c < n.channels; c += 16) {
                const f32x16 d = load(x + p * step + c) - mean[p];
                partial[p] += d * d;
            }
        }
        store(sums, pair_sums(partial8(partial), partial8(partial + 8)) / float(n.channels) + n.eps);
        for (int p = 0; p < 16; p++) inverse[p] = 1.0f / std::sqrt(sums[lane(p)]);
    } else {
        for (int64_t p = 0; p < count; p++) {
            float sum = 0.0f, square = 0.0f;
            for (int64_t c = 0; c < n.channels; c++) sum += load1(x + p * step + c);
            mean[p] = sum / float(n.channels);
            for (int64_t c = 0; c < n.channels; c++) {
                const float d = load1(x + p * step + c) - mean[p];
                square += d * d;
            }
            inverse[p] = 1.0f / std::sqrt(square / float(n.channels) + n.eps);
        }
    }
    for (int64_t p = 0; p < count; p++) {
        const float shift = n.bias ? mean[p] : 0.0f;  // the bias-free norm does not centre
        const T *in = x + p * step;
        T *o = out + p * n.channels;
        for (int64_t c = 0; c < c_vec; c += 16) {
            const f32x16 scaled = (load(in + c) - shift) * inverse[p] * load(n.weight + c);
            store(o + c, n.bias ? scaled + load(n.bias + c) : scaled);
        }
        for (int64_t c = c_vec; c < n.channels; c++) {
            const float scaled = (load1(in + c) - shift) * inverse[p] * n.weight[c];
            store(o + c, n.bias ? scaled + n.bias[c] : scaled);
        }
    }
}

template <typename T>
void layer_norm_rows(const LayerNormProblem &n, int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; index++) {
        const int64_t b = index / n.height, row = index % n.height;
        const T *x = static_cast<const T *>(n.x) + b * n.x_strides[0] + row * n.x_strides[1];
        T *out = static_cast<T *>(n.out) + index * n.width * n.channels;
        for (int64_t col = 0; col < n.width; col += 16)
            layer_norm_pixels(n, x + col * n.x_strides[2], out + col * n.channels, std::min<int64_t>(16, n.width - col));
    }
}

}  // namespace dinat
