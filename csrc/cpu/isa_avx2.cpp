// AVX2 + FMA instantiation of the tile and CSR row kernels (6 x 16 float, 6 x 8 double registers).
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

#include "cpu/simd.h"
#include "cpu/isa.h"

namespace micro_fast {

bool isa_kernels_avx2(IsaKernels* out) {
#if defined(MF_SIMD_AVX2)
  out->f32 = {FusedTile<Avx2F32, 6, 2>::descriptor(), SpmmImpl<float>::descriptor(),
               dense_kernel<float>(&DenseTile<Avx2F32, 6, 2>::gemm_acc)};
  out->f64 = {FusedTile<Avx2F64, 6, 2>::descriptor(), SpmmImpl<double>::descriptor(),
               dense_kernel<double>(&DenseTile<Avx2F64, 6, 2>::gemm_acc)};
  return true;
#else
  (void)out;
  return false;
#endif
}

}  // namespace micro_fast
