// Dilated neighbourhood attention (the `native` backend), query by query, for float32 and
// bfloat16. The kernels are templates over an instruction set's policy `Isa` (see
// isa_portable.h), whose hooks may take over parts of a call with faster paths.
#pragma once

#include "parallel.h"
#include "simd.h"

#include <algorithm>
#include <vector>

namespace dinat {

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

// One query: CH = D / 16 vectors of 16 lanes. `bias` holds, in the logits' layout, the
// relative position bias of every key for this query's row and column pattern, and -inf
// in lanes that hold no key.
template <typename Isa, typename T, int CH>
inline void attend(const Problem &p, const LogitLayout &layout, const T *query_in, const Window<T> &keys,
                   const Window<T> &values, T *out, const float *bias) {
    const int64_t K = p.kernel;
    const typename Isa::template Dots<T, CH> query(query_in, p.scale);
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
    if (Isa::template pair_values<T, CH>(layout, K, logits, values, out)) return;
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

// Bytes of keys and values a strip of query columns may keep in L2 while its rows are
// walked: less than the L2 of any x86 core of the last decade (512 KB on Zen 2 and 3).
constexpr int64_t kStripBytes = 384 << 10;

// Query columns (in group order) attended per strip: the strip's K key rows stay in L2
// from one query row to the next, which shares all but one of them. Whole rows of a wide
// map (7 key rows of 1280 columns, keys and values, float32: 3.4 MB) fell out of L2, and
// 1280x720 took 1.6-2.3x the time per query of 256x256.
template <typename T>
int64_t strip_columns(const Problem &p) {
    const int64_t per_column = p.kernel * 2 * p.dim * int64_t(sizeof(T));
    const int64_t columns = kStripBytes / per_column;
    return columns < 32 ? 32 : columns;
}

// Group-order columns [first, last) of query rows [begin, end).
template <typename Isa, typename T, int CH>
void attend_strip(const Problem &p, const LogitLayout &layout, const ColumnPatterns &patterns,
                  const ColumnOffsets &columns, const uint8_t *skip, int64_t begin, int64_t end, int64_t first,
                  int64_t last) {
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
        for (int64_t i = first; i < last; i++) {
            if (skip && skip[i]) continue;
            const int64_t c = p.col_order[i];
            attend<Isa, T, CH>(p, layout, q_row + c * p.q_strides[3], Window<T>{keys, key_rows, &columns.keys[c * K]},
                          Window<T>{values, value_rows, &columns.values[c * K]}, out_row + c * p.out_strides[3],
                          table + patterns.of_column[c] * size);
        }
    }
}

// Query rows [begin, end) of the (batch, head, row-in-group-order) sequence, a strip of
// columns at a time. Group-order positions flagged in `skip` (null: none) are left alone.
template <typename Isa, typename T, int CH>
void attend_rows(const Problem &p, const LogitLayout &layout, const ColumnPatterns &patterns,
                 const ColumnOffsets &columns, const uint8_t *skip, int64_t begin, int64_t end) {
    const int64_t strip = strip_columns<T>(p);
    for (int64_t first = 0; first < p.width; first += strip)
        attend_strip<Isa, T, CH>(p, layout, patterns, columns, skip, begin, end, first,
                                 first + strip < p.width ? first + strip : p.width);
}

// An instruction set's fast paths first (the queries they attended are skipped), then
// every other query one by one.
template <typename Isa, typename T, int CH>
void run(const Problem &p, int threads) {
    const LogitLayout layout(p.kernel);
    const ColumnPatterns patterns(p.bias_cols, p.width, p.kernel);
    const ColumnOffsets columns(p);
    const std::vector<uint8_t> covered = Isa::template lane_tiles<T, CH>(p, patterns, threads);
    const uint8_t *skip = covered.empty() ? nullptr : covered.data();
    parallel_for(p.batch * p.heads * p.height, threads, [&](int64_t begin, int64_t end) {
        attend_rows<Isa, T, CH>(p, layout, patterns, columns, skip, begin, end);
    });
}

template <typename Isa, typename T>
int dispatch(const Problem &p, int threads) {
    if (Isa::template small_groups<T>(p, threads)) return 0;
    switch (p.dim) {
        case 16: run<Isa, T, 1>(p, threads); return 0;
        case 32: run<Isa, T, 2>(p, threads); return 0;
        case 48: run<Isa, T, 3>(p, threads); return 0;
        case 64: run<Isa, T, 4>(p, threads); return 0;
        case 96: run<Isa, T, 6>(p, threads); return 0;
        case 128: run<Isa, T, 8>(p, threads); return 0;
        case 192: run<Isa, T, 12>(p, threads); return 0;
        case 256: run<Isa, T, 16>(p, threads); return 0;
        case 384: run<Isa, T, 24>(p, threads); return 0;
        default: return 1;
    }
}

}  // namespace dinat
