// CPU kernels built for the host on first use (see native.py), for float32 and bfloat16
// tensors. bfloat16 is summed in float32 and rounded to nearest even on store; with
// AVX512-BF16 the products are of bfloat16 pairs, so the factors that are not inputs (the
// gate's weights, the attention's probabilities) are rounded to bfloat16 as PyTorch's
// bfloat16 operations round them.
// Vectors are 16 float lanes (GCC/Clang vector extensions, lowered to the host's SIMD).
//
// - na2d_forward: dilated neighbourhood attention, the `native` attention backend.
// - gated_dwconv_gelu: the GDFN's 3x3 depth-wise convolution, GELU gate and product,
//   one pass over the hidden map instead of four.
// - box_means: TLC's local channel means from an integral image, one pass over the map.

#include <omp.h>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace {

typedef float f32x16 __attribute__((vector_size(64)));
typedef float f32x16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint16_t u16x16u __attribute__((vector_size(32), aligned(2)));
typedef uint32_t u32x16u __attribute__((vector_size(64), aligned(2)));

inline f32x16 splat(float x) { return f32x16{} + x; }
inline f32x16 vmax(f32x16 a, f32x16 b) {
    i32x16 greater = a > b;
    return (f32x16)(((i32x16)a & greater) | ((i32x16)b & ~greater));
}
inline f32x16 vmin(f32x16 a, f32x16 b) {
    i32x16 less = a < b;
    return (f32x16)(((i32x16)a & less) | ((i32x16)b & ~less));
}
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
    u32x16 is_nan = (u32x16)((u & 0x7fffffffu) > 0x7f800000u);
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

// fn(begin, end) over [0, count) split into contiguous parts, one per thread. OpenMP,
// because torch's own libgomp is already loaded and this library binds to it: the
// threads are torch's, not a second pool competing with torch's spinning workers.
template <typename Fn>
void parallel_for(int64_t count, int threads, const Fn &fn) {
    const int workers = int(threads < 1 ? 1 : (threads > count ? count : threads));
#pragma omp parallel num_threads(workers)
    {
        const int64_t w = omp_get_thread_num(), n = omp_get_num_threads();
        fn(count * w / n, count * (w + 1) / n);
    }
}

constexpr int64_t kMaxKernel = 15;
// Logit lanes for the largest window: groups of eight keys, two groups per vector.
constexpr int64_t kMaxLogits = (kMaxKernel * ((kMaxKernel + 7) / 8) + 1) / 2 * 16;

struct Problem {
    const void *q, *k, *v;
    void *out;
    const int64_t *q_strides, *k_strides, *v_strides, *out_strides;  // batch, head, row, column (elements)
    int64_t batch, heads, height, width, dim, kernel;
    const int64_t *key_rows, *key_cols, *bias_rows, *bias_cols, *row_order, *col_order;
    const float *rpb;  // (heads, 2K-1, 2K-1) or null
    float scale;
};

// Where a query's logits live: its keys in groups of up to eight along a key row, two
// groups per vector of 16 lanes (see pair_sums).
struct LogitLayout {
    int64_t groups_per_row, vectors;
    std::vector<int32_t> lane;  // per key (row-major in the window): its lane among vectors * 16
    explicit LogitLayout(int64_t K)
        : groups_per_row((K + 7) / 8), vectors((K * ((K + 7) / 8) + 1) / 2), lane(K * K) {
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < K; j++) {
                const int64_t g = i * groups_per_row + j / 8;
                lane[i * K + j] = int32_t(g / 2 * 16 + kSumLane[j % 8] + g % 2);
            }
    }
};

// The distinct bias column patterns of a call (a handful: the window is only clamped
// near the edges) and which one each column uses.
struct ColumnPatterns {
    std::vector<int64_t> columns;  // patterns * K bias columns
    std::vector<int32_t> of_column;
    ColumnPatterns(const int64_t *bias_cols, int64_t width, int64_t K) : of_column(width) {
        for (int64_t c = 0; c < width; c++) {
            const int64_t *mine = bias_cols + c * K;
            int64_t found = 0, count = int64_t(columns.size()) / K;
            while (found < count && !std::equal(mine, mine + K, columns.begin() + found * K)) found++;
            if (found == count) columns.insert(columns.end(), mine, mine + K);
            of_column[c] = int32_t(found);
        }
    }
    int64_t count(int64_t K) const { return int64_t(columns.size()) / K; }
};

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

// Element offsets of one query's keys (or values): K row offsets and K column offsets.
template <typename T>
struct Window {
    const T *base;
    const int64_t *rows, *cols;
    const T *at(int64_t i, int64_t j) const { return base + rows[i] + cols[j]; }
};

// A query's dot products with keys, D = 16 * CH: float lanes, the scale applied to the query.
template <typename T, int CH>
struct QueryDots {
    static constexpr float logit_scale = 1.0f;
    f32x16 query[CH];
    QueryDots(const T *q, float scale) {
        for (int x = 0; x < CH; x++) query[x] = load(q + 16 * x) * scale;
    }
    void dots8(const T *const *key, f32x16 *dots) const {
        for (int u = 0; u < 8; u++) dots[u] = f32x16{};
        for (int x = 0; x < CH; x++)
            for (int u = 0; u < 8; u++) dots[u] += query[x] * load(key[u] + 16 * x);
    }
};

#if defined(__AVX512BF16__)
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

