// Per-ISA tile kernels, chosen at run time (see topk_similarity.cpp).
#pragma once

#include "cpu/topk_tile.h"

namespace micro_fast {

// Each returns false when that ISA was not compiled in.
bool tile_kernels_avx512(TileKernel<float>* f32, TileKernel<double>* f64);
bool tile_kernels_avx2(TileKernel<float>* f32, TileKernel<double>* f64);
void tile_kernels_generic(TileKernel<float>* f32, TileKernel<double>* f64);

}  // namespace micro_fast
