// Run-time choice of the instruction set for the kernels that are compiled once per ISA
// (isa_avx512.cpp, isa_avx2.cpp, isa_generic.cpp), so one binary runs on any CPU.
#pragma once

#include <string>

#include "cpu/dense_tile.h"
#include "cpu/fusion_rows.h"
#include "cpu/row_gemm.h"
#include "cpu/spmm_rows.h"
#include "cpu/topk_tile.h"

namespace micro_fast {

// Tile blocks (rows per block) are rounded up to a multiple of this, whatever the ISA's register
// tile: every ISA then splits a problem into the same tasks, so shards computed on machines of
// different instruction sets still add up (a block need not be a multiple of a tile's rows;
// its last row panel is padded).
constexpr int64_t kBlockQuantum = 32;
inline int64_t quantized_block(int64_t requested, int64_t fallback) {
  const int64_t b = requested > 0 ? requested : fallback;
  return (b + kBlockQuantum - 1) / kBlockQuantum * kBlockQuantum;
}

template <typename T>
struct IsaKernelsT {
  TileKernel<T> tile;
  SpmmKernel<T> spmm;
  DenseKernel<T> dense;
  RowGemmKernel<T> row_gemm;
  // fused-view row passes for 1, 2, 3 and any number (up to kMaxFusedViews) of views
  FusionRowKernel<T> fusion_rows[4];
  const FusionRowKernel<T>& fusion(int64_t views) const {
    return fusion_rows[views < 4 ? views - 1 : 3];
  }
};

struct IsaKernels {
  IsaKernelsT<float> f32;
  IsaKernelsT<double> f64;
  std::string name;
};

// Each fills `out` and returns false when that ISA was not compiled in.
bool isa_kernels_avx512(IsaKernels* out);
bool isa_kernels_avx2(IsaKernels* out);
void isa_kernels_generic(IsaKernels* out);

template <typename T>
const IsaKernelsT<T>& isa_kernels();

// "avx512", "avx2" or "generic"; set_simd_isa forces one ("auto" restores the best), for tests.
std::string simd_isa();
void set_simd_isa(const std::string& name);

}  // namespace micro_fast
