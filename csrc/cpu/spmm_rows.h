// Row kernels of the CSR products, compiled once per ISA (see isa_*.cpp).
//
// spmm:  y[r, :] = sum_e values[e] * x[indices[e], :]   (e over row r)
// sddmm: out[e]  = <a[r, :], b[indices[e], :]>          (the gradient of spmm w.r.t. values)
//
// The feature dimension is walked in 256-byte column chunks held in registers across the whole
// row (4 zmm / 8 ymm), so each output row is written once and each gathered x row is read once
// per chunk. Summation order is fixed (entries in CSR order), so results do not depend on the
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

template <typename T>
struct Vec64;
template <>
struct Vec64<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Vec64<double> {
  typedef double type __attribute__((vector_size(64)));
};

template <typename T>
struct SpmmImpl {
  using V = typename Vec64<T>::type;
  static constexpr int W = 64 / sizeof(T);  // lanes per vector
  static constexpr int NV = 4;               // vectors per column chunk
  static constexpr int DC = W * NV;          // columns per chunk
  static constexpr int kAhead = 16;          // prefetch distance, in stored entries

  static inline V loadv(const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  }
  static inline void storev(T* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); }

  // Output rows are written once and not read again by this product: streaming them past the
  // cache keeps the gathered rows of x resident (outputs of tens of megabytes otherwise evict
  // them), and skips the read-for-ownership of each output line.
  static inline void stream_or_store(T* p, V v) {
#if defined(MF_SIMD_AVX512)
    if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) {
      __m512i bits;
      __builtin_memcpy(&bits, &v, sizeof(V));
      _mm512_stream_si512(reinterpret_cast<__m512i*>(p), bits);
      return;
    }
#endif
    storev(p, v);
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
        V acc[NV] = {};
        for (int64_t e = e0; e < e1; ++e) {
          const T v = values[e];
          const T* xr = x + indices[e] * d + c0;
          if (e + kAhead < e_end) {
            // the gathered rows are random: fetch a whole chunk a few entries ahead
            const T* pf = x + indices[e + kAhead] * d + c0;
            for (int q = 0; q < DC; q += 64 / int(sizeof(T))) __builtin_prefetch(pf + q);
          }
          for (int q = 0; q < NV; ++q) acc[q] += v * loadv(xr + q * W);
        }
        for (int q = 0; q < NV; ++q) stream_or_store(yr + c0 + q * W, acc[q]);
      }
      for (; c0 + W <= d; c0 += W) {
        V acc = {};
        for (int64_t e = e0; e < e1; ++e) acc += values[e] * loadv(x + indices[e] * d + c0);
        storev(yr + c0, acc);
      }
      if (c0 < d) {
        for (int64_t j = c0; j < d; ++j) yr[j] = T(0);
        for (int64_t e = e0; e < e1; ++e) {
          const T v = values[e];
          const T* xr = x + indices[e] * d;
          for (int64_t j = c0; j < d; ++j) yr[j] += v * xr[j];
        }
      }
    }
#if defined(MF_SIMD_AVX512)
    _mm_sfence();  // streamed stores become visible before the caller reads y
#endif
  }

  static void sddmm_rows(const int64_t* indptr, const int64_t* indices, const T* a, const T* b,
                         int64_t d, int64_t r0, int64_t r1, T* out) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* ar = a + r * d;
      for (int64_t e = indptr[r]; e < indptr[r + 1]; ++e) {
        const T* br = b + indices[e] * d;
        V acc = {};
        int64_t j = 0;
        for (; j + W <= d; j += W) acc += loadv(ar + j) * loadv(br + j);
        T s = T(0);
        for (int q = 0; q < W; ++q) s += acc[q];
        for (; j < d; ++j) s += ar[j] * br[j];
        out[e] = s;
      }
    }
  }

  static SpmmKernel<T> descriptor() { return SpmmKernel<T>{&spmm_rows, &sddmm_rows}; }
};

}  // namespace
}  // namespace micro_fast
