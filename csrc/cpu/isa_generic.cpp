// Portable instantiation of the tile and CSR row kernels (scalar code the compiler may vectorize).
#include "cpu/simd.h"
#include "cpu/isa.h"

namespace micro_fast {

void isa_kernels_generic(IsaKernels* out) {
  out->f32 = {FusedTile<ScalarSimd<float>, 4, 8>::descriptor(), SpmmImpl<float>::descriptor(),
               dense_kernel<float>(&DenseTile<ScalarSimd<float>, 4, 8>::gemm_acc)};
  out->f64 = {FusedTile<ScalarSimd<double>, 4, 8>::descriptor(), SpmmImpl<double>::descriptor(),
               dense_kernel<double>(&DenseTile<ScalarSimd<double>, 4, 8>::gemm_acc)};
}

}  // namespace micro_fast
