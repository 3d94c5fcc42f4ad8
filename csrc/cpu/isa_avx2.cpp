// AVX2 + FMA instantiation of the tile and CSR row kernels (6 x 16 float, 6 x 8 double registers).
// Standard headers first, so that they are not compiled under the target pragma.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
#define MF_SIMD_AVX2 1
#include "cpu/isa_instance.h"
MF_DEFINE_ISA_KERNELS(avx2, Avx2F32, Avx2F64, 6, 2)
#else  // not x86-64 GCC/Clang: the instruction set is never offered
#include "cpu/isa.h"
bool micro_fast::isa_kernels_avx2(micro_fast::IsaKernels*) { return false; }
#endif
