// Run-time choice of the instruction set for the kernels that are compiled once per ISA
// (isa_avx512.cpp, isa_avx2.cpp, isa_generic.cpp), so one binary runs on any CPU.
#pragma once

#include <string>

#include "cpu/dense_tile.h"
#include "cpu/spmm_rows.h"
#include "cpu/topk_tile.h"

namespace micro_fast {

template <typename T>
struct IsaKernelsT {
  TileKernel<T> tile;
  SpmmKernel<T> spmm;
  DenseKernel<T> dense;
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
