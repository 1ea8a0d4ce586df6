// The SIMD layer of every kernel: vectors of 16 float lanes, held as the compile unit's
// instruction set suits (simd_vectors.h, simd_halves.h); float32 and bfloat16 loads and
// stores, bfloat16 rounding, lane reductions and the float math (exp, erf, GELU) the
// kernels need.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

// How a vector of 16 lanes is held: as GCC/Clang vector extensions (simd_vectors.h), or
// where registers hold 8 floats (AVX2) as two of them (simd_halves.h).
#if defined(__AVX2__) && !defined(__AVX512F__)
#include "simd_halves.h"
#else
#include "simd_vectors.h"
#endif

namespace dinat {

inline float vmax(float a, float b) { return a > b ? a : b; }
inline float vmin(float a, float b) { return a < b ? a : b; }
inline float load1(const float *p) { return *p; }
inline float load1(const uint16_t *p) {
    uint32_t bits = uint32_t(*p) << 16;
    float x;
    __builtin_memcpy(&x, &bits, 4);
    return x;
}
inline void store(float *p, float x) { *p = x; }
inline void store(uint16_t *p, float x) {
    uint32_t u;
    __builtin_memcpy(&u, &x, 4);
    *p = (u & 0x7fffffffu) > 0x7f800000u ? uint16_t((u >> 16) | 0x40u) : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline f32x16 load(const uint16_t *p) { return (f32x16)(load_bits16(p) << 16); }
// One float or one vector of 16, from float32 or bfloat16 memory.
template <typename V, typename T>
inline V load_as(const T *p) {
    if constexpr (sizeof(V) == sizeof(float)) return load1(p);
    else return load(p);
}
// bfloat16 bits (in the low half of each lane), rounded to nearest even as torch converts
// float32 to bfloat16; NaN stays NaN.
inline u32x16 bfloat16_bits(f32x16 x) {
    u32x16 u = (u32x16)x;
    u32x16 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    u32x16 is_nan = (u32x16)greater_than((i32x16)(u & 0x7fffffffu), 0x7f800000);
    return (((u >> 16) | 0x40u) & is_nan) | (rounded & ~is_nan);
}
inline void store(uint16_t *p, f32x16 x) { store_bits16(p, bfloat16_bits(x)); }
// 32 bfloat16 values as floats: the even-indexed ones and the odd-indexed ones (a shift
// and a mask, rather than widening 16 at a time), and back.
inline void load_pairs(const uint16_t *p, f32x16 &even, f32x16 &odd) {
    const u32x16 bits = load_pairs_bits(p);
    even = (f32x16)(bits << 16);
    odd = (f32x16)(bits & 0xffff0000u);
}
inline void store_pairs(uint16_t *p, f32x16 even, f32x16 odd) {
    store_pairs_bits(p, bfloat16_bits(even) | (bfloat16_bits(odd) << 16));
}

// Two groups of eight vectors reduced to their sixteen sums in one vector: a transposing
// tree of adds instead of sixteen horizontal reductions. partial8 leaves each sum in two
// neighbouring lanes (vector u's in lanes kSumLane[u] and kSumLane[u] + 1); pair_sums adds
// the halves, putting group a's sums in the even lanes and group b's in the odd ones.
// (Both are defined with the vectors' representation.)
constexpr int kSumLane[8] = {0, 8, 4, 12, 2, 10, 6, 14};

// exp for x <= 0 (softmax after subtracting the maximum): Cephes' expf polynomial.
inline f32x16 exp_nonpositive(f32x16 x) {
    x = vmax(x, splat(-87.0f));
    const f32x16 magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    f32x16 n = (x * 1.44269504088896341f + magic) - magic;
    f32x16 r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    f32x16 p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    i32x16 bits = (truncate(n) + 127) << 23;
    return p * (f32x16)bits;
}

// erf as a rational function on [-4, 4] (beyond, erf is +-1 in float32); abs error 4e-7.
// The coefficients are Eigen's generic_fast_erf_float (also XLA's).
template <typename V>
inline V erf(V x) {
    x = vmin(vmax(x, V{} - 4.0f), V{} + 4.0f);
    const V x2 = x * x;
    V p = V{} - 2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 - 2.10102402082508e-06f;
    p = p * x2 - 5.69250639462346e-05f;
    p = p * x2 - 7.34990630326855e-04f;
    p = p * x2 - 2.95459980854025e-03f;
    p = p * x2 - 1.60960333262415e-02f;
    V q = V{} - 1.45660718464996e-05f;
    q = q * x2 - 2.13374055278905e-04f;
    q = q * x2 - 1.68282697438203e-03f;
    q = q * x2 - 7.37332916720468e-03f;
    q = q * x2 - 1.42647390514189e-02f;
    return x * p / q;
}

// The exact (erf) GELU, as torch.nn.functional.gelu computes it by default.
template <typename V>
inline V gelu(V x) {
    return 0.5f * x * (1.0f + erf(x * 0.70710678118654752f));
}

// Every lane: the maximum, or the sum, of the 16 lanes (all_lanes: a tree of four steps,
// not fifteen, defined with the vectors' representation).
inline f32x16 all_max(f32x16 v) {
    return all_lanes(v, [](f32x16 a, f32x16 b) { return vmax(a, b); });
}
inline f32x16 all_sum(f32x16 v) {
    return all_lanes(v, [](f32x16 a, f32x16 b) { return a + b; });
}

// The double-precision counterpart of a float type: torch's CPU cumsum accumulates in double.
template <typename V>
struct Wide;
template <>
struct Wide<float> {
    typedef double type;
    static double widen(float x) { return x; }
    static float narrow(double x) { return float(x); }
};
template <>
struct Wide<f32x16> {
    typedef f64x16 type;
    static f64x16 widen(f32x16 x) { return dinat::widen(x); }
    static f32x16 narrow(f64x16 x) { return dinat::narrow(x); }
};

}  // namespace dinat