// bfloat16 with AVX512-BF16: one instruction per 32 products, exact and summed in float32,
// instead of widening every key; the scale goes on the logits.
template <int CH>
struct QueryDots<uint16_t, CH> {
    float logit_scale;
    __m512bh query[Chunks<CH>::kCount];
    QueryDots(const uint16_t *q, float scale) : logit_scale(scale) {
        for (int x = 0; x < Chunks<CH>::kCount; x++) query[x] = (__m512bh)Chunks<CH>::load(q, x);
    }
    void dots8(const uint16_t *const *key, f32x16 *dots) const {
        __m512 sums[8];
        for (int u = 0; u < 8; u++) sums[u] = _mm512_setzero_ps();
        for (int x = 0; x < Chunks<CH>::kCount; x++)
            for (int u = 0; u < 8; u++)
                sums[u] = _mm512_dpbf16_ps(sums[u], query[x], (__m512bh)Chunks<CH>::load(key[u], x));
        for (int u = 0; u < 8; u++) dots[u] = (f32x16)sums[u];
    }
};
#endif

// A weighted sum of value vectors, D = 16 * CH, in float lanes.
template <typename T, int CH>
struct ValueSum {
    f32x16 acc[CH] = {};
    void add(f32x16 weight, const T *value) {
        for (int x = 0; x < CH; x++) acc[x] += weight * load(value + 16 * x);
    }
    void store_sum(T *out, const ValueSum &other) const {
        for (int x = 0; x < CH; x++) store(out + 16 * x, acc[x] + other.acc[x]);
    }
};

// bfloat16 values 32 at a time as even and odd halves: two instructions to widen them
// instead of four; the halves are interleaved again on the way out.
template <int CH>
struct ValueSum<uint16_t, CH> {
    static constexpr int kPairs = CH / 2;
    f32x16 even[kPairs ? kPairs : 1] = {}, odd[kPairs ? kPairs : 1] = {}, tail = {};
    void add(f32x16 weight, const uint16_t *value) {
        for (int x = 0; x < kPairs; x++) {
            f32x16 e, o;
            load_pairs(value + 32 * x, e, o);
            even[x] += weight * e;
            odd[x] += weight * o;
        }
        if constexpr (CH % 2) tail += weight * load(value + 32 * kPairs);
    }
    void store_sum(uint16_t *out, const ValueSum &other) const {
        for (int x = 0; x < kPairs; x++) store_pairs(out + 32 * x, even[x] + other.even[x], odd[x] + other.odd[x]);
        if constexpr (CH % 2) store(out + 32 * kPairs, tail + other.tail);
    }
};

#if defined(__AVX512BF16__)
// bfloat16 with AVX512-BF16, windows of up to 8 columns (one group of keys per window
// row): the value sum as products of pairs, one instruction per 32 products instead of
// widening every value. Lanes 2m and 2m + 1 of the logits hold the keys of window rows
// 2r and 2r + 1 in the same column (see LogitLayout), so the probabilities, rounded to
// bfloat16 as PyTorch's bfloat16 attention rounds them, pair up as they lie; the two
// rows' values are interleaved to match. An odd last row pairs with zeros.
template <int CH>
inline void pair_values(const LogitLayout &layout, int64_t K, const float *probabilities, const Window<uint16_t> &values,
                        uint16_t *out) {
    typedef Chunks<CH> C;
    alignas(64) uint16_t rounded[kMaxLogits];
    for (int64_t n = 0; n < layout.vectors; n++)
        _mm256_store_si256((__m256i *)(rounded + 16 * n), (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(probabilities + 16 * n)));
    const uint32_t *pairs = reinterpret_cast<const uint32_t *>(rounded);
    __m512 low[C::kCount], high[C::kCount];
    for (int x = 0; x < C::kCount; x++) low[x] = high[x] = _mm512_setzero_ps();
    const int32_t *lane = layout.lane.data();
    for (int64_t i = 0; i < K; i += 2)
        for (int64_t j = 0; j < K; j++) {
            const __m512bh w = (__m512bh)_mm512_set1_epi32(int(pairs[lane[i * K + j] >> 1]));
            const uint16_t *a = values.at(i, j), *b = i + 1 < K ? values.at(i + 1, j) : nullptr;
            for (int x = 0; x < C::kCount; x++) {
                const __m512i va = C::load(a, x), vb = b ? C::load(b, x) : _mm512_setzero_si512();
                low[x] = _mm512_dpbf16_ps(low[x], (__m512bh)_mm512_unpacklo_epi16(va, vb), w);
                high[x] = _mm512_dpbf16_ps(high[x], (__m512bh)_mm512_unpackhi_epi16(va, vb), w);
            }
        }
    for (int x = 0; x < C::kCount; x++) store_pair_sums(out + 32 * x, low[x], high[x], C::mask(x));
}
#endif

// One query: CH = D / 16 vectors of 16 lanes. `bias` holds, in the logits' layout, the
// relative position bias of every key for this query's row and column pattern, and -inf
// in lanes that hold no key.
template <typename T, int CH>
inline void attend(const Problem &p, const LogitLayout &layout, const T *query_in, const Window<T> &keys,
                   const Window<T> &values, T *out, const float *bias) {
    const int64_t K = p.kernel;
    const QueryDots<T, CH> query(query_in, p.scale);
    alignas(64) float logits[kMaxLogits];
    f32x16 top = splat(-INFINITY), halves[2];
    int64_t vec = 0, half = 0;
    const auto emit = [&](f32x16 second) {
        const f32x16 scores = pair_sums(halves[0], second) * query.logit_scale + load(bias + 16 * vec);
        store(logits + 16 * vec++, scores);
        top = vmax(top, scores);
    };
    for (int64_t i = 0; i < K; i++) {
        for (int64_t first = 0; first < K; first += 8) {
            const int64_t count = K - first < 8 ? K - first : 8;
            const T *key[8];
            for (int u = 0; u < 8; u++) key[u] = keys.at(i, first + (u < count ? u : 0));
            f32x16 dots[8];
            query.dots8(key, dots);
            if (half) emit(partial8(dots));
            else halves[0] = partial8(dots);
            half ^= 1;
        }
    }
    if (half) emit(f32x16{});
    const f32x16 peak = all_max(top);
    f32x16 total = {};
    for (int64_t n = 0; n < layout.vectors; n++) {
        const f32x16 e = exp_nonpositive(load(logits + 16 * n) - peak);
        store(logits + 16 * n, e);
        total += e;
    }
    const f32x16 inverse = 1.0f / all_sum(total);
    for (int64_t n = 0; n < layout.vectors; n++) store(logits + 16 * n, load(logits + 16 * n) * inverse);
#if defined(__AVX512BF16__)
    if constexpr (sizeof(T) == 2) {
        if (layout.groups_per_row == 1) {
            pair_values<CH>(layout, K, logits, values, out);
            return;
        }
    }
#endif
    // Two sums, of even and odd keys: half as long a chain of dependent adds.
    ValueSum<T, CH> even, odd;
    const int32_t *lane = layout.lane.data();
    for (int64_t i = 0; i < K; i++) {
        int64_t j = 0;
        for (; j + 1 < K; j += 2) {
            even.add(splat(logits[lane[i * K + j]]), values.at(i, j));
            odd.add(splat(logits[lane[i * K + j + 1]]), values.at(i, j + 1));
        }
        if (j < K) even.add(splat(logits[lane[i * K + j]]), values.at(i, j));
    }
    even.store_sum(out, odd);
}

