// The AVX512-BF16 variant: the generic kernels at AVX-512 width, and bfloat16 paths built
// on products of bfloat16 pairs (vdpbf16ps).
#include "isa_avx512bf16.h"

using Isa = dinat::Avx512Bf16Isa;

#include "entry_points.h"
