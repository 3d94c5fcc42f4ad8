#include "cpu/isa.h"

#include <mutex>

#include "common.h"

namespace micro_fast {
namespace {

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

IsaKernels make_kernels(const std::string& want) {
  IsaKernels ks;
  if ((want == "auto" || want == "avx512") && cpu_has_avx512() && isa_kernels_avx512(&ks)) {
    ks.name = "avx512";
    return ks;
  }
  MF_CHECK(want != "avx512", "simd isa 'avx512' is not supported by this CPU or build");
  if ((want == "auto" || want == "avx2") && cpu_has_avx2() && isa_kernels_avx2(&ks)) {
    ks.name = "avx2";
    return ks;
  }
  MF_CHECK(want != "avx2", "simd isa 'avx2' is not supported by this CPU or build");
  MF_CHECK(want == "auto" || want == "generic",
           "simd isa must be one of 'auto', 'avx512', 'avx2', 'generic', got '" + want + "'");
  isa_kernels_generic(&ks);
  ks.name = "generic";
  return ks;
}

std::mutex g_mutex;

IsaKernels& current() {
  static IsaKernels ks = make_kernels("auto");
  return ks;
}

}  // namespace

template <>
const IsaKernelsT<float>& isa_kernels<float>() { return current().f32; }
template <>
const IsaKernelsT<double>& isa_kernels<double>() { return current().f64; }

std::string simd_isa() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return current().name;
}

void set_simd_isa(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  current() = make_kernels(name);
}

}  // namespace micro_fast
