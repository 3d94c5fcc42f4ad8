// AVX-512 instantiation of the tile and CSR row kernels (8 x 32 float, 8 x 16 double registers).
// Standard headers first, so that they are not compiled under the target pragma.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsics (max, min,
// scalef, reductions) as uninitialized when they are inlined here; they are masked-off
// operands, never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")
#define MF_SIMD_AVX512 1
#include "cpu/isa_instance.h"
MF_DEFINE_ISA_KERNELS(avx512, Avx512F32, Avx512F64, 8, 2)
#else  // not x86-64 GCC/Clang: the instruction set is never offered
#include "cpu/isa.h"
bool micro_fast::isa_kernels_avx512(micro_fast::IsaKernels*) { return false; }
#endif
