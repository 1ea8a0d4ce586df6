// Attention in bfloat16 with AVX512-BF16: products of bfloat16 pairs (vdpbf16ps), query
// lanes for centred windows, and small dilation groups packed once.
#pragma once

#include "attention.h"
#include "simd_bf16.h"

#include <memory>
#include <utility>
#include <vector>

namespace dinat {

// bfloat16 with AVX512-BF16: one instruction per 32 products, exact and summed in float32,
// instead of widening every key; the scale goes on the logits.
template <int CH>
struct QueryDotsBf16 {
    float logit_scale;
    __m512bh query[Chunks<CH>::kCount];
    QueryDotsBf16(const uint16_t *q, float scale) : logit_scale(scale) {
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

// bfloat16 with AVX512-BF16, windows of up to 8 columns (one group of keys per window
// row): the value sum as products of pairs, one instruction per 32 products instead of
// widening every value. Lanes 2m and 2m + 1 of the logits hold the keys of window rows
// 2r and 2r + 1 in the same column (see LogitLayout), so the probabilities, rounded to
// bfloat16 as PyTorch's bfloat16 attention rounds them, pair up as they lie; the two
// rows' values are interleaved to match. An odd last row pairs with zeros.
template <int CH>
inline void pair_values_bf16(const LogitLayout &layout, int64_t K, const float *probabilities, const Window<uint16_t> &values,
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

inline int dispatch_small_groups(const Problem &p, const SmallGroups &groups, int threads) {
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

}  // namespace dinat
