// The SIMD vocabulary of the compiled core: one struct per (instruction set, scalar type), each
// with the same members, so every kernel (tiles, row passes, CSR rows) is written once as a
// template over it. A kernel template is instantiated once per ISA in a translation unit
// compiled for that ISA (isa_avx512.cpp, isa_avx2.cpp, isa_generic.cpp) and picked at run time,
// so one binary runs on any CPU.
//
// Members: T (scalar), V (vector), W (lanes); zero, load, store, set1, add, sub, mul,
// fma(a, b, c) = a * b + c, max, min, ge_mask (bit q set when a[q] >= t[q]), hsum, exp, and
// stream (a store that may bypass the cache; kStreams says whether it does) and fence (makes
// streamed stores visible).
//
// Every ISA uses the same single-precision exp (Cephes' range reduction and degree-6
// polynomial, inputs clamped to [-87.3, 88.3], round-to-nearest exponent), so the ISAs agree
// to the rounding of their fused multiply-adds. exp2 is the cheaper base-2 form for callers
// that fold log2(e) into an affine argument they compute anyway: 2^y = 2^k 2^r with k the
// nearest integer and r = y - k in [-1/2, 1/2] (exact), 2^r a degree-5 polynomial (relative
// error below 2e-7, against the ~1e-6 of rounding y itself). exp2 does not clamp: its callers
// (the fixed-shift row passes of dense_tile.h) keep y within [-126, 126], where 2^k is a normal
// float, and a NaN argument gives NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace micro_fast {

namespace exp_poly {
constexpr float kLo = -87.3f, kHi = 88.3f, kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500E-4f, kP1 = 1.3981999507E-3f, kP2 = 8.3334519073E-3f,
                kP3 = 4.1665795894E-2f, kP4 = 1.6666665459E-1f, kP5 = 5.0000001201E-1f;
// Adding and subtracting 1.5 * 2^23 rounds |x| < 2^22 to the nearest integer (ties to even)
// with plain float arithmetic, where no rounding instruction exists.
constexpr float kRound = 12582912.0f;
// minimax fit of (2^r - 1) / r on [-1/2, 1/2] in relative error
constexpr float kE1 = 6.931470036506653e-1f, kE2 = 2.402224242687225e-1f,
                kE3 = 5.550733581185341e-2f, kE4 = 9.671512991189957e-3f,
                kE5 = 1.326472731307149e-3f;
// kRound + 127: after y + kRoundBias the low mantissa bits hold k + 127 (plus 2^22, which a
// shift by 23 pushes out), the biased exponent of 2^k
constexpr float kRoundBias = 12583039.0f;
}  // namespace exp_poly

