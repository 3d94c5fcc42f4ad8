// Dense kernels of the blockwise contrastive losses, compiled once per ISA (isa_*.cpp), all
// written in the SIMD vocabulary of simd.h:
//
//   gemm_acc:  C[mb, d] += P X, with P(r, k) = p[r * rs + k * cs] (so P or P^T of a stored
//              tile) and X[kb, d] row-major; MR x (NV * W) register tiles.
//   row passes over score-tile rows: exponentials (with or without a running sum), shifts,
//              scalings. (The fused-view loss has its own row passes, fusion_rows.h.)
//
// The score tiles themselves come from FusedTile::tile (topk_tile.h) with `last == false`,
// which stores the full tile instead of selecting from it.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

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
  // These fixed-shift passes (exp_sum, exp_scale and fusion_rows.h) evaluate their
  // exponentials with S::exp2, whose argument a log2(e) s - b0 log2(e) must stay within
  // [-126, 126]: the contrastive kernels call them with a = b0 = 1 / tau, tau >= 0.05
  // (kFixedShiftTau), on cosine scores |s| <= 1 (plus rounding), so the argument is in
  // [-58, 0]. Entries to leave out are skipped, never masked with -inf.
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

};

// C[mb, d] += P X in MR x (NV * W) register tiles; columns past the last multiple of NV * W
// in MR x W tiles, and the last d % W through a zero-padded copy, so no column runs scalar code
// (at d = 16 the scalar columns made a contrastive backward 4x slower than at d = 64). The MR
// rows of P are read at fixed offsets from one pointer that steps by cs, so the inner loop does
// no index arithmetic.
template <class S, int MR, int NV>
struct DenseTile {
  using T = typename S::T;
  using V = typename S::V;
  static constexpr int W = S::W;
  static constexpr int NR = NV * W;

  template <int R, int N>
  static inline void panel(const T* p, int64_t rs, int64_t cs, int kb, const T* x, int64_t ldx,
                           T* c, int64_t ldc) {
    V acc[R][N];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < N; ++v) acc[r][v] = S::zero();
    int64_t off[R];
    for (int r = 0; r < R; ++r) off[r] = r * rs;
    const T* pk = p;
    const T* xk = x;
    for (int k = 0; k < kb; ++k, pk += cs, xk += ldx) {
      V b[N];
      for (int v = 0; v < N; ++v) b[v] = S::load(xk + v * W);
      for (int r = 0; r < R; ++r) {
        const V a = S::set1(pk[off[r]]);
        for (int v = 0; v < N; ++v) acc[r][v] = S::fma(a, b[v], acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < N; ++v) {
        T* cr = c + r * ldc + v * W;
        S::store(cr, S::add(S::load(cr), acc[r][v]));
      }
  }

  template <int R, int N>
  static inline void edge_rows(int rv, const T* p, int64_t rs, int64_t cs, int kb, const T* x,
                               int64_t ldx, T* c, int64_t ldc) {
    if constexpr (R > 0) {
      if (rv == R) panel<R, N>(p, rs, cs, kb, x, ldx, c, ldc);
      else edge_rows<R - 1, N>(rv, p, rs, cs, kb, x, ldx, c, ldc);
    }
  }

  // the N * W columns of C and X from column 0 of the given pointers, all mb rows
  template <int N>
  static inline void columns(const T* p, int64_t rs, int64_t cs, int mb, int kb, const T* x,
                             int64_t ldx, T* c, int64_t ldc) {
    int r0 = 0;
    for (; r0 + MR <= mb; r0 += MR) panel<MR, N>(p + r0 * rs, rs, cs, kb, x, ldx, c + r0 * ldc, ldc);
    if (r0 < mb) edge_rows<MR - 1, N>(mb - r0, p + r0 * rs, rs, cs, kb, x, ldx, c + r0 * ldc, ldc);
  }

  static void gemm_acc(const T* p, int64_t rs, int64_t cs, int mb, int kb, const T* x,
                       int64_t ldx, int d, T* c, int64_t ldc) {
    int c0 = 0;
    for (; c0 + NR <= d; c0 += NR) columns<NV>(p, rs, cs, mb, kb, x + c0, ldx, c + c0, ldc);
    for (; c0 + W <= d; c0 += W) columns<1>(p, rs, cs, mb, kb, x + c0, ldx, c + c0, ldc);
    if (c0 == d) return;
    const int rem = d - c0;
    std::vector<T> xt(static_cast<size_t>(kb) * W, T(0)), ct(static_cast<size_t>(mb) * W, T(0));
    for (int k = 0; k < kb; ++k) std::memcpy(&xt[k * W], x + k * ldx + c0, rem * sizeof(T));
    for (int r = 0; r < mb; ++r) std::memcpy(&ct[r * W], c + r * ldc + c0, rem * sizeof(T));
    columns<1>(p, rs, cs, mb, kb, xt.data(), W, ct.data(), W);
    for (int r = 0; r < mb; ++r) std::memcpy(c + r * ldc + c0, &ct[r * W], rem * sizeof(T));
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
                                    &R::exp_scale};
}

}  // namespace
}  // namespace micro_fast