// The bias of every key, in the logits' layout, for query row r and each column pattern.
inline void fill_bias(const Problem &p, const LogitLayout &layout, const ColumnPatterns &patterns, int64_t head,
                      int64_t r, float *table) {
    const int64_t K = p.kernel, side = 2 * K - 1, size = layout.vectors * 16;
    const float *rpb = p.rpb ? p.rpb + head * side * side : nullptr;
    for (int64_t pattern = 0; pattern < patterns.count(K); pattern++) {
        float *bias = table + pattern * size;
        for (int64_t n = 0; n < size; n++) bias[n] = -INFINITY;
        const int64_t *bias_cols = patterns.columns.data() + pattern * K;
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < K; j++)
                bias[layout.lane[i * K + j]] = rpb ? rpb[p.bias_rows[r * K + i] * side + bias_cols[j]] : 0.0f;
    }
}

// Element offsets of the window's columns for every query column (width * K), for keys
// and for values: each key's address is then a row offset plus one of these.
struct ColumnOffsets {
    std::vector<int64_t> keys, values;
    explicit ColumnOffsets(const Problem &p) : keys(p.width * p.kernel), values(p.width * p.kernel) {
        for (int64_t n = 0; n < p.width * p.kernel; n++) {
            keys[n] = p.key_cols[n] * p.k_strides[3];
            values[n] = p.key_cols[n] * p.v_strides[3];
        }
    }
};

#if defined(__AVX512BF16__)
// Query lanes (bfloat16 with AVX512-BF16). Away from the borders, 16 successive members
// of a dilation group all see the centred window, so their keys for one window offset are
// 16 successive members too. With queries and keys packed per row as channel pairs
// (pair-major, members of the groups one after another along the row), the keys of all
// window offsets are shifts of two vectors, one product of pairs per offset and channel
// pair serves 16 queries, the softmax runs lane by lane, and no sums across lanes are
// needed. Values are packed as pairs of neighbouring members per channel, so two window
// columns are one product of pairs. Each row is packed once and kept while the next query
// rows need it. Against attending query by query: 0.6x the time at head size 48, 0.9x at
// 96 (where the packed rows outgrow L1).

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

// The tiles of a call, the same for every query row: 16 successive group-order positions
// whose windows are centred and share a bias pattern (centred windows always do; the
// check keeps the tile's bias one table), a run's last tile overlapping the one before
// it, and which positions they cover. Tiles are taken in chunks of a few, so a chunk's
// packed rows (keys and values for K rows) stay in L2; a thread attends a chunk's tiles
// in every query row of a band of rows before the next chunk.
struct LanePlan {
    static constexpr int64_t kChunkTiles = 4;
    std::vector<int64_t> starts;
    std::vector<int8_t> fresh;  // per tile: its first lane not stored by the tile before (a run's last tile may overlap it)
    std::vector<uint8_t> covered;
    std::vector<int64_t> chunk_begin;  // per chunk: first group-order position its packed rows hold
    int64_t stride = 16;               // 32-bit elements per packed row: the widest chunk, rounded up, and one spare vector
    LanePlan(const Problem &p, const ColumnPatterns &patterns) : covered(p.width, 0) {
        const int64_t K = p.kernel, R = K / 2, W = p.width;
        const auto centred = [&](int64_t s) {
            if (s < R || s + R >= W) return false;
            const int64_t c = p.col_order[s];
            for (int64_t j = 0; j < K; j++)
                if (p.key_cols[c * K + j] != p.col_order[s - R + j]) return false;
            return true;
        };
        for (int64_t s = 0; s < W;) {
            if (!centred(s)) {
                s++;
                continue;
            }
            const int32_t pattern = patterns.of_column[p.col_order[s]];
            int64_t end = s + 1;
            while (end < W && centred(end) && patterns.of_column[p.col_order[end]] == pattern) end++;
            if (end - s >= 16)
                for (int64_t start = s; start < end; start += 16) {
                    const int64_t first = std::min(start, end - 16);
                    fresh.push_back(int8_t(start - first));
                    starts.push_back(first);
                    std::fill(covered.begin() + first, covered.begin() + first + 16, uint8_t(1));
                }
            s = end;
        }
        for (int64_t c = 0; c < chunks(); c++) {
            chunk_begin.push_back(starts[c * kChunkTiles] - R);
            stride = std::max(stride, (starts[last_tile(c)] + 16 + R - chunk_begin[c] + 15) / 16 * 16 + 16);
        }
    }
    int64_t chunks() const { return (int64_t(starts.size()) + kChunkTiles - 1) / kChunkTiles; }
    int64_t last_tile(int64_t chunk) const { return std::min(int64_t(starts.size()), (chunk + 1) * kChunkTiles) - 1; }
    int64_t chunk_end(int64_t chunk, int64_t K) const { return starts[last_tile(chunk)] + 16 + K / 2; }
};