// Portable: 16-byte GCC vectors, which the compiler lowers to SSE2 on x86-64, NEON on AArch64
// and scalar code elsewhere.
template <typename TT>
struct PortableSimd {
  using T = TT;
  typedef TT V __attribute__((vector_size(16)));
  static constexpr int W = 16 / sizeof(TT);
  static constexpr bool kStreams = false;
  static inline V zero() { return V{}; }
  static inline V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static inline void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static inline void stream(T* p, V v) { store(p, v); }
  static inline void fence() {}
  // x - 0 is x for every x (0 + x is not, for x = -0), so this compiles to a bare splat
  static inline V set1(T x) { return x - V{}; }
  static inline V add(V a, V b) { return a + b; }
  static inline V sub(V a, V b) { return a - b; }
  static inline V mul(V a, V b) { return a * b; }
  static inline V fma(V a, V b, V c) { return a * b + c; }
  static inline V max(V a, V b) { return a > b ? a : b; }
  static inline V min(V a, V b) { return a < b ? a : b; }
  static inline uint32_t ge_mask(V a, V t) {
    uint32_t m = 0;
    for (int q = 0; q < W; ++q) m |= uint32_t(a[q] >= t[q]) << q;
    return m;
  }
  static inline T hsum(V v) {
    T r = T(0);
    for (int q = 0; q < W; ++q) r += v[q];
    return r;
  }
  static inline V exp(V v) {
    if constexpr (sizeof(T) == 4) {
      typedef int32_t VI __attribute__((vector_size(16)));
      using namespace exp_poly;
      v = v < kLo ? V{} + kLo : v;
      v = v > kHi ? V{} + kHi : v;
      const V k = (v * kLog2e + kRound) - kRound;
      const V r = (v - k * kLn2Hi) - k * kLn2Lo;
      V p = V{} + kP0;
      p = p * r + kP1;
      p = p * r + kP2;
      p = p * r + kP3;
      p = p * r + kP4;
      p = p * r + kP5;
      p = p * r * r + r + 1.0f;
      const VI bits = (__builtin_convertvector(k, VI) + 127) << 23;
      V scale;
      std::memcpy(&scale, &bits, sizeof(V));
      return p * scale;
    } else {
      for (int q = 0; q < W; ++q) v[q] = std::exp(v[q]);
      return v;
    }
  }
  static inline V exp2(V v) {
    if constexpr (sizeof(T) == 4) {
      typedef uint32_t VI __attribute__((vector_size(16)));
      using namespace exp_poly;
      const V kb = v + kRoundBias;
      const V r = v - (kb - kRoundBias);
      V p = V{} + kE5;
      p = p * r + kE4;
      p = p * r + kE3;
      p = p * r + kE2;
      p = p * r + kE1;
      p = p * r + 1.0f;
      VI bits;
      std::memcpy(&bits, &kb, sizeof(V));
      bits <<= 23;
      V scale;
      std::memcpy(&scale, &bits, sizeof(V));
      return p * scale;
    } else {
      for (int q = 0; q < W; ++q) v[q] = std::exp2(v[q]);
      return v;
    }
  }
};

#if defined(MF_SIMD_AVX512)
struct Avx512F32 {
  using T = float;
  using V = __m512;
  static constexpr int W = 16;
  static constexpr bool kStreams = true;
  static inline V zero() { return _mm512_setzero_ps(); }
  static inline V load(const T* p) { return _mm512_loadu_ps(p); }
  static inline void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static inline void stream(T* p, V v) {
    if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) _mm512_stream_ps(p, v);
    else store(p, v);
  }
  static inline void fence() { _mm_sfence(); }
  static inline V set1(T x) { return _mm512_set1_ps(x); }
  static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
  static inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V max(V a, V b) { return _mm512_max_ps(a, b); }
  static inline V min(V a, V b) { return _mm512_min_ps(a, b); }
  static inline uint32_t ge_mask(V a, V t) { return _mm512_cmp_ps_mask(a, t, _CMP_GE_OQ); }
  static inline T hsum(V v) { return _mm512_reduce_add_ps(v); }
  // vscalefps applies 2^k exactly, so the integer exponent arithmetic goes away
  static inline V exp(V v) {
    using namespace exp_poly;
    // the clamped operand second: min/max return it when it is NaN, so NaN stays NaN
    const V x = _mm512_min_ps(_mm512_set1_ps(kHi), _mm512_max_ps(_mm512_set1_ps(kLo), v));
    const V k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Hi), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Lo), r);
    V q = _mm512_set1_ps(kP0);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kP1));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kP2));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kP3));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kP4));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kP5));
    q = _mm512_fmadd_ps(_mm512_mul_ps(q, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(q, k);
  }
  static inline V exp2(V v) {
    using namespace exp_poly;
    const V k = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V r = _mm512_sub_ps(v, k);
    V q = _mm512_set1_ps(kE5);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kE4));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kE3));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kE2));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(kE1));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(q, k);
  }
};
struct Avx512F64 {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8;
  static constexpr bool kStreams = true;
  static inline V zero() { return _mm512_setzero_pd(); }
  static inline V load(const T* p) { return _mm512_loadu_pd(p); }
  static inline void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static inline void stream(T* p, V v) {
    if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) _mm512_stream_pd(p, v);
    else store(p, v);
  }
  static inline void fence() { _mm_sfence(); }
  static inline V set1(T x) { return _mm512_set1_pd(x); }
  static inline V add(V a, V b) { return _mm512_add_pd(a, b); }
  static inline V sub(V a, V b) { return _mm512_sub_pd(a, b); }
  static inline V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static inline V max(V a, V b) { return _mm512_max_pd(a, b); }
  static inline V min(V a, V b) { return _mm512_min_pd(a, b); }
  static inline uint32_t ge_mask(V a, V t) { return _mm512_cmp_pd_mask(a, t, _CMP_GE_OQ); }
  static inline T hsum(V v) { return _mm512_reduce_add_pd(v); }
  static inline V exp(V v) {
    alignas(64) double lanes[8];
    _mm512_store_pd(lanes, v);
    for (double& x : lanes) x = std::exp(x);
    return _mm512_load_pd(lanes);
  }
  static inline V exp2(V v) {
    alignas(64) double lanes[8];
    _mm512_store_pd(lanes, v);
    for (double& x : lanes) x = std::exp2(x);
    return _mm512_load_pd(lanes);
  }
};
#endif

