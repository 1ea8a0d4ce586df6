// The portable kernels' policy: no instruction-set fast paths, so every call runs the
// generic templates, vectorised for whatever the compile unit's flags allow.
#pragma once

#include "attention.h"
#include "gate.h"

#include <vector>

namespace dinat {

struct PortableIsa {
    // A query's dot products with its keys.
    template <typename T, int CH>
    using Dots = QueryDots<T, CH>;

    // The probability-weighted sum of a query's values, when a faster path can form it.
    template <typename T, int CH>
    static bool pair_values(const LogitLayout &, int64_t, const float *, const Window<T> &, T *) {
        return false;
    }

    // Queries attended in bulk before the query-by-query pass: a flag per group-order
    // column (empty: none).
    template <typename T, int CH>
    static std::vector<uint8_t> lane_tiles(const Problem &, const ColumnPatterns &, int) {
        return {};
    }

    // The whole call, when its dilation groups are small enough to pack.
    template <typename T>
    static bool small_groups(const Problem &, int) {
        return false;
    }

    // The whole gate call.
    static bool gate(const GatedConv &, bool, int) { return false; }
};

}  // namespace dinat