// One thread's tiles: packed rows of keys and values for the last K key rows used, and
// the packed query row, each over one chunk's positions.
template <int K, int CH>
class LaneTiles {
  public:
    LaneTiles(const Problem &p, const LanePlan &plan, const ColumnPatterns &patterns)
        : p(p), plan(plan), patterns(patterns), stride(plan.stride),
          storage((kSlots * (kPairs + kDims) + 2 * kPairs) * plan.stride + 16, 0u) {
        uint32_t *aligned = reinterpret_cast<uint32_t *>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
        for (int n = 0; n < kSlots; n++) {
            keys[n] = aligned + n * (kPairs + kDims) * stride;
            values[n] = keys[n] + kPairs * stride;
        }
        queries = aligned + kSlots * (kPairs + kDims) * stride;
        scratch = queries + kPairs * stride;
    }

    // The tiles of one chunk in query rows [first_row, last_row) (in group order) of (b, h).
    void attend_chunk(int64_t b, int64_t h, int64_t chunk, int64_t first_row, int64_t last_row) {
        const uint16_t *k = static_cast<const uint16_t *>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
        const uint16_t *v = static_cast<const uint16_t *>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];
        const uint16_t *q = static_cast<const uint16_t *>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
        uint16_t *out = static_cast<uint16_t *>(p.out) + b * p.out_strides[0] + h * p.out_strides[1];
        begin = plan.chunk_begin[chunk], end = plan.chunk_end(chunk, K);
        const int64_t side = 2 * K - 1;
        const float *rpb = p.rpb ? p.rpb + h * side * side : nullptr;
        int64_t tags[kSlots];  // the key row each slot holds
        for (int n = 0; n < kSlots; n++) tags[n] = -1;
        // Rows in dilation-group order: successive rows share all but one row of keys.
        for (int64_t index = first_row; index < last_row; index++) {
            const int64_t r = p.row_order[index];
            bool used[kSlots] = {};
            int slot_of[K];
            for (int i = 0; i < K; i++) {
                slot_of[i] = -1;
                for (int n = 0; n < kSlots; n++)
                    if (tags[n] == p.key_rows[r * K + i]) slot_of[i] = n, used[n] = true;
            }
            for (int i = 0; i < K; i++) {
                if (slot_of[i] >= 0) continue;
                int n = 0;
                while (used[n]) n++;
                const int64_t y = p.key_rows[r * K + i];
                pack_pairs(k + y * p.k_strides[2], p.k_strides[3], keys[n]);
                pack_values(v + y * p.v_strides[2], p.v_strides[3], values[n]);
                tags[n] = y, slot_of[i] = n, used[n] = true;
            }
            for (int i = 0; i < K; i++) key_row[i] = keys[slot_of[i]], value_row[i] = values[slot_of[i]];
            pack_pairs(q + r * p.q_strides[2], p.q_strides[3], queries);
            // The next query row's new rows come from memory, not cache: fetch them a slice
            // per tile while this row is attended.
            std::pair<const uint16_t *, int64_t> upcoming[2 * K + 1];  // row, column stride
            int count = 0;
            if (index + 1 < last_row) {
                const int64_t next = p.row_order[index + 1];
                upcoming[count++] = {q + next * p.q_strides[2], p.q_strides[3]};
                for (int i = 0; i < K; i++) {
                    const int64_t y = p.key_rows[next * K + i];
                    if (std::find(tags, tags + kSlots, y) != tags + kSlots) continue;
                    upcoming[count++] = {k + y * p.k_strides[2], p.k_strides[3]};
                    upcoming[count++] = {v + y * p.v_strides[2], p.v_strides[3]};
                }
            }
            const int64_t first_tile = chunk * LanePlan::kChunkTiles, tiles = plan.last_tile(chunk) + 1 - first_tile;
            float bias[K][K];
            int32_t bias_pattern = -1;
            for (int64_t tile = first_tile; tile < first_tile + tiles; tile++) {
                const int64_t slice = end - begin, from = begin + slice * (tile - first_tile) / tiles;
                for (int64_t s = from; s < begin + slice * (tile + 1 - first_tile) / tiles; s++)
                    for (int n = 0; n < count; n++) fetch(upcoming[n].first + p.col_order[s] * upcoming[n].second);
                const int64_t start = plan.starts[tile];
                const int32_t pattern = patterns.of_column[p.col_order[start]];
                if (pattern != bias_pattern) {
                    for (int i = 0; i < K; i++)
                        for (int j = 0; j < K; j++)
                            bias[i][j] = rpb ? rpb[p.bias_rows[r * K + i] * side + patterns.columns[pattern * K + j]] : 0.0f;
                    bias_pattern = pattern;
                }
                attend_tile(start, plan.fresh[tile], bias, out + r * p.out_strides[2]);
            }
        }
    }

  private:
    static constexpr int kPairs = 8 * CH, kDims = 16 * CH, kSlots = K, kColumnPairs = (K + 1) / 2, R = K / 2;
    const Problem &p;
    const LanePlan &plan;
    const ColumnPatterns &patterns;
    const int64_t stride;
    std::vector<uint32_t> storage;
    uint32_t *keys[kSlots], *values[kSlots], *queries, *scratch;
    const uint32_t *key_row[K], *value_row[K];
    int64_t begin = 0, end = 0;  // the chunk's group-order positions: packed element n is position begin + n

    // One pixel's channels into L2.
    static void fetch(const uint16_t *pixel) {
        for (int line = 0; line < kDims * 2; line += 64) __builtin_prefetch(reinterpret_cast<const char *>(pixel) + line, 0, 2);
    }

    // Positions [begin, end) of a row as channel pairs, pair-major.
    void pack_pairs(const uint16_t *row, int64_t column_stride, uint32_t *packed) const {
        for (int64_t s0 = begin; s0 < end; s0 += 16) {
            const uint16_t *pixel[16];
            for (int l = 0; l < 16; l++) pixel[l] = row + p.col_order[std::min(s0 + l, end - 1)] * column_stride;
            // The next 16 pixels are far from cache (one read per call): fetch them while these are moved.
            if (s0 + 16 < end)
                for (int l = 0; l < 16; l++) fetch(row + p.col_order[std::min(s0 + 16 + l, end - 1)] * column_stride);
            for (int t0 = 0; t0 < kPairs; t0 += 16) {
                const int n = kPairs - t0 < 16 ? kPairs - t0 : 16;
                const __mmask16 mask = __mmask16((1u << n) - 1);
                __m512i r[16];
                for (int l = 0; l < 16; l++) r[l] = _mm512_maskz_loadu_epi32(mask, pixel[l] + 2 * t0);
                transpose16(r);
                for (int t = 0; t < n; t++) _mm512_store_si512(packed + (t0 + t) * stride + (s0 - begin), r[t]);
            }
        }
    }

    // Positions [begin, end) of a row's values as pairs of neighbouring positions per
    // channel, channel-major: element n of channel c holds positions n and n + 1 (the last
    // element's second half is whatever follows the row; no window reads it).
    void pack_values(const uint16_t *row, int64_t column_stride, uint32_t *packed) const {
        pack_pairs(row, column_stride, scratch);
        const __m512i low = _mm512_set1_epi32(0xffff), high = _mm512_set1_epi32(int(0xffff0000u));
        for (int t = 0; t < kPairs; t++)
            for (int64_t n = 0; n < end - begin; n += 16) {
                const __m512i a = _mm512_load_si512(scratch + t * stride + n);
                const __m512i b = _mm512_loadu_si512(scratch + t * stride + n + 1);
                _mm512_store_si512(packed + 2 * t * stride + n,
                                   _mm512_or_si512(_mm512_and_si512(a, low), _mm512_slli_epi32(b, 16)));
                _mm512_store_si512(packed + (2 * t + 1) * stride + n,
                                   _mm512_or_si512(_mm512_srli_epi32(a, 16), _mm512_and_si512(b, high)));
            }
    }

    // Value pair m covers window columns (2m, 2m + 1); with K odd the last one is
    // (K - 2, K - 1) with a zero weight on K - 2, so no value outside the window is read.
    static constexpr int value_shift(int m) { return 2 * m + 1 < K ? 2 * m : K - 2; }
    // Elements S .. S + 15 of lo:hi (the shift must be an immediate).
    template <int S>
    static __m512i shifted(__m512i hi, __m512i lo) { return _mm512_alignr_epi32(hi, lo, S); }
    template <int... J>
    static void key_products(__m512 *sums, __m512bh pairs, __m512i lo, __m512i hi, std::integer_sequence<int, J...>) {
        ((sums[J] = _mm512_dpbf16_ps(sums[J], pairs, (__m512bh)shifted<J>(hi, lo))), ...);
    }
    template <int... M>
    static __m512 value_products(__m512 sum, const __m512i *weights, __m512i lo, __m512i hi, std::integer_sequence<int, M...>) {
        ((sum = _mm512_dpbf16_ps(sum, (__m512bh)weights[M], (__m512bh)shifted<value_shift(M)>(hi, lo))), ...);
        return sum;
    }

    // 16 queries at group-order positions start .. start + 15 of query row `out`.
    void attend_tile(int64_t start, int fresh, const float (*bias)[K], uint16_t *out) const {
        const int64_t at = start - begin;
        __m512 logits[K * K];
        __m512 top = _mm512_set1_ps(-INFINITY);
        const __m512 scale = _mm512_set1_ps(p.scale);
        for (int i = 0; i < K; i++) {
            __m512 sums[K];
            for (int j = 0; j < K; j++) sums[j] = _mm512_setzero_ps();
            const uint32_t *query = queries + at, *key = key_row[i] + at - R;
            for (int t = 0; t < kPairs; t++) {
                const __m512bh pairs = (__m512bh)_mm512_loadu_si512(query + t * stride);
                const __m512i lo = _mm512_loadu_si512(key + t * stride), hi = _mm512_loadu_si512(key + t * stride + 16);
                key_products(sums, pairs, lo, hi, std::make_integer_sequence<int, K>());
            }
            for (int j = 0; j < K; j++) {
                logits[i * K + j] = _mm512_fmadd_ps(sums[j], scale, _mm512_set1_ps(bias[i][j]));
                top = _mm512_max_ps(top, logits[i * K + j]);
            }
        }
        __m512 total = _mm512_setzero_ps();
        for (int n = 0; n < K * K; n++) {
            logits[n] = (__m512)exp_nonpositive((f32x16)_mm512_sub_ps(logits[n], top));
            total = _mm512_add_ps(total, logits[n]);
        }
        const __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.0f), total);
        // Probabilities rounded to bfloat16 as PyTorch's bfloat16 attention rounds them, in
        // pairs of window columns (2m, 2m + 1) per lane; an odd last column pairs with zero.
        const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                    22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        __m512i weights[K][kColumnPairs];
        for (int i = 0; i < K; i++)
            for (int m = 0; m < kColumnPairs; m++) {
                const __m512 even = _mm512_mul_ps(logits[i * K + 2 * m], inverse);
                const __m512 odd = 2 * m + 1 < K ? _mm512_mul_ps(logits[i * K + 2 * m + 1], inverse) : _mm512_setzero_ps();
                weights[i][m] = _mm512_permutexvar_epi16(
                    interleave, (__m512i)(2 * m + 1 < K ? _mm512_cvtne2ps_pbh(odd, even) : _mm512_cvtne2ps_pbh(even, odd)));
            }
        for (int block = 0; block < CH; block++) {
            __m512 sums[16];
            for (int u = 0; u < 16; u++) sums[u] = _mm512_setzero_ps();
            for (int i = 0; i < K; i++) {
                const uint32_t *value = value_row[i] + 16 * block * stride + at - R;
                for (int u = 0; u < 16; u++) {
                    const __m512i lo = _mm512_loadu_si512(value + u * stride), hi = _mm512_loadu_si512(value + u * stride + 16);
                    sums[u] = value_products(sums[u], weights[i], lo, hi, std::make_integer_sequence<int, kColumnPairs>());
                }
            }
            __m512i rows[16];
            for (int u = 0; u < 16; u++) rows[u] = (__m512i)sums[u];
            transpose16(rows);
            for (int l = fresh; l < 16; l++)
                _mm256_storeu_si256((__m256i *)(out + p.col_order[start + l] * p.out_strides[3] + 16 * block),
                                    (__m256i)_mm512_cvtneps_pbh((__m512)rows[l]));
        }
    }
};
#endif

