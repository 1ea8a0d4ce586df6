// CPU kernels built for the host on first use (see native.py), for float32 and bfloat16
// tensors; bfloat16 is computed in float32 and rounded to nearest even on store.
// Vectors are 16 float lanes (GCC/Clang vector extensions, lowered to the host's SIMD).
//
// - na2d_forward: dilated neighbourhood attention, the `native` attention backend.
// - gated_dwconv_gelu: the GDFN's 3x3 depth-wise convolution, GELU gate and product,
//   one pass over the hidden map instead of four.
// - box_means: TLC's local channel means from an integral image, one pass over the map.

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

typedef float f32x16 __attribute__((vector_size(64)));
typedef float f32x16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint16_t u16x16u __attribute__((vector_size(32), aligned(2)));

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
inline void store(uint16_t *p, f32x16 x) {
    // Round to nearest even, as torch converts float32 to bfloat16; NaN stays NaN.
    u32x16 u = (u32x16)x;
    u32x16 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    u32x16 is_nan = (u32x16)((u & 0x7fffffffu) > 0x7f800000u);
    u32x16 bits = (((u >> 16) | 0x40u) & is_nan) | (rounded & ~is_nan);
    *(u16x16u *)p = __builtin_convertvector(bits, u16x16);
}

// The sums of eight vectors, in lanes 0, 8, 4, 12, 2, 10, 6, 14: a transposing tree of
// 8 adds instead of eight separate horizontal reductions.
inline f32x16 sum8(const f32x16 *v) {
    f32x16 t[4];
    for (int i = 0; i < 4; i++)
        t[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
               __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    f32x16 u[2];
    for (int i = 0; i < 2; i++)
        u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
               __builtin_shufflevector(t[2 * i], t[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    f32x16 w = __builtin_shufflevector(u[0], u[1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
               __builtin_shufflevector(u[0], u[1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    return w + __builtin_shufflevector(w, w, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
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

struct Problem {
    const void *q, *k, *v;
    void *out;
    const int64_t *q_strides, *k_strides, *v_strides, *out_strides;  // batch, head, row, column (elements)
    int64_t batch, heads, height, width, dim, kernel;
    const int64_t *key_rows, *key_cols, *bias_rows, *bias_cols, *row_order;
    const float *rpb;  // (heads, 2K-1, 2K-1) or null
    float scale;
};

// One query: CH = D / 16 vectors of 16 lanes.
template <typename T, int CH>
inline void attend(const Problem &p, const T *query_in, const T *keys, const T *values, T *out,
                   const int64_t *rows, const int64_t *bias_rows, const int64_t *cols, const int64_t *bias_cols,
                   const float *bias) {
    const int64_t K = p.kernel, window = K * K, side = 2 * K - 1, vectors = (window + 15) / 16;
    const int64_t k_row = p.k_strides[2], k_col = p.k_strides[3], v_row = p.v_strides[2], v_col = p.v_strides[3];
    f32x16 query[CH];
    for (int x = 0; x < CH; x++) query[x] = load(query_in + 16 * x) * p.scale;
    alignas(64) float logits[(kMaxKernel * kMaxKernel + 15) / 16 * 16];
    for (int64_t i = 0; i < K; i++) {
        const T *key_row = keys + rows[i] * k_row;
        for (int64_t first = 0; first < K; first += 8) {
            const int64_t count = K - first < 8 ? K - first : 8;
            const T *key[8];
            for (int u = 0; u < 8; u++) key[u] = key_row + cols[first + (u < count ? u : 0)] * k_col;
            f32x16 dots[8] = {};
            for (int x = 0; x < CH; x++)
                for (int u = 0; u < 8; u++) dots[u] += query[x] * load(key[u] + 16 * x);
            const f32x16 sums = sum8(dots);
            for (int u = 0; u < count; u++) logits[i * K + first + u] = sums[kSumLane[u]];
        }
        if (bias)
            for (int64_t j = 0; j < K; j++) logits[i * K + j] += bias[bias_rows[i] * side + bias_cols[j]];
    }
    for (int64_t n = window; n < vectors * 16; n++) logits[n] = -INFINITY;
    f32x16 top = load(logits);
    for (int64_t x = 1; x < vectors; x++) top = vmax(top, load(logits + 16 * x));
    float peak = top[0];
    for (int l = 1; l < 16; l++) peak = top[l] > peak ? top[l] : peak;
    f32x16 total = {};
    for (int64_t x = 0; x < vectors; x++) {
        const f32x16 e = exp_nonpositive(load(logits + 16 * x) - peak);
        store(logits + 16 * x, e);
        total += e;
    }
    float sum = 0.0f;
    for (int l = 0; l < 16; l++) sum += total[l];
    const float inverse = 1.0f / sum;
    f32x16 acc[CH] = {};
    for (int64_t i = 0; i < K; i++) {
        const T *value_row = values + rows[i] * v_row;
        for (int64_t j = 0; j < K; j++) {
            const T *value = value_row + cols[j] * v_col;
            const f32x16 weight = splat(logits[i * K + j] * inverse);
            for (int x = 0; x < CH; x++) acc[x] += weight * load(value + 16 * x);
        }
    }
    for (int x = 0; x < CH; x++) store(out + 16 * x, acc[x]);
}

// Query rows [begin, end) of the (batch, head, row-in-group-order) sequence.
template <typename T, int CH>
void attend_rows(const Problem &p, int64_t begin, int64_t end) {
    const T *q = static_cast<const T *>(p.q), *k = static_cast<const T *>(p.k), *v = static_cast<const T *>(p.v);
    T *out = static_cast<T *>(p.out);
    const int64_t K = p.kernel, side = 2 * K - 1;
    for (int64_t index = begin; index < end; index++) {
        const int64_t b = index / (p.heads * p.height), h = index / p.height % p.heads;
        // Rows in dilation-group order: successive rows share all but one row of keys.
        const int64_t r = p.row_order[index % p.height];
        const T *keys = k + b * p.k_strides[0] + h * p.k_strides[1];
        const T *values = v + b * p.v_strides[0] + h * p.v_strides[1];
        const float *bias = p.rpb ? p.rpb + h * side * side : nullptr;
        const T *q_row = q + b * p.q_strides[0] + h * p.q_strides[1] + r * p.q_strides[2];
        T *out_row = out + b * p.out_strides[0] + h * p.out_strides[1] + r * p.out_strides[2];
        for (int64_t c = 0; c < p.width; c++)
            attend<T, CH>(p, q_row + c * p.q_strides[3], keys, values, out_row + c * p.out_strides[3],
                          p.key_rows + r * K, p.bias_rows + r * K, p.key_cols + c * K, p.bias_cols + c * K, bias);
    }
}

template <typename T, int CH>
void run(const Problem &p, int threads) {
    parallel_for(p.batch * p.heads * p.height, threads,
                 [&p](int64_t begin, int64_t end) { attend_rows<T, CH>(p, begin, end); });
}

template <typename T>
int dispatch(const Problem &p, int threads) {
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
    const void *x;  // (B, rows_in, W, 2 * hidden) with unit channel stride: gates, then values
    void *out;      // (B, rows, W, hidden) with unit channel stride
    const int64_t *x_strides, *out_strides;  // batch, row, column (elements)
    int64_t batch, rows, rows_in, first, width, hidden;
    const float *weight;  // (9, 2 * hidden): tap-major, so a tap's channels are contiguous
    const float *bias;    // (2 * hidden) or null
};

// gelu(conv(gates)) * conv(values) at one pixel, for channels [c, c + lanes of V).
template <typename V, typename T>
inline V gated_pixel(const GatedConv &g, const T *image, int64_t row, int64_t col, int64_t c) {
    V gate = g.bias ? load_as<V>(g.bias + c) : V{};
    V value = g.bias ? load_as<V>(g.bias + g.hidden + c) : V{};
    for (int64_t i = 0; i < 3; i++) {
        const int64_t r = row + i - 1;
        if (r < 0 || r >= g.rows_in) continue;  // zero padding at the image's top and bottom
        for (int64_t j = 0; j < 3; j++) {
            const int64_t col_j = col + j - 1;
            if (col_j < 0 || col_j >= g.width) continue;
            const T *pixel = image + r * g.x_strides[1] + col_j * g.x_strides[2] + c;
            const float *w = g.weight + (i * 3 + j) * 2 * g.hidden + c;
            gate += load_as<V>(w) * load_as<V>(pixel);
            value += load_as<V>(w + g.hidden) * load_as<V>(pixel + g.hidden);
        }
    }
    return gelu(gate) * value;
}

// Columns per tile: a tile's three input rows (up to 64 pixels of 2C channels each) stay
// in L2 while the thread walks down its rows, so each input row is read from memory once.
constexpr int64_t kGatedTile = 64;

template <typename T>
void gated_rows(const GatedConv &g, int64_t begin, int64_t end) {
    const T *x = static_cast<const T *>(g.x);
    T *out = static_cast<T *>(g.out);
    for (int64_t tile = 0; tile < g.width; tile += kGatedTile) {
        const int64_t tile_end = tile + kGatedTile < g.width ? tile + kGatedTile : g.width;
        for (int64_t index = begin; index < end; index++) {
            const int64_t b = index / g.rows, row = index % g.rows;
            const T *image = x + b * g.x_strides[0];
            T *out_row = out + b * g.out_strides[0] + row * g.out_strides[1];
            for (int64_t col = tile; col < tile_end; col++) {
                T *pixel = out_row + col * g.out_strides[2];
                if (g.hidden < 16) {
                    for (int64_t c = 0; c < g.hidden; c++)
                        store(pixel + c, gated_pixel<float>(g, image, row + g.first, col, c));
                    continue;
                }
                // The last vector ends at the last channel, overlapping the one before: the
                // channels they share are computed twice, identically.
                for (int64_t c = 0; c < g.hidden; c += 16) {
                    const int64_t first = c + 16 <= g.hidden ? c : g.hidden - 16;
                    store(pixel + first, gated_pixel<f32x16>(g, image, row + g.first, col, first));
                }
            }
        }
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


// out = gelu(dwconv3x3(x[gates])) * dwconv3x3(x[values]) for output rows [0, rows), which
// read input rows [first - 1, first + rows + 1) of the rows_in given (beyond them: zeros).
int gated_dwconv_gelu(int bfloat16, const void *x, void *out, const int64_t *x_strides, const int64_t *out_strides,
                      int64_t batch, int64_t rows, int64_t rows_in, int64_t first, int64_t width, int64_t hidden,
                      const float *weight, const float *bias, int threads) {
    const GatedConv g{x, out, x_strides, out_strides, batch, rows, rows_in, first, width, hidden, weight, bias};
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
                 const int64_t *row_order, const float *rpb, float scale, int threads) {
    if (kernel > kMaxKernel) return 1;
    const Problem p{q, k, v, out, q_strides, k_strides, v_strides, out_strides, batch, heads, height, width, dim,
                    kernel, key_rows, key_cols, bias_rows, bias_cols, row_order, rpb, scale};
    return bfloat16 ? dispatch<uint16_t>(p, threads) : dispatch<float>(p, threads);
}

}
