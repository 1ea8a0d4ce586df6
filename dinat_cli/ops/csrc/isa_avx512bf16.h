// The AVX512-BF16 kernels' policy: bfloat16 calls take the paths built on products of
// bfloat16 pairs; float32 calls run the portable templates (at AVX-512 width).
#pragma once

#include "attention_bf16.h"
#include "gate_bf16.h"

#include <type_traits>
#include <vector>

namespace dinat {

struct Avx512Bf16Isa {
    template <typename T, int CH>
    using Dots = std::conditional_t<std::is_same_v<T, uint16_t>, QueryDotsBf16<CH>, QueryDots<T, CH>>;

    // Windows of up to 8 columns (one group of keys per window row) pair their values.
    template <typename T, int CH>
    static bool pair_values(const LogitLayout &layout, int64_t K, const float *probabilities, const Window<T> &values,
                            T *out) {
        if constexpr (std::is_same_v<T, uint16_t>) {
            if (layout.groups_per_row == 1) {
                pair_values_bf16<CH>(layout, K, probabilities, values, out);
                return true;
            }
        }
        return false;
    }

    // Tiles are built for the 7x7 window of every official model and head sizes up to 128
    // only: each window size adds about 2 s to the build. Other windows and the rows'
    // leftover queries are attended query by query.
    template <typename T, int CH>
    static std::vector<uint8_t> lane_tiles(const Problem &p, const ColumnPatterns &patterns, int threads) {
        if constexpr (std::is_same_v<T, uint16_t> && CH <= 8) {
            if (p.kernel == 7) {
                LanePlan plan(p, patterns);
                if (!plan.starts.empty()) {
                    run_tiles<7, CH>(p, plan, patterns, threads);
                    return std::move(plan.covered);
                }
            }
        }
        return {};
    }

    template <typename T>
    static bool small_groups(const Problem &p, int threads) {
        if constexpr (std::is_same_v<T, uint16_t>) {
            SmallGroups groups;
            return SmallGroups::apply(p, groups) && dispatch_small_groups(p, groups, threads) == 0;
        }
        return false;
    }

    static bool gate(const GatedConv &g, bool bfloat16, int threads) {
        if (!bfloat16 || g.hidden % 32 != 0) return false;
        const PackedGate packed = pack_gate(g);
        parallel_for(g.batch * g.rows, threads,
                     [&g, &packed](int64_t begin, int64_t end) { gated_rows_bf16(g, packed, begin, end); });
        return true;
    }
};

}  // namespace dinat
