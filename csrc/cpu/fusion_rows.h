// Row passes of the fused-view contrastive loss (contrastive_fusion.cpp), compiled once per ISA.
//
// A task of that loss holds the m^2 Gram tiles P^{qk} of a block pair (I, J). Everything the
// loss needs from row a of them (i = I0 + a, columns b, j = J0 + b) is a function of the m^2
// values P^{qk}_ab at one (a, b): the cross scores S^q_ij = sum_k coef[j, k] P^{qk}_ab, their
// transposes S^q_ji = sum_k coef[i, k] P^{kq}_ab, the intra-view scores P^{qq}_ab and, in the
// backward, the gradient G^{qk}_ab. One pass per row therefore loads each P^{qk}_ab once, keeps
// the 2m exponentials of the scores in registers and writes each result once; the scores and
// A^q matrices are never stored. (With one pass per score matrix, rereading the P^{qk} rows,
// the forward's row work took 1.4x as long at d = 1 on Zen 5.)
//
// Exponentials use the fixed shift of dense_tile.h: exp(a s - b0) as 2^(a log2(e) s -
// b0 log2(e)), valid for a = b0 = 1 / tau, tau >= 0.05, on cosine scores.
#pragma once

#include <cstdint>

#include "cpu/dense_tile.h"

namespace micro_fast {

// Most views a fused-view kernel takes: its per-row state is m^2 + 4m vectors.
constexpr int kMaxFusedViews = 8;

template <typename T>
struct FusionRow {
  T* const* p;            // [m * m] row a of P^{qk} (p[q * m + k]); the backward overwrites
                          // it with row a of G^{qk}
  const T* const* coef_j;  // [m] coef[J0 + b, k] over b (rows of coef transposed)
  const T* coef_i;        // [m] coef[i, k]
  const T* alpha_i;       // backward: [m] alpha_q[i]
  const T* const* alpha_j;  // backward, off-diagonal tasks: [m] alpha_q[J0 + b] over b
  int64_t skip;           // diagonal task (I == J): a, the pair (i, i) the intra terms leave
                          // out; else -1
  int64_t n;              // columns
  T a, b0;                // exp(a s - b0)
};

template <typename T>
struct FusionRowKernel {
  // row_cross[q] = sum_b exp(a S^q_ij - b0), row_intra[q] = sum_{b != skip} exp(a P^{qq}_ab - b0)
  // and, off the diagonal (skip < 0 and col_* non-null), col_cross[q][b] += exp(a S^q_ji - b0),
  // col_intra[q][b] += exp(a P^{qq}_ab - b0).
  void (*forward)(const FusionRow<T>& r, int m, double* row_cross, double* row_intra,
                  T* const* col_cross, T* const* col_intra);
  // With A^q_ij = alpha_q[i] e^q_ij and, off the diagonal, A^q_ji = alpha_q[j] e^q_ji
  // (e: the exponentials above):
  //   G^{qk}_ab = coef[j, k] A^q_ij + [q == k] exp(a P^{qq}_ab - b0) (alpha_q[i] + alpha_q[j])
  //               + coef[i, q] A^k_ji
  // (diagonal tasks: the terms with alpha_q[j] and A^k_ji dropped, and the pair b == skip
  // without the exponential term) overwrites p[q * m + k][b]; col[q * m + k][b] +=
  // A^q_ij P^{qk}_ab; off the diagonal dot[q * m + k] = sum_b A^k_ji P^{qk}_ab.
  void (*backward)(const FusionRow<T>& r, int m, T* const* col, double* dot);
};

namespace {

template <class S, int M>
struct FusionRows {
  using T = typename S::T;
  using V = typename S::V;
  using R = RowOps<S>;
  static constexpr int W = S::W;
  static constexpr int K = M > 0 ? M : kMaxFusedViews;

  static inline bool skip_in(int64_t skip, int64_t j) {
    return static_cast<uint64_t>(skip - j) < uint64_t(W);
  }
  // the m^2 scores P^{qk} and the m column coefficients at columns j.. (rem of them valid)
  static inline void load(const FusionRow<T>& r, int m, int64_t j, int64_t rem, V (&p)[K][K],
                          V (&cj)[K]) {
    for (int q = 0; q < m; ++q) {
      cj[q] = R::ld_or_part(r.coef_j[q] + j, rem);
      for (int k = 0; k < m; ++k) p[q][k] = R::ld_or_part(r.p[q * m + k] + j, rem);
    }
  }
  // S^q_ij = sum_k coef[j, k] P^{qk} and S^q_ji = sum_k coef[i, k] P^{kq}
  static inline V score(const V (&p)[K][K], const V (&cj)[K], int q, int m) {
    V s = S::zero();
    for (int k = 0; k < m; ++k) s = S::fma(p[q][k], cj[k], s);
    return s;
  }
  static inline V score_t(const V (&p)[K][K], const V (&ci)[K], int q, int m) {
    V s = S::zero();
    for (int k = 0; k < m; ++k) s = S::fma(p[k][q], ci[k], s);
    return s;
  }

