// The SIMD layer of every kernel: vectors of 16 float lanes (GCC/Clang vector extensions),
// lowered to whatever the compile unit's flags allow (SSE2, AVX2, AVX-512); float32 and
// bfloat16 loads and stores, bfloat16 rounding, lane reductions and the float math
// (exp, erf, GELU) the kernels need.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace dinat {

typedef float f32x16 __attribute__((vector_size(64)));
typedef float f32x16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint16_t u16x16u __attribute__((vector_size(32), aligned(2)));
typedef uint32_t u32x16u __attribute__((vector_size(64), aligned(2)));


#if defined(__AVX512F__) || !(defined(__x86_64__) || defined(__i386__))
inline f32x16 splat(float x) { return f32x16{} + x; }
inline f32x16 vmax(f32x16 a, f32x16 b) {
    i32x16 greater = a > b;
    return (f32x16)(((i32x16)a & greater) | ((i32x16)b & ~greater));
}
inline f32x16 vmin(f32x16 a, f32x16 b) {
    i32x16 less = a < b;
    return (f32x16)(((i32x16)a & less) | ((i32x16)b & ~less));
}
// Lanes whose value, as a signed integer, is above `limit`: all ones, else zeros.
inline i32x16 greater_than(i32x16 x, int32_t limit) { return x > limit; }
#else
// GCC compares vectors wider than the registers (AVX2: 8 floats, SSE2: 4) lane by lane,
// with scalar code: these are computed one register-wide piece at a time. MAXPS and
// MINPS return their second operand where either is NaN, as `a > b ? a : b` does.
#if defined(__AVX2__)
typedef __m256 PiecePs;
typedef __m256i PieceInt;
inline PiecePs piece_max(PiecePs a, PiecePs b) { return _mm256_max_ps(a, b); }
inline PiecePs piece_min(PiecePs a, PiecePs b) { return _mm256_min_ps(a, b); }
inline PieceInt piece_greater(PieceInt a, PieceInt b) { return _mm256_cmpgt_epi32(a, b); }
inline PieceInt piece_splat(int32_t x) { return _mm256_set1_epi32(x); }
inline PiecePs piece_splat(float x) { return _mm256_set1_ps(x); }
#else
typedef __m128 PiecePs;
typedef __m128i PieceInt;
inline PiecePs piece_max(PiecePs a, PiecePs b) { return _mm_max_ps(a, b); }
inline PiecePs piece_min(PiecePs a, PiecePs b) { return _mm_min_ps(a, b); }
inline PieceInt piece_greater(PieceInt a, PieceInt b) { return _mm_cmpgt_epi32(a, b); }
inline PieceInt piece_splat(int32_t x) { return _mm_set1_epi32(x); }
inline PiecePs piece_splat(float x) { return _mm_set1_ps(x); }
#endif
constexpr int kPieces = sizeof(f32x16) / sizeof(PiecePs);
union PiecesPs {
    f32x16 vector;
    PiecePs piece[kPieces];
};
union PiecesInt {
    i32x16 vector;
    PieceInt piece[kPieces];
};
// `f32x16{} + x` went through 16 scalar stores to the stack and a reload.
inline f32x16 splat(float x) {
    PiecesPs out;
    for (int i = 0; i < kPieces; i++) out.piece[i] = piece_splat(x);
    return out.vector;
}
inline f32x16 vmax(f32x16 a, f32x16 b) {
    PiecesPs x{a}, y{b}, out;
    for (int i = 0; i < kPieces; i++) out.piece[i] = piece_max(x.piece[i], y.piece[i]);
    return out.vector;
}
inline f32x16 vmin(f32x16 a, f32x16 b) {
    PiecesPs x{a}, y{b}, out;
    for (int i = 0; i < kPieces; i++) out.piece[i] = piece_min(x.piece[i], y.piece[i]);
    return out.vector;
}
inline i32x16 greater_than(i32x16 x, int32_t limit) {
    PiecesInt in{x}, out;
    for (int i = 0; i < kPieces; i++) out.piece[i] = piece_greater(in.piece[i], piece_splat(limit));
    return out.vector;
}
#endif
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
inline f32x16 load(const float *p) { return *(const f32x16u *)p; }
inline f32x16 load(const uint16_t *p) { return (f32x16)(__builtin_convertvector(*(const u16x16u *)p, u32x16) << 16); }
// One float or one vector of 16, from float32 or bfloat16 memory.
template <typename V, typename T>
inline V load_as(const T *p) {
    if constexpr (sizeof(V) == sizeof(float)) return load1(p);
    else return load(p);
}
inline void store(float *p, f32x16 x) { *(f32x16u *)p = x; }
// bfloat16 bits (in the low half of each lane), rounded to nearest even as torch converts
// float32 to bfloat16; NaN stays NaN.
inline u32x16 bfloat16_bits(f32x16 x) {
    u32x16 u = (u32x16)x;
    u32x16 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    u32x16 is_nan = (u32x16)greater_than((i32x16)(u & 0x7fffffffu), 0x7f800000);
    return (((u >> 16) | 0x40u) & is_nan) | (rounded & ~is_nan);
}
inline void store(uint16_t *p, f32x16 x) { *(u16x16u *)p = __builtin_convertvector(bfloat16_bits(x), u16x16); }
// 32 bfloat16 values as floats: the even-indexed ones and the odd-indexed ones (a shift
// and a mask, rather than widening 16 at a time), and back.
inline void load_pairs(const uint16_t *p, f32x16 &even, f32x16 &odd) {
    const u32x16 bits = *(const u32x16u *)p;
    even = (f32x16)(bits << 16);
    odd = (f32x16)(bits & 0xffff0000u);
}
inline void store_pairs(uint16_t *p, f32x16 even, f32x16 odd) {
    *(u32x16u *)p = bfloat16_bits(even) | (bfloat16_bits(odd) << 16);
}

// Two groups of eight vectors reduced to their sixteen sums in one vector: a transposing
// tree of adds instead of sixteen horizontal reductions. partial8 leaves each sum in two
// neighbouring lanes (vector u's in lanes kSumLane[u] and kSumLane[u] + 1); pair_sums adds
// the halves, putting group a's sums in the even lanes and group b's in the odd ones.
inline f32x16 partial8(const f32x16 *v) {
    f32x16 t[4];
    for (int i = 0; i < 4; i++)
        t[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
               __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    f32x16 u[2];
    for (int i = 0; i < 2; i++)
        u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
               __builtin_shufflevector(t[2 * i], t[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    return __builtin_shufflevector(u[0], u[1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           __builtin_shufflevector(u[0], u[1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
}
inline f32x16 pair_sums(f32x16 a, f32x16 b) {
    return __builtin_shufflevector(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
           __builtin_shufflevector(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}
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
    i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;
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

// Every lane: the maximum, or the sum, of the 16 lanes (a tree: four steps, not fifteen).
template <typename Combine>
inline f32x16 all_lanes(f32x16 v, Combine combine) {
    v = combine(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    v = combine(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
    v = combine(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
    return combine(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
}
inline f32x16 all_max(f32x16 v) {
    return all_lanes(v, [](f32x16 a, f32x16 b) { return vmax(a, b); });
}
inline f32x16 all_sum(f32x16 v) {
    return all_lanes(v, [](f32x16 a, f32x16 b) { return a + b; });
}

typedef double f64x16 __attribute__((vector_size(128)));

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
    static f64x16 widen(f32x16 x) { return __builtin_convertvector(x, f64x16); }
    static f32x16 narrow(f64x16 x) { return __builtin_convertvector(x, f32x16); }
};

}  // namespace dinat
