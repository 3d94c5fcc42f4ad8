// Dense tile kernels for the blockwise contrastive loss, compiled once per ISA (isa_*.cpp):
//
//   gemm_acc:  C[mb, d] += P X, with P(r, k) = p[r * rs + k * cs] (so P or P^T of a stored
//              tile) and X[kb, d] row-major; MR x (NV * W) register tiles.
//   exp_inplace: elementwise exp of a buffer (a vectorized polynomial for float).
//
// The score tiles themselves come from FusedTile::tile (topk_tile.h) with `last == false`,
// which stores the full tile instead of selecting from it.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace micro_fast {

template <typename T>
struct DenseKernel {
  void (*gemm_acc)(const T* p, int64_t rs, int64_t cs, int mb, int kb, const T* x, int64_t ldx,
                   int d, T* c, int64_t ldc);
  void (*exp_inplace)(T* x, int64_t n);
  // e[j] = exp(a * s[j] - (b ? b[j] : b0))
  void (*exp_affine)(const T* s, T a, const T* b, T b0, int64_t n, T* e);
  T (*max)(const T* x, int64_t n);
  double (*sum)(const T* x, int64_t n);
  void (*max_into)(T* m, const T* x, int64_t n);       // m = max(m, x)
  void (*add_into)(double* acc, const T* x, int64_t n);  // acc += x
  void (*mul_add)(T* y, const T* x, const T* w, T a, int64_t n);  // y = a * y + x * w
  // returns sum_j exp(a * s[j] - b0), and adds each term to col[j] when col != null
  double (*exp_sum)(const T* s, T a, T b0, int64_t n, T* col);
  // e[j] = exp(a * s[j] - b0) * (alpha + (beta ? beta[j] : 0))
  void (*exp_scale)(const T* s, T a, T b0, T alpha, const T* beta, int64_t n, T* e);
  // exp_sum and exp_scale of the combination c[j] = sum_q p[q][j] * (wv ? wv[q][j] : ws[q]),
  // q < m, which is never stored
  double (*comb_exp_sum)(const T* const* p, const T* const* wv, const T* ws, int m, T a, T b0,
                         int64_t n, T* col);
  void (*comb_exp_scale)(const T* const* p, const T* const* wv, const T* ws, int m, T a, T b0,
                         T alpha, const T* beta, int64_t n, T* e);
  void (*fma_into)(T* acc, const T* x, const T* y, int64_t n);  // acc += x * y
  double (*dot)(const T* x, const T* y, int64_t n);
  // out[j] = (base ? base[j] : 0) + wv[j] * x[j] + (y ? c * y[j] : 0)
  void (*axpby)(const T* base, const T* wv, const T* x, T c, const T* y, int64_t n, T* out);
};

namespace {

typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));

// Cody-Waite range reduction + degree-6 minimax polynomial (Cephes expf), ~1 ulp; inputs are
// clamped to [-87.3, 88.3], so the result is always a normal float.
inline vf16 exp16_f32(vf16 v) {
#if defined(MF_SIMD_AVX512)
  // The same reduction and polynomial in native AVX-512: vscalefps applies 2^k exactly, so the
  // integer exponent arithmetic and the upper clamp go away. max(lo, v) keeps NaN inputs.
  const __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_set1_ps(-87.3f), (__m512)v),
                                 _mm512_set1_ps(88.3f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 q = _mm512_set1_ps(1.9875691500E-4f);
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.3981999507E-3f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(8.3334519073E-3f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.1665795894E-2f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.6666665459E-1f));
  q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(5.0000001201E-1f));
  q = _mm512_fmadd_ps(_mm512_mul_ps(q, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return (vf16)_mm512_scalef_ps(q, k);
#else
  v = v < -87.3f ? vf16{} - 87.3f : v;
  v = v > 88.3f ? vf16{} + 88.3f : v;
  vf16 t = v * 1.44269504088896341f;
  vi16 k = __builtin_convertvector(t + (t >= 0.0f ? vf16{} + 0.5f : vf16{} - 0.5f), vi16);
  vf16 kf = __builtin_convertvector(k, vf16);
  vf16 r = v - kf * 0.693359375f + kf * 2.12194440e-4f;
  vf16 p = vf16{} + 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  vi16 bits = (k + 127) << 23;
  vf16 scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}

inline void exp_inplace_f32(float* x, int64_t n) {
  typedef vf16 vf;
  constexpr int W = 16;
  auto exp16 = exp16_f32;
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    vf v;
    __builtin_memcpy(&v, x + i, sizeof(v));
    v = exp16(v);
    __builtin_memcpy(x + i, &v, sizeof(v));
  }
  if (i < n) {
    // the tail goes through the same polynomial, so every entry is computed alike
    float tmp[W] = {};
    for (int64_t j = i; j < n; ++j) tmp[j - i] = x[j];
    vf v;
    __builtin_memcpy(&v, tmp, sizeof(v));
    v = exp16(v);
    __builtin_memcpy(tmp, &v, sizeof(v));
    for (int64_t j = i; j < n; ++j) x[j] = tmp[j - i];
  }
}

