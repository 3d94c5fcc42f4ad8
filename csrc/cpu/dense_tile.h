// Dense kernels of the blockwise contrastive losses, compiled once per ISA (isa_*.cpp), all
// written in the SIMD vocabulary of simd.h:
//
//   gemm_acc:  C[mb, d] += P X, with P(r, k) = p[r * rs + k * cs] (so P or P^T of a stored
//              tile) and X[kb, d] row-major; MR x (NV * W) register tiles.
//   row passes over score-tile rows: exponentials (with or without a running sum), shifts,
//              scalings, combinations of several Gram rows, dot products.
//
// The score tiles themselves come from FusedTile::tile (topk_tile.h) with `last == false`,
// which stores the full tile instead of selecting from it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
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
  // returns sum_j exp(a * s[j] - b0) over j != skip (skip < 0: none), and adds each term to
  // col[j] when col != null
  double (*exp_sum)(const T* s, T a, T b0, int64_t skip, int64_t n, T* col);
  // e[j] = exp(a * s[j] - b0) * (alpha + (beta ? beta[j] : 0))
  void (*exp_scale)(const T* s, T a, T b0, T alpha, const T* beta, int64_t n, T* e);
  // exp_sum (with no entry left out) and exp_scale of the combination
  // c[j] = sum_q p[q][j] * (wv ? wv[q][j] : ws[q]), q < m, which is never stored.
  //
  // These fixed-shift passes (exp_sum, exp_scale, the comb_ ones, grad_row) evaluate their
  // exponentials with S::exp2, whose argument a log2(e) s - b0 log2(e) must stay within
  // [-126, 126]: the contrastive kernels call them with a = b0 = 1 / tau, tau >= 0.05
  // (kFixedShiftTau), on cosine scores |s| <= 1 (plus rounding), so the argument is in
  // [-58, 0]. Entries to leave out are skipped, never masked with -inf.
  double (*comb_exp_sum)(const T* const* p, const T* const* wv, const T* ws, int m, T a, T b0,
                         int64_t n, T* col);
  void (*comb_exp_scale)(const T* const* p, const T* const* wv, const T* ws, int m, T a, T b0,
                         T alpha, const T* beta, int64_t n, T* e);
  // One pass over a Gram row p that is read for the last time and overwritten:
  //   col[j] += x[j] p[j], the return value is sum_j y[j] p[j] (0 without y), then
  //   p[j] = wv[j] x[j] + e[j] + (y ? c y[j] : 0), e[j] = exp(a p[j] - b0) (alpha + beta[j])
  //   (beta may be null) when `intra`, else 0, and e[skip] = 0 (skip < 0: none).
  double (*grad_row)(T* p, const T* x, const T* wv, T c, const T* y, bool intra, T a, T b0,
                     T alpha, const T* beta, int64_t skip, int64_t n, T* col);
};

namespace {

// log2(e) in T: the fixed-shift passes evaluate exp(a s - b0) as 2^(a' s - b0') with
// a' = a log2(e), b0' = b0 log2(e), one FMA and a base-2 exponential
template <typename T>
constexpr T kLog2eOf = T(1.4426950408889634073599);

// Row passes. Each walks a row W lanes at a time and finishes the last n % W entries through
// the same vector code on a zero-padded copy (so every entry is computed alike); reductions
// count only the valid lanes of that copy.
template <class S>
struct RowOps {
  using T = typename S::T;
  using V = typename S::V;
  static constexpr int W = S::W;

  static inline V ld_part(const T* p, int64_t rem) {
    T buf[W] = {};
    std::memcpy(buf, p, rem * sizeof(T));
    return S::load(buf);
  }
  static inline void st_part(T* p, V v, int64_t rem) {
    T buf[W];
    S::store(buf, v);
    std::memcpy(p, buf, rem * sizeof(T));
  }
  static inline T hsum_part(V v, int64_t rem) {
    T buf[W];
    S::store(buf, v);
    T r = T(0);
    for (int64_t q = 0; q < rem; ++q) r += buf[q];
    return r;
  }
  static inline V ld_or_part(const T* p, int64_t rem) { return rem == W ? S::load(p) : ld_part(p, rem); }
  static inline void st_or_part(T* p, V v, int64_t rem) {
    if (rem == W) S::store(p, v);
    else st_part(p, v, rem);
  }