#if defined(MF_SIMD_AVX2)
struct Avx2F32 {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  static constexpr bool kStreams = false;
  static inline V zero() { return _mm256_setzero_ps(); }
  static inline V load(const T* p) { return _mm256_loadu_ps(p); }
  static inline void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static inline void stream(T* p, V v) { store(p, v); }
  static inline void fence() {}
  static inline V set1(T x) { return _mm256_set1_ps(x); }
  static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
  static inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V max(V a, V b) { return _mm256_max_ps(a, b); }
  static inline V min(V a, V b) { return _mm256_min_ps(a, b); }
  static inline uint32_t ge_mask(V a, V t) {
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_GE_OQ)));
  }
  static inline T hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // No vscalefps: 2^k is built in the exponent bits (k is in [-126, 127] after the clamp).
  static inline V exp(V v) {
    using namespace exp_poly;
    const V x = _mm256_min_ps(_mm256_set1_ps(kHi), _mm256_max_ps(_mm256_set1_ps(kLo), v));
    const V k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    V r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Hi), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Lo), r);
    V q = _mm256_set1_ps(kP0);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kP1));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kP2));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kP3));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kP4));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kP5));
    q = _mm256_fmadd_ps(_mm256_mul_ps(q, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(q, _mm256_castsi256_ps(bits));
  }
  // the rounding by the magic constant leaves k + 127 in the low bits: no round or convert
  static inline V exp2(V v) {
    using namespace exp_poly;
    const V kb = _mm256_add_ps(v, _mm256_set1_ps(kRoundBias));
    const V r = _mm256_sub_ps(v, _mm256_sub_ps(kb, _mm256_set1_ps(kRoundBias)));
    V q = _mm256_set1_ps(kE5);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kE4));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kE3));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kE2));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kE1));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_castps_si256(kb), 23);
    return _mm256_mul_ps(q, _mm256_castsi256_ps(bits));
  }
};
struct Avx2F64 {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  static constexpr bool kStreams = false;
  static inline V zero() { return _mm256_setzero_pd(); }
  static inline V load(const T* p) { return _mm256_loadu_pd(p); }
  static inline void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static inline void stream(T* p, V v) { store(p, v); }
  static inline void fence() {}
  static inline V set1(T x) { return _mm256_set1_pd(x); }
  static inline V add(V a, V b) { return _mm256_add_pd(a, b); }
  static inline V sub(V a, V b) { return _mm256_sub_pd(a, b); }
  static inline V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static inline V max(V a, V b) { return _mm256_max_pd(a, b); }
  static inline V min(V a, V b) { return _mm256_min_pd(a, b); }
  static inline uint32_t ge_mask(V a, V t) {
    return static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(a, t, _CMP_GE_OQ)));
  }
  static inline T hsum(V v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static inline V exp(V v) {
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, v);
    for (double& x : lanes) x = std::exp(x);
    return _mm256_load_pd(lanes);
  }
  static inline V exp2(V v) {
    alignas(32) double lanes[4];
    _mm256_store_pd(lanes, v);
    for (double& x : lanes) x = std::exp2(x);
    return _mm256_load_pd(lanes);
  }
};
#endif

}  // namespace micro_fast