inline void exp_inplace_f64(double* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// Vectorized reductions and elementwise passes over tile rows (64-byte GCC vectors: one zmm,
// two ymm or four xmm depending on the ISA of the including translation unit).
template <typename T>
struct RowOps {
  typedef T V __attribute__((vector_size(64)));
  static constexpr int W = 64 / sizeof(T);
  static inline V ld(const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  static inline void st(T* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }
  // Sum of the lanes: a shuffle tree where the ISA has one (row sums are taken per tile row, so
  // a serial lane-by-lane sum would cost as much as the row's exponentials).
  static inline double hsum(V v) {
#if defined(MF_SIMD_AVX512)
    if constexpr (sizeof(T) == 4) return _mm512_reduce_add_ps((__m512)v);
    else return _mm512_reduce_add_pd((__m512d)v);
#else
    double r = 0.0;
    for (int q = 0; q < W; ++q) r += v[q];
    return r;
#endif
  }
  // sum_q p[q][j..j+W) * (wv ? wv[q][j..j+W) : ws[q])
  static inline V comb(const T* const* p, const T* const* wv, const T* ws, int m, int64_t j) {
    V acc = {};
    if (wv)
      for (int q = 0; q < m; ++q) acc += ld(p[q] + j) * ld(wv[q] + j);
    else
      for (int q = 0; q < m; ++q) acc += ld(p[q] + j) * ws[q];
    return acc;
  }

  static void exp_affine(const T* s, T a, const T* b, T b0, int64_t n, T* e) {
    int64_t j = 0;
    for (; j + W <= n; j += W) st(e + j, a * ld(s + j) - (b ? ld(b + j) : V{} + b0));
    for (; j < n; ++j) e[j] = a * s[j] - (b ? b[j] : b0);
    exp_rows(e, n);
  }
  static void exp_rows(T* e, int64_t n);
  static T max(const T* x, int64_t n) {
    V m = V{} - std::numeric_limits<T>::infinity();
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      V v = ld(x + j);
      m = v > m ? v : m;
    }
    T r = -std::numeric_limits<T>::infinity();
    for (int q = 0; q < W; ++q) r = m[q] > r ? m[q] : r;
    for (; j < n; ++j) r = x[j] > r ? x[j] : r;
    return r;
  }
  static double sum(const T* x, int64_t n) {
    V acc = {};
    int64_t j = 0;
    for (; j + W <= n; j += W) acc += ld(x + j);
    double r = hsum(acc);
    for (; j < n; ++j) r += x[j];
    return r;
  }
  static void max_into(T* m, const T* x, int64_t n) {
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      V a = ld(m + j), b = ld(x + j);
      st(m + j, b > a ? b : a);
    }
    for (; j < n; ++j) m[j] = x[j] > m[j] ? x[j] : m[j];
  }
  static void add_into(double* acc, const T* x, int64_t n) {
    for (int64_t j = 0; j < n; ++j) acc[j] += x[j];
  }
  static void mul_add(T* y, const T* x, const T* w, T a, int64_t n) {
    int64_t j = 0;
    for (; j + W <= n; j += W) st(y + j, a * ld(y + j) + ld(x + j) * ld(w + j));
    for (; j < n; ++j) y[j] = a * y[j] + x[j] * w[j];
  }
  static void fma_into(T* acc, const T* x, const T* y, int64_t n) {
    int64_t j = 0;
    for (; j + W <= n; j += W) st(acc + j, ld(acc + j) + ld(x + j) * ld(y + j));
    for (; j < n; ++j) acc[j] += x[j] * y[j];
  }
  static double dot(const T* x, const T* y, int64_t n) {
    V acc = {};
    int64_t j = 0;
    for (; j + W <= n; j += W) acc += ld(x + j) * ld(y + j);
    double r = hsum(acc);
    for (; j < n; ++j) r += x[j] * y[j];
    return r;
  }
  static void axpby(const T* base, const T* wv, const T* x, T c, const T* y, int64_t n, T* out) {
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      V v = ld(wv + j) * ld(x + j);
      if (base) v += ld(base + j);
      if (y) v += c * ld(y + j);
      st(out + j, v);
    }
    for (; j < n; ++j)
      out[j] = (base ? base[j] : T(0)) + wv[j] * x[j] + (y ? c * y[j] : T(0));
  }
};