  // fn(j, rem) for each vector of the row: rem == W, then a last partial one (rem < W)
  template <class Fn>
  static inline void each(int64_t n, Fn fn) {
    int64_t j = 0;
    for (; j + W <= n; j += W) fn(j, int64_t(W));
    if (j < n) fn(j, n - j);
  }

  static void exp_inplace(T* x, int64_t n) {
    each(n, [&](int64_t j, int64_t rem) { st_or_part(x + j, S::exp(ld_or_part(x + j, rem)), rem); });
  }
  static void exp_affine(const T* s, T a, const T* b, T b0, int64_t n, T* e) {
    const V va = S::set1(a), vb0 = S::set1(b0);
    each(n, [&](int64_t j, int64_t rem) {
      const V shift = b ? ld_or_part(b + j, rem) : vb0;
      st_or_part(e + j, S::exp(S::sub(S::mul(va, ld_or_part(s + j, rem)), shift)), rem);
    });
  }
  static T max(const T* x, int64_t n) {
    const T neg_inf = -std::numeric_limits<T>::infinity();
    V m = S::set1(neg_inf);
    int64_t j = 0;
    for (; j + W <= n; j += W) m = S::max(S::load(x + j), m);
    T buf[W];
    S::store(buf, m);
    T r = neg_inf;
    for (int q = 0; q < W; ++q) r = buf[q] > r ? buf[q] : r;
    for (; j < n; ++j) r = x[j] > r ? x[j] : r;
    return r;
  }
  static double sum(const T* x, int64_t n) {
    V acc = S::zero();
    int64_t j = 0;
    for (; j + W <= n; j += W) acc = S::add(acc, S::load(x + j));
    double r = S::hsum(acc);
    for (; j < n; ++j) r += x[j];
    return r;
  }
  static void max_into(T* m, const T* x, int64_t n) {
    int64_t j = 0;
    for (; j + W <= n; j += W) S::store(m + j, S::max(S::load(x + j), S::load(m + j)));
    for (; j < n; ++j) m[j] = x[j] > m[j] ? x[j] : m[j];
  }
  static void add_into(double* acc, const T* x, int64_t n) {
    for (int64_t j = 0; j < n; ++j) acc[j] += x[j];
  }
  static void mul_add(T* y, const T* x, const T* w, T a, int64_t n) {
    const V va = S::set1(a);
    int64_t j = 0;
    for (; j + W <= n; j += W)
      S::store(y + j, S::fma(va, S::load(y + j), S::mul(S::load(x + j), S::load(w + j))));
    for (; j < n; ++j) y[j] = a * y[j] + x[j] * w[j];
  }
  static double grad_row(T* p, const T* x, const T* wv, T c, const T* y, bool intra, T a, T b0,
                         T alpha, const T* beta, int64_t skip, int64_t n, T* col) {
    const V vc = S::set1(c), va = S::set1(a * kLog2eOf<T>), vnb0 = S::set1(-b0 * kLog2eOf<T>),
            valpha = S::set1(alpha);
    V dacc = S::zero();
    T tail = T(0);
    each(n, [&](int64_t j, int64_t rem) {
      const V r = ld_or_part(p + j, rem), xv = ld_or_part(x + j, rem);
      st_or_part(col + j, S::fma(xv, r, ld_or_part(col + j, rem)), rem);
      V v = S::mul(ld_or_part(wv + j, rem), xv);
      if (intra) {
        const V scale = beta ? S::add(valpha, ld_or_part(beta + j, rem)) : valpha;
        v = S::add(v, S::mul(S::exp2(S::fma(va, r, vnb0)), scale));
      }
      if (y) {
        const V yv = ld_or_part(y + j, rem);
        if (rem == W) dacc = S::fma(yv, r, dacc);
        else tail = hsum_part(S::mul(yv, r), rem);
        v = S::fma(vc, yv, v);
      }
      st_or_part(p + j, v, rem);
    });
    if (intra && skip >= 0) {  // the left-out entry gets no exponential term
      T v = wv[skip] * x[skip];
      if (y) v = std::fma(c, y[skip], v);
      p[skip] = v;
    }
    return y ? S::hsum(dacc) + double(tail) : 0.0;
  }

