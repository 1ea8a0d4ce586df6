// Which instruction sets this CPU and its operating system can run, read with cpuid and
// xgetbv directly (any GCC or Clang, whichever feature names its builtins know).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace dinat {

constexpr int kAvx2Fma = 1;     // AVX2 and FMA
constexpr int kAvx512 = 2;      // AVX-512 F, BW, DQ and VL
constexpr int kAvx512Bf16 = 4;  // AVX512-BF16

inline int detect_cpu_features() {
#if defined(__x86_64__) || defined(__i386__)
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    const bool fma = ecx & (1u << 12), osxsave = ecx & (1u << 27), avx = ecx & (1u << 28);
    if (!osxsave || !avx) return 0;
    unsigned xcr0_low, xcr0_high;
    __asm__("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    // The OS saves the vector registers on a context switch: YMM (bits 1-2), and for
    // AVX-512 the opmask and ZMM state too (bits 5-7).
    const bool ymm = (xcr0_low & 0x06u) == 0x06u, zmm = (xcr0_low & 0xe6u) == 0xe6u;
    if (!ymm || __get_cpuid_max(0, nullptr) < 7) return 0;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    int bits = 0;
    if (fma && (ebx & (1u << 5))) bits |= kAvx2Fma;
    const unsigned avx512 = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);  // F, DQ, BW, VL
    if ((bits & kAvx2Fma) && zmm && (ebx & avx512) == avx512) bits |= kAvx512;
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    if ((bits & kAvx512) && (eax & (1u << 5))) bits |= kAvx512Bf16;
    return bits;
#else
    return 0;
#endif
}

}  // namespace dinat
