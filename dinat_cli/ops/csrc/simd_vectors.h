// Vectors of 16 lanes as GCC/Clang vector extensions: one register with AVX-512, four on
// SSE2, one a lane or a register at a time elsewhere. The operations simd.h builds on.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace dinat {

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef double f64x16 __attribute__((vector_size(128)));
typedef float f32x16u __attribute__((vector_size(64), aligned(4)));
typedef uint32_t u32x16u __attribute__((vector_size(64), aligned(2)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint16_t u16x16u __attribute__((vector_size(32), aligned(2)));

inline f32x16 load(const float *p) { return *(const f32x16u *)p; }
inline void store(float *p, f32x16 x) { *(f32x16u *)p = x; }
// 16 bfloat16 values widened to their float bits; 32 as 16 pairs; the low halves of 16 lanes.
inline u32x16 load_bits16(const uint16_t *p) { return __builtin_convertvector(*(const u16x16u *)p, u32x16); }
inline u32x16 load_pairs_bits(const uint16_t *p) { return *(const u32x16u *)p; }
inline void store_bits16(uint16_t *p, u32x16 bits) { *(u16x16u *)p = __builtin_convertvector(bits, u16x16); }
inline void store_pairs_bits(uint16_t *p, u32x16 bits) { *(u32x16u *)p = bits; }
inline i32x16 truncate(f32x16 x) { return __builtin_convertvector(x, i32x16); }
inline f64x16 widen(f32x16 x) { return __builtin_convertvector(x, f64x16); }
inline f32x16 narrow(f64x16 x) { return __builtin_convertvector(x, f32x16); }
inline void store(double *p, f64x16 x) { __builtin_memcpy(p, &x, sizeof x); }

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
inline i32x16 greater_than(i32x16 x, int32_t limit) { return x > limit; }
#else
// GCC compares vectors wider than the registers (SSE2: 4 floats) lane by lane, with scalar
// code, and builds splats through the stack: these go a register at a time. MAXPS and
// MINPS return their second operand where either is NaN, as `a > b ? a : b` does.
constexpr int kPieces = 4;
union PiecesPs {
    f32x16 vector;
    __m128 piece[kPieces];
};
union PiecesInt {
    i32x16 vector;
    __m128i piece[kPieces];
};
inline f32x16 splat(float x) {
    PiecesPs out;
    for (int i = 0; i < kPieces; i++) out.piece[i] = _mm_set1_ps(x);
    return out.vector;
}
inline f32x16 vmax(f32x16 a, f32x16 b) {
    PiecesPs x{a}, y{b}, out;
    for (int i = 0; i < kPieces; i++) out.piece[i] = _mm_max_ps(x.piece[i], y.piece[i]);
    return out.vector;
}
inline f32x16 vmin(f32x16 a, f32x16 b) {
    PiecesPs x{a}, y{b}, out;
    for (int i = 0; i < kPieces; i++) out.piece[i] = _mm_min_ps(x.piece[i], y.piece[i]);
    return out.vector;
}
inline i32x16 greater_than(i32x16 x, int32_t limit) {
    PiecesInt in{x}, out;
    for (int i = 0; i < kPieces; i++) out.piece[i] = _mm_cmpgt_epi32(in.piece[i], _mm_set1_epi32(limit));
    return out.vector;
}
#endif

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
template <typename Combine>
inline f32x16 all_lanes(f32x16 v, Combine combine) {
    v = combine(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    v = combine(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
    v = combine(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
    return combine(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
}

}  // namespace dinat
