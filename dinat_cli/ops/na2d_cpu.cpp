// Dilated neighbourhood attention on CPU: the `native` backend's kernel (see native.py).
//
// One query at a time: logits against the K*K keys of its window plus the relative
// position bias, softmax in float32, weighted sum of the values. The head dimension is
// processed in 16-lane vectors (GCC/Clang vector extensions, compiled for the host CPU),
// so D must be a multiple of 16; native.py pads other sizes. float32 and bfloat16
// tensors; bfloat16 is computed in float32 and rounded to nearest even on store.

#include <cmath>
#include <cstdint>
#include <thread>
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
inline f32x16 load(const float *p) { return *(const f32x16u *)p; }
inline f32x16 load(const uint16_t *p) { return (f32x16)(__builtin_convertvector(*(const u16x16u *)p, u32x16) << 16); }
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
    const int64_t rows = p.batch * p.heads * p.height;
    const int64_t workers = threads < 1 ? 1 : (threads > rows ? rows : threads);
    std::vector<std::thread> pool;
    for (int64_t w = 1; w < workers; w++)
        pool.emplace_back(attend_rows<T, CH>, std::cref(p), rows * w / workers, rows * (w + 1) / workers);
    attend_rows<T, CH>(p, 0, rows / workers);
    for (auto &thread : pool) thread.join();
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

}  // namespace

extern "C" {

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
