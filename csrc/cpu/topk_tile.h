// Fused similarity tile + running-threshold top-k selection.
//
// A tile S = A B^T (rows of block I against rows of block J) is computed MR x NR at a time in
// registers over the packed panels; on the last chunk of the feature dimension each register
// tile is filtered against the rows' current k-th best values before anything leaves the
// registers. Only entries that can enter a list are written out, so for k << N almost all of the
// tile is discarded at the cost of one compare per vector. In symmetric mode the same register
// tile is also filtered column-wise (the transposed pairs), which is what lets the driver compute
// each off-diagonal tile of X X^T once.
//
// This header is included by one translation unit per ISA; everything here has internal linkage
// so the differently-compiled copies never meet at link time.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu/topk_heap.h"

namespace micro_fast {

template <typename T>
struct TileArgs {
  const T* a_packed;  // block I, this chunk: [ceil(mb/MR)][kc][MR]
  const T* b_packed;  // block J, this chunk: [ceil(nb/NR)][kc][NR]
  int kc;
  int64_t i0;
  int mb;
  int64_t j0;
  int nb;
  bool first;
  bool last;
  T* acc;      // partial sums [mb_pad][acc_ld] when the feature dim spans several chunks
  int acc_ld;
  RowHeaps<T>* rows;  // lists of the query rows (indexed by global row)
  RowHeaps<T>* cols;  // lists of the key rows, symmetric off-diagonal tiles only, else null
  const ExcludeCSR* ex;
};

template <typename T>
struct TileKernel {
  int mr;
  int nr;
  void (*pack_a)(const T* x, int64_t ld, int64_t i0, int mb, int64_t p0, int kc, T* out);
  void (*pack_b)(const T* x, int64_t ld, int64_t j0, int nb, int64_t p0, int kc, T* out);
  void (*tile)(const TileArgs<T>& args);
};

namespace {

inline int imin(int a, int b) { return a < b ? a : b; }

// Rows past the block end repeat the last row: the kernel never branches on the edge, and the
// selection ignores them.
template <typename T, int R>
void pack_panels_clamped(const T* x, int64_t ld, int64_t r0, int n, int64_t p0, int kc, T* out) {
  const int npan = (n + R - 1) / R;
  for (int q = 0; q < npan; ++q) {
    const T* src[R];
    for (int r = 0; r < R; ++r) {
      int rr = imin(q * R + r, n - 1);
      src[r] = x + (r0 + rr) * ld + p0;
    }
    T* dst = out + static_cast<int64_t>(q) * kc * R;
    for (int p = 0; p < kc; ++p)
      for (int r = 0; r < R; ++r) dst[p * R + r] = src[r][p];
  }
}

template <class S, int MR, int NV>
struct FusedTile {
  using T = typename S::T;
  using V = typename S::V;
  static constexpr int W = S::W;
  static constexpr int NR = NV * W;
  static_assert(NR <= 32, "column masks are 32 bits");

  static void pack_a(const T* x, int64_t ld, int64_t i0, int mb, int64_t p0, int kc, T* out) {
    pack_panels_clamped<T, MR>(x, ld, i0, mb, p0, kc, out);
  }
  static void pack_b(const T* x, int64_t ld, int64_t j0, int nb, int64_t p0, int kc, T* out) {
    pack_panels_clamped<T, NR>(x, ld, j0, nb, p0, kc, out);
  }

  static void tile(const TileArgs<T>& t) {
    const int npan_a = (t.mb + MR - 1) / MR;
    const int npan_b = (t.nb + NR - 1) / NR;
    const int kc = t.kc;
    for (int cb = 0; cb < npan_b; ++cb) {
      const T* bp = t.b_packed + static_cast<int64_t>(cb) * kc * NR;
      const int cvalid = imin(NR, t.nb - cb * NR);
      const uint32_t colmask = cvalid >= 32 ? 0xffffffffu : ((1u << cvalid) - 1u);
      const int64_t jbase = t.j0 + static_cast<int64_t>(cb) * NR;
      for (int ra = 0; ra < npan_a; ++ra) {
        const T* ap = t.a_packed + static_cast<int64_t>(ra) * kc * MR;
        const int rvalid = imin(MR, t.mb - ra * MR);
        T* cbuf = t.acc ? t.acc + static_cast<int64_t>(ra) * MR * t.acc_ld + cb * NR : nullptr;
        V acc[MR][NV];
        if (t.first) {
          for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = S::zero();
        } else {
          for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] = S::load(cbuf + r * t.acc_ld + v * W);
        }
        // pointers that step through the panels: the loop body is loads and FMAs only
        const T* a = ap;
        const T* b = bp;
        for (int p = 0; p < kc; ++p, a += MR, b += NR) {
          V bv[NV];
          for (int v = 0; v < NV; ++v) bv[v] = S::load(b + v * W);
          for (int r = 0; r < MR; ++r) {
            const V av = S::set1(a[r]);
            for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(av, bv[v], acc[r][v]);
          }
        }
        if (!t.last) {
          for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) S::store(cbuf + r * t.acc_ld + v * W, acc[r][v]);
          continue;
        }
        select(t, acc, ra, rvalid, colmask, jbase);
      }
    }
  }

  static inline void select(const TileArgs<T>& t, const V (&acc)[MR][NV], int ra, int rvalid,
                            uint32_t colmask, int64_t jbase) {
    alignas(64) T buf[MR][NR];
    bool stored = false;
    auto spill = [&]() {
      if (!stored) {
        for (int r = 0; r < MR; ++r)
          for (int v = 0; v < NV; ++v) S::store(&buf[r][v * W], acc[r][v]);
        stored = true;
      }
    };
    const int64_t ibase = t.i0 + static_cast<int64_t>(ra) * MR;
    RowHeaps<T>& rows = *t.rows;
    for (int r = 0; r < rvalid; ++r) {
      const V th = S::set1(rows.thr[ibase + r]);
      uint32_t m = 0;
      for (int v = 0; v < NV; ++v) m |= S::ge_mask(acc[r][v], th) << (v * W);
      m &= colmask;
      if (!m) continue;
      spill();
      while (m) {
        const int lane = __builtin_ctz(m);
        m &= m - 1;
        heap_offer(rows, ibase + r, buf[r][lane], jbase + lane, *t.ex);
      }
    }
    if (t.cols == nullptr) return;
    RowHeaps<T>& cols = *t.cols;
    constexpr uint32_t lanes = W >= 32 ? 0xffffffffu : ((1u << W) - 1u);
    for (int v = 0; v < NV; ++v) {
      V mx = acc[0][v];
      for (int r = 1; r < MR; ++r) mx = S::max(mx, acc[r][v]);
      const int64_t jb = jbase + v * W;
      uint32_t m = S::ge_mask(mx, S::load(cols.thr + jb)) & ((colmask >> (v * W)) & lanes);
      if (!m) continue;
      spill();
      while (m) {
        const int lane = __builtin_ctz(m);
        m &= m - 1;
        const int64_t j = jb + lane;
        for (int r = 0; r < rvalid; ++r) {
          const T val = buf[r][v * W + lane];
          if (val >= cols.thr[j]) heap_offer(cols, j, val, ibase + r, *t.ex);
        }
      }
    }
  }

  static TileKernel<T> descriptor() { return TileKernel<T>{MR, NR, &pack_a, &pack_b, &tile}; }
};

}  // namespace
}  // namespace micro_fast
