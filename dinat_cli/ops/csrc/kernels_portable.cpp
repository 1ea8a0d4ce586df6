// The portable variant: the generic kernels, compiled once per instruction set (x86-64
// baseline, AVX2+FMA, AVX-512; other architectures: their baseline) by the flags the build
// gives this file (see cpu_variants.py).
#include "isa_portable.h"

using Isa = dinat::PortableIsa;

#include "entry_points.h"