  // The shared loop of the exp-sum passes: row(j, rem) gives the operand vector at j.
  // v with lane q set to 0 (the one vector of a row that holds a left-out entry)
  static inline V zero_lane(V v, int64_t q) {
    T buf[W];
    S::store(buf, v);
    buf[q] = T(0);
    return S::load(buf);
  }

  template <class Row>
  static inline double exp_sum_of(Row row, T a, T b0, int64_t skip, int64_t n, T* col) {
    const V va = S::set1(a * kLog2eOf<T>), vnb0 = S::set1(-b0 * kLog2eOf<T>);
    V acc = S::zero();
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      V e = S::exp2(S::fma(va, row(j, int64_t(W)), vnb0));
      if (static_cast<uint64_t>(skip - j) < uint64_t(W)) e = zero_lane(e, skip - j);
      acc = S::add(acc, e);
      if (col) S::store(col + j, S::add(S::load(col + j), e));
    }
    double r = S::hsum(acc);
    if (j < n) {
      const int64_t rem = n - j;
      V e = S::exp2(S::fma(va, row(j, rem), vnb0));
      if (skip >= j) e = zero_lane(e, skip - j);
      r += hsum_part(e, rem);
      if (col) st_part(col + j, S::add(ld_part(col + j, rem), e), rem);
    }
    return r;
  }
  template <class Row>
  static inline void exp_scale_of(Row row, T a, T b0, T alpha, const T* beta, int64_t n, T* e) {
    const V va = S::set1(a * kLog2eOf<T>), vnb0 = S::set1(-b0 * kLog2eOf<T>),
            valpha = S::set1(alpha);
    each(n, [&](int64_t j, int64_t rem) {
      const V w = S::exp2(S::fma(va, row(j, rem), vnb0));
      const V scale = beta ? S::add(valpha, ld_or_part(beta + j, rem)) : valpha;
      st_or_part(e + j, S::mul(w, scale), rem);
    });
  }

  static double exp_sum(const T* s, T a, T b0, int64_t skip, int64_t n, T* col) {
    return exp_sum_of([&](int64_t j, int64_t rem) { return ld_or_part(s + j, rem); }, a, b0,
                      skip, n, col);
  }
  static void exp_scale(const T* s, T a, T b0, T alpha, const T* beta, int64_t n, T* e) {
    exp_scale_of([&](int64_t j, int64_t rem) { return ld_or_part(s + j, rem); }, a, b0, alpha,
                 beta, n, e);
  }

  // sum_q p[q][j..] * (wv ? wv[q][j..] : ws[q]); M > 0 fixes the number of terms at compile
  // time (the common two-view case keeps its operands in registers), M == 0 takes m
  template <int M>
  struct Comb {
    const T* const* p;
    const T* const* wv;
    const T* ws;
    int m;
    inline V operator()(int64_t j, int64_t rem) const {
      const int terms = M > 0 ? M : m;
      V acc = S::zero();
      for (int q = 0; q < terms; ++q) {
        const V w = wv ? ld_or_part(wv[q] + j, rem) : S::set1(ws[q]);
        acc = S::fma(ld_or_part(p[q] + j, rem), w, acc);
      }
      return acc;
    }
  };
  template <int M>
  static double comb_exp_sum_m(const T* const* p, const T* const* wv, const T* ws, int m, T a,
                               T b0, int64_t n, T* col) {
    return exp_sum_of(Comb<M>{p, wv, ws, m}, a, b0, -1, n, col);
  }
  template <int M>
  static void comb_exp_scale_m(const T* const* p, const T* const* wv, const T* ws, int m, T a,
                               T b0, T alpha, const T* beta, int64_t n, T* e) {
    exp_scale_of(Comb<M>{p, wv, ws, m}, a, b0, alpha, beta, n, e);
  }
  static double comb_exp_sum(const T* const* p, const T* const* wv, const T* ws, int m, T a,
                             T b0, int64_t n, T* col) {
    switch (m) {
      case 1: return comb_exp_sum_m<1>(p, wv, ws, m, a, b0, n, col);
      case 2: return comb_exp_sum_m<2>(p, wv, ws, m, a, b0, n, col);
      case 3: return comb_exp_sum_m<3>(p, wv, ws, m, a, b0, n, col);
      default: return comb_exp_sum_m<0>(p, wv, ws, m, a, b0, n, col);
    }
  }
  static void comb_exp_scale(const T* const* p, const T* const* wv, const T* ws, int m, T a,
                             T b0, T alpha, const T* beta, int64_t n, T* e) {
    switch (m) {
      case 1: return comb_exp_scale_m<1>(p, wv, ws, m, a, b0, alpha, beta, n, e);
      case 2: return comb_exp_scale_m<2>(p, wv, ws, m, a, b0, alpha, beta, n, e);
      case 3: return comb_exp_scale_m<3>(p, wv, ws, m, a, b0, alpha, beta, n, e);
      default: return comb_exp_scale_m<0>(p, wv, ws, m, a, b0, alpha, beta, n, e);
    }
  }
};