  static void forward(const FusionRow<T>& r, int m_arg, double* row_cross, double* row_intra,
                      T* const* col_cross, T* const* col_intra) {
    const int m = M > 0 ? M : m_arg;
    const V va = S::set1(r.a * kLog2eOf<T>), vnb0 = S::set1(-r.b0 * kLog2eOf<T>);
    const bool cols = col_cross != nullptr;
    V ci[K], cross[K], intra[K];
    T cross_tail[K], intra_tail[K];
    for (int q = 0; q < m; ++q) {
      ci[q] = S::set1(r.coef_i[q]);
      cross[q] = intra[q] = S::zero();
      cross_tail[q] = intra_tail[q] = T(0);
    }
    R::each(r.n, [&](int64_t j, int64_t rem) {
      V p[K][K], cj[K];
      load(r, m, j, rem, p, cj);
      for (int q = 0; q < m; ++q) {
        const V e = S::exp2(S::fma(va, score(p, cj, q, m), vnb0));
        if (rem == W) cross[q] = S::add(cross[q], e);
        else cross_tail[q] = R::hsum_part(e, rem);
        V ei = S::exp2(S::fma(va, p[q][q], vnb0));
        if (skip_in(r.skip, j)) ei = R::zero_lane(ei, r.skip - j);
        if (rem == W) intra[q] = S::add(intra[q], ei);
        else intra_tail[q] = R::hsum_part(ei, rem);
        if (cols) {
          const V et = S::exp2(S::fma(va, score_t(p, ci, q, m), vnb0));
          R::st_or_part(col_cross[q] + j, S::add(R::ld_or_part(col_cross[q] + j, rem), et), rem);
          R::st_or_part(col_intra[q] + j, S::add(R::ld_or_part(col_intra[q] + j, rem), ei), rem);
        }
      }
    });
    for (int q = 0; q < m; ++q) {
      row_cross[q] = double(S::hsum(cross[q])) + double(cross_tail[q]);
      row_intra[q] = double(S::hsum(intra[q])) + double(intra_tail[q]);
    }
  }

  static void backward(const FusionRow<T>& r, int m_arg, T* const* col, double* dot) {
    const int m = M > 0 ? M : m_arg;
    const V va = S::set1(r.a * kLog2eOf<T>), vnb0 = S::set1(-r.b0 * kLog2eOf<T>);
    const bool diag = r.alpha_j == nullptr;
    V ci[K], ai[K], dacc[K][K];
    T tail[K][K], arow_skip[K] = {};
    for (int q = 0; q < m; ++q) {
      ci[q] = S::set1(r.coef_i[q]);
      ai[q] = S::set1(r.alpha_i[q]);
      for (int k = 0; k < m; ++k) {
        dacc[q][k] = S::zero();
        tail[q][k] = T(0);
      }
    }
    R::each(r.n, [&](int64_t j, int64_t rem) {
      V p[K][K], cj[K], arow[K], acol[K], aj[K];
      load(r, m, j, rem, p, cj);
      for (int q = 0; q < m; ++q) {
        arow[q] = S::mul(S::exp2(S::fma(va, score(p, cj, q, m), vnb0)), ai[q]);
        if (!diag) {
          aj[q] = S::add(S::zero(), R::ld_or_part(r.alpha_j[q] + j, rem));
          acol[q] = S::mul(S::exp2(S::fma(va, score_t(p, ci, q, m), vnb0)), aj[q]);
        }
      }
      if (skip_in(r.skip, j)) {
        T buf[W];
        for (int q = 0; q < m; ++q) {
          S::store(buf, arow[q]);
          arow_skip[q] = buf[r.skip - j];
        }
      }
      for (int q = 0; q < m; ++q)
        for (int k = 0; k < m; ++k) {
          const V pv = p[q][k];
          T* c = col[q * m + k] + j;
          R::st_or_part(c, S::fma(arow[q], pv, R::ld_or_part(c, rem)), rem);
          V g = S::mul(cj[k], arow[q]);
          if (q == k) {
            const V scale = diag ? ai[q] : S::add(ai[q], aj[q]);
            g = S::add(g, S::mul(S::exp2(S::fma(va, pv, vnb0)), scale));
          }
          if (!diag) {
            if (rem == W) dacc[q][k] = S::fma(acol[k], pv, dacc[q][k]);
            else tail[q][k] = R::hsum_part(S::mul(acol[k], pv), rem);
            g = S::fma(ci[q], acol[k], g);
          }
          R::st_or_part(r.p[q * m + k] + j, g, rem);
        }
    });
    if (r.skip >= 0)  // the left-out pair gets no exponential term
      for (int q = 0; q < m; ++q) r.p[q * m + q][r.skip] = r.coef_j[q][r.skip] * arow_skip[q];
    if (!diag)
      for (int q = 0; q < m; ++q)
        for (int k = 0; k < m; ++k)
          dot[q * m + k] = double(S::hsum(dacc[q][k])) + double(tail[q][k]);
  }
};

template <class S>
FusionRowKernel<typename S::T> fusion_row_kernel_of(int m) {
  switch (m) {
    case 1: return {&FusionRows<S, 1>::forward, &FusionRows<S, 1>::backward};
    case 2: return {&FusionRows<S, 2>::forward, &FusionRows<S, 2>::backward};
    case 3: return {&FusionRows<S, 3>::forward, &FusionRows<S, 3>::backward};
    default: return {&FusionRows<S, 0>::forward, &FusionRows<S, 0>::backward};
  }
}

}  // namespace
}  // namespace micro_fast