#if defined(__AVX512BF16__)
template <int K, int CH>
void run_tiles(const Problem &p, const LanePlan &plan, const ColumnPatterns &patterns, int threads) {
    const int64_t chunks = plan.chunks(), units = p.batch * p.heads * chunks;
    // Too few chunks for the threads: split the rows into bands (each refills its K rows).
    const int64_t bands = std::max<int64_t>(1, std::min<int64_t>((threads + units - 1) / units, p.height / (4 * K)));
    parallel_for(units * bands, threads, [&](int64_t begin, int64_t end) {
        LaneTiles<K, CH> tiles(p, plan, patterns);
        for (int64_t n = begin; n < end; n++) {
            const int64_t index = n / bands, band = n % bands;
            tiles.attend_chunk(index / (chunks * p.heads), index / chunks % p.heads, index % chunks,
                               p.height * band / bands, p.height * (band + 1) / bands);
        }
    });
}
#endif

// Query rows [begin, end) of the (batch, head, row-in-group-order) sequence. Group-order
// positions flagged in `skip` (null: none) are left alone.
template <typename T, int CH>
void attend_rows(const Problem &p, const LogitLayout &layout, const ColumnPatterns &patterns,
                 const ColumnOffsets &columns, const uint8_t *skip, int64_t begin, int64_t end) {
    const T *q = static_cast<const T *>(p.q), *k = static_cast<const T *>(p.k), *v = static_cast<const T *>(p.v);
    T *out = static_cast<T *>(p.out);
    const int64_t K = p.kernel, size = layout.vectors * 16;
    std::vector<float> storage(patterns.count(K) * size + 16);
    float *table = reinterpret_cast<float *>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
    int64_t key_rows[kMaxKernel], value_rows[kMaxKernel];
    for (int64_t index = begin; index < end; index++) {
        const int64_t b = index / (p.heads * p.height), h = index / p.height % p.heads;
        // Rows in dilation-group order: successive rows share all but one row of keys.
        const int64_t r = p.row_order[index % p.height];
        fill_bias(p, layout, patterns, h, r, table);
        for (int64_t i = 0; i < K; i++) {
            key_rows[i] = p.key_rows[r * K + i] * p.k_strides[2];
            value_rows[i] = p.key_rows[r * K + i] * p.v_strides[2];
        }
        const T *keys = k + b * p.k_strides[0] + h * p.k_strides[1];
        const T *values = v + b * p.v_strides[0] + h * p.v_strides[1];
        const T *q_row = q + b * p.q_strides[0] + h * p.q_strides[1] + r * p.q_strides[2];
        T *out_row = out + b * p.out_strides[0] + h * p.out_strides[1] + r * p.out_strides[2];
        // Columns in dilation-group order too: successive queries share all but one column
        // of keys, which then come from L1 instead of L2.
        for (int64_t i = 0; i < p.width; i++) {
            if (skip && skip[i]) continue;
            const int64_t c = p.col_order[i];
            attend<T, CH>(p, layout, q_row + c * p.q_strides[3], Window<T>{keys, key_rows, &columns.keys[c * K]},
                          Window<T>{values, value_rows, &columns.values[c * K]}, out_row + c * p.out_strides[3],
                          table + patterns.of_column[c] * size);
        }
    }
}

