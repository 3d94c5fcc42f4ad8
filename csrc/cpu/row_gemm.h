// Dense products whose operand and result rows are addressed through pointer tables, so that a
// gathered or scattered row set (the rows of a feature matrix one batch uses) is multiplied in
// place, never copied into a contiguous buffer first:
//
//   C_r[c0 + j] = sum_k A_r[k * as] * B_k[c0 + j],   r < mb, j < n, k < kb
//
// (A_r, B_k, C_r are rows given by pointer; `as` steps along a row of A, so A may also be the
// transpose of a stored matrix). Results are written, not accumulated. MR x (NV * W) register
// tiles as in dense_tile.h; the k loop runs over the whole of kb, so every output is one sum in
// a fixed order whatever the blocking around it.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace micro_fast {

template <typename T>
struct RowGemmKernel {
  int mr, nr;  // rows and columns of one register tile (blocking of the drivers)
  void (*gemm)(const T* const* a, int64_t as, const T* const* b, int kb, int mb, int64_t c0,
               int n, T* const* c);
};

namespace {

template <class S, int MR, int NV>
struct RowGemm {
  using T = typename S::T;
  using V = typename S::V;
  static constexpr int W = S::W;
  static constexpr int NR = NV * W;
  static constexpr int kPrefetch = 8;  // k rows ahead

  // R rows by N vectors of C at column c
  template <int R, int N>
  static inline void panel(const T* const* a, int64_t as, const T* const* b, int kb, int64_t c,
                           T* const* cr) {
    V acc[R][N];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < N; ++v) acc[r][v] = S::zero();
    const T* ap[R];
    for (int r = 0; r < R; ++r) ap[r] = a[r];
    for (int k = 0; k < kb; ++k) {
      const T* bk = b[k] + c;
      // B rows may be gathered from anywhere (no stride for the hardware prefetcher to see)
      if (k + kPrefetch < kb) {
        const char* next = reinterpret_cast<const char*>(b[k + kPrefetch] + c);
        for (int l = 0; l < int(N * W * sizeof(T)); l += 64) __builtin_prefetch(next + l);
      }
      V bv[N];
      for (int v = 0; v < N; ++v) bv[v] = S::load(bk + v * W);
      for (int r = 0; r < R; ++r) {
        const V av = S::set1(ap[r][k * as]);
        for (int v = 0; v < N; ++v) acc[r][v] = S::fma(av, bv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < N; ++v) S::store(cr[r] + c + v * W, acc[r][v]);
  }

  template <int R, int N>
  static inline void edge_rows(int rv, const T* const* a, int64_t as, const T* const* b, int kb,
                               int64_t c, T* const* cr) {
    if constexpr (R > 0) {
      if (rv == R) panel<R, N>(a, as, b, kb, c, cr);
      else edge_rows<R - 1, N>(rv, a, as, b, kb, c, cr);
    }
  }

  // R (or, for R == 0, rv < MR) rows of C from column c0 over n columns: strips of NR, then W
  template <int R>
  static inline void rows_of(int rv, const T* const* a, int64_t as, const T* const* b, int kb,
                             int64_t c0, int n, T* const* cr) {
    int j = 0;
    for (; j + NR <= n; j += NR) {
      if constexpr (R > 0) panel<R, NV>(a, as, b, kb, c0 + j, cr);
      else edge_rows<MR - 1, NV>(rv, a, as, b, kb, c0 + j, cr);
    }
    for (; j + W <= n; j += W) {
      if constexpr (R > 0) panel<R, 1>(a, as, b, kb, c0 + j, cr);
      else edge_rows<MR - 1, 1>(rv, a, as, b, kb, c0 + j, cr);
    }
  }

  // Row panels outer: each panel writes its rows left to right (the drivers size n so that the
  // kb x n block of B stays in cache over the panels). Columns run in strips of NR, then of W,
  // and the last n % W through zero-padded copies of those columns of B and C: no column runs
  // scalar code (with its 16 scalar columns a projection to d = 112 took 9x the time of one to
  // d = 128 on Zen 5).
  static void gemm(const T* const* a, int64_t as, const T* const* b, int kb, int mb, int64_t c0,
                   int n, T* const* c) {
    int r0 = 0;
    for (; r0 + MR <= mb; r0 += MR) rows_of<MR>(MR, a + r0, as, b, kb, c0, n, c + r0);
    if (r0 < mb) rows_of<0>(mb - r0, a + r0, as, b, kb, c0, n, c + r0);
    const int j = n / W * W;
    if (j == n) return;
    const int rem = n - j;
    std::vector<T> bt(static_cast<size_t>(kb) * W, T(0)), ct(static_cast<size_t>(mb) * W);
    std::vector<const T*> bp(kb);
    std::vector<T*> cp(mb);
    for (int k = 0; k < kb; ++k) {
      std::memcpy(&bt[k * W], b[k] + c0 + j, rem * sizeof(T));
      bp[k] = &bt[k * W];
    }
    for (int r = 0; r < mb; ++r) cp[r] = &ct[r * W];
    r0 = 0;
    for (; r0 + MR <= mb; r0 += MR) panel<MR, 1>(a + r0, as, bp.data(), kb, 0, cp.data() + r0);
    if (r0 < mb) edge_rows<MR - 1, 1>(mb - r0, a + r0, as, bp.data(), kb, 0, cp.data() + r0);
    for (int r = 0; r < mb; ++r) std::memcpy(c[r] + c0 + j, cp[r], rem * sizeof(T));
  }
};

template <class S, int MR, int NV>
RowGemmKernel<typename S::T> row_gemm_kernel() {
  return RowGemmKernel<typename S::T>{MR, RowGemm<S, MR, NV>::NR, &RowGemm<S, MR, NV>::gemm};
}

}  // namespace
}  // namespace micro_fast
