// AVX2 + FMA instantiation of the fused tile kernels (6 x 16 float, 6 x 8 double registers).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
#define MF_SIMD_AVX2 1
#endif

#include "cpu/simd.h"
#include "cpu/topk_kernels.h"

namespace micro_fast {

bool tile_kernels_avx2(TileKernel<float>* f32, TileKernel<double>* f64) {
#if defined(MF_SIMD_AVX2)
  *f32 = FusedTile<Avx2F32, 6, 2>::descriptor();
  *f64 = FusedTile<Avx2F64, 6, 2>::descriptor();
  return true;
#else
  (void)f32;
  (void)f64;
  return false;
#endif
}

}  // namespace micro_fast
