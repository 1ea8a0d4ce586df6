// Vectors of 16 lanes as two registers of 8 (AVX2). GCC 12 compiles 16-lane vector
// extensions badly where registers hold 8: it keeps them on the stack, copies them
// through general registers and compares and splats them lane by lane. A pair of 8-lane
// vectors, each op applied to both, compiles to plain register code. The operations
// simd.h builds on, with the same lane order and the same arithmetic as simd_vectors.h.
#pragma once

#include <cstdint>
#include <type_traits>

namespace dinat {

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef double f64x4 __attribute__((vector_size(32)));
typedef float f32x8u __attribute__((vector_size(32), aligned(4)));
typedef uint32_t u32x8u __attribute__((vector_size(32), aligned(2)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint16_t u16x8u __attribute__((vector_size(16), aligned(2)));

// Lanes 0-7 in `lo`, 8-15 in `hi`. Arithmetic, bitwise and shift operators work lane by
// lane, with a vector or a scalar on either side, as on a vector extension; a cast
// reinterprets the bits, as a vector extension's does.
template <typename Half>
struct Pair {
    Half lo, hi;

    template <typename Other>
    explicit operator Pair<Other>() const {
        return {(Other)lo, (Other)hi};
    }
    Pair operator-() const { return {-lo, -hi}; }
    Pair operator~() const { return {~lo, ~hi}; }
#define DINAT_PAIR_OPERATOR(op)                                                          \
    friend Pair operator op(Pair a, Pair b) { return {a.lo op b.lo, a.hi op b.hi}; }   \
    template <typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>>         \
    friend Pair operator op(Pair a, S b) {                                               \
        return {a.lo op b, a.hi op b};                                                   \
    }                                                                                    \
    template <typename S, typename = std::enable_if_t<std::is_arithmetic_v<S>>>         \
    friend Pair operator op(S a, Pair b) {                                               \
        return {a op b.lo, a op b.hi};                                                   \
    }                                                                                    \
    template <typename S>                                                                \
    Pair &operator op##=(S b) {                                                          \
        return *this = *this op b;                                                       \
    }
    DINAT_PAIR_OPERATOR(+)
    DINAT_PAIR_OPERATOR(-)
    DINAT_PAIR_OPERATOR(*)
    DINAT_PAIR_OPERATOR(/)
    DINAT_PAIR_OPERATOR(&)
    DINAT_PAIR_OPERATOR(|)
    DINAT_PAIR_OPERATOR(<<)
    DINAT_PAIR_OPERATOR(>>)
#undef DINAT_PAIR_OPERATOR
};

typedef Pair<f32x8> f32x16;
typedef Pair<i32x8> i32x16;
typedef Pair<u32x8> u32x16;
typedef Pair<Pair<f64x4>> f64x16;

inline f32x16 load(const float *p) { return {*(const f32x8u *)p, *(const f32x8u *)(p + 8)}; }
inline void store(float *p, f32x16 x) {
    *(f32x8u *)p = x.lo;
    *(f32x8u *)(p + 8) = x.hi;
}
// 16 bfloat16 values widened to their float bits; 32 as 16 pairs; the low halves of 16 lanes.
inline u32x16 load_bits16(const uint16_t *p) {
    return {__builtin_convertvector(*(const u16x8u *)p, u32x8), __builtin_convertvector(*(const u16x8u *)(p + 8), u32x8)};
}
inline u32x16 load_pairs_bits(const uint16_t *p) { return {*(const u32x8u *)p, *(const u32x8u *)(p + 16)}; }
inline void store_bits16(uint16_t *p, u32x16 bits) {
    *(u16x8u *)p = __builtin_convertvector(bits.lo, u16x8);
    *(u16x8u *)(p + 8) = __builtin_convertvector(bits.hi, u16x8);
}
inline void store_pairs_bits(uint16_t *p, u32x16 bits) {
    *(u32x8u *)p = bits.lo;
    *(u32x8u *)(p + 16) = bits.hi;
}
inline i32x16 truncate(f32x16 x) { return {__builtin_convertvector(x.lo, i32x8), __builtin_convertvector(x.hi, i32x8)}; }
inline Pair<f64x4> widen(f32x8 x) {
    return {__builtin_convertvector(__builtin_shufflevector(x, x, 0, 1, 2, 3), f64x4),
            __builtin_convertvector(__builtin_shufflevector(x, x, 4, 5, 6, 7), f64x4)};
}
inline f64x16 widen(f32x16 x) { return {widen(x.lo), widen(x.hi)}; }
inline f32x8 narrow(Pair<f64x4> x) {
    const f32x4 lo = __builtin_convertvector(x.lo, f32x4), hi = __builtin_convertvector(x.hi, f32x4);
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}
inline f32x16 narrow(f64x16 x) { return {narrow(x.lo), narrow(x.hi)}; }
inline void store(double *p, f64x16 x) { __builtin_memcpy(p, &x, sizeof x); }

inline f32x16 splat(float x) {
    const f32x8 half = f32x8{} + x;
    return {half, half};
}
inline f32x16 vmax(f32x16 a, f32x16 b) { return {a.lo > b.lo ? a.lo : b.lo, a.hi > b.hi ? a.hi : b.hi}; }
inline f32x16 vmin(f32x16 a, f32x16 b) { return {a.lo < b.lo ? a.lo : b.lo, a.hi < b.hi ? a.hi : b.hi}; }
inline i32x16 greater_than(i32x16 x, int32_t limit) { return {x.lo > limit, x.hi > limit}; }

// The shuffles of simd_vectors.h, half by half. partial8's first step adds each vector's
// halves; the second takes 4-lane groups of two of those; the third, pairs of lanes.
inline f32x16 partial8(const f32x16 *v) {
    f32x8 t[8];
    for (int i = 0; i < 8; i++) t[i] = v[i].lo + v[i].hi;
    f32x8 u[4];  // u[2 * i + h]: half h of the second step's vector i
    for (int i = 0; i < 2; i++)
        for (int h = 0; h < 2; h++) {
            const f32x8 a = t[4 * i + h], b = t[4 * i + 2 + h];
            u[2 * i + h] = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11) +
                           __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
        }
    f32x8 out[2];
    for (int h = 0; h < 2; h++)
        out[h] = __builtin_shufflevector(u[h], u[2 + h], 0, 1, 8, 9, 4, 5, 12, 13) +
                 __builtin_shufflevector(u[h], u[2 + h], 2, 3, 10, 11, 6, 7, 14, 15);
    return {out[0], out[1]};
}
inline f32x8 pair_sums(f32x8 a, f32x8 b) {
    return __builtin_shufflevector(a, b, 0, 8, 2, 10, 4, 12, 6, 14) + __builtin_shufflevector(a, b, 1, 9, 3, 11, 5, 13, 7, 15);
}
inline f32x16 pair_sums(f32x16 a, f32x16 b) { return {pair_sums(a.lo, b.lo), pair_sums(a.hi, b.hi)}; }
template <typename Combine>
inline f32x16 all_lanes(f32x16 v, Combine combine) {
    const auto within = [](f32x16 x, auto shuffle) -> f32x16 { return {shuffle(x.lo), shuffle(x.hi)}; };
    v = combine(v, f32x16{v.hi, v.lo});
    v = combine(v, within(v, [](f32x8 x) { return __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3); }));
    v = combine(v, within(v, [](f32x8 x) { return __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5); }));
    return combine(v, within(v, [](f32x8 x) { return __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6); }));
}

}  // namespace dinat
