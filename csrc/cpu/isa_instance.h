// The kernel table of one instruction set, for the isa_*.cpp files: each compiles this with its
// own `#pragma GCC target`, so the same templates become AVX-512, AVX2 or portable code.
#pragma once

#include "cpu/simd.h"
#include "cpu/isa.h"

namespace micro_fast {
namespace {

// MR x NV: the register tile of the dense products (MR rows by NV vectors), sized so that the
// MR * NV accumulators, NV loaded vectors and one broadcast fit the ISA's vector registers.
template <typename F32, typename F64, int MR, int NV>
void fill_isa_kernels(IsaKernels* out) {
  out->f32 = {FusedTile<F32, MR, NV>::descriptor(), SpmmImpl<F32>::descriptor(),
              dense_kernel<F32, MR, NV>(), row_gemm_kernel<F32, MR, NV>(),
              {fusion_row_kernel_of<F32>(1), fusion_row_kernel_of<F32>(2),
               fusion_row_kernel_of<F32>(3), fusion_row_kernel_of<F32>(0)}};
  out->f64 = {FusedTile<F64, MR, NV>::descriptor(), SpmmImpl<F64>::descriptor(),
              dense_kernel<F64, MR, NV>(), row_gemm_kernel<F64, MR, NV>(),
              {fusion_row_kernel_of<F64>(1), fusion_row_kernel_of<F64>(2),
               fusion_row_kernel_of<F64>(3), fusion_row_kernel_of<F64>(0)}};
}

}  // namespace
}  // namespace micro_fast

// Defines `bool isa_kernels_<name>(IsaKernels*)` for a translation unit compiled for that
// instruction set.
#define MF_DEFINE_ISA_KERNELS(name, F32, F64, MR, NV) \
  namespace micro_fast {                            \
  bool isa_kernels_##name(IsaKernels* out) {        \
    fill_isa_kernels<F32, F64, MR, NV>(out);        \
    return true;                                    \
  }                                                 \
  }