template <typename T, int CH>
void run(const Problem &p, int threads) {
    const LogitLayout layout(p.kernel);
    const ColumnPatterns patterns(p.bias_cols, p.width, p.kernel);
    const ColumnOffsets columns(p);
    const uint8_t *skip = nullptr;
#if defined(__AVX512BF16__)
    std::unique_ptr<LanePlan> plan;
    // Tiles are built for the 7x7 window of every official model and head sizes up to 128
    // only: each window size costs about 2 s more of the first build. Other windows and
    // the rows' leftover queries are attended query by query.
    if constexpr (sizeof(T) == 2 && CH <= 8)
        if (p.kernel == 7) {
            plan.reset(new LanePlan(p, patterns));
            if (!plan->starts.empty()) {
                run_tiles<7, CH>(p, *plan, patterns, threads);
                skip = plan->covered.data();
            }
        }
#endif
    parallel_for(p.batch * p.heads * p.height, threads, [&](int64_t begin, int64_t end) {
        attend_rows<T, CH>(p, layout, patterns, columns, skip, begin, end);
    });
}

#if defined(__AVX512BF16__)
// Small dilation groups (bfloat16 with AVX512-BF16). The queries of one dilation group
// only ever see keys of that group, so where a group has at most 64 members (a 256 px
// map at dilation 36, 128 at 18, ...) its keys and values are packed once for all of its
// queries, and every query takes the products with all 64 packed keys: lanes are keys,
// so no sums across lanes are needed, and the keys outside its window get a bias of
// -inf. 64 lanes for 49 keys costs less than the per-query gathers and sums it saves.
constexpr int64_t kGroupKeys = 64;

