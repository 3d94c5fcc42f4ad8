// Portable instantiation of the tile and CSR row kernels: 16-byte vectors (SSE2 on x86-64,
// NEON on AArch64). x86-64 has 16 such registers: 4 x 8 float tiles (8 accumulators); AArch64
// has 32: 8 x 8.
// C++17 mode turns off floating-point contraction; here it lets a * b + c become one fused
// multiply-add where the target has one (NEON's fmla; SSE2 has none, so x86-64 is unchanged).
#pragma GCC optimize("fp-contract=fast")

#include "cpu/isa_instance.h"

namespace micro_fast {

void isa_kernels_generic(IsaKernels* out) {
#if defined(__aarch64__)
  fill_isa_kernels<PortableSimd<float>, PortableSimd<double>, 8, 2>(out);
#else
  fill_isa_kernels<PortableSimd<float>, PortableSimd<double>, 4, 2>(out);
#endif
}

}  // namespace micro_fast
