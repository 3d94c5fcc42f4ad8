// AVX-512 instantiation of the tile and CSR row kernels (8 x 32 float, 8 x 16 double registers).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")
#define MF_SIMD_AVX512 1
#endif

#include "cpu/simd.h"
#include "cpu/isa.h"

namespace micro_fast {

bool isa_kernels_avx512(IsaKernels* out) {
#if defined(MF_SIMD_AVX512)
  out->f32 = {FusedTile<Avx512F32, 8, 2>::descriptor(), SpmmImpl<float>::descriptor(),
               dense_kernel<float>(&DenseTile<Avx512F32, 8, 2>::gemm_acc)};
  out->f64 = {FusedTile<Avx512F64, 8, 2>::descriptor(), SpmmImpl<double>::descriptor(),
               dense_kernel<double>(&DenseTile<Avx512F64, 8, 2>::gemm_acc)};
  return true;
#else
  (void)out;
  return false;
#endif
}

}  // namespace micro_fast