struct SmallGroups {
    int64_t dilation, rows, cols;  // the largest group's rows and columns
    static int64_t length(int64_t extent, int64_t dilation, int64_t group) { return (extent - group + dilation - 1) / dilation; }
    static bool apply(const Problem &p, SmallGroups &groups) {
        if (p.kernel < 2) return false;
        groups.dilation = p.key_rows[1] - p.key_rows[0];  // the first query's window: 0, d, 2d, ...
        groups.rows = length(p.height, groups.dilation, 0);
        groups.cols = length(p.width, groups.dilation, 0);
        return groups.rows * groups.cols <= kGroupKeys;
    }
};

// One thread's packed group: keys as 32-bit pairs of channels, key-major within a
// channel pair (so 16 keys' pair t fill one vector); values interleaved by key pairs;
// the bias of every query of the group for every key lane.
template <int CH>
struct PackedGroup {
    alignas(64) uint32_t keys[8 * CH][kGroupKeys];
    alignas(64) __m512i values[kGroupKeys / 2][Chunks<CH>::kCount][2];
    alignas(64) float bias[kGroupKeys][kGroupKeys];
    int64_t bias_for[3] = {-1, -1, -1};  // the (rows, cols, head) `bias` holds
};

template <int CH>
void fill_group_bias(const Problem &p, int64_t gr, int64_t gc, int64_t rows, int64_t cols, int64_t h,
                     const SmallGroups &groups, PackedGroup<CH> &g) {
    if (g.bias_for[0] == rows && g.bias_for[1] == cols && g.bias_for[2] == h) return;
    // Windows and bias indices depend only on a query's rank in its group and the group's
    // length: the table serves every group of this shape.
    const int64_t K = p.kernel, d = groups.dilation, side = 2 * K - 1;
    const float *rpb = p.rpb ? p.rpb + h * side * side : nullptr;
    for (int64_t qi = 0; qi < rows; qi++)
        for (int64_t qj = 0; qj < cols; qj++) {
            float *lanes = g.bias[qi * cols + qj];
            std::fill(lanes, lanes + kGroupKeys, -INFINITY);
            const int64_t r = gr + qi * d, c = gc + qj * d;
            for (int64_t i = 0; i < K; i++)
                for (int64_t j = 0; j < K; j++) {
                    const int64_t key = (p.key_rows[r * K + i] - gr) / d * cols + (p.key_cols[c * K + j] - gc) / d;
                    lanes[key] = rpb ? rpb[p.bias_rows[r * K + i] * side + p.bias_cols[c * K + j]] : 0.0f;
                }
        }
    g.bias_for[0] = rows, g.bias_for[1] = cols, g.bias_for[2] = h;
}

template <int CH>
void attend_group(const Problem &p, int64_t b, int64_t h, int64_t gr, int64_t gc, const SmallGroups &groups,
                  PackedGroup<CH> &g) {
    typedef Chunks<CH> C;
    const int64_t d = groups.dilation;
    const int64_t rows = SmallGroups::length(p.height, d, gr), cols = SmallGroups::length(p.width, d, gc);
    constexpr int kBlocks = kGroupKeys / 16;
    const int64_t count = rows * cols, pairs = (count + 3) / 4 * 2;  // key pairs, an even number of them
    const uint16_t *q = static_cast<const uint16_t *>(p.q) + b * p.q_strides[0] + h * p.q_strides[1];
    const uint16_t *k = static_cast<const uint16_t *>(p.k) + b * p.k_strides[0] + h * p.k_strides[1];
    const uint16_t *v = static_cast<const uint16_t *>(p.v) + b * p.v_strides[0] + h * p.v_strides[1];
    uint16_t *out = static_cast<uint16_t *>(p.out) + b * p.out_strides[0] + h * p.out_strides[1];
    const auto at = [&](int64_t key, const int64_t *strides) {
        return (gr + key / cols * d) * strides[2] + (gc + key % cols * d) * strides[3];
    };
    // Pack: lanes and pairs past the group's keys hold zeros (their bias is -inf, their
    // probability 0; zeros keep them finite).
    for (int64_t key = 0; key < kGroupKeys; key++) {
        const uint32_t *pairs_of = key < count ? reinterpret_cast<const uint32_t *>(k + at(key, p.k_strides)) : nullptr;
        for (int t = 0; t < 8 * CH; t++) g.keys[t][key] = pairs_of ? pairs_of[t] : 0u;
    }
    const auto value = [&](int64_t key, int c) {
        return key < count ? C::load(v + at(key, p.v_strides), c) : _mm512_setzero_si512();
    };
    for (int64_t m = 0; m < pairs; m++)
        for (int c = 0; c < C::kCount; c++) {
            const __m512i first = value(2 * m, c), second = value(2 * m + 1, c);
            g.values[m][c][0] = _mm512_unpacklo_epi16(first, second);
            g.values[m][c][1] = _mm512_unpackhi_epi16(first, second);
        }
    fill_group_bias(p, gr, gc, rows, cols, h, groups, g);
    for (int64_t query = 0; query < count; query++) {
        // Queries lie d pixels apart: fetch the next one's channels while this one is computed.
        if (query + 1 < count)
            for (int line = 0; line < CH * 32; line += 64)
                __builtin_prefetch(reinterpret_cast<const char *>(q + at(query + 1, p.q_strides)) + line);
        const uint32_t *query_pairs = reinterpret_cast<const uint32_t *>(q + at(query, p.q_strides));
        // Two sets of sums (even and odd channel pairs): half as long chains of dependent products.
        __m512 even[kBlocks], odd[kBlocks];
        for (int n = 0; n < kBlocks; n++) even[n] = odd[n] = _mm512_setzero_ps();
        for (int t = 0; t < 8 * CH; t += 2) {
            const __m512bh first = (__m512bh)_mm512_set1_epi32(int(query_pairs[t]));
            const __m512bh second = (__m512bh)_mm512_set1_epi32(int(query_pairs[t + 1]));
            for (int n = 0; n < kBlocks; n++) {
                even[n] = _mm512_dpbf16_ps(even[n], first, (__m512bh)_mm512_load_si512(&g.keys[t][16 * n]));
                odd[n] = _mm512_dpbf16_ps(odd[n], second, (__m512bh)_mm512_load_si512(&g.keys[t + 1][16 * n]));
            }
        }
        f32x16 logits[kBlocks], top = splat(-INFINITY);
        for (int n = 0; n < kBlocks; n++) {
            logits[n] = ((f32x16)even[n] + (f32x16)odd[n]) * p.scale + load(g.bias[query] + 16 * n);
            top = vmax(top, logits[n]);
        }
        const f32x16 peak = all_max(top);
        f32x16 total = {};
        for (int n = 0; n < kBlocks; n++) {
            logits[n] = exp_nonpositive(logits[n] - peak);
            total += logits[n];
        }
        const f32x16 inverse = 1.0f / all_sum(total);
        alignas(64) uint16_t rounded[kGroupKeys];
        for (int n = 0; n < kBlocks; n++)
            _mm256_store_si256((__m256i *)(rounded + 16 * n), (__m256i)_mm512_cvtneps_pbh((__m512)(logits[n] * inverse)));
        const uint32_t *weights = reinterpret_cast<const uint32_t *>(rounded);
        // Two sets of sums, of even and odd key pairs: half as long chains of dependent products.
        __m512 low[2][C::kCount], high[2][C::kCount];
        for (int c = 0; c < C::kCount; c++) low[0][c] = high[0][c] = low[1][c] = high[1][c] = _mm512_setzero_ps();
        for (int64_t m = 0; m < pairs; m += 2)
            for (int side = 0; side < 2; side++) {
                const __m512bh w = (__m512bh)_mm512_set1_epi32(int(weights[m + side]));
                for (int c = 0; c < C::kCount; c++) {
                    low[side][c] = _mm512_dpbf16_ps(low[side][c], (__m512bh)g.values[m + side][c][0], w);
                    high[side][c] = _mm512_dpbf16_ps(high[side][c], (__m512bh)g.values[m + side][c][1], w);
                }
            }
        for (int c = 0; c < C::kCount; c++)
            store_pair_sums(out + at(query, p.out_strides) + 32 * c, _mm512_add_ps(low[0][c], low[1][c]),
                            _mm512_add_ps(high[0][c], high[1][c]), C::mask(c));
    }
}

