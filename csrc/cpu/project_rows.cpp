// Drivers of the row-projection products (see project_rows.h) on the pointer-table kernels of
// row_gemm.h. Each product is split into tasks of one column block by one row chunk, numbered
// column-block first and handed out in contiguous runs, so a thread keeps one column block of
// the right operand in cache while it walks the row chunks. Every output is written by one
// task, as one sum over the whole inner dimension: results do not depend on the thread count.
#include "cpu/project_rows.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu/isa.h"

namespace micro_fast {
namespace {

constexpr int64_t kChunkBytes = 128 * 1024;  // one row chunk of the left operand
constexpr int64_t kBlockBytes = 256 * 1024;  // one column block of the right operand
constexpr double kSerialWork = 2e5;          // multiply-adds below which one thread runs it

// C_r = sum_k A_r[k * as] B_k for r < mb, over the columns [0, n). With `pack_b`, a thread
// first copies the kb x block slice of B that its tasks use into a contiguous buffer: rows of a
// feature matrix lie a power-of-two stride apart, so a column slice of many of them falls into
// a few cache sets and would be re-read from memory by every row panel.
template <typename T>
void row_products(const RowGemmKernel<T>& kern, const T* const* a, int64_t as,
                  const T* const* b, int64_t kb, int64_t mb, int64_t n, T* const* c,
                  int num_threads, bool pack_b) {
  if (mb == 0 || n == 0) return;
  const int64_t row_bytes = std::max<int64_t>(1, kb) * int64_t(sizeof(T));
  const int64_t mr = kern.mr, nr = kern.nr;
  // whole register panels per chunk; a short left operand (a gradient's f rows) in one chunk
  const int64_t chunk = mb <= 16 * mr ? mb
                                      : std::clamp<int64_t>(kChunkBytes / row_bytes / mr * mr,
                                                            mr, 32 * mr);
  const int64_t block = std::clamp<int64_t>(kBlockBytes / row_bytes / nr * nr, nr, 64 * nr);
  const int64_t nchunks = (mb + chunk - 1) / chunk, nblocks = (n + block - 1) / block;
  const int64_t ntasks = nchunks * nblocks;
  const double work = double(mb) * double(n) * double(kb);
  const int threads = work < kSerialWork ? 1 : std::max(1, num_threads);
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> packed;
    std::vector<const T*> bp;
    std::vector<T*> cp;
    int64_t packed_block = -1;
    if (pack_b) {
      packed.resize(kb * std::min(block, n));
      bp.resize(kb);
      cp.resize(chunk);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntasks; ++t) {
      const int64_t cb = t / nchunks, rc = t % nchunks;
      const int64_t r0 = rc * chunk, c0 = cb * block;
      const int rows = static_cast<int>(std::min(chunk, mb - r0));
      const int cols = static_cast<int>(std::min(block, n - c0));
      if (!pack_b) {
        kern.gemm(a + r0, as, b, static_cast<int>(kb), rows, c0, cols, c + r0);
        continue;
      }
      if (cb != packed_block) {
        for (int64_t k = 0; k < kb; ++k) {
          std::memcpy(packed.data() + k * cols, b[k] + c0, cols * sizeof(T));
          bp[k] = packed.data() + k * cols;
        }
        packed_block = cb;
      }
      for (int r = 0; r < rows; ++r) cp[r] = c[r0 + r] + c0;
      kern.gemm(a + r0, as, bp.data(), static_cast<int>(kb), rows, 0, cols, cp.data());
    }
  }
}

void check_rows(const int64_t* rows, int64_t m, int64_t n) {
  for (int64_t r = 0; r < m; ++r) {
    MF_CHECK(rows[r] >= 0 && rows[r] < n, "rows: index out of range");
    MF_CHECK(r == 0 || rows[r - 1] < rows[r], "rows: indices must be sorted and distinct");
  }
}

}  // namespace

template <typename T>
void project_rows_forward(const T* x, int64_t n, int64_t d, const int64_t* rows, int64_t m,
                          const T* w, int64_t f, const T* bias, int num_threads, T* z) {
  check_rows(rows, m, n);
  const auto& kern = isa_kernels<T>().row_gemm;
  std::vector<T> wt(d * f);  // W^T [d, f]: its rows are the k-rows of the product
  for (int64_t j = 0; j < f; ++j)
    for (int64_t k = 0; k < d; ++k) wt[k * f + j] = w[j * d + k];
  std::vector<const T*> a(m), b(d);
  std::vector<T*> c(m);
  for (int64_t r = 0; r < m; ++r) {
    a[r] = x + rows[r] * d;
    c[r] = z + r * f;
  }
  for (int64_t k = 0; k < d; ++k) b[k] = wt.data() + k * f;
  row_products<T>(kern, a.data(), 1, b.data(), d, m, f, c.data(), num_threads, false);
  if (bias)
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < f; ++j) z[r * f + j] += bias[j];
}

template <typename T>
void project_rows_backward(const T* x, int64_t n, int64_t d, const int64_t* rows, int64_t m,
                           const T* w, int64_t f, const T* g, int num_threads, T* grad_x,
                           T* grad_w) {
  check_rows(rows, m, n);
  const auto& kern = isa_kernels<T>().row_gemm;
  if (grad_x) {
    // rows outside `rows` are zero; the others are written by the product below
    int64_t next = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (next < m && rows[next] == i) {
        ++next;
        continue;
      }
      std::memset(grad_x + i * d, 0, d * sizeof(T));
    }
    std::vector<const T*> a(m), b(f);
    std::vector<T*> c(m);
    for (int64_t r = 0; r < m; ++r) {
      a[r] = g + r * f;
      c[r] = grad_x + rows[r] * d;
    }
    for (int64_t k = 0; k < f; ++k) b[k] = w + k * d;
    row_products<T>(kern, a.data(), 1, b.data(), f, m, d, c.data(), num_threads, true);
  }
  if (grad_w) {
    if (m == 0) {
      std::fill(grad_w, grad_w + f * d, T(0));
      return;
    }
    // A_j[k] = g[k, j] (the transpose of g), B_k = x[rows[k]]
    std::vector<const T*> a(f), b(m);
    std::vector<T*> c(f);
    for (int64_t j = 0; j < f; ++j) {
      a[j] = g + j;
      c[j] = grad_w + j * d;
    }
    for (int64_t k = 0; k < m; ++k) b[k] = x + rows[k] * d;
    row_products<T>(kern, a.data(), f, b.data(), m, f, d, c.data(), num_threads, true);
  }
}

template void project_rows_forward<float>(const float*, int64_t, int64_t, const int64_t*,
                                          int64_t, const float*, int64_t, const float*, int,
                                          float*);
template void project_rows_forward<double>(const double*, int64_t, int64_t, const int64_t*,
                                           int64_t, const double*, int64_t, const double*, int,
                                           double*);
template void project_rows_backward<float>(const float*, int64_t, int64_t, const int64_t*,
                                           int64_t, const float*, int64_t, const float*, int,
                                           float*, float*);
template void project_rows_backward<double>(const double*, int64_t, int64_t, const int64_t*,
                                            int64_t, const double*, int64_t, const double*, int,
                                            double*, double*);

}  // namespace micro_fast