inline void exp_tail(float* x, int64_t n) { exp_inplace_f32(x, n); }
inline void exp_tail(double* x, int64_t n) { exp_inplace_f64(x, n); }

template <typename T>
struct ExpV;
template <>
struct ExpV<float> {
  typedef float V __attribute__((vector_size(64)));
  static inline V exp(V v) { return exp16_f32(v); }
};
template <>
struct ExpV<double> {
  typedef double V __attribute__((vector_size(64)));
  static inline V exp(V v) {
    for (int q = 0; q < 8; ++q) v[q] = std::exp(v[q]);
    return v;
  }
};

template <typename T>
double row_exp_sum(const T* s, T a, T b0, int64_t n, T* col) {
  using O = RowOps<T>;
  typename O::V acc = {};
  int64_t j = 0;
  for (; j + O::W <= n; j += O::W) {
    const typename O::V e = ExpV<T>::exp(a * O::ld(s + j) - b0);
    acc += e;
    if (col) O::st(col + j, O::ld(col + j) + e);
  }
  double r = O::hsum(acc);
  if (j < n) {
    T tail[O::W];
    const int64_t rem = n - j;
    for (int64_t q = 0; q < rem; ++q) tail[q] = a * s[j + q] - b0;
    exp_tail(tail, rem);
    for (int64_t q = 0; q < rem; ++q) {
      r += tail[q];
      if (col) col[j + q] += tail[q];
    }
  }
  return r;
}

// row_exp_sum of the combination sum_q p[q] * (wv ? wv[q] : ws[q]), without storing it. Written
// out rather than shared with row_exp_sum through a row-loader template: that version measured
// 5-8% slower in both contrastive kernels (N = 7050, d = 64).
template <typename T>
double row_comb_exp_sum(const T* const* p, const T* const* wv, const T* ws, int m, T a, T b0,
                        int64_t n, T* col) {
  using O = RowOps<T>;
  typename O::V acc = {};
  int64_t j = 0;
  for (; j + O::W <= n; j += O::W) {
    const typename O::V e = ExpV<T>::exp(a * O::comb(p, wv, ws, m, j) - b0);
    acc += e;
    if (col) O::st(col + j, O::ld(col + j) + e);
  }
  double r = O::hsum(acc);
  if (j < n) {
    T tail[O::W];
    const int64_t rem = n - j;
    for (int64_t t = 0; t < rem; ++t) {
      T c = 0;
      for (int q = 0; q < m; ++q) c += p[q][j + t] * (wv ? wv[q][j + t] : ws[q]);
      tail[t] = a * c - b0;
    }
    exp_tail(tail, rem);
    for (int64_t t = 0; t < rem; ++t) {
      r += tail[t];
      if (col) col[j + t] += tail[t];
    }
  }
  return r;
}

// e[j] = exp(a * c[j] - b0) * (alpha + (beta ? beta[j] : 0)) for the same combination c.
template <typename T>
void row_comb_exp_scale(const T* const* p, const T* const* wv, const T* ws, int m, T a, T b0,
                        T alpha, const T* beta, int64_t n, T* e) {
  using O = RowOps<T>;
  int64_t j = 0;
  for (; j + O::W <= n; j += O::W) {
    const typename O::V w = ExpV<T>::exp(a * O::comb(p, wv, ws, m, j) - b0);
    O::st(e + j, w * (beta ? alpha + O::ld(beta + j) : typename O::V{} + alpha));
  }
  if (j < n) {
    const int64_t rem = n - j;
    for (int64_t t = 0; t < rem; ++t) {
      T c = 0;
      for (int q = 0; q < m; ++q) c += p[q][j + t] * (wv ? wv[q][j + t] : ws[q]);
      e[j + t] = a * c - b0;
    }
    exp_tail(e + j, rem);
    for (int64_t t = 0; t < rem; ++t) e[j + t] *= alpha + (beta ? beta[j + t] : T(0));
  }
}