template <int CH>
void run_small_groups(const Problem &p, const SmallGroups &groups, int threads) {
    const int64_t d = groups.dilation;
    parallel_for(p.batch * p.heads * d * d, threads, [&](int64_t begin, int64_t end) {
        std::unique_ptr<PackedGroup<CH>> packed(new PackedGroup<CH>);
        for (int64_t index = begin; index < end; index++) {
            const int64_t gc = index % d, gr = index / d % d, h = index / (d * d) % p.heads, b = index / (d * d * p.heads);
            attend_group<CH>(p, b, h, gr, gc, groups, *packed);
        }
    });
}

int dispatch_small_groups(const Problem &p, const SmallGroups &groups, int threads) {
    switch (p.dim) {
        case 16: run_small_groups<1>(p, groups, threads); return 0;
        case 32: run_small_groups<2>(p, groups, threads); return 0;
        case 48: run_small_groups<3>(p, groups, threads); return 0;
        case 64: run_small_groups<4>(p, groups, threads); return 0;
        case 96: run_small_groups<6>(p, groups, threads); return 0;
        case 128: run_small_groups<8>(p, groups, threads); return 0;
        default: return 1;
    }
}
#endif

template <typename T>
int dispatch(const Problem &p, int threads) {
#if defined(__AVX512BF16__)
    SmallGroups groups;
    if constexpr (sizeof(T) == 2)
        if (SmallGroups::apply(p, groups) && dispatch_small_groups(p, groups, threads) == 0) return 0;
#endif
    switch (p.dim) {
        case 16: run<T, 1>(p, threads); return 0;
        case 32: run<T, 2>(p, threads); return 0;
        case 48: run<T, 3>(p, threads); return 0;
        case 64: run<T, 4>(p, threads); return 0;
        case 96: run<T, 6>(p, threads); return 0;
        case 128: run<T, 8>(p, threads); return 0;
        case 192: run<T, 12>(p, threads); return 0;
        case 256: run<T, 16>(p, threads); return 0;
        case 384: run<T, 24>(p, threads); return 0;
        default: return 1;
    }
}

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

#if defined(__AVX512BF16__)
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

PackedGate pack_gate(const GatedConv &g) {
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
void gated_half_bf16(const GatedConv &g, const PackedGate &packed, const uint16_t *const rows[3], int half,
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
void gated_group_bf16(const GatedConv &g, const PackedGate &packed, const uint16_t *const rows[3], uint16_t *out_row,
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

void gated_rows_bf16(const GatedConv &g, const PackedGate &packed, int64_t begin, int64_t end) {
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
#endif

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

struct BoxMeans {
    const void *x;  // (B, H, W, C) memory with unit channel stride
    float *out;     // (B, H - box_h + 1, W - box_w + 1, C), contiguous
    const int64_t *x_strides;  // batch, row, column (elements)
    int64_t batch, channels, height, width, box_h, box_w;
};

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
    for (int64_t c = 0; c < c_vec; c++) sums[c] += vector_sums[c / 16][c % 16];
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

}  // namespace

extern "C" {

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
#if defined(__AVX512BF16__)
    if (bfloat16 && hidden % 32 == 0) {
        const PackedGate packed = pack_gate(g);
        parallel_for(batch * rows, threads,
                     [&g, &packed](int64_t begin, int64_t end) { gated_rows_bf16(g, packed, begin, end); });
        return 0;
    }
#endif
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
    return bfloat16 ? dispatch<uint16_t>(p, threads) : dispatch<float>(p, threads);
}

}
