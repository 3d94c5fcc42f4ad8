// Portable instantiation of the fused tile kernels (scalar code the compiler may vectorize).
#include "cpu/simd.h"
#include "cpu/topk_kernels.h"

namespace micro_fast {

void tile_kernels_generic(TileKernel<float>* f32, TileKernel<double>* f64) {
  *f32 = FusedTile<ScalarSimd<float>, 4, 8>::descriptor();
  *f64 = FusedTile<ScalarSimd<double>, 4, 8>::descriptor();
}

}  // namespace micro_fast