template <typename T>
void row_exp_scale(const T* s, T a, T b0, T alpha, const T* beta, int64_t n, T* e) {
  using O = RowOps<T>;
  int64_t j = 0;
  for (; j + O::W <= n; j += O::W) {
    typename O::V w = ExpV<T>::exp(a * O::ld(s + j) - b0);
    O::st(e + j, w * (beta ? alpha + O::ld(beta + j) : typename O::V{} + alpha));
  }
  if (j < n) {
    const int64_t rem = n - j;
    for (int64_t q = 0; q < rem; ++q) e[j + q] = a * s[j + q] - b0;
    exp_tail(e + j, rem);
    for (int64_t q = 0; q < rem; ++q) e[j + q] *= alpha + (beta ? beta[j + q] : T(0));
  }
}

template <>
inline void RowOps<float>::exp_rows(float* e, int64_t n) { exp_inplace_f32(e, n); }
template <>
inline void RowOps<double>::exp_rows(double* e, int64_t n) { exp_inplace_f64(e, n); }

template <typename T>
DenseKernel<T> dense_kernel(void (*gemm)(const T*, int64_t, int64_t, int, int, const T*, int64_t,
                                         int, T*, int64_t)) {
  return DenseKernel<T>{gemm,
                        &RowOps<T>::exp_rows,
                        &RowOps<T>::exp_affine,
                        &RowOps<T>::max,
                        &RowOps<T>::sum,
                        &RowOps<T>::max_into,
                        &RowOps<T>::add_into,
                        &RowOps<T>::mul_add,
                        &row_exp_sum<T>,
                        &row_exp_scale<T>,
                        &row_comb_exp_sum<T>,
                        &row_comb_exp_scale<T>,
                        &RowOps<T>::fma_into,
                        &RowOps<T>::dot,
                        &RowOps<T>::axpby};
}

template <class S, int MR, int NV>
struct DenseTile {
  using T = typename S::T;
  using V = typename S::V;
  static constexpr int W = S::W;
  static constexpr int NR = NV * W;

  static void gemm_acc(const T* p, int64_t rs, int64_t cs, int mb, int kb, const T* x,
                       int64_t ldx, int d, T* c, int64_t ldc) {
    int c0 = 0;
    for (; c0 + NR <= d; c0 += NR) {
      for (int r0 = 0; r0 < mb; r0 += MR) {
        const int rv = mb - r0 < MR ? mb - r0 : MR;
        const T* prow[MR];
        for (int r = 0; r < MR; ++r) prow[r] = p + static_cast<int64_t>(r0 + (r < rv ? r : rv - 1)) * rs;
        V acc[MR][NV];
        for (int r = 0; r < MR; ++r)
          for (int v = 0; v < NV; ++v) acc[r][v] = S::zero();
        for (int k = 0; k < kb; ++k) {
          V b[NV];
          for (int v = 0; v < NV; ++v) b[v] = S::load(x + static_cast<int64_t>(k) * ldx + c0 + v * W);
          const int64_t kk = static_cast<int64_t>(k) * cs;
          for (int r = 0; r < MR; ++r) {
            const V a = S::set1(prow[r][kk]);
            for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(a, b[v], acc[r][v]);
          }
        }
        for (int r = 0; r < rv; ++r) {
          T* cr = c + static_cast<int64_t>(r0 + r) * ldc + c0;
          for (int v = 0; v < NV; ++v) {
            V cur = S::load(cr + v * W);
            S::store(cr + v * W, S::fma(S::set1(T(1)), acc[r][v], cur));
          }
        }
      }
    }
    if (c0 < d) {  // remaining columns
      for (int r = 0; r < mb; ++r) {
        T* cr = c + static_cast<int64_t>(r) * ldc;
        for (int k = 0; k < kb; ++k) {
          const T a = p[static_cast<int64_t>(r) * rs + static_cast<int64_t>(k) * cs];
          const T* xr = x + static_cast<int64_t>(k) * ldx;
          for (int j = c0; j < d; ++j) cr[j] += a * xr[j];
        }
      }
    }
  }
};

}  // namespace
}  // namespace micro_fast
