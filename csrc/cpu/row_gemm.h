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

  template <int R>
  static inline void panel(const T* const* a, int64_t as, const T* const* b, int kb, int64_t c,
                           T* const* cr) {
    V acc[R][NV];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = S::zero();
    const T* ap[R];
    for (int r = 0; r < R; ++r) ap[r] = a[r];
    for (int k = 0; k < kb; ++k) {
      const T* bk = b[k] + c;
      // B rows may be gathered from anywhere (no stride for the hardware prefetcher to see)
      if (k + kPrefetch < kb) {
        const char* next = reinterpret_cast<const char*>(b[k + kPrefetch] + c);
        for (int l = 0; l < int(NR * sizeof(T)); l += 64) __builtin_prefetch(next + l);
      }
      V bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = S::load(bk + v * W);
      for (int r = 0; r < R; ++r) {
        const V av = S::set1(ap[r][k * as]);
        for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(av, bv[v], acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) S::store(cr[r] + c + v * W, acc[r][v]);
  }

  template <int R>
  static inline void edge_rows(int rv, const T* const* a, int64_t as, const T* const* b, int kb,
                               int64_t c, T* const* cr) {
    if constexpr (R > 0) {
      if (rv == R) panel<R>(a, as, b, kb, c, cr);
      else edge_rows<R - 1>(rv, a, as, b, kb, c, cr);
    }
  }

  static void gemm(const T* const* a, int64_t as, const T* const* b, int kb, int mb, int64_t c0,
                   int n, T* const* c) {
    // row panels outer: each panel writes its rows left to right (the drivers size n so that
    // the kb x n block of B stays in cache over the panels)
    const int full = n / NR * NR;
    int r0 = 0;
    for (; r0 + MR <= mb; r0 += MR)
      for (int j = 0; j < full; j += NR) panel<MR>(a + r0, as, b, kb, c0 + j, c + r0);
    if (r0 < mb)
      for (int j = 0; j < full; j += NR)
        edge_rows<MR - 1>(mb - r0, a + r0, as, b, kb, c0 + j, c + r0);
    const int j = full;
    for (int r = 0; r < mb; ++r)  // the columns right of the last full strip
      for (int jj = j; jj < n; ++jj) {
        T s = T(0);
        for (int k = 0; k < kb; ++k) s += a[r][k * as] * b[k][c0 + jj];
        c[r][c0 + jj] = s;
      }
  }
};

template <class S, int MR, int NV>
RowGemmKernel<typename S::T> row_gemm_kernel() {
  return RowGemmKernel<typename S::T>{MR, RowGemm<S, MR, NV>::NR, &RowGemm<S, MR, NV>::gemm};
}

}  // namespace
}  // namespace micro_fast
