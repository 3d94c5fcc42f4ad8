// Row kernels of the CSR products, compiled once per ISA (see isa_*.cpp).
//
// spmm:  y[r, :] = sum_e values[e] * x[indices[e], :]   (e over row r)
// sddmm: out[e]  = <a[r, :], b[indices[e], :]>          (the gradient of spmm w.r.t. values)
//
// The feature dimension is walked in column chunks held in registers across the whole row
// (256 bytes: 4 zmm or 8 ymm; 128 bytes in 8 xmm), so each output row is written once and each
// gathered x row is read once per chunk. Summation order is fixed (entries in CSR order), so results do not depend on the
// thread count.
#pragma once

#include <cstdint>

namespace micro_fast {

template <typename T>
struct SpmmKernel {
  void (*spmm_rows)(const int64_t* indptr, const int64_t* indices, const T* values, const T* x,
                    int64_t d, int64_t r0, int64_t r1, T* y);
  void (*sddmm_rows)(const int64_t* indptr, const int64_t* indices, const T* a, const T* b,
                     int64_t d, int64_t r0, int64_t r1, T* out);
};

namespace {

template <class S>
struct SpmmImpl {
  using T = typename S::T;
  using V = typename S::V;
  static constexpr int W = S::W;
  // vectors per column chunk: 256 bytes of a row where the registers allow (4 zmm, 8 ymm),
  // 8 of the 16 xmm registers otherwise
  static constexpr int NV = 256 / sizeof(V) < 8 ? 256 / sizeof(V) : 8;
  static constexpr int DC = W * NV;          // columns per chunk
  static constexpr int kAhead = 16;          // prefetch distance, in stored entries

  // The columns past the last whole chunk, in one pass over the row's entries: NT vectors and
  // rem < W scalars. (A pass per vector and one for the scalars, none prefetched, made d = 100
  // slower than d = 128.)
  template <int NT>
  static inline void tail_chunk(int rem, const int64_t* indices, const T* values, const T* x,
                                int64_t d, int64_t c0, int64_t e0, int64_t e1, int64_t e_end,
                                T* yr) {
    V acc[NT > 0 ? NT : 1];
    for (int q = 0; q < NT; ++q) acc[q] = S::zero();
    T racc[W] = {};
    const int cols = NT * W + rem;
    for (int64_t e = e0; e < e1; ++e) {
      const T* xr = x + indices[e] * d + c0;
      if (e + kAhead < e_end) {
        const T* pf = x + indices[e + kAhead] * d + c0;
        for (int q = 0; q < cols; q += 64 / int(sizeof(T))) __builtin_prefetch(pf + q);
      }
      const T v = values[e];
      const V vv = S::set1(v);
      for (int q = 0; q < NT; ++q) acc[q] = S::fma(vv, S::load(xr + q * W), acc[q]);
      for (int j = 0; j < rem; ++j) racc[j] += v * xr[NT * W + j];
    }
    for (int q = 0; q < NT; ++q) S::store(yr + c0 + q * W, acc[q]);
    for (int j = 0; j < rem; ++j) yr[c0 + NT * W + j] = racc[j];
  }
  template <int NT>
  static inline void tail_dispatch(int nt, int rem, const int64_t* indices, const T* values,
                                   const T* x, int64_t d, int64_t c0, int64_t e0, int64_t e1,
                                   int64_t e_end, T* yr) {
    if constexpr (NT < NV) {
      if (nt == NT) tail_chunk<NT>(rem, indices, values, x, d, c0, e0, e1, e_end, yr);
      else tail_dispatch<NT + 1>(nt, rem, indices, values, x, d, c0, e0, e1, e_end, yr);
    }
  }

  static void spmm_rows(const int64_t* indptr, const int64_t* indices, const T* values,
                        const T* x, int64_t d, int64_t r0, int64_t r1, T* y) {
    // Prefetching runs across row boundaries (up to the end of this range): rows of
    // interaction graphs hold a handful of entries, fewer than the prefetch distance.
    const int64_t e_end = indptr[r1];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t e0 = indptr[r], e1 = indptr[r + 1];
      T* yr = y + r * d;
      int64_t c0 = 0;
      for (; c0 + DC <= d; c0 += DC) {
        V acc[NV];
        for (int q = 0; q < NV; ++q) acc[q] = S::zero();
        for (int64_t e = e0; e < e1; ++e) {
          const V v = S::set1(values[e]);
          const T* xr = x + indices[e] * d + c0;
          if (e + kAhead < e_end) {
            // the gathered rows are random: fetch a whole chunk a few entries ahead
            const T* pf = x + indices[e + kAhead] * d + c0;
            for (int q = 0; q < DC; q += 64 / int(sizeof(T))) __builtin_prefetch(pf + q);
          }
          for (int q = 0; q < NV; ++q) acc[q] = S::fma(v, S::load(xr + q * W), acc[q]);
        }
        // Output rows are written once and not read again by this product: where streaming
        // stores exist, they keep the gathered rows of x resident and skip the
        // read-for-ownership of each output line.
        for (int q = 0; q < NV; ++q) S::stream(yr + c0 + q * W, acc[q]);
      }
      if (c0 < d)
        tail_dispatch<0>(static_cast<int>((d - c0) / W), static_cast<int>((d - c0) % W), indices,
                         values, x, d, c0, e0, e1, e_end, yr);
    }
    S::fence();  // streamed stores become visible before y is read
  }

  static void sddmm_rows(const int64_t* indptr, const int64_t* indices, const T* a, const T* b,
                         int64_t d, int64_t r0, int64_t r1, T* out) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* ar = a + r * d;
      for (int64_t e = indptr[r]; e < indptr[r + 1]; ++e) {
        const T* br = b + indices[e] * d;
        V acc = S::zero();
        int64_t j = 0;
        for (; j + W <= d; j += W) acc = S::fma(S::load(ar + j), S::load(br + j), acc);
        T s = S::hsum(acc);
        for (; j < d; ++j) s += ar[j] * br[j];
        out[e] = s;
      }
    }
  }

  static SpmmKernel<T> descriptor() { return SpmmKernel<T>{&spmm_rows, &sddmm_rows}; }
};

}  // namespace
}  // namespace micro_fast
