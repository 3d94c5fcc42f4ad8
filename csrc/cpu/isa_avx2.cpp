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
#endif

#include "cpu/isa_instance.h"

namespace micro_fast {

bool isa_kernels_avx2(IsaKernels* out) {
#if defined(MF_SIMD_AVX2)
  fill_isa_kernels<Avx2F32, Avx2F64, 6, 2>(out);
  return true;
#else
  (void)out;
  return false;
#endif
}

}  // namespace micro_fast
