// Portable instantiation of the tile and CSR row kernels (scalar code the compiler may vectorize).
#include "cpu/isa_instance.h"

namespace micro_fast {

void isa_kernels_generic(IsaKernels* out) {
  fill_isa_kernels<ScalarSimd<float>, ScalarSimd<double>, 4, 8>(out);
}

}  // namespace micro_fast
