// Minimal SIMD traits used by the tile kernels. One struct per (ISA, scalar type); a kernel
// template is instantiated once per ISA in its own translation unit compiled for that ISA, and
// picked at run time, so one binary runs on any x86-64 (or other) CPU.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace micro_fast {

// Portable fallback: one lane.
template <typename TT>
struct ScalarSimd {
  using T = TT;
  using V = TT;
  static constexpr int W = 1;
  static inline V zero() { return T(0); }
  static inline V load(const T* p) { return *p; }
  static inline void store(T* p, V v) { *p = v; }
  static inline V set1(T x) { return x; }
  static inline V fma(V a, V b, V c) { return a * b + c; }
  static inline V max(V a, V b) { return a > b ? a : b; }
  static inline uint32_t ge_mask(V a, V t) { return a >= t ? 1u : 0u; }
};

#if defined(MF_SIMD_AVX512)
struct Avx512F32 {
  using T = float;
  using V = __m512;
  static constexpr int W = 16;
  static inline V zero() { return _mm512_setzero_ps(); }
  static inline V load(const T* p) { return _mm512_loadu_ps(p); }
  static inline void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static inline V set1(T x) { return _mm512_set1_ps(x); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V max(V a, V b) { return _mm512_max_ps(a, b); }
  static inline uint32_t ge_mask(V a, V t) { return _mm512_cmp_ps_mask(a, t, _CMP_GE_OQ); }
};
struct Avx512F64 {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8;
  static inline V zero() { return _mm512_setzero_pd(); }
  static inline V load(const T* p) { return _mm512_loadu_pd(p); }
  static inline void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static inline V set1(T x) { return _mm512_set1_pd(x); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static inline V max(V a, V b) { return _mm512_max_pd(a, b); }
  static inline uint32_t ge_mask(V a, V t) { return _mm512_cmp_pd_mask(a, t, _CMP_GE_OQ); }
};
#endif

#if defined(MF_SIMD_AVX2)
struct Avx2F32 {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  static inline V zero() { return _mm256_setzero_ps(); }
  static inline V load(const T* p) { return _mm256_loadu_ps(p); }
  static inline void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static inline V set1(T x) { return _mm256_set1_ps(x); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V max(V a, V b) { return _mm256_max_ps(a, b); }
  static inline uint32_t ge_mask(V a, V t) {
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_GE_OQ)));
  }
};
struct Avx2F64 {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  static inline V zero() { return _mm256_setzero_pd(); }
  static inline V load(const T* p) { return _mm256_loadu_pd(p); }
  static inline void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static inline V set1(T x) { return _mm256_set1_pd(x); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static inline V max(V a, V b) { return _mm256_max_pd(a, b); }
  static inline uint32_t ge_mask(V a, V t) {
    return static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(a, t, _CMP_GE_OQ)));
  }
};
#endif

}  // namespace micro_fast
