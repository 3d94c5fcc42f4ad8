// Drivers of the CSR products: rows are split into ranges of equal work (stored entries plus
// rows), so a few dense rows (popular items, heavy users) do not leave one thread with most of it.
#include "cpu/spmm.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu/isa.h"

namespace micro_fast {
namespace {

// Boundaries of `parts` row ranges with about equal indptr[r] + r.
std::vector<int64_t> balanced_rows(const int64_t* indptr, int64_t m, int parts) {
  std::vector<int64_t> bounds(parts + 1, m);
  bounds[0] = 0;
  const double total = double(indptr[m]) + double(m);
  int64_t lo = 0;
  for (int p = 1; p < parts; ++p) {
    const double target = total * p / parts;
    int64_t a = lo, b = m;
    while (a < b) {
      const int64_t mid = a + (b - a) / 2;
      if (double(indptr[mid]) + double(mid) < target) a = mid + 1; else b = mid;
    }
    bounds[p] = lo = a;
  }
  return bounds;
}

// Runs fn(r0, r1) over row ranges of about equal work, on a team sized to the work (waking a
// team costs more than ~100k multiply-adds).
template <typename Fn>
void for_balanced_rows(const int64_t* indptr, int64_t m, int64_t d, int num_threads, Fn fn) {
  const int threads = double(indptr[m] + m) * double(d) < 1e5 ? 1 : std::max(1, num_threads);
  if (threads == 1) {
    fn(int64_t(0), m);
    return;
  }
  const int parts = threads * 8;
  const std::vector<int64_t> bounds = balanced_rows(indptr, m, parts);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int p = 0; p < parts; ++p) fn(bounds[p], bounds[p + 1]);
}

}  // namespace

template <typename T>
void spmm(const int64_t* indptr, const int64_t* indices, const T* values, int64_t m, const T* x,
          int64_t d, T* y, int num_threads) {
  const auto& k = isa_kernels<T>().spmm;
  for_balanced_rows(indptr, m, d, num_threads, [&](int64_t r0, int64_t r1) {
    k.spmm_rows(indptr, indices, values, x, d, r0, r1, y);
  });
}

template <typename T>
void sddmm(const int64_t* indptr, const int64_t* indices, int64_t m, const T* a, const T* b,
           int64_t d, T* out, int num_threads) {
  const auto& k = isa_kernels<T>().spmm;
  for_balanced_rows(indptr, m, d, num_threads, [&](int64_t r0, int64_t r1) {
    k.sddmm_rows(indptr, indices, a, b, d, r0, r1, out);
  });
}

template void spmm<float>(const int64_t*, const int64_t*, const float*, int64_t, const float*,
                          int64_t, float*, int);
template void spmm<double>(const int64_t*, const int64_t*, const double*, int64_t, const double*,
                           int64_t, double*, int);
template void sddmm<float>(const int64_t*, const int64_t*, int64_t, const float*, const float*,
                           int64_t, float*, int);
template void sddmm<double>(const int64_t*, const int64_t*, int64_t, const double*,
                            const double*, int64_t, double*, int);

}  // namespace micro_fast
