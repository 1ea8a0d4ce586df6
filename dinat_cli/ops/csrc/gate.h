// The feed-forward network's gate: its 3x3 depth-wise convolution, GELU and product in one
// pass over the hidden map, instead of four.
#pragma once

#include "parallel.h"
#include "simd.h"

namespace dinat {

struct GatedConv {
    // Where each input row (B * rows_in) starts: W pixels of 2 * hidden channels (gates,
    // then values) with unit channel stride, `x_step` elements apart. A table, because a
    // band's rows may lie in more than one tensor (halo rows kept from the band before).
    const void *const *x_rows;
    void *out;  // (B, rows, W, hidden) with unit channel stride
    const int64_t *out_strides;  // batch, row, column (elements)
    int64_t x_step, batch, rows, rows_in, first, width, hidden;
    const float *weight;  // (9, 2 * hidden): tap-major, so a tap's channels are contiguous
    const float *bias;    // (2 * hidden) or null
    template <typename T>
    const T *row(int64_t b, int64_t r) const {
        return static_cast<const T *>(x_rows[b * rows_in + r]);
    }
};

// The 3x3 taps of one output pixel that fall inside the image: for each, where its input
// pixel and its weights start (add the channel to both).
template <typename T>
struct Taps {
    const T *pixels[9];
    const float *weights[9];
    int count = 0;
};

template <typename T>
inline Taps<T> taps_at(const GatedConv &g, int64_t b, int64_t row, int64_t col) {
    Taps<T> taps;
    for (int64_t i = 0; i < 3; i++) {
        const int64_t r = row + i - 1;
        if (r < 0 || r >= g.rows_in) continue;  // zero padding at the image's top and bottom
        for (int64_t j = 0; j < 3; j++) {
            const int64_t col_j = col + j - 1;
            if (col_j < 0 || col_j >= g.width) continue;
            taps.pixels[taps.count] = g.row<T>(b, r) + col_j * g.x_step;
            taps.weights[taps.count++] = g.weight + (i * 3 + j) * 2 * g.hidden;
        }
    }
    return taps;
}

// gelu(conv(gates)) * conv(values) for channels [c, c + lanes of V), over the first N
// taps (all nine inside the image: a fixed count the compiler unrolls) or `taps.count`.
template <int N, typename V, typename T>
inline V gated_channels(const GatedConv &g, const Taps<T> &taps, int64_t c) {
    V gate = g.bias ? load_as<V>(g.bias + c) : V{};
    V value = g.bias ? load_as<V>(g.bias + g.hidden + c) : V{};
    const int count = N ? N : taps.count;
    for (int t = 0; t < count; t++) {
        gate += load_as<V>(taps.weights[t] + c) * load_as<V>(taps.pixels[t] + c);
        value += load_as<V>(taps.weights[t] + g.hidden + c) * load_as<V>(taps.pixels[t] + g.hidden + c);
    }
    return gelu(gate) * value;
}

template <int N, typename T>
inline void gated_pixel(const GatedConv &g, const Taps<T> &taps, T *out) {
    if (g.hidden < 16) {
        for (int64_t c = 0; c < g.hidden; c++) store(out + c, gated_channels<N, float>(g, taps, c));
        return;
    }
    // The last vector ends at the last channel, overlapping the one before: the
    // channels they share are computed twice, identically.
    for (int64_t c = 0; c < g.hidden; c += 16) {
        const int64_t first = c + 16 <= g.hidden ? c : g.hidden - 16;
        store(out + first, gated_channels<N, f32x16>(g, taps, first));
    }
}

// Two neighbouring pixels with all nine taps inside the image (`taps` are the left one's):
// the six input pixels they share are loaded once, and each tap's weights once for both.
template <typename T>
inline void gated_pair(const GatedConv &g, const Taps<T> &taps, T *out) {
    const int64_t step = g.x_step;
    for (int64_t c = 0; c < g.hidden; c += 16) {
        const int64_t first = c + 16 <= g.hidden ? c : g.hidden - 16;
        f32x16 gate[2], value[2];
        gate[0] = gate[1] = g.bias ? load(g.bias + first) : f32x16{};
        value[0] = value[1] = g.bias ? load(g.bias + g.hidden + first) : f32x16{};
        for (int i = 0; i < 3; i++) {
            const T *line = taps.pixels[i * 3] + first;
            f32x16 gates[4], values[4];
            for (int m = 0; m < 4; m++) {
                gates[m] = load(line + m * step);
                values[m] = load(line + m * step + g.hidden);
            }
            for (int j = 0; j < 3; j++) {
                const f32x16 gate_tap = load(taps.weights[i * 3 + j] + first);
                const f32x16 value_tap = load(taps.weights[i * 3 + j] + g.hidden + first);
                for (int side = 0; side < 2; side++) {
                    gate[side] += gate_tap * gates[j + side];
                    value[side] += value_tap * values[j + side];
                }
            }
        }
        store(out + first, gelu(gate[0]) * value[0]);
        store(out + g.out_strides[2] + first, gelu(gate[1]) * value[1]);
    }
}

// Columns per tile: a tile's three input rows (up to 64 pixels of 2C channels each) stay
// in L2 while the thread walks down its rows, so each input row is read from memory once.
constexpr int64_t kGatedTile = 64;

template <typename T>
void gated_rows(const GatedConv &g, int64_t begin, int64_t end) {
    T *out = static_cast<T *>(g.out);
    for (int64_t tile = 0; tile < g.width; tile += kGatedTile) {
        const int64_t tile_end = tile + kGatedTile < g.width ? tile + kGatedTile : g.width;
        for (int64_t index = begin; index < end; index++) {
            const int64_t b = index / g.rows, row = index % g.rows;
            T *out_row = out + b * g.out_strides[0] + row * g.out_strides[1];
            for (int64_t col = tile; col < tile_end; col++) {
                const Taps<T> taps = taps_at<T>(g, b, row + g.first, col);
                T *pixel = out_row + col * g.out_strides[2];
                if (taps.count == 9 && g.hidden >= 16 && col + 1 < tile_end && col + 2 < g.width) {
                    gated_pair(g, taps, pixel);
                    col++;
                } else if (taps.count == 9) {
                    gated_pixel<9>(g, taps, pixel);
                } else {
                    gated_pixel<0>(g, taps, pixel);
                }
            }
        }
    }
}

}  // namespace dinat