// C[mb, d] += P X in MR x (NV * W) register tiles. The MR rows of P are read at fixed offsets
// from one pointer that steps by cs, so the inner loop does no index arithmetic.
template <class S, int MR, int NV>
struct DenseTile {
  using T = typename S::T;
  using V = typename S::V;
  static constexpr int W = S::W;
  static constexpr int NR = NV * W;

  template <int R>
  static inline void panel(const T* p, int64_t rs, int64_t cs, int kb, const T* x, int64_t ldx,
                           T* c, int64_t ldc) {
    V acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = S::zero();
    int64_t off[R];
    for (int r = 0; r < R; ++r) off[r] = r * rs;
    const T* pk = p;
    const T* xk = x;
    for (int k = 0; k < kb; ++k, pk += cs, xk += ldx) {
      V b[NV];
      for (int v = 0; v < NV; ++v) b[v] = S::load(xk + v * W);
      for (int r = 0; r < R; ++r) {
        const V a = S::set1(pk[off[r]]);
        for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(a, b[v], acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) {
        T* cr = c + r * ldc + v * W;
        S::store(cr, S::add(S::load(cr), acc[r][v]));
      }
  }

  template <int R>
  static inline void edge_rows(int rv, const T* p, int64_t rs, int64_t cs, int kb, const T* x,
                               int64_t ldx, T* c, int64_t ldc) {
    if constexpr (R > 0) {
      if (rv == R) panel<R>(p, rs, cs, kb, x, ldx, c, ldc);
      else edge_rows<R - 1>(rv, p, rs, cs, kb, x, ldx, c, ldc);
    }
  }

  static void gemm_acc(const T* p, int64_t rs, int64_t cs, int mb, int kb, const T* x,
                       int64_t ldx, int d, T* c, int64_t ldc) {
    int c0 = 0;
    for (; c0 + NR <= d; c0 += NR) {
      int r0 = 0;
      for (; r0 + MR <= mb; r0 += MR)
        panel<MR>(p + r0 * rs, rs, cs, kb, x + c0, ldx, c + r0 * ldc + c0, ldc);
      if (r0 < mb)
        edge_rows<MR - 1>(mb - r0, p + r0 * rs, rs, cs, kb, x + c0, ldx, c + r0 * ldc + c0, ldc);
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

template <class S, int MR, int NV>
DenseKernel<typename S::T> dense_kernel() {
  using R = RowOps<S>;
  return DenseKernel<typename S::T>{&DenseTile<S, MR, NV>::gemm_acc,
                                    &R::exp_inplace,
                                    &R::exp_affine,
                                    &R::max,
                                    &R::sum,
                                    &R::max_into,
                                    &R::add_into,
                                    &R::mul_add,
                                    &R::exp_sum,
                                    &R::exp_scale,
                                    &R::comb_exp_sum,
                                    &R::comb_exp_scale,
                                    &R::grad_row};
}

}  // namespace
}  // namespace micro_fast
