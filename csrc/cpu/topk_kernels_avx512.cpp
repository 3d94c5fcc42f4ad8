// AVX-512 instantiation of the fused tile kernels (8 x 32 float, 8 x 16 double registers).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")
#define MF_SIMD_AVX512 1
#endif

#include "cpu/simd.h"
#include "cpu/topk_kernels.h"

namespace micro_fast {

bool tile_kernels_avx512(TileKernel<float>* f32, TileKernel<double>* f64) {
#if defined(MF_SIMD_AVX512)
  *f32 = FusedTile<Avx512F32, 8, 2>::descriptor();
  *f64 = FusedTile<Avx512F64, 8, 2>::descriptor();
  return true;
#else
  (void)f32;
  (void)f64;
  return false;
#endif
}

}  // namespace micro_fast
