// The SIMD layer under the AVX512-BF16 kernels: bfloat16 chunks of 32 channels, sums of
// products of pairs stored back in channel order, a 16x16 transpose.
#pragma once

#include "simd.h"
#include <immintrin.h>

namespace dinat {

#if !defined(__AVX512BF16__)
#error "compile with AVX512-BF16 enabled (-mavx512bf16)"
#endif

// D = 16 * CH bfloat16 channels as vectors of 32; with CH odd the last one holds 16.
template <int CH>
struct Chunks {
    static constexpr int kCount = (CH + 1) / 2;
    static constexpr __mmask32 mask(int x) { return x == kCount - 1 && CH % 2 ? 0x0000ffffu : 0xffffffffu; }
    static __m512i load(const uint16_t *p, int x) {
        return mask(x) == 0xffffffffu ? _mm512_loadu_si512(p + 32 * x) : _mm512_maskz_loadu_epi16(mask(x), p + 32 * x);
    }
};

// vpunpck{l,h}wd interleave two vectors of 32 bfloat16 within 128-bit lanes, so sums of
// products of interleaved pairs hold channels 0-3 of each eight in the "low" vector and
// 4-7 in the "high" one. Packed side by side as bfloat16 (low, then high), this
// permutation puts them back in channel order.
alignas(64) constexpr uint16_t kPairChannelOrder[32] = {0,  1,  2,  3,  16, 17, 18, 19, 4,  5,  6,  7,  20, 21, 22, 23,
                                                        8,  9,  10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};

// Sums of products of interleaved pairs (low and high vectors) stored as 32 bfloat16 in
// channel order, the lanes outside `mask` left alone.
inline void store_pair_sums(uint16_t *out, __m512 low, __m512 high, __mmask32 mask = 0xffffffffu) {
    const __m512i order = _mm512_load_si512(kPairChannelOrder);
    _mm512_mask_storeu_epi16(out, mask, _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(high, low)));
}


// r[i] lane j -> r[j] lane i, for 32-bit elements.
inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 16; i += 8)
        for (int k = 0; k < 4; k++) {
            t[i + k] = _mm512_shuffle_i32x4(r[i + k], r[i + 4 + k], 0x88);
            t[i + 4 + k] = _mm512_shuffle_i32x4(r[i + k], r[i + 4 + k], 0xdd);
        }
    for (int k = 0; k < 8; k++) {
        r[k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0x88);
        r[8 + k] = _mm512_shuffle_i32x4(t[k], t[8 + k], 0xdd);
    }
}

}  // namespace dinat
