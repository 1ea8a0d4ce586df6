// The gate in bfloat16 with AVX512-BF16: taps as sums of products of bfloat16 pairs.
#pragma once

#include "gate.h"
#include "simd_bf16.h"
#include <vector>

namespace dinat {

// bfloat16 with AVX512-BF16: the 3x3 taps as sums of products of bfloat16 pairs
// (vdpbf16ps: 32 products per instruction, against 16 per widened float FMA). A column of
// three input pixels makes two pairs per channel, rows 0 and 1, and row 2 with a zero;
// each pair vector is built once per column and used by the three output pixels that
// read it. Sums are in the interleaved order (see kPairChannelOrder).
inline int64_t pair_lane_channel(int64_t lane, int part) { return lane / 4 * 8 + part * 4 + lane % 4; }

struct PackedGate {
    std::vector<uint16_t> weights;  // [half][group][column][rows 0+1 | row 2][low | high]: 32 values
    std::vector<float> bias;        // [half][group][low | high]: 16 values, in lane order
    int64_t groups;
    const uint16_t *tap(int half, int64_t group, int column, int kind, int part) const {
        return weights.data() + ((((half * groups + group) * 3 + column) * 2 + kind) * 2 + part) * 32;
    }
};

inline PackedGate pack_gate(const GatedConv &g) {
    const int64_t groups = g.hidden / 32;
    PackedGate packed{std::vector<uint16_t>(2 * groups * 12 * 32), std::vector<float>(2 * groups * 32), groups};
    for (int half = 0; half < 2; half++)
        for (int64_t group = 0; group < groups; group++)
            for (int part = 0; part < 2; part++)
                for (int64_t lane = 0; lane < 16; lane++) {
                    const int64_t c = half * g.hidden + group * 32 + pair_lane_channel(lane, part);
                    packed.bias[((half * groups + group) * 2 + part) * 16 + lane] = g.bias ? g.bias[c] : 0.0f;
                    for (int column = 0; column < 3; column++) {
                        uint16_t *upper = const_cast<uint16_t *>(packed.tap(half, group, column, 0, part)) + 2 * lane;
                        uint16_t *lower = const_cast<uint16_t *>(packed.tap(half, group, column, 1, part)) + 2 * lane;
                        store(upper, g.weight[column * 2 * g.hidden + c]);
                        store(upper + 1, g.weight[(3 + column) * 2 * g.hidden + c]);
                        store(lower, g.weight[(6 + column) * 2 * g.hidden + c]);
                        lower[1] = 0;
                    }
                }
    return packed;
}

// One input column's pairs for 32 channels: rows 0+1 and row 2+zero, low and high lanes.
struct PairColumn {
    __m512i pairs[2][2];  // [rows 0+1 | row 2][low | high]
};

inline PairColumn pair_column(const uint16_t *const rows[3], int64_t offset) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i x[3];
    for (int i = 0; i < 3; i++) x[i] = rows[i] ? _mm512_loadu_si512(rows[i] + offset) : zero;
    PairColumn column;
    column.pairs[0][0] = _mm512_unpacklo_epi16(x[0], x[1]);
    column.pairs[0][1] = _mm512_unpackhi_epi16(x[0], x[1]);
    column.pairs[1][0] = _mm512_unpacklo_epi16(x[2], zero);
    column.pairs[1][1] = _mm512_unpackhi_epi16(x[2], zero);
    return column;
}

// The depth-wise sums of one half (gates or values) of a group of 32 channels, for output
// columns [begin, end) of one row: two vectors per column (low and high lanes). One half
// at a time, its twelve weight vectors and three columns of pairs stay in registers.
inline void gated_half_bf16(const GatedConv &g, const PackedGate &packed, const uint16_t *const rows[3], int half,
                     int64_t group, int64_t begin, int64_t end, __m512 *sums) {
    const int64_t step = g.x_step, offset = half * g.hidden + group * 32;
    const uint16_t *none[3] = {nullptr, nullptr, nullptr};
    const auto column = [&](int64_t col) {
        return col >= 0 && col < g.width ? pair_column(rows, col * step + offset) : pair_column(none, 0);
    };
    __m512bh taps[3][2][2];
    for (int j = 0; j < 3; j++)
        for (int kind = 0; kind < 2; kind++)
            for (int part = 0; part < 2; part++)
                taps[j][kind][part] = (__m512bh)_mm512_loadu_si512(packed.tap(half, group, j, kind, part));
    const float *bias = packed.bias.data() + (half * packed.groups + group) * 32;
    const __m512 bias_low = _mm512_loadu_ps(bias), bias_high = _mm512_loadu_ps(bias + 16);
    PairColumn window[3] = {column(begin - 1), column(begin), {}};
    for (int64_t col = begin; col < end; col++) {
        window[2] = column(col + 1);
        __m512 low = bias_low, high = bias_high;
        for (int j = 0; j < 3; j++)
            for (int kind = 0; kind < 2; kind++) {
                low = _mm512_dpbf16_ps(low, (__m512bh)window[j].pairs[kind][0], taps[j][kind][0]);
                high = _mm512_dpbf16_ps(high, (__m512bh)window[j].pairs[kind][1], taps[j][kind][1]);
            }
        sums[2 * (col - begin)] = low;
        sums[2 * (col - begin) + 1] = high;
        window[0] = window[1];
        window[1] = window[2];
    }
}

// Output columns [begin, end) (at most a tile) of one row, for one group of 32 channels.
inline void gated_group_bf16(const GatedConv &g, const PackedGate &packed, const uint16_t *const rows[3], uint16_t *out_row,
                      int64_t group, int64_t begin, int64_t end) {
    __m512 gates[2 * kGatedTile], values[2 * kGatedTile];
    gated_half_bf16(g, packed, rows, 0, group, begin, end, gates);
    gated_half_bf16(g, packed, rows, 1, group, begin, end, values);
    for (int64_t col = begin; col < end; col++) {
        const int64_t i = 2 * (col - begin);
        const f32x16 low = gelu((f32x16)gates[i]) * (f32x16)values[i];
        const f32x16 high = gelu((f32x16)gates[i + 1]) * (f32x16)values[i + 1];
        store_pair_sums(out_row + col * g.out_strides[2] + group * 32, (__m512)low, (__m512)high);
    }
}

inline void gated_rows_bf16(const GatedConv &g, const PackedGate &packed, int64_t begin, int64_t end) {
    uint16_t *out = static_cast<uint16_t *>(g.out);
    for (int64_t tile = 0; tile < g.width; tile += kGatedTile) {
        const int64_t tile_end = tile + kGatedTile < g.width ? tile + kGatedTile : g.width;
        for (int64_t index = begin; index < end; index++) {
            const int64_t b = index / g.rows, row = index % g.rows + g.first;
            const uint16_t *rows[3];
            for (int i = 0; i < 3; i++) {
                const int64_t r = row + i - 1;
                rows[i] = (r < 0 || r >= g.rows_in) ? nullptr : g.row<uint16_t>(b, r);
            }
            uint16_t *out_row = out + b * g.out_strides[0] + (index % g.rows) * g.out_strides[1];
            for (int64_t group = 0; group < packed.groups; group++)
                gated_group_bf16(g, packed, rows, out_row, group, tile, tile_end);
        }
    }
}

}  // namespace dinat
